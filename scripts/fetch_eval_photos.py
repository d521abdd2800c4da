"""Fetch the full-resolution evaluation photos: textured 2560x1600 photos from Debian.

    python scripts/fetch_eval_photos.py            # apt-get download, into .cache/eval-photos/
    python scripts/fetch_eval_photos.py --deb plasma-workspace-wallpapers_*.deb

The photos come from Debian's ``plasma-workspace-wallpapers`` package (KDE Plasma's
wallpapers, LGPL-3.0; authors below and in each photo's ``metadata.json``). They are
camera photos of at least 2,000 px on the long side with fine texture, which the test set
otherwise lacks (its Wikimedia Commons photos are smaller). They are for **independent
evaluation only**: nothing may train, calibrate or select a model on them
(tests/test_shipped_model_fullres.py reads them; nothing in iqa.training does).

Nothing is committed: the photos land in ``.cache/eval-photos/plasma/`` (gitignored), with
a ``SOURCES.csv`` naming package, version, author and licence of each.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PACKAGE = "plasma-workspace-wallpapers"
# Wallpaper name -> why it is here. Textured camera photos only: the package's renders and
# its smooth, foggy or shallow-focus photos would not show what fine detail loses.
PHOTOS = {
    "EveningGlow": "boats on a shingle beach at dusk: wood grain, pebbles",
    "ColorfulCups": "stacked plastic cups: sharp rims, smooth gradients",
    "Grey": "architecture in black and white: fine regular lines",
    "OneStandsOut": "moss seen from above: dense fine texture",
    "Path": "forest path: foliage and bark",
}
DEFAULT_DIR = Path(".cache/eval-photos/plasma")


def download(into: Path) -> Path:
    """``apt-get download`` the package into ``into``; return the .deb."""
    if shutil.which("apt-get") is None:
        raise SystemExit("apt-get not found: download the package yourself and pass --deb")
    subprocess.run(["apt-get", "download", "-q", PACKAGE], cwd=into, check=True)
    debs = sorted(into.glob(f"{PACKAGE}_*.deb"))
    if not debs:
        raise SystemExit(f"apt-get download left no {PACKAGE}_*.deb in {into}")
    return debs[-1]


def _pixels(path: Path) -> int:
    width, height = path.stem.split("x")  # the package names each size WxH.jpg
    return int(width) * int(height)


def extract(deb: Path, out: Path) -> list[dict]:
    if shutil.which("dpkg-deb") is None:
        raise SystemExit("dpkg-deb not found: this script needs Debian's dpkg")
    version = subprocess.run(["dpkg-deb", "--field", str(deb), "Version"], check=True,
                             capture_output=True, text=True).stdout.strip()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["dpkg-deb", "-x", str(deb), tmp], check=True)
        root = Path(tmp) / "usr/share/wallpapers"
        out.mkdir(parents=True, exist_ok=True)
        for name, why in PHOTOS.items():
            images = sorted((root / name / "contents/images").glob("*.jpg"),
                            key=_pixels)
            if not images:
                raise SystemExit(f"{deb.name} has no {name} wallpaper: the package changed")
            meta = json.loads((root / name / "metadata.json").read_text())["KPlugin"]
            shutil.copyfile(images[-1], out / f"{name}.jpg")
            rows.append({"file": f"{name}.jpg", "size": images[-1].stem,
                         "author": "; ".join(a.get("Name", "") for a in meta.get("Authors", [])),
                         "licence": meta.get("License", ""),
                         "source": f"Debian {PACKAGE} {version}, "
                                   f"usr/share/wallpapers/{name}/contents/images/{images[-1].name}",
                         "content": why})
    with (out / "SOURCES.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deb", type=Path, help=f"an already downloaded {PACKAGE} .deb")
    parser.add_argument("--out", type=Path, default=DEFAULT_DIR, help="where the photos go")
    args = parser.parse_args(argv)
    if all((args.out / f"{n}.jpg").is_file() for n in PHOTOS):
        print(f"{len(PHOTOS)} photos already in {args.out}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        deb = args.deb or download(Path(tmp))
        rows = extract(deb, args.out)
    for row in rows:
        print(f"{args.out / row['file']}  {row['size']}  {row['licence']}  {row['author']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
