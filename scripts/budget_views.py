"""Which photos of a folder a pixel budget shows differently from the plain policy.

    python scripts/budget_views.py ../shared/datasets/livec/images --shorter-side 448 \
        --pixel-budget 196608

A network trained at a shorter side S without a budget and served with one (`iqa
calibrate --pixel-budget`) sees a photo exactly as in training when the budget leaves its
view alone. For LIVE Challenge (870 photos of 500 x 500, one of 608 x 608) none changes at
448 px and 384 x 512 pixels, so the 448 px CV is also the budget-served model's CV
(MODEL_CARD.md, "Training at 448 px, serving under the budget"). Only the image headers
are read (Pillow opens lazily), so a folder of thousands takes seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path


def compare(paths, plain, budgeted):
    """(sizes seen, photos whose view changes as (name, size, plain view, budget view),
    files that are not images)."""
    from PIL import Image, UnidentifiedImageError

    sizes, changed, unreadable = Counter(), [], []
    for path in paths:
        try:
            with Image.open(path) as image:
                size = image.size
        except (UnidentifiedImageError, OSError):
            unreadable.append(path.name)
            continue
        sizes[size] += 1
        views = plain.target_size(*size), budgeted.target_size(*size)
        if views[0] != views[1]:
            changed.append((path.name, size, *views))
    return sizes, changed, unreadable


def main(argv: list[str] | None = None) -> int:
    from iqa.inference.contract import Preprocessing

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="folder of photos (not recursive)")
    parser.add_argument("--shorter-side", type=int, required=True,
                        help="the policy's shorter side, e.g. 448")
    parser.add_argument("--pixel-budget", type=int, required=True,
                        help="the serving budget in pixels, e.g. 196608 (384 x 512)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        parser.error(f"not a folder: {args.folder}")
    try:
        plain = Preprocessing(shorter_side=args.shorter_side)
        budgeted = Preprocessing(shorter_side=args.shorter_side, pixel_budget=args.pixel_budget)
    except ValueError as exc:
        parser.error(str(exc))
    paths = sorted(p for p in args.folder.iterdir() if p.is_file())
    sizes, changed, unreadable = compare(paths, plain, budgeted)
    report = {"photos": sum(sizes.values()), "changed": len(changed),
              "sizes": {f"{w}x{h}": n for (w, h), n in sizes.most_common()},
              "changed_photos": [{"name": n, "size": list(s), "plain": list(a), "budget": list(b)}
                                 for n, s, a, b in changed],
              "unreadable": unreadable}
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(f"{report['photos']} photos; sizes: "
              + ", ".join(f"{k} ({n})" for k, n in report["sizes"].items()))
        print(f"views changed by a budget of {args.pixel_budget:,} pixels at shorter side "
              f"{args.shorter_side}: {len(changed)}")
        for name, size, a, b in changed[:20]:
            print(f"  {name}: {size[0]}x{size[1]} seen at {a[0]}x{a[1]}, under the budget "
                  f"at {b[0]}x{b[1]}")
        if unreadable:
            print(f"not images, skipped: {len(unreadable)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
