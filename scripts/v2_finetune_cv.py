"""Does fine-tuning v2's upper stages buy ranking? 5-fold CV on the committed folds.

    python scripts/v2_finetune_cv.py [--epochs 6] [--threads 2] [--json docs/model_v2/finetune_cv.json]

Model v2 (configs/livec_v2.yaml) keeps the whole ImageNet backbone frozen and fits ridge
heads on pooled features. v1 fine-tunes blocks 4-6, and on v1's own split a re-fine-tuned
backbone under v2's pooling reached 0.802 where frozen features reach 0.73, so this study
measures the same freedom inside cross-validation:

- the frozen front (stem, blocks 0-3) runs once per photo and view; its pooled stage 1-3
  statistics and the block-3 feature map are kept in memory (fp16);
- per fold, a fresh copy of blocks 4-6 + the conv head is trained with the linear MOS head
  on the training folds (MSE on MOS, AdamW, a fixed number of epochs: no epoch is chosen
  on held-out photos). The head starts at the ridge solution on frozen features, so epoch
  0 is exactly the frozen model;
- SRCC/PLCC on the held-out fold after epoch 0 and after every epoch, mean +- std.

Rated photos only (the level targets are a separate question: scripts/v2_levels_study.py).
BatchNorm keeps its ImageNet statistics (batches of 16 are too small to re-estimate them).
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import time
from pathlib import Path

import numpy as np

FRONT_BLOCKS = 4  # blocks[:4] frozen and cached; blocks[4:] + conv head trained
ALPHAS = tuple(np.logspace(1, 4.5, 8))


def front_features(model, records, threads: int):
    """Per photo and view: pooled stats of the frozen stages and the block-3 map."""
    import torch
    from tqdm import tqdm

    from iqa.inference.contract import DETAIL_INPUT, INPUT_NAME
    from iqa.inference.decode import decode_image
    from iqa.inference.preprocess import to_model_inputs
    from iqa.models.pooling import mean_std

    torch.set_num_threads(threads)
    b = model.pooling.backbone
    stages = model.pooling.stages
    stats, maps = {"image": [], "detail": []}, {"image": [], "detail": []}
    with torch.inference_mode():
        for record in tqdm(records, desc="frozen front", unit="img", mininterval=5):
            inputs = to_model_inputs(decode_image(record.path, max_pixels=None),
                                     model.preprocessing, model.detail_view)
            for view, name in (("image", INPUT_NAME), ("detail", DETAIL_INPUT)):
                x = b.bn1(b.conv_stem(torch.from_numpy(inputs[name])[None]))
                pooled = []
                for i, block in enumerate(b.blocks[:FRONT_BLOCKS]):
                    x = block(x)
                    if i in stages:
                        pooled += mean_std(x)
                stats[view].append(torch.cat(pooled, 1)[0].numpy())
                maps[view].append(x[0].half().numpy())
    return ({v: np.stack(s) for v, s in stats.items()},
            {v: np.stack(m) for v, m in maps.items()})


class Tail:
    """blocks[4:] + conv head, pooled like MultiLevelPooling, for both views."""

    def __init__(self, model):
        import torch

        from iqa.models.pooling import mean_std

        b = model.pooling.backbone
        self.blocks = torch.nn.ModuleList(copy.deepcopy(list(b.blocks[FRONT_BLOCKS:])))
        self.conv_head = copy.deepcopy(b.conv_head)
        self.bn2 = copy.deepcopy(b.bn2)
        self.stages = [s - FRONT_BLOCKS for s in model.pooling.stages if s >= FRONT_BLOCKS]
        self.include_head = model.pooling.include_head
        self.mean_std = mean_std

    def modules(self):
        return [self.blocks, self.conv_head, self.bn2]

    def parameters(self):
        return [p for m in self.modules() for p in m.parameters()]

    def eval(self):
        for m in self.modules():
            m.eval()

    def __call__(self, x):
        import torch

        pooled = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.stages:
                pooled += self.mean_std(x)
        if self.include_head:
            pooled += self.mean_std(self.bn2(self.conv_head(x)))
        return torch.cat(pooled, 1)


def features(tail, stats, maps, idx):
    import torch

    parts = []
    for view in ("image", "detail"):
        parts.append(torch.from_numpy(stats[view][idx]))
        parts.append(tail(torch.from_numpy(maps[view][idx]).float()))
    return torch.cat(parts, 1)


def run_fold(model, stats, maps, y, train, test, *, epochs, lr, batch, seed):
    import torch
    from scipy import stats as sps
    from sklearn.linear_model import RidgeCV

    torch.manual_seed(seed)
    tail = Tail(model)
    tail.eval()
    tr_idx, te_idx = np.flatnonzero(train), np.flatnonzero(test)

    def embed(idx):
        with torch.no_grad():
            return torch.cat([features(tail, stats, maps, idx[i:i + 64])
                              for i in range(0, len(idx), 64)]).numpy()

    f_tr = embed(tr_idx)
    mean, std = f_tr.mean(0), f_tr.std(0) + 1e-4
    ridge = RidgeCV(alphas=ALPHAS).fit((f_tr - mean) / std, y[tr_idx])
    head = torch.nn.Linear(f_tr.shape[1], 1)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(ridge.coef_[None]).float())
        head.bias.fill_(float(ridge.intercept_))
    mean_t, std_t = torch.from_numpy(mean).float(), torch.from_numpy(std).float()

    def evaluate():
        with torch.no_grad():
            f = torch.from_numpy(embed(te_idx))
            pred = head((f - mean_t) / std_t)[:, 0].numpy()
        return (float(sps.spearmanr(pred, y[te_idx])[0]),
                float(sps.pearsonr(pred, y[te_idx])[0]))

    curve = [evaluate()]
    opt = torch.optim.AdamW([{"params": tail.parameters(), "lr": lr},
                             {"params": head.parameters(), "lr": lr * 0.1}], weight_decay=1e-4)
    rng = np.random.default_rng(seed)
    yt = torch.from_numpy(y).float()
    for _ in range(epochs):
        order = rng.permutation(tr_idx)
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            pred = head((features(tail, stats, maps, idx) - mean_t) / std_t)[:, 0]
            loss = torch.nn.functional.mse_loss(pred, yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        curve.append(evaluate())
    return curve, ridge.alpha_


def main() -> None:
    import torch

    from iqa.training.datasets import load_dataset
    from iqa.training.train_multiview import build_model, load_config

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/livec_v2.yaml")
    parser.add_argument("--data-root", default="../shared/datasets")
    parser.add_argument("--folds", type=Path, default=Path("configs/splits/livec_5fold.csv"))
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only-folds", type=int, nargs="*", help="run these folds only")
    parser.add_argument("--json", type=Path, help="write the per-fold curves here")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    config = load_config(args.config, [])
    model = build_model(config)
    model.eval()
    records = load_dataset("livec", Path(args.data_root) / "livec")
    with args.folds.open() as f:
        fold_of = {row["image"]: int(row["fold"]) for row in csv.DictReader(f)}
    folds = np.array([fold_of[Path(r.path).name] for r in records])
    y = np.array([r.mos for r in records], dtype=np.float64)
    started = time.time()
    cache = Path(config.get("cache_dir", ".cache/iqa-v2")) / \
        f"front{FRONT_BLOCKS}-s{model.preprocessing.shorter_side}.npz"
    if cache.is_file():  # a frozen front's outputs never change
        with np.load(cache) as z:
            stats = {v: z[f"stats_{v}"] for v in ("image", "detail")}
            maps = {v: z[f"maps_{v}"] for v in ("image", "detail")}
    else:
        stats, maps = front_features(model, records, args.threads)
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, **{f"stats_{v}": a for v, a in stats.items()},
                 **{f"maps_{v}": a for v, a in maps.items()})
    print(f"frozen front: {time.time() - started:.0f} s", flush=True)
    results = []
    for k in args.only_folds or range(int(folds.max()) + 1):
        t0 = time.time()
        curve, alpha = run_fold(model, stats, maps, y, folds != k, folds == k,
                                epochs=args.epochs, lr=args.lr, batch=args.batch, seed=k)
        results.append({"fold": k, "alpha": float(alpha), "srcc": [c[0] for c in curve],
                        "plcc": [c[1] for c in curve], "seconds": round(time.time() - t0)})
        print(f"fold {k}: SRCC by epoch " + " ".join(f"{c[0]:.4f}" for c in curve)
              + f"  ({results[-1]['seconds']} s)", flush=True)
    srcc = np.array([r["srcc"] for r in results])
    plcc = np.array([r["plcc"] for r in results])
    ddof = 1 if len(results) > 1 else 0
    print("epoch  SRCC mean±std   PLCC mean±std")
    for e in range(srcc.shape[1]):
        print(f"{e:5d}  {srcc[:, e].mean():.4f}±{srcc[:, e].std(ddof=ddof):.4f}  "
              f"{plcc[:, e].mean():.4f}±{plcc[:, e].std(ddof=ddof):.4f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "folds": results}, indent=1))


if __name__ == "__main__":
    main()
