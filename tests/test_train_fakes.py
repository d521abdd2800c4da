"""Tiny fake dataset releases and tiny-training settings shared by the tests/test_train_* files.

The label files are written by the datasets tests' own builders (tests/test_datasets.py),
so a format change there reaches these fakes too. Images are small textured photos
(gradients and noise), not flat colours, so the network's outputs vary between images.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))

from test_datasets import (  # noqa: E402
    KONIQ_SETS_HEADER,
    koniq_sets_rows,
    write_csv,
    write_spaq_xlsx,
)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def make_photo(path: Path, width: int = 80, height: int = 64, seed: int = 0) -> Path:
    """A small textured RGB image (JPEG if the suffix says so)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = rng.uniform(0, 6.3, 3)
    freq = rng.uniform(0.05, 0.3, 3)
    base = np.stack([127 + 100 * np.sin(freq[c] * (x + (c + 1) * y) + phase[c]) for c in range(3)], -1)
    image = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path


def fake_livec(root: Path, count: int = 15) -> Path:
    """labels.csv layout (image, mos, mos_std, original_name), MOS on 0-100."""
    rng = np.random.default_rng(1)
    rows = []
    for i in range(count):
        make_photo(root / "images" / f"{i}.png", seed=100 + i)
        rows.append([f"images/{i}.png", round(float(rng.uniform(5, 95)), 3), 10.0, f"{i}.bmp"])
    write_csv(root / "labels.csv", ["image", "mos", "mos_std", "original_name"], rows)
    return root


def fake_pristine(root: Path, count: int = 3) -> Path:
    """Photos in two of the real collection folders (the recipes pick sub-folders by name)."""
    for i in range(count):
        make_photo(root / ("kodak24", "wikipedia")[i % 2] / f"p{i}.jpg", 96, 72, seed=200 + i)
    make_photo(root / "bsds500" / "excluded.jpg", 96, 72, seed=299)  # not in the recipes' subsets
    (root / "sources.csv").write_text("image,set\n")  # non-images are skipped
    return root


def fake_koniq(root: Path) -> Path:
    """koniq10k_distributions_sets.csv with the official set column, 1024x768/ folder."""
    rng = np.random.default_rng(2)
    sets = ["training"] * 8 + ["validation"] * 4 + ["test"] * 2
    rows = []
    for i, split in enumerate(sets):
        name = f"{1000 + i}.jpg"
        make_photo(root / "1024x768" / name, 96, 72, seed=300 + i)
        rows.append((name, split, round(float(rng.uniform(5, 95)), 2)))
    write_csv(root / "koniq10k_distributions_sets.csv", KONIQ_SETS_HEADER, koniq_sets_rows(rows))
    return root


def fake_spaq(root: Path, count: int = 15, images: str = "TestImage_512") -> Path:
    """The xlsx annotation file, and the resized image copy scripts/prepare_spaq.py makes."""
    rng = np.random.default_rng(3)
    rows = []
    for i in range(count):
        name = f"{i + 1:05d}.jpg"
        make_photo(root / images / name, 72, 96, seed=400 + i)
        rows.append([name, round(float(rng.uniform(5, 95)), 2), 50, 50, 50, 50, 50])
    write_spaq_xlsx(root / "Annotations" / "MOS and Image attribute scores.xlsx", rows)
    return root


def fake_kadid(root: Path, references: int = 8) -> Path:
    """dmos.csv (dist_img, ref_img, dmos, var) with two distorted copies per reference."""
    rows = []
    for r in range(references):
        ref = f"I{r + 1:02d}.png"
        make_photo(root / "images" / ref, seed=500 + r)
        for d, dmos in (("01_01", 4.2), ("01_05", 1.6)):
            name = f"I{r + 1:02d}_{d}.png"
            make_photo(root / "images" / name, seed=600 + 10 * r + int(d[-1]))
            rows.append([name, ref, dmos + 0.1 * r, 0.3])
    write_csv(root / "dmos.csv", ["dist_img", "ref_img", "dmos", "var"], rows)
    return root


def fake_data_root(root: Path) -> Path:
    """Every dataset the configs/ recipes name, under one --data-root."""
    fake_livec(root / "livec")
    fake_pristine(root / "pristine")
    fake_koniq(root / "koniq10k")
    fake_spaq(root / "SPAQ")
    fake_kadid(root / "kadid10k")
    return root


def tiny_overrides(cache_dir: Path, *, steps: int | None = 2, batch_size: int = 4) -> list[str]:
    """--set values that shrink any recipe to seconds on a CPU: random-init Lite0 at 64 px."""
    sets = [
        "model.pretrained=false",
        "model.head_hidden=16",
        "preprocessing={shorter_side: 64, max_longer_side: 128}",
        "augment.crop=48",
        f"optim.batch_size={batch_size}",
        "optim.warmup_steps=1",
        "synthetic.max_photos=2",
        "synthetic.groups_per_photo=1",
        "synthetic.groups_per_epoch=2",
        "eval.batch_size=4",
        "logging.tensorboard=false",
        f"cache_dir={cache_dir}",
    ]
    if steps:
        sets.append(f"optim.max_steps={steps}")
    return sets


def cli_args(*args: str, sets: list[str] = ()) -> list[str]:
    out = list(args)
    for value in sets:
        out += ["--set", value]
    return out


def train_tiny(recipe: str, run_dir: Path, data_root: Path, sets: list[str]) -> int:
    """`iqa train configs/<recipe>.yaml` on the fake releases, on one CPU thread; torch's
    thread count is restored afterwards. Returns the exit code."""
    import torch

    from iqa.inference.cli import main

    before = torch.get_num_threads()
    try:
        return main(cli_args("train", str(CONFIGS / f"{recipe}.yaml"), "--output", str(run_dir),
                             "--data-root", str(data_root), "--no-progress", "--device", "cpu",
                             "--threads", "1", sets=sets))
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def one_thread():
    """"1" for --threads; restores torch's thread count afterwards. Tiny tensors run faster
    on one thread, and only one thread makes CPU training bit-reproducible."""
    import torch

    before = torch.get_num_threads()
    yield "1"
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def fake_root(tmp_path_factory) -> Path:
    return fake_data_root(tmp_path_factory.mktemp("fake_releases"))


@pytest.fixture(scope="session")
def feature_cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("feature_cache")


@pytest.fixture(scope="session")
def levels_checkpoint(fake_root, feature_cache_dir, tmp_path_factory) -> Path:
    """best.pt of a two-step livec_levels run (multi-level pooling, level targets) on the
    fake releases, trained once for every test file that fits something after training.
    Each file writes its own outputs under its own names beside it."""
    run_dir = tmp_path_factory.mktemp("levels") / "run"
    assert train_tiny("livec_levels", run_dir, fake_root, tiny_overrides(feature_cache_dir)) == 0
    return run_dir / "best.pt"


def test_fake_releases_load_with_the_real_loaders(fake_root):
    from iqa.training.datasets import load_dataset, select_split

    assert len(load_dataset("livec", fake_root / "livec")) == 15
    koniq = load_dataset("koniq10k", fake_root / "koniq10k")
    assert [len(select_split(koniq, s)) for s in ("train", "val", "test")] == [8, 4, 2]
    assert len(load_dataset("spaq", fake_root / "SPAQ", images="TestImage_512")) == 15
    kadid = load_dataset("kadid10k", fake_root / "kadid10k")
    assert len({r.group for r in kadid}) == 8
