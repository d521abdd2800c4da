"""Baselines for MODEL_CARD.md, run on the same split and metrics as the shipped model.

- ``ridge``: frozen ImageNet EfficientNet-Lite0, global-pooled features of the whole image
  at the model's resolution policy, and a ridge regressor (alpha by CV on the train split).
- ``brisque``: the ``brisque`` package (an SVR fitted on the LIVE IQA database), no training.

Both score the validation images of ``--split-csv`` and report the metrics of
``iqa.training.metrics.evaluate_predictions`` (bootstrap 95% CIs), as JSON and Markdown.

    python scripts/baselines.py ridge --root ../shared/datasets/livec \
        --split-csv configs/splits/livec_seed0.csv -o docs/baselines/ridge.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm


def _records(args):
    from iqa.training.datasets import load_dataset, select_split
    from iqa.training.datasets.splits import apply_split, load_split_csv

    records = apply_split(load_dataset(args.dataset, args.root), load_split_csv(args.split_csv))
    return select_split(records, "train"), select_split(records, args.split)


def _rgb(path: Path) -> Image.Image:
    from iqa.inference.decode import decode_image

    return decode_image(path)


def ridge_predictions(train, val, backbone: str) -> np.ndarray:
    import torch
    from sklearn.linear_model import RidgeCV

    from iqa.inference.preprocess import to_model_input
    from iqa.models.backbones import backbone_preprocessing, create_backbone

    model = create_backbone(backbone, pretrained=True, num_classes=0).eval()
    prep = backbone_preprocessing(model)

    def features(records, desc):
        rows = []
        with torch.no_grad():
            for r in tqdm(records, desc=desc, file=sys.stderr):
                x = torch.from_numpy(to_model_input(_rgb(r.path), prep))[None]
                rows.append(model(x)[0].numpy())
        return np.stack(rows)

    x_train, x_val = features(train, "features (train)"), features(val, "features (val)")
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    reg = RidgeCV(alphas=np.logspace(-2, 4, 13)).fit(
        (x_train - mean) / std, [r.mos for r in train]
    )
    return reg.predict((x_val - mean) / std)


def brisque_predictions(val) -> np.ndarray:
    from brisque import BRISQUE

    class _Brisque(BRISQUE):
        # brisque 0.2.0 builds its features as 1-element arrays, which NumPy 2 refuses to
        # turn into floats; flatten them before the package's own scaling.
        def scale_features(self, features):
            return super().scale_features([float(np.ravel(f)[0]) for f in features])

    scorer = _Brisque(url=False)
    # BRISQUE is lower-is-better; negate so every baseline correlates positively with MOS.
    return np.array(
        [-scorer.score(np.asarray(_rgb(r.path))) for r in tqdm(val, desc="brisque", file=sys.stderr)]
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("method", choices=["ridge", "brisque"])
    parser.add_argument("--dataset", default="livec")
    parser.add_argument("--root", required=True, help="dataset root, e.g. ../shared/datasets/livec")
    parser.add_argument("--split-csv", required=True, help="split file from save_split_csv")
    parser.add_argument("--split", default="val", help="split to evaluate on (default: val)")
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("-o", "--output", type=Path, help="write the metrics JSON here")
    args = parser.parse_args(argv)

    from iqa.training.metrics import evaluate_predictions, metrics_to_markdown

    train, val = _records(args)
    if args.method == "ridge":
        pred = ridge_predictions(train, val, args.backbone)
    else:
        pred = brisque_predictions(val)
    metrics = evaluate_predictions(pred, [r.mos for r in val], n_boot=1000, seed=0)
    metrics["method"] = args.method
    metrics["split"] = {"csv": str(args.split_csv), "name": args.split, "n_train": len(train)}
    print(metrics_to_markdown(metrics, title=f"{args.method} baseline ({args.split})"))
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(metrics, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
