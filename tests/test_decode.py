"""decode_image: every pixel mode to RGB, orientation, animation, and hostile inputs."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps

from iqa.inference.decode import DEFAULT_MIN_SIDE, decode_image
from iqa.inference.errors import (
    ImageDecodeError,
    ImageTooLargeError,
    ImageTooSmallError,
    TruncatedImageError,
)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header(width: int, height: int, bit_depth: int = 1, colour_type: int = 0) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)


@pytest.fixture(scope="module")
def photo_jpeg(photo) -> bytes:
    return encode(Image.fromarray(photo), "JPEG", quality=90)


# ----------------------------------------------------------------------------- sources


def test_every_kind_of_source_decodes_to_the_same_rgb(photo, tmp_path):
    png = encode(Image.fromarray(photo), "PNG")
    path = tmp_path / "astronaut.png"
    path.write_bytes(png)
    sources = [
        path,
        str(path),
        png,
        bytearray(png),
        memoryview(png),
        memoryview(np.stack([np.frombuffer(png, np.uint8)] * 2, 1)[:, 0]),  # a strided view
        io.BytesIO(png),
        Image.open(io.BytesIO(png)),
        photo,
    ]
    for source in sources:
        image = decode_image(source)
        assert image.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(image), photo)


def test_numpy_grey_and_rgba_arrays():
    grey = np.full((20, 30), 77, np.uint8)
    out = np.asarray(decode_image(grey))
    assert out.shape == (20, 30, 3) and (out == 77).all()
    assert np.asarray(decode_image(grey[:, :, None])).shape == (20, 30, 3)
    rgba = np.zeros((20, 30, 4), np.uint8)  # fully transparent black
    assert (np.asarray(decode_image(rgba)) == 255).all()


def test_numpy_arrays_of_the_wrong_kind_are_refused():
    with pytest.raises(ImageDecodeError, match="uint8"):
        decode_image(np.zeros((20, 20, 3), np.float32))
    with pytest.raises(ImageDecodeError, match="shape"):
        decode_image(np.zeros((20, 20, 2), np.uint8))


def test_caller_pil_image_is_not_modified(photo):
    original = Image.fromarray(photo).convert("RGBA")
    out = decode_image(original)
    assert original.mode == "RGBA" and out.mode == "RGB"


# ------------------------------------------------------------------------------- modes


def test_grey_palette_and_bilevel_modes():
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[:, 8:] = (200, 40, 10)
    grey = decode_image(encode(Image.fromarray(rgb[:, :, 0], "L"), "PNG"))
    assert np.asarray(grey)[0, 15].tolist() == [200, 200, 200]
    palette = decode_image(encode(Image.fromarray(rgb).quantize(4), "GIF"))
    assert np.asarray(palette)[0, 15].tolist() == [200, 40, 10]
    bilevel = decode_image(encode(Image.fromarray(rgb[:, :, 0] > 0).convert("1"), "PNG"))
    assert np.asarray(bilevel)[0, 0].tolist() == [0, 0, 0]
    assert np.asarray(bilevel)[0, 15].tolist() == [255, 255, 255]


def test_transparency_is_composited_over_white():
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[:, :, 0] = 200
    rgba[:, 8:, 3] = 255  # left half transparent, right half opaque red
    out = np.asarray(decode_image(encode(Image.fromarray(rgba, "RGBA"), "PNG")))
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[0, 15].tolist() == [200, 0, 0]

    la = np.stack([np.full((16, 16), 0, np.uint8), np.full((16, 16), 128, np.uint8)], axis=2)
    grey = np.asarray(decode_image(encode(Image.fromarray(la, "LA"), "PNG")))
    assert abs(int(grey[0, 0, 0]) - 127) <= 1  # half-transparent black over white

    two_colours = rgba[:, :, :3].copy()
    two_colours[:, :8] = (0, 0, 255)  # blue where the palette entry will be transparent
    paletted = Image.fromarray(two_colours).quantize(2)
    transparent_index = paletted.getpixel((0, 0))
    gif = encode(paletted, "GIF", transparency=transparent_index)
    out = np.asarray(decode_image(gif))
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[0, 15].tolist() == [200, 0, 0]


def test_cmyk_jpeg():
    cmyk = Image.new("CMYK", (16, 16), (0, 0, 0, 0))  # no ink: white
    cmyk.paste((0, 255, 255, 0), (8, 0, 16, 16))  # magenta + yellow ink: red
    out = np.asarray(decode_image(encode(cmyk, "JPEG", quality=95)))
    assert out.shape == (16, 16, 3)
    assert (out[:, :4] > 240).all()
    assert out[8, 14, 0] > 230 and out[8, 14, 1] < 25 and out[8, 14, 2] < 25


def test_16_bit_png_is_scaled_over_its_full_range_not_clipped():
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    data = encode(Image.fromarray(ramp), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    out = np.asarray(decode_image(data))[:, :, 0]
    expected = np.rint(ramp / 257.0)
    assert np.abs(out.astype(int) - expected).max() <= 1
    assert out.min() == 0 and out.max() == 255 and len(np.unique(out)) == 256

    # A dark 16-bit photo stays dark: its exposure is part of its quality.
    dark = (ramp // 64).astype(np.uint16)  # max 1023 of 65535
    assert np.asarray(decode_image(encode(Image.fromarray(dark), "PNG"))).max() <= 4


def test_32_bit_int_and_float_tiffs():
    ints = np.arange(64 * 64, dtype=np.int32).reshape(64, 64) * 16  # up to 65520: 16-bit data
    out = np.asarray(decode_image(encode(Image.fromarray(ints), "TIFF")))[:, :, 0]
    assert np.abs(out.astype(int) - np.rint(ints / 257.0)).max() <= 1

    floats = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    image = Image.fromarray(floats)
    assert image.mode == "F"
    out = np.asarray(decode_image(encode(image, "TIFF")))[:, :, 0]
    assert np.abs(out.astype(int) - np.rint(floats * 255)).max() <= 1


# ------------------------------------------------------------------- geometry and frames


def test_exif_orientation_is_applied():
    pixels = np.zeros((20, 40, 3), np.uint8)  # stored landscape, 40 wide
    pixels[:5, :5] = 255  # a white mark at the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display", as phones write portrait photos
    data = encode(Image.fromarray(pixels), "JPEG", exif=exif.tobytes(), quality=95)
    out = np.asarray(decode_image(data))
    assert out.shape == (40, 20, 3)  # displayed portrait
    assert out[:5, -5:].mean() > 200 and out[:5, :5].mean() < 50  # mark now top-right


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_every_exif_orientation_matches_pillows_transpose(photo, orientation, fmt):
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(Image.fromarray(photo[:40, :60]), fmt, exif=exif.tobytes())
    expected = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    assert np.array_equal(np.asarray(decode_image(data)), np.asarray(expected))


def test_animated_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=50)
    out = np.asarray(decode_image(buffer.getvalue()))
    assert out[8, 8].tolist() == [255, 0, 0]


def test_jpeg_draft_decodes_smaller_but_never_below_the_target(photo):
    big = Image.fromarray(photo).resize((2048, 1536), Image.Resampling.BILINEAR)
    data = encode(big, "JPEG", quality=85)
    full = decode_image(data)
    drafted = decode_image(data, target_shorter_side=300)
    assert full.size == (2048, 1536)
    assert 300 <= min(drafted.size) < 1536
    assert drafted.size[0] / drafted.size[1] == pytest.approx(2048 / 1536, rel=0.01)
    # Too large a target for any reduction: full size.
    assert decode_image(data, target_shorter_side=1000).size == (2048, 1536)


# ---------------------------------------------------------------------- hostile inputs


def test_truncated_jpeg_and_png_raise_truncated(photo, photo_jpeg, monkeypatch):
    png = encode(Image.fromarray(photo), "PNG")
    # Even when another library switched Pillow's lenient mode on process-wide.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    for data in (photo_jpeg[: len(photo_jpeg) // 2], png[: len(png) // 2]):
        with pytest.raises(TruncatedImageError):
            decode_image(data)


def _jpeg_cut_and_closed(data: bytes, keep: float) -> bytes:
    """The first ``keep`` of a JPEG's bytes, closed with an end-of-image marker."""
    return data[: int(len(data) * keep)] + b"\xff\xd9"


def test_jpeg_cut_short_but_closed_is_truncated_not_half_grey(photo):
    # Pillow decodes such a file without complaint and fills the lost rows with flat
    # blocks; the score of that picture would be reported as the photo's.
    data = encode(Image.fromarray(photo), "JPEG", quality=90)
    for keep in (0.3, 0.7, 0.95):
        with pytest.raises(TruncatedImageError, match="ends early"):
            decode_image(_jpeg_cut_and_closed(data, keep))
        with pytest.raises(TruncatedImageError):
            decode_image(_jpeg_cut_and_closed(data, keep), target_shorter_side=64)
    grey = encode(Image.fromarray(photo[:, :, 1], "L"), "JPEG", quality=90)
    with pytest.raises(TruncatedImageError):
        decode_image(_jpeg_cut_and_closed(grey, 0.5))


def test_caller_file_object_is_left_usable_after_a_jpeg_decode(photo):
    # The decoder reads an in-memory upload through its buffer, not a copy; that view
    # must be let go, or the caller's close() would fail with BufferError.
    data = encode(Image.fromarray(photo), "JPEG", quality=90)
    upload = io.BytesIO(data)
    assert np.array_equal(np.asarray(decode_image(upload)), np.asarray(decode_image(data)))
    upload.write(b"appended")  # resizing needs every export released
    upload.close()
    cut = io.BytesIO(_jpeg_cut_and_closed(data, 0.5))
    with pytest.raises(TruncatedImageError) as refused:
        decode_image(cut)
    cut.close()  # while the exception, and the decoder's frame in its traceback, live on
    assert refused.value.__traceback__ is not None


def test_jpeg_cut_inside_its_header_is_truncated(photo_jpeg):
    for size in (200, 300):
        with pytest.raises(TruncatedImageError, match="ends early"):
            decode_image(photo_jpeg[:size])


def test_jpeg_with_damaged_entropy_data_is_refused(photo_jpeg):
    start = photo_jpeg.index(b"\xff\xda")  # start of scan: entropy-coded data follows
    damaged = bytearray(photo_jpeg)
    middle = (start + len(damaged)) // 2
    damaged[middle:middle + 64] = b"\xff\xd5" * 32  # RST markers where data should be
    with pytest.raises((ImageDecodeError, TruncatedImageError)):
        decode_image(bytes(damaged))


def test_jpeg_with_extra_bytes_before_its_end_marker_still_decodes(photo, photo_jpeg):
    # Some cameras write padding before the end marker; libjpeg warns, no pixel is lost.
    padded = photo_jpeg[:-2] + b"\x00" * 16 + photo_jpeg[-2:]
    assert np.array_equal(np.asarray(decode_image(padded)), np.asarray(decode_image(photo_jpeg)))


@pytest.mark.parametrize("size", [(2048, 1536), (1001, 333), (640, 480), (37, 29)])
@pytest.mark.parametrize("target", [None, 64, 300, 500])
def test_jpeg_pixels_and_scaling_are_pillows_own(photo, size, target):
    # The strict decoder must hand the model the pixels Pillow's draft gave, in training
    # and at serving alike: same DCT scale, same colour conversion, bit for bit.
    data = encode(Image.fromarray(photo).resize(size), "JPEG", quality=88)
    reference = Image.open(io.BytesIO(data))
    if target:
        reference.draft(None, (target, target))
    reference.load()
    out = decode_image(data, target_shorter_side=target)
    assert out.size == reference.size
    assert np.array_equal(np.asarray(out), np.asarray(reference.convert("RGB")))


def test_zero_bytes_text_and_svg_are_decode_errors(tmp_path):
    with pytest.raises(ImageDecodeError, match="0 bytes"):
        decode_image(b"")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageDecodeError, match="empty.jpg"):
        decode_image(empty)
    text = tmp_path / "notes.jpg"
    text.write_text("this is not a photo\n")
    with pytest.raises(ImageDecodeError, match=r"notes\.jpg.*text"):
        decode_image(text)
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>'
    with pytest.raises(ImageDecodeError, match="SVG"):
        decode_image(svg)
    with pytest.raises(ImageDecodeError, match="missing.png"):
        decode_image(tmp_path / "missing.png")


def test_errors_name_the_upload_when_given_a_name():
    with pytest.raises(ImageDecodeError, match="upload.jpg"):
        decode_image(b"hello", name="upload.jpg")


def test_tiny_images_are_too_small():
    with pytest.raises(ImageTooSmallError, match="1x1"):
        decode_image(encode(Image.new("RGB", (1, 1)), "PNG"))
    side = DEFAULT_MIN_SIDE
    assert decode_image(encode(Image.new("RGB", (side, side)), "PNG")).size == (side, side)
    with pytest.raises(ImageTooSmallError):
        decode_image(np.zeros((side - 1, 100, 3), np.uint8))
    assert decode_image(np.zeros((4, 4, 3), np.uint8), min_side=2).size == (4, 4)


def test_png_bomb_is_refused_without_decoding_it():
    # A real, valid 30,000 x 30,000 bilevel PNG of ~100 kB: 900 megapixels if decoded.
    width = height = 30_000
    row = b"\x00" + bytes((width + 7) // 8)
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    bomb = png_header(width, height) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")
    assert len(bomb) < 1_000_000
    with pytest.raises(ImageTooLargeError):
        decode_image(bomb)
    with pytest.raises(ImageTooLargeError):
        decode_image(bomb, max_pixels=None)  # Pillow's own limit stays as a backstop


def test_pixel_limit_is_checked_on_the_header_before_any_pixel_is_read():
    # A header claiming 9000 x 9000 (81 MP, under Pillow's own limit) with no pixel data.
    header_only = png_header(9000, 9000) + png_chunk(b"IEND", b"")
    with pytest.raises(ImageTooLargeError, match="81.0 MP"):
        decode_image(header_only)
    with pytest.raises(ImageTooLargeError):
        decode_image(header_only, max_pixels=1_000_000)
    # Without the limit, the decoder finds out there is no pixel data at all.
    with pytest.raises(ImageDecodeError):
        decode_image(header_only, max_pixels=None)


def test_pixel_limit_is_configurable(photo):
    data = encode(Image.fromarray(photo), "PNG")  # 512 x 512
    with pytest.raises(ImageTooLargeError):
        decode_image(data, max_pixels=512 * 511)
    assert decode_image(data, max_pixels=512 * 512).size == (512, 512)


def test_paths_as_path_objects_name_the_file_in_errors(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(png_header(64, 64))
    with pytest.raises(ImageDecodeError, match=str(Path(bad))):
        decode_image(bad)


def test_decode_benchmark_finds_identical_pixels(capsys):
    from script_loader import load_script

    bench = load_script("benchmark_decode")
    assert bench.main(["--size", "640x480", "--images", "2", "--rounds", "1"]) == 0
    assert "identical pixels: True" in capsys.readouterr().out
