"""Draw a contact sheet: one photo across every distortion (rows) and severity (columns).

    python scripts/contact_sheet.py                      # writes docs/contact_sheet.jpg
    python scripts/contact_sheet.py --image my.jpg --tile 200 -o /tmp/sheet.png

Photos are distorted at the model's input scale (shorter side 384). Each cell shows the
whole frame, shrunk to the tile width, over a strip of it at 1:1 (the detail the model
sees: mild blur and noise vanish in a thumbnail). Light distortions are shown on a night
photo (``--night-image``), where they matter most, and once more on the day photo. Each
row uses one seed for all its columns, so it shows one random layout (flare, blur path)
getting stronger.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from iqa.training.augment import DISTORTIONS, distort_labelled

PRISTINE = Path("/work/shared/datasets/pristine")
SEVERITIES = (0.0, 0.25, 0.5, 0.75, 1.0)
WORKING_SIDE = 384
LABEL_WIDTH = 190
HEADER_HEIGHT = 28
DETAIL_HEIGHT = 64
GAP = 4


def load_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise SystemExit(f"cannot read image {path}")
    h, w = bgr.shape[:2]
    scale = WORKING_SIDE / min(h, w)
    bgr = cv2.resize(bgr, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def cell(image: np.ndarray, tile: int, detail_xy: tuple[float, float]) -> np.ndarray:
    """The frame shrunk to ``tile`` wide, over a 1:1 strip centred on ``detail_xy``."""
    h, w = image.shape[:2]
    thumb = cv2.resize(image, (tile, round(h * tile / w)), interpolation=cv2.INTER_AREA)
    x0 = int(np.clip(detail_xy[0] * w - tile / 2, 0, w - tile))
    y0 = int(np.clip(detail_xy[1] * h - DETAIL_HEIGHT / 2, 0, h - DETAIL_HEIGHT))
    detail = image[y0 : y0 + DETAIL_HEIGHT, x0 : x0 + tile]
    gap = np.full((2, tile, 3), 255, np.uint8)
    return np.vstack([thumb, gap, detail])


def put_text(canvas: np.ndarray, text: str, xy: tuple[int, int], size: float = 0.5) -> None:
    cv2.putText(canvas, text, xy, cv2.FONT_HERSHEY_SIMPLEX, size, (20, 20, 20), 1, cv2.LINE_AA)


def build_rows(photos: dict, seed: int) -> list[tuple[str, str, list, tuple[float, float]]]:
    """(row title, family, [(image, label) per severity], detail centre) for every row."""
    rows = []
    for name, distortion in DISTORTIONS.items():
        keys = ["night", "day"] if distortion.family == "light_distortion" else ["day"]
        for key in keys:
            photo, detail_xy = photos[key]
            cells = [
                distort_labelled(photo, name, severity, np.random.default_rng(seed))
                for severity in SEVERITIES
            ]
            title = f"{name} ({key})" if len(keys) > 1 else name
            rows.append((title, distortion.family, cells, detail_xy))
    return rows


def draw_sheet(rows, tile: int) -> np.ndarray:
    strips = []
    for title, family, cells, detail_xy in rows:
        tiles = [cell(out, tile, detail_xy) for out, _ in cells]
        height = max(t.shape[0] for t in tiles)
        strip = np.full((height + 18, LABEL_WIDTH + len(tiles) * (tile + GAP), 3), 255, np.uint8)
        put_text(strip, title, (6, height // 2), 0.55)
        put_text(strip, f"family: {family}", (6, height // 2 + 20), 0.42)
        for i, (image, (_, label)) in enumerate(zip(tiles, cells, strict=True)):
            x = LABEL_WIDTH + i * (tile + GAP)
            strip[: image.shape[0], x : x + tile] = image
            put_text(strip, f"label {label:.2f}", (x + 4, image.shape[0] + 13), 0.38)
        strips.append(strip)
    width = max(s.shape[1] for s in strips)
    header = np.full((HEADER_HEIGHT, width, 3), 255, np.uint8)
    put_text(header, "top: whole frame; below: 1:1 detail", (6, 20), 0.42)
    for i, severity in enumerate(SEVERITIES):
        put_text(header, f"severity {severity:.2f}", (LABEL_WIDTH + i * (tile + GAP) + 4, 20), 0.5)
    return np.vstack([header, *strips])


def parse_xy(text: str) -> tuple[float, float]:
    x, y = (float(v) for v in text.split(","))
    return x, y


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image", type=Path, default=PRISTINE / "kodak24" / "kodim21.png")
    parser.add_argument("--night-image", type=Path, default=PRISTINE / "wikipedia" / "003.jpg")
    parser.add_argument(
        "--detail", type=parse_xy, default=(0.25, 0.55), help="x,y of the 1:1 strip (0..1)"
    )
    parser.add_argument("--night-detail", type=parse_xy, default=(0.35, 0.3))
    parser.add_argument("-o", "--out", type=Path, default=Path("docs/contact_sheet.jpg"))
    parser.add_argument("--tile", type=int, default=240, help="tile width in pixels")
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args(argv)

    photos = {
        "day": (load_rgb(args.image), args.detail),
        "night": (load_rgb(args.night_image), args.night_detail),
    }
    sheet = draw_sheet(build_rows(photos, args.seed), args.tile)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    bgr = cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)
    if args.out.suffix.lower() in (".jpg", ".jpeg"):
        params = [cv2.IMWRITE_JPEG_QUALITY, 92]
    else:
        params = [cv2.IMWRITE_PNG_COMPRESSION, 9]
    if not cv2.imwrite(str(args.out), bgr, params):
        raise SystemExit(f"cannot write {args.out}")
    print(f"wrote {args.out} ({sheet.shape[1]}x{sheet.shape[0]}, {args.out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
