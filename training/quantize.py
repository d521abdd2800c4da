"""Int8 quantization of an exported model with onnxruntime.quantization.

Static QDQ quantization calibrates activation ranges on real photos preprocessed exactly
as inference does, and runs faster than fp32 on CPU. Dynamic quantization needs no
calibration, but turns convolutions into ConvInteger, which onnxruntime runs several
times slower than fp32. The int8 file keeps the fp32 file's metadata.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from iqa.inference.contract import INPUT_NAME, META_PREPROCESSING, Preprocessing

# Not part of the inference contract (inference ignores it): records how a file was made.
META_QUANTIZATION = "iqa.quantization"
MAX_CALIBRATION_IMAGES = 64
# name -> onnxruntime.quantization.CalibrationMethod member
CALIBRATION_METHODS = {"percentile": "Percentile", "minmax": "MinMax"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}


def int8_path_for(fp32_path: str | os.PathLike) -> Path:
    """OUT.onnx -> OUT.int8.onnx"""
    path = Path(fp32_path)
    return path.with_name(path.stem + ".int8" + path.suffix)


def calibration_images_from(paths: Iterable[str | os.PathLike] | None,
                            limit: int = MAX_CALIBRATION_IMAGES) -> list[np.ndarray]:
    """RGB uint8 arrays from image files and folders; the sample photos when ``paths`` is None."""
    from PIL import Image

    from iqa.training.onnx_graph import ExportError
    from iqa.training.parity import parity_images

    if not paths:
        return parity_images()
    files: list[Path] = []
    for entry in map(Path, paths):
        if entry.is_dir():
            files += sorted(p for p in entry.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif entry.is_file():
            files.append(entry)
        else:
            raise ExportError(f"calibration image or folder not found: {entry}")
    if not files:
        raise ExportError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under "
                          f"{', '.join(map(str, paths))}")
    # An even spread over the sorted list, so a folder of many images is sampled throughout.
    picks = np.linspace(0, len(files) - 1, num=min(limit, len(files))).round().astype(int)
    images = []
    for i in dict.fromkeys(picks.tolist()):
        try:
            with Image.open(files[i]) as img:
                images.append(np.asarray(img.convert("RGB")))
        except OSError as exc:
            raise ExportError(f"cannot read calibration image {files[i]}: {exc}") from exc
    return images


class _CalibrationReader(CalibrationDataReader):
    """Feeds one preprocessed image at a time to the calibrator.

    Each image is resized by the model's policy, so activations are calibrated at the
    pixel scale inference sees, then centre-cropped to a square common to all images:
    the histogram calibrators stack activations and need equal shapes.
    """

    def __init__(self, images: list[np.ndarray], preprocessing: Preprocessing):
        self.images = images
        self.preprocessing = preprocessing
        self.side = min(min(preprocessing.target_size(a.shape[1], a.shape[0])) for a in images)
        self.index = 0

    def get_next(self) -> dict | None:
        from PIL import Image

        from iqa.inference.preprocess import to_model_input

        if self.index >= len(self.images):
            return None
        tensor = to_model_input(Image.fromarray(self.images[self.index]), self.preprocessing)
        self.index += 1
        _, height, width = tensor.shape
        top, left = (height - self.side) // 2, (width - self.side) // 2
        square = tensor[:, top : top + self.side, left : left + self.side]
        return {INPUT_NAME: np.ascontiguousarray(square)[None]}

    def rewind(self) -> None:
        self.index = 0


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    # onnxruntime.quantization logs a multi-line warning on the root logger for every
    # integer shape tensor of the "same"-padding arithmetic (expected, not news), and its
    # histogram calibrators print progress to stdout, where callers write their results.
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        logging.disable(logging.NOTSET)


def _read_metadata(path: Path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def quantize_onnx(
    fp32_path: str | os.PathLike,
    out_path: str | os.PathLike | None = None,
    images: list[np.ndarray] | None = None,
    method: str = "static",
    calibration: str = "percentile",
) -> Path:
    """Write an int8 copy of ``fp32_path`` (default OUT.int8.onnx) and return its path.

    ``method="static"``: QDQ, per-channel int8 weights and uint8 activations whose
    ranges are calibrated on ``images`` (``calibration``: "percentile", the 99.999th
    percentile, which tracked fp32 best in scripts/quantize_eval.py, or "minmax", faster);
    ``"dynamic"``: int8 weights, activations quantized at run time.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from iqa.training.checkpoint import atomic_path
    from iqa.training.export import ExportError, set_metadata

    fp32_path = Path(fp32_path)
    out_path = Path(out_path) if out_path else int8_path_for(fp32_path)
    metadata = _read_metadata(fp32_path)
    preprocessing = Preprocessing.from_json(metadata[META_PREPROCESSING])
    with tempfile.TemporaryDirectory() as tmp, _quiet_quantizer():
        # Quantized in the temp folder and moved to out_path only once complete, so that a
        # failure never leaves a half-written int8 file in place of a good one.
        quantized = Path(tmp) / "int8.onnx"
        # Folds BatchNorm and infers shapes first, as onnxruntime recommends.
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        if method == "static":
            calibrate_method = CALIBRATION_METHODS.get(calibration)
            if calibrate_method is None:
                raise ExportError(f"unknown calibration '{calibration}' "
                                  f"({', '.join(CALIBRATION_METHODS)})")
            reader = _CalibrationReader(images or calibration_images_from(None), preprocessing)
            try:
                quantize_static(str(prepared), str(quantized), reader,
                                quant_format=QuantFormat.QDQ, per_channel=True,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                calibrate_method=getattr(CalibrationMethod, calibrate_method))
            except Exception as exc:  # onnxruntime raises untyped errors
                raise ExportError(
                    f"static int8 quantization of {fp32_path} failed ({exc}); "
                    "dynamic quantization needs no calibration but runs much slower"
                ) from exc
            detail = (f"static QDQ, per-channel int8 weights, uint8 activations, "
                      f"{calibration} calibration on {len(reader.images)} images")
        elif method == "dynamic":
            quantize_dynamic(str(prepared), str(quantized), weight_type=QuantType.QInt8)
            detail = "dynamic, int8 weights"
        else:
            raise ExportError(f"unknown quantization method '{method}' (static or dynamic)")
        proto = onnx.load(str(quantized))
    set_metadata(proto, {**metadata, META_QUANTIZATION: detail})
    with atomic_path(out_path) as part:
        onnx.save_model(proto, str(part), save_as_external_data=False)
    return out_path
