"""How an embedded colour profile moves the score: photos re-encoded in Adobe RGB (1998)
and Display P3, scored as JPEG files tagged with their profile (read through it, as
`iqa` does since 0.3.2) and untagged (the same pixels read as sRGB, as before), against
the sRGB original.

The profiles are built here (ICC v2 matrix/TRC profiles from the published primaries), so
no profile file has to ship; the re-encoding is done in numpy, not by LittleCMS, so the
round trip checks the profile and the conversion rather than LittleCMS against itself.
No rating is used, so training photos are fine here.

    python scripts/colour_profile_gap.py ../shared/datasets/pristine/kodak24 \\
        --out docs/model/v2.1/colour_profile_gap.json
"""

from __future__ import annotations

import argparse
import io
import struct
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode_scale_gap import gap_stats, write_report  # noqa: E402

from iqa.inference import QualityModel  # noqa: E402
from iqa.inference.decode import IMAGE_EXTENSIONS, decode_image  # noqa: E402

# Linear RGB -> XYZ (D65) of each space, from its primaries; and the encoding gamma.
SPACES = {
    "adobe_rgb": {
        "to_xyz": [[0.5767309, 0.1855540, 0.1881852],
                   [0.2973769, 0.6273491, 0.0752741],
                   [0.0270343, 0.0706872, 0.9911085]],
        "gamma": 563 / 256,  # 2.19921875, the u8Fixed8 value of the specification
        "name": "Adobe RGB (1998) compatible",
    },
    "display_p3": {
        "to_xyz": [[0.4865709, 0.2656677, 0.1982173],
                   [0.2289746, 0.6917385, 0.0792869],
                   [0.0000000, 0.0451134, 1.0439444]],
        "gamma": "srgb",  # P3 uses sRGB's transfer curve, sampled in the profile
        "name": "Display P3 compatible",
    },
}
SRGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                        [0.2126729, 0.7151522, 0.0721750],
                        [0.0193339, 0.1191920, 0.9503041]])
# Bradford adaptation D65 -> D50: ICC profiles state their colourants under D50.
D65_TO_D50 = np.array([[1.0478112, 0.0228866, -0.0501270],
                       [0.0295424, 0.9904844, -0.0170491],
                       [-0.0092345, 0.0150436, 0.7521316]])
D50 = (0.9642, 1.0, 0.8249)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("photos", type=Path, help="folder of sRGB photos")
    parser.add_argument("--model", help="ONNX model (default: the shipped one)")
    parser.add_argument("--limit", type=int, default=24, help="photos to use (default 24)")
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality (default 95)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON")
    return parser.parse_args(argv)


def _s15f16(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _xyz_tag(xyz) -> bytes:
    return b"XYZ " + bytes(4) + b"".join(_s15f16(v) for v in xyz)


def _curve_tag(gamma) -> bytes:
    """curveType: one gamma, or sRGB's piecewise curve sampled at 1024 points (ICC v2 has
    no parametric curves)."""
    if gamma == "srgb":
        x = np.linspace(0.0, 1.0, 1024)
        y = np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)
        table = np.rint(y * 65535).astype(">u2").tobytes()
        return b"curv" + bytes(4) + struct.pack(">I", 1024) + table
    return b"curv" + bytes(4) + struct.pack(">IH", 1, round(gamma * 256))


def _desc_tag(text: str) -> bytes:
    ascii_text = text.encode("ascii") + b"\0"
    return (b"desc" + bytes(4) + struct.pack(">I", len(ascii_text)) + ascii_text
            + struct.pack(">II", 0, 0) + struct.pack(">HB", 0, 0) + bytes(67))


def _text_tag(text: str) -> bytes:
    return b"text" + bytes(4) + text.encode("ascii") + b"\0"


def matrix_profile(to_xyz, gamma, name: str) -> bytes:
    """An ICC v2 display profile (matrix/TRC) from a linear RGB -> XYZ (D65) matrix and a
    transfer curve (a gamma, or "srgb"), as bytes. The colourants are adapted to D50, as
    the PCS needs, and the media white point is given as D50, which relative intent
    (the one iqa uses) treats the same as the device white."""
    colourants = D65_TO_D50 @ np.asarray(to_xyz)  # columns: R, G, B under D50
    curve = _curve_tag(gamma)
    tags = [(b"desc", _desc_tag(name)), (b"cprt", _text_tag("No copyright, use freely")),
            (b"wtpt", _xyz_tag(D50)),
            (b"rXYZ", _xyz_tag(colourants[:, 0])), (b"gXYZ", _xyz_tag(colourants[:, 1])),
            (b"bXYZ", _xyz_tag(colourants[:, 2])),
            (b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve)]
    offset = 128 + 4 + 12 * len(tags)
    table, data = b"", b""
    for signature, body in tags:
        # The tag table records each tag's own size; the padding only aligns the next one.
        table += signature + struct.pack(">II", offset + len(data), len(body))
        data += body + bytes(-len(body) % 4)
    size = offset + len(data)
    header = (struct.pack(">I", size) + bytes(4) + struct.pack(">I", 0x02100000)
              + b"mntrRGB XYZ " + bytes(12) + b"acsp" + bytes(24)
              + struct.pack(">I", 0) + b"".join(map(_s15f16, D50)) + bytes(48))
    return header + struct.pack(">I", len(tags)) + table + data


def icc_profile(space: str) -> bytes:
    """The ICC v2 profile of ``space`` (a key of SPACES), as bytes."""
    spec = SPACES[space]
    return matrix_profile(spec["to_xyz"], spec["gamma"], spec["name"])


def encode_in(rgb: np.ndarray, space: str) -> np.ndarray:
    """sRGB uint8 pixels re-encoded in ``space`` (the same colours, other numbers)."""
    spec = SPACES[space]
    values = rgb.astype(np.float64) / 255.0
    linear = np.where(values <= 0.04045, values / 12.92, ((values + 0.055) / 1.055) ** 2.4)
    to_space = np.linalg.inv(np.asarray(spec["to_xyz"])) @ SRGB_TO_XYZ
    out = np.clip(linear @ to_space.T, 0.0, 1.0)
    if spec["gamma"] == "srgb":
        out = np.where(out <= 0.0031308, 12.92 * out, 1.055 * out ** (1 / 2.4) - 0.055)
    else:
        out = out ** (1 / spec["gamma"])
    return np.rint(out * 255.0).astype(np.uint8)


def jpeg(pixels: np.ndarray, quality: int, icc: bytes | None = None) -> bytes:
    buffer = io.BytesIO()
    options = {"icc_profile": icc} if icc else {}
    Image.fromarray(pixels).save(buffer, "JPEG", quality=quality, **options)
    return buffer.getvalue()


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.photos.is_dir():
        print(f"colour_profile_gap: {args.photos} is not a folder", file=sys.stderr)
        return 2
    files = sorted(p for p in args.photos.iterdir()
                   if p.suffix.lower() in IMAGE_EXTENSIONS)[:args.limit]
    if not files:
        print(f"colour_profile_gap: no photos in {args.photos}", file=sys.stderr)
        return 2
    model = QualityModel(args.model, threads=1)
    rows = {space: {"tagged": [], "untagged": [], "pixel_error": []} for space in SPACES}
    for path in tqdm(files, desc="photos", unit="photo"):
        original = np.asarray(decode_image(path))
        reference = model.score(jpeg(original, args.quality)).score
        for space, row in rows.items():
            pixels = encode_in(original, space)
            tagged = jpeg(pixels, args.quality, icc_profile(space))
            row["tagged"].append(model.score(tagged).score - reference)
            row["untagged"].append(model.score(jpeg(pixels, args.quality)).score - reference)
            back = np.asarray(decode_image(tagged), dtype=np.float64)
            row["pixel_error"].append(float(np.abs(back - original).mean()))
    report = {"model": model.path.name, "photos": len(files), "quality": args.quality,
              "spaces": {space: {key: gap_stats(values) for key, values in row.items()}
                         for space, row in rows.items()}}
    for space, row in report["spaces"].items():
        print(f"{space}: score minus the sRGB original, mean (lowest, highest)")
        for key in ("tagged", "untagged"):
            stats = row[key]
            print(f"  {key:8s} {stats['mean']:+.4f} ({stats['min']:+.4f}, {stats['max']:+.4f})")
        print(f"  decoded pixels vs the original: {row['pixel_error']['mean']:.2f}/255 "
              "mean absolute difference")
    if args.out:
        write_report(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
