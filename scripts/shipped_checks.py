"""Print every figure the shipped-model tests assert on, for any ONNX model file.

    python scripts/shipped_checks.py [MODEL.onnx] [--out figures.json]

The figures (clean means, strong-blur maxima, exposure and night-flare medians, the
monotonicity rows, the full-resolution blur and noise costs) come from
iqa.training.semantic_checks, the same code tests/test_shipped_model.py and
tests/test_shipped_model_fullres.py run; MODEL_CARD.md quotes them. Without MODEL it checks
the shipped default. The full-resolution photos need `python scripts/fetch_eval_photos.py`
first; they are evaluation photos, never used to train, calibrate or select a model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


class PriorScored:
    """A QualityModel whose `score` is its `mos` through the inverse of a level prior."""

    def __init__(self, model, prior: tuple[float, float]):
        from iqa.training.heads import prior_calibration

        self.model = model
        self.knots = prior_calibration(prior)

    def score_many(self, images):
        import dataclasses

        import numpy as np

        return [dataclasses.replace(r, score=float(np.interp(r.mos, *self.knots)))
                for r in self.model.score_many(images)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", type=Path,
                        help="ONNX model file (default: the shipped model)")
    parser.add_argument("--out", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--prior", metavar="A,B",
                        help="score the model's `mos` output through the inverse of the level "
                        "prior MOS = A + B * level (iqa.training.heads.prior_calibration) "
                        "instead of the calibration baked into the file: what that "
                        "calibration would give. A and B are in the training log ('levels: "
                        "page-scale targets -> MOS A + B * level')")
    args = parser.parse_args(argv)

    from iqa.inference import QualityModel, default_model_path
    from iqa.inference.contract import META_MODEL_VERSION
    from iqa.training.semantic_checks import figures

    path = args.model or default_model_path()
    if not path.is_file():
        parser.error(f"no model file at {path}")
    model = QualityModel(path)
    result = {"model": str(path), "model_version": model.metadata.get(META_MODEL_VERSION)}
    scorer = model
    if args.prior:
        if not model.has_mos:
            parser.error(f"--prior needs a model with a `mos` output; {path} has none")
        scorer = PriorScored(model, tuple(float(x) for x in args.prior.split(",")))
        result["calibration"] = f"inverse level prior {args.prior} applied to `mos`"
    result.update(figures(scorer))
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
