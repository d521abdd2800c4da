"""synthetic.subsets restricts the pristine photos to named collections (licence control)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("torch")

from iqa.training.config import ConfigError  # noqa: E402
from iqa.training.data import list_photos  # noqa: E402


def _photos(root):
    for folder, n in (("kodak24", 2), ("bsds500", 3), ("wikipedia", 1)):
        (root / folder).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((8, 8, 3), i * 40, np.uint8)).save(root / folder / f"{i}.png")
    return root


def test_subsets_keep_only_the_named_collections(tmp_path):
    root = _photos(tmp_path)
    assert len(list_photos(root)) == 6
    kept = list_photos(root, subsets=["kodak24", "wikipedia"])
    assert [p.parent.name for p in kept] == ["kodak24", "kodak24", "wikipedia"]


def test_unknown_subset_is_a_clear_error(tmp_path):
    root = _photos(tmp_path)
    with pytest.raises(ConfigError, match="no such folder.*mcmaster"):
        list_photos(root, subsets=["kodak24", "mcmaster"])
