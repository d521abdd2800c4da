"""How much slower would a larger EfficientNet-Lite be at the shipped view size?

Exports timm's bare backbones (untrained weights: speed does not depend on them) to ONNX
and times onnxruntime on one input of the global view's size, alternating the models over
the passes so that background load hits them alike.

    python scripts/backbone_speed.py                      # Lite0-2 at 384x512, 2 threads
    python scripts/backbone_speed.py --size 320x416 --models tf_efficientnet_lite0
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["tf_efficientnet_lite0",
                                                         "tf_efficientnet_lite1",
                                                         "tf_efficientnet_lite2"])
    parser.add_argument("--size", default="384x512", help="input HxW (default 384x512)")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime threads")
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--runs", type=int, default=30, help="timed runs per pass")
    args = parser.parse_args(argv)

    import numpy as np
    import onnxruntime as ort
    import timm
    import torch

    height, width = (int(v) for v in args.size.lower().split("x"))
    x = torch.zeros(1, 3, height, width)
    folder = Path(tempfile.mkdtemp(prefix="iqa-backbones-"))
    sessions = {}
    for name in args.models:
        model = timm.create_model(name, pretrained=False, num_classes=0).eval()
        path = folder / f"{name}.onnx"
        torch.onnx.export(model, x, str(path), input_names=["x"], opset_version=17,
                          dynamo=False)
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        sessions[name] = ort.InferenceSession(str(path), options,
                                              providers=["CPUExecutionProvider"])
    feed = {"x": np.random.default_rng(0).standard_normal((1, 3, height, width),
                                                          dtype=np.float32)}
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(args.passes):
        for name, session in sessions.items():
            for _ in range(3):
                session.run(None, feed)
            start = time.perf_counter()
            for _ in range(args.runs):
                session.run(None, feed)
            times[name].append((time.perf_counter() - start) / args.runs * 1000)
    base = min(times[args.models[0]])
    print(f"| backbone | ms per image at {height}x{width}, {args.threads} threads | "
          f"relative to {args.models[0]} |\n|---|---|---|")
    for name, values in times.items():
        print(f"| {name} | {' / '.join(f'{v:.1f}' for v in values)} | "
              f"{min(values) / base:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
