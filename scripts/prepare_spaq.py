#!/usr/bin/env python
"""Resize SPAQ's full-resolution photos so the shorter side is 512 px (as in the SPAQ paper).

    python scripts/prepare_spaq.py /data/SPAQ --workers 2
    # then: load_dataset("spaq", "/data/SPAQ", images="TestImage_512")

Reads ROOT/TestImage/, writes ROOT/TestImage_512/ with the same file names and formats.
EXIF orientation is applied to the pixels first (the raters saw the photos upright), so
the outputs carry no orientation tag. Images already no larger than the target are
re-saved upright, never upscaled. Existing outputs are skipped unless --overwrite, so an
interrupted run resumes. Needs only Pillow and tqdm.
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image, ImageOps
from tqdm import tqdm

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
JPEG_QUALITY = 95


def resize_one(source: Path, target: Path, shorter_side: int, overwrite: bool = False) -> str:
    """Write ``source`` to ``target`` upright with shorter side <= ``shorter_side``.

    Returns "written" or "skipped"; raises OSError on an unreadable image.
    """
    if target.exists() and not overwrite:
        return "skipped"
    with Image.open(source) as opened:
        image = ImageOps.exif_transpose(opened)
        icc_profile = opened.info.get("icc_profile")
        scale = shorter_side / min(image.size)
        if scale < 1:
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            # Bicubic with Pillow's antialiasing: the same filter the model's preprocessing uses.
            image = image.resize(size, Image.Resampling.BICUBIC)
        options: dict = {"icc_profile": icc_profile} if icc_profile else {}
        if target.suffix.lower() in {".jpg", ".jpeg"}:
            image = image.convert("RGB") if image.mode not in {"RGB", "L"} else image
            options.update(quality=JPEG_QUALITY, subsampling=0)
        # Write to a temporary name first so an interrupted run leaves no half-written file
        # that a resumed run would skip.
        partial = target.with_name(target.name + ".partial")
        # The format follows the file name: phone JPEGs may open as "MPO", which is no
        # format to write them back in.
        image.save(partial, format=Image.registered_extensions()[target.suffix.lower()], **options)
    partial.replace(target)
    return "written"


def _resize_task(job: tuple[Path, Path, int, bool]) -> tuple[Path, str | None]:
    source, target, shorter_side, overwrite = job
    try:
        return source, resize_one(source, target, shorter_side, overwrite)
    except Exception as exc:  # report every failure at the end instead of stopping the run
        return source, f"error: {exc}"


def prepare_spaq(root: Path, src: str = "TestImage", dst: str | None = None,
                 shorter_side: int = 512, workers: int = 1, overwrite: bool = False,
                 progress: bool = True) -> dict[str, list[Path]]:
    """Resize every image of ``root/src`` into ``root/dst``; returns paths by outcome."""
    source_dir = Path(root) / src
    target_dir = Path(root) / (dst or f"{src}_{shorter_side}")
    if not source_dir.is_dir():
        raise FileNotFoundError(f"SPAQ image folder not found: {source_dir}")
    if target_dir.resolve() == source_dir.resolve():
        raise ValueError("the output folder must differ from the input folder")
    target_dir.mkdir(parents=True, exist_ok=True)
    sources = sorted(p for p in source_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    jobs = [(p, target_dir / p.name, shorter_side, overwrite) for p in sources]

    outcomes: dict[str, list[Path]] = {"written": [], "skipped": [], "failed": []}
    bar = tqdm(total=len(jobs), unit="img", desc=f"{src} -> {target_dir.name}", disable=not progress)
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = pool.map(_resize_task, jobs, chunksize=16)
            _collect(results, outcomes, bar)
    else:
        _collect(map(_resize_task, jobs), outcomes, bar)
    bar.close()
    return outcomes


def _collect(results, outcomes: dict[str, list[Path]], bar: tqdm) -> None:
    for source, outcome in results:
        if outcome in ("written", "skipped"):
            outcomes[outcome].append(source)
        else:
            outcomes["failed"].append(source)
            bar.write(f"{source}: {outcome}")
        bar.update()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="SPAQ folder (holds TestImage/)")
    parser.add_argument("--src", default="TestImage", help="input folder under ROOT")
    parser.add_argument("--dst", default=None, help="output folder under ROOT (default SRC_SIDE)")
    parser.add_argument("--shorter-side", type=int, default=512)
    parser.add_argument("--workers", type=int, default=1, help="processes to resize with")
    parser.add_argument("--overwrite", action="store_true", help="redo existing outputs")
    args = parser.parse_args(argv)
    if args.shorter_side < 1 or args.workers < 1:
        parser.error("--shorter-side and --workers must be positive")
    try:
        outcomes = prepare_spaq(args.root, args.src, args.dst, args.shorter_side, args.workers,
                                args.overwrite)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"written {len(outcomes['written'])}, skipped {len(outcomes['skipped'])} (already there), "
          f"failed {len(outcomes['failed'])}")
    return 1 if outcomes["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
