"""How much a JPEG's score moves when it is decoded at a reduced DCT scale.

`iqa` decodes large JPEGs at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling) to save time,
then resizes to the model's view. libjpeg's scaled decode filters differently from the
bicubic resize the model was trained behind, so a photo that the DCT shrinks to within a
small factor of the view scores lower than the same photo fully decoded. The script
also reports how much fine detail (Laplacian variance) the view keeps. This script measures
that gap for several reduction gaps (the decode stops at GAP times the view's shorter
side; `iqa.inference.preprocess.REDUCTION_GAP` is the one shipped), on JPEGs it makes
from a folder of photos: 1024x768 crops, and the photos resized to a long side of 2048,
3072 and 4096 px. No rating is used, so training photos are fine here.

    python scripts/decode_scale_gap.py ../shared/datasets/pristine/wikipedia \\
        --out docs/model/v2.1/decode_scale_gap.json
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from iqa.inference import QualityModel
from iqa.inference.decode import IMAGE_EXTENSIONS, decode_image
from iqa.inference.preprocess import REDUCTION_GAP, resize_for_model

SETTINGS = ["1024x768 crop", "long 2048", "long 3072", "long 4096"]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("photos", type=Path, help="folder of photos of 1024 px or more")
    parser.add_argument("--model", help="ONNX model (default: the shipped one)")
    parser.add_argument("--gaps", type=float, nargs="+", default=[1, 2, 3, 4],
                        help="reduction gaps to compare (1 = decode down to the view itself)")
    parser.add_argument("--per-setting", type=int, default=12,
                        help="photos per setting (default 12)")
    parser.add_argument("--quality", type=int, default=92, help="JPEG quality (default 92)")
    parser.add_argument("--settings", nargs="+", choices=SETTINGS, default=SETTINGS,
                        help="which JPEGs to make (default: all)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON")
    return parser.parse_args(argv)


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def make_jpegs(photo: Image.Image, setting: str, quality: int) -> bytes | None:
    """The JPEG of ``setting`` made from ``photo``, or None where it is too small."""
    width, height = photo.size
    if setting == "1024x768 crop":
        if height > width:
            photo = photo.transpose(Image.Transpose.ROTATE_90)
            width, height = photo.size
        if width < 1024 or height < 768:
            return None
        left, top = (width - 1024) // 2, (height - 768) // 2
        return _jpeg(photo.crop((left, top, left + 1024, top + 768)), quality)
    long_side = int(setting.split()[1])
    scale = long_side / max(width, height)
    size = (round(width * scale), round(height * scale))
    return _jpeg(photo.resize(size, Image.Resampling.LANCZOS), quality)


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.photos.is_dir():
        print(f"decode_scale_gap: {args.photos} is not a folder", file=sys.stderr)
        return 2
    files = sorted(p for p in args.photos.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        print(f"decode_scale_gap: no photos in {args.photos}", file=sys.stderr)
        return 2
    model = QualityModel(args.model, threads=1)
    prep = model.preprocessing
    report = {"model": model.path.name, "shipped_gap": REDUCTION_GAP,
              "quality": args.quality, "settings": {}}
    for setting in args.settings:
        gaps: dict[float, list[float]] = {g: [] for g in args.gaps}
        sharpness: dict[float, list[float]] = {g: [] for g in args.gaps}
        shipped: list[float] = []
        sizes: list[list[int]] = []
        for path in tqdm(files, desc=setting, unit="photo"):
            if len(sizes) == args.per_setting:
                break
            data = make_jpegs(decode_image(path), setting, args.quality)
            if data is None:
                continue
            full = Image.open(io.BytesIO(data))
            sizes.append(list(full.size))
            full = full.convert("RGB")
            reference = model.score(full).score
            shipped.append(model.score(data).score - reference)  # the path `iqa score` takes
            full_detail = laplacian_variance(resize_for_model(full, prep))
            view = min(prep.target_size(*full.size))
            for gap in args.gaps:
                reduced = decode_image(data, target_shorter_side=gap * view)
                gaps[gap].append(model.score(reduced).score - reference)
                sharpness[gap].append(
                    laplacian_variance(resize_for_model(reduced, prep)) / full_detail - 1)
        report["settings"][setting] = {
            "photos": len(sizes),
            "sizes": sorted({f"{w}x{h}" for w, h in sizes}),
            "score_as_file_minus_full_decode": gap_stats(shipped),
            "by_gap": {f"{g:g}": gap_stats(v) for g, v in gaps.items()},
            # The model's view's Laplacian variance, relative to the full decode's view.
            "view_detail_change_by_gap": {f"{g:g}": gap_stats(v) for g, v in sharpness.items()},
        }
    for setting, row in report["settings"].items():
        print(f"{setting} ({row['photos']} photos): score minus full decode, mean (lowest)")
        for gap, stats in row["by_gap"].items():
            detail = row["view_detail_change_by_gap"][gap]["mean"]
            print(f"  gap {gap}: {stats['mean']:+.4f} ({stats['min']:+.4f}); "
                  f"the view's Laplacian variance {detail:+.1%}")
        stats = row["score_as_file_minus_full_decode"]
        print(f"  as a file (gap {REDUCTION_GAP}): {stats['mean']:+.4f} ({stats['min']:+.4f})")
    if args.out:
        write_report(report, args.out)
    return 0


def laplacian_variance(image: Image.Image) -> float:
    """Variance of the 4-neighbour Laplacian of the luma: how much fine detail is left."""
    luma = np.asarray(image.convert("L"), dtype=np.float64)
    lap = (4 * luma[1:-1, 1:-1] - luma[:-2, 1:-1] - luma[2:, 1:-1]
           - luma[1:-1, :-2] - luma[1:-1, 2:])
    return float(lap.var())


def write_report(report: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


def gap_stats(values: list[float]) -> dict:
    """n, mean, min and max of score differences, rounded as the reports print them."""
    array = np.asarray(values, dtype=np.float64)
    if not array.size:
        return {"n": 0}
    return {"n": int(array.size), "mean": round(float(array.mean()), 4),
            "min": round(float(array.min()), 4), "max": round(float(array.max()), 4)}


if __name__ == "__main__":
    raise SystemExit(main())
