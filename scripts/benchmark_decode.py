"""Decode cost of `iqa`'s strict JPEG path (simplejpeg) against Pillow's, on the same JPEGs.

`iqa.inference.decode` decodes JPEGs with libjpeg-turbo through simplejpeg in strict mode,
so that a JPEG cut short is refused rather than scored as a half-grey picture, and asks
for the DCT scale Pillow's ``draft`` would pick, so the pixels are Pillow's bit for bit.
This script times both paths in alternating rounds (the machine's load hits both alike)
on the photo-like JPEGs of ``benchmark_inference.py``, at the size the shipped model's
preprocessing asks the decoder for, and checks that the pixels are identical.

    python scripts/benchmark_decode.py --size 1024x768 --images 64
    python scripts/benchmark_decode.py --size 4000x3000 --images 16
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_inference import make_jpegs  # noqa: E402

from iqa.inference import QualityModel, decode  # noqa: E402
from iqa.inference.preprocess import decode_for_model  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="1024x768", help="JPEG size WxH")
    parser.add_argument("--images", type=int, default=64, help="number of JPEGs")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timed rounds")
    parser.add_argument("--model", help="ONNX model whose decode target is used "
                                        "(default: the shipped one)")
    return parser.parse_args(argv)


def decode_all(blobs: list[bytes], prep, strict: bool) -> tuple[float, list[np.ndarray]]:
    """Seconds to decode every blob as `iqa score` does, and the pixels; ``strict`` False
    forces Pillow's decoder (the path before iqa 0.3.1)."""
    saved = decode._STRICT_JPEG_MODES
    decode._STRICT_JPEG_MODES = saved if strict else {}
    try:
        start = time.perf_counter()
        out = [np.asarray(decode_for_model(b, prep)) for b in blobs]
        return time.perf_counter() - start, out
    finally:
        decode._STRICT_JPEG_MODES = saved


def main(argv=None) -> int:
    args = parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    model = QualityModel(args.model)
    prep = model.preprocessing  # its policy sets the DCT scale the decoder is asked for
    with tempfile.TemporaryDirectory() as tmp:
        blobs = [p.read_bytes() for p in make_jpegs(Path(tmp), args.images, (width, height))]
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.rounds):
        for strict in (False, True):
            seconds, pixels = decode_all(blobs, prep, strict)
            times[strict].append(seconds)
            if strict:
                strict_pixels = pixels
            else:
                pillow_pixels = pixels
    same = all(np.array_equal(a, b) for a, b in zip(strict_pixels, pillow_pixels, strict=True))
    shape = strict_pixels[0].shape
    print(f"{args.images} JPEGs of {width}x{height}, decoded to {shape[1]}x{shape[0]}; "
          f"{args.rounds} alternating rounds, 1 thread; identical pixels: {same}")
    print("| decoder | ms per image, best round | median round |")
    print("|---|---:|---:|")
    for strict, name in ((False, "Pillow (`draft` + `load`)"),
                         (True, "simplejpeg, strict (iqa 0.3.1)")):
        per = [1000 * t / args.images for t in times[strict]]
        print(f"| {name} | {min(per):.2f} | {statistics.median(per):.2f} |")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
