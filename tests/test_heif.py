"""HEIF/HEIC photos (the iPhone's format), read with the optional pi-heif (`iqa[heif]`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from iqa.inference import QualityModel
from iqa.inference import decode as decode_module
from iqa.inference.cli import main
from iqa.inference.cli_score import collect_sources
from iqa.inference.decode import decode_image
from iqa.inference.errors import ImageDecodeError, TruncatedImageError

DATA = Path(__file__).parent / "data"  # how they were made: tests/data/README.md
HEIC = DATA / "astronaut.heic"
ROTATED = DATA / "astronaut_rotated.heic"

needs_heif = pytest.mark.skipif("HEIF" not in decode_module.ALLOWED_FORMATS,
                                reason='needs pi-heif (pip install "iqa[heif]")')


@needs_heif
def test_a_heic_photo_decodes_upright(photo):
    out = np.asarray(decode_image(HEIC), dtype=float)
    assert out.shape == photo.shape
    assert np.abs(out - photo).mean() < 4  # quality 50: HEVC's loss, nothing else
    # Saved from a 384 x 512 crop with EXIF orientation 6 (turn clockwise to view).
    rotated = np.asarray(decode_image(ROTATED), dtype=float)
    assert rotated.shape == (384, 512, 3)
    assert np.abs(rotated - np.rot90(photo[:, :384], -1)).mean() < 4


@needs_heif
def test_a_heic_photo_is_scored_like_the_photo(photo, tmp_path, capsys):
    model = QualityModel()
    from_heic = model.score(HEIC.read_bytes()).score
    assert from_heic == pytest.approx(model.score(photo).score, abs=0.05)
    folder = tmp_path / "phone"
    folder.mkdir()
    (folder / "IMG_0001.HEIC").write_bytes(HEIC.read_bytes())
    assert collect_sources([str(folder)]) == [str(folder / "IMG_0001.HEIC")]
    assert main(["score", str(folder), "--format", "csv"]) == 0
    assert "IMG_0001.HEIC" in capsys.readouterr().out


@needs_heif
def test_a_heic_cut_short_is_an_error_not_a_crash():
    data = HEIC.read_bytes()
    with pytest.raises(TruncatedImageError, match="ends early"):
        decode_image(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError, match="HEIF/HEIC photo that cannot be read"):
        decode_image(data[:200])


def test_without_pi_heif_a_heic_names_the_install(monkeypatch):
    formats = tuple(f for f in decode_module.ALLOWED_FORMATS if f != "HEIF")
    monkeypatch.setattr(decode_module, "ALLOWED_FORMATS", formats)
    with pytest.raises(ImageDecodeError, match=r'needs pi-heif: pip install "iqa\[heif\]"'):
        decode_image(HEIC.read_bytes())
