"""The ONNX contract: the one source of truth shared by training and inference.

Training writes these names and metadata keys into the exported model; inference reads
them back. Nothing here imports torch, so ``iqa.training`` may import this module but
``iqa.inference`` never imports training.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

INPUT_NAME = "image"
# Model v2's second input: native-resolution patches of the photo (see DetailView).
DETAIL_INPUT = "detail"
# A third input of models whose detail view feeds a gated penalty: per photo, how many
# times the global view shrinks it (see DetailView.native_scale).
DETAIL_SCALE_INPUT = "detail_scale"
SCORE_OUTPUT = "score"
# Model v2's raw prediction on the training data's MOS scale (LIVE Challenge MOS/100),
# before the calibration baked into the graph turns it into `score`.
MOS_OUTPUT = "mos"
FACTORS_OUTPUT = "factors"

# Distortion families. The factor head predicts one severity in [0, 1] per family, the
# augmentation library labels synthetic images with the same names, and the HTTP API
# reports them under these keys. Order matters: it is the column order of `factors`.
FACTOR_NAMES: tuple[str, ...] = (
    "blur",
    "motion_blur",
    "underexposure",
    "overexposure",
    "low_contrast",
    "light_distortion",
    "noise",
    "compression",
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Resolution policy. IQA is resolution-sensitive (blur and noise are judged per pixel),
# so training and inference see images at the same scale: keep the aspect ratio and set
# the shorter side to SHORTER_SIDE (downscaling only is not enough: tiny images must be
# brought to the same scale too). The longer side is capped so panoramas stay tractable.
# The default is v1's 320 (51 img/s end to end on 2 CPU cores when it was chosen). A recipe
# may raise it: the shipped v2.1 uses 448 under a pixel budget of 384 x 512 (1.48x v1's
# pixels for a 4:3 photo), which ranks better and still meets the 30 img/s goal
# (BENCHMARKS.md, scripts/benchmark_inference.py).
SHORTER_SIDE = 320
MAX_LONGER_SIDE = 1024

# metadata_props keys. Values are strings (ONNX requires it); structured values are JSON.
META_PREPROCESSING = "iqa.preprocessing"
META_FACTOR_NAMES = "iqa.factor_names"
META_MODEL_VERSION = "iqa.model_version"
META_BACKBONE = "iqa.backbone"
META_TRAINING_DATA = "iqa.training_data"
META_METRICS = "iqa.validation_metrics"
META_LICENSE = "iqa.license"
META_CREATED = "iqa.created"
# JSON {input name: recipe}: how to build every input other than `image` (model v2+).
META_INPUTS = "iqa.inputs"
# JSON: the MOS -> score calibration baked into the graph (knots), for documentation.
META_CALIBRATION = "iqa.calibration"
# The META_PREPROCESSING keys `iqa export` has written since the first model
# (tests/data/iqa-lite0-v1.onnx). A model lacking one would be scored with today's default in
# its place, a silently different score; pixel_budget came later and stays optional.
PREPROCESSING_KEYS = ("antialias", "extra", "max_longer_side", "mean", "resample",
                      "shorter_side", "size_multiple", "std")


@dataclass(frozen=True)
class Preprocessing:
    """How an RGB uint8 image becomes the model's float32 input tensor."""

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    shorter_side: int = SHORTER_SIDE
    max_longer_side: int = MAX_LONGER_SIDE
    # The model has stride 32; sizes are rounded to a multiple of it so no border is lost
    # to padding differences between frameworks.
    size_multiple: int = 32
    resample: str = "bicubic"
    antialias: bool = True
    extra: dict = field(default_factory=dict)
    # At most this many pixels before rounding to ``size_multiple`` (None: no cap). Model
    # time follows pixels, not the shorter side: at shorter side 448 and a budget of
    # 384 x 512, square photos are seen at 448 x 448 and 4:3 ones at 384 x 512, at one cost.
    pixel_budget: int | None = None

    def __post_init__(self):
        if self.pixel_budget is not None and self.pixel_budget < self.size_multiple**2:
            raise ValueError(f"pixel_budget must be at least size_multiple squared "
                             f"({self.size_multiple**2}), got {self.pixel_budget}")

    def to_json(self) -> str:
        raw = asdict(self)
        if raw["pixel_budget"] is None:
            # Policies without a budget keep the JSON they always had: exported files and
            # feature-cache fingerprints from before the key existed stay valid.
            del raw["pixel_budget"]
        return json.dumps(raw, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Preprocessing:
        raw = json.loads(text)
        known = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw}
        for key in ("mean", "std"):
            if key in known:
                known[key] = tuple(float(v) for v in known[key])
        return cls(**known)

    @classmethod
    def from_model_metadata(cls, text: str) -> Preprocessing:
        """A model's META_PREPROCESSING, strictly: ValueError saying what is wrong unless
        it is a JSON object with every one of PREPROCESSING_KEYS. Keys of a newer exporter
        are still ignored. (:meth:`from_json` fills in what is missing, for checkpoints.)"""
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not JSON ({exc})") from None
        if not isinstance(raw, dict):
            raise ValueError(f"not a JSON object: {text.strip()[:40]}")
        missing = [key for key in PREPROCESSING_KEYS if key not in raw]
        if missing:
            raise ValueError(f"no {', '.join(missing)} (every `iqa export`ed model has them)")
        try:
            return cls.from_json(text)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"unusable values ({exc})") from None

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        """Return the (width, height) an image of the given size is resized to."""
        if width < 1 or height < 1:
            raise ValueError(f"image size must be positive, got {width}x{height}")
        scale = self.shorter_side / min(width, height)
        if self.pixel_budget and width * height * scale**2 > self.pixel_budget:
            scale = math.sqrt(self.pixel_budget / (width * height))
        if max(width, height) * scale > self.max_longer_side:
            scale = self.max_longer_side / max(width, height)
        m = self.size_multiple
        new_w = max(m, int(round(width * scale / m)) * m)
        new_h = max(m, int(round(height * scale / m)) * m)
        return new_w, new_h


DETAIL_KINDS = ("grid_fragments", "textured_fragments")
# Rec. 709 weights applied to the sRGB values: a brightness proxy, not linear luminance.
# The exposure statistics inside the graph (iqa.models.exposure) and the textured detail
# view's patch choice (iqa.inference.preprocess) both use it.
LUMA_WEIGHTS = (0.2126, 0.7152, 0.0722)


@dataclass(frozen=True)
class DetailView:
    """Native-resolution detail: a ``grid`` x ``grid`` mosaic of ``patch``-px squares.

    The photo is cut into a grid of equal cells and the centre ``patch`` x ``patch``
    square of each cell is copied, unscaled, into a mosaic (the "fragments" of FAST-VQA,
    Wu et al., ECCV 2022). The global view shows exposure, light and composition after
    downscaling; this view keeps the pixel-level blur, noise and compression that the
    downscale hides on a 12-megapixel photo. ``patch`` is a multiple of the backbone's
    stride (32) so that every patch maps onto whole feature cells.

    ``kind`` says where in its cell each patch sits:

    * ``grid_fragments``: at the cell's centre;
    * ``textured_fragments``: at the most textured of ``candidates`` x ``candidates``
      positions spread evenly over the cell (:meth:`candidate_origins`). A patch's
      texture is the sum of absolute differences of integer luma (2126 R + 7152 G +
      722 B on the 8-bit values: ``LUMA_WEIGHTS`` x 10,000) between horizontal
      neighbours plus the same between vertical neighbours, computed exactly in
      integers; ties go to the first candidate, top to bottom then left to right. Where
      a large photo's frame is smooth (sky, water, a plain wall), a centred patch shows
      no detail; the textured one shows the nearest detail at 100 %. (On fold 0 it did
      not keep clean large photos' scores up, so `iqa penalty` defaults to the grid;
      MODEL_CARD.md.)

    With ``native_scale`` the model also takes ``detail_scale``, an N x 1 float32 input:
    the photo's native width over the width of its global view
    (:meth:`Preprocessing.target_size`), e.g. 1.3 for a 500 px photo and 7.8 for a
    12-megapixel one. A model uses it to weigh the detail view by how much the global view
    misses (``iqa penalty --gate``).
    """

    grid: int = 7
    patch: int = 32
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    kind: str = "grid_fragments"
    native_scale: bool = False
    candidates: int = 1

    def __post_init__(self) -> None:
        if self.kind not in DETAIL_KINDS:
            raise ValueError(f"unknown detail view kind {self.kind!r}; known: "
                             f"{', '.join(DETAIL_KINDS)}")
        if self.kind == "textured_fragments" and self.candidates < 2:
            raise ValueError("textured_fragments needs candidates >= 2 per axis")

    @property
    def side(self) -> int:
        return self.grid * self.patch

    def to_json(self) -> str:
        fields = asdict(self)
        if self.kind == "grid_fragments":
            del fields["candidates"]  # unused; grid models' metadata stays as it was
        return json.dumps(fields, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | dict) -> DetailView:
        raw = json.loads(text) if isinstance(text, str) else dict(text)
        known = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw}
        for key in ("mean", "std"):
            if key in known:
                known[key] = tuple(float(v) for v in known[key])
        return cls(**known)

    def cell_origins(self, width: int, height: int) -> tuple[list[int], list[int]]:
        """Left and top pixel of every patch, for a photo of ``width`` x ``height``.

        Patch centres sit at the centres of the grid cells. Photos smaller than a patch
        are padded by the caller (edge replication) before this is used.
        """
        if width < self.patch or height < self.patch:
            raise ValueError(f"photo {width}x{height} is smaller than one {self.patch}px patch")

        def origins(length: int) -> list[int]:
            step = length / self.grid
            return [
                min(max(int(round((i + 0.5) * step - self.patch / 2)), 0), length - self.patch)
                for i in range(self.grid)
            ]

        return origins(width), origins(height)

    def candidate_origins(self, length: int) -> list[list[int]]:
        """For each of the ``grid`` cells along an axis of ``length`` px, the origins of
        its ``candidates`` patch positions (``textured_fragments``): evenly spaced from
        the cell's first pixel to the last origin whose patch still ends inside the cell,
        rounded half to even. A cell narrower than a patch has one candidate, its
        centred (``grid_fragments``) origin."""
        if length < self.patch:
            raise ValueError(f"length {length} is smaller than one {self.patch}px patch")
        step = length / self.grid
        centred = self.cell_origins(length, length)[0]
        out = []
        for i in range(self.grid):
            low = int(round(i * step))
            high = min(int(round((i + 1) * step)), length) - self.patch
            if high <= low:
                out.append([centred[i]])
                continue
            k = self.candidates
            out.append([int(round(low + (high - low) * j / (k - 1))) for j in range(k)])
        return out


# Score buckets, from the reference page (DESIGN.md "Score semantics"). Lower bound
# inclusive; the first bucket whose upper bound exceeds the score wins.
BUCKETS: tuple[tuple[float, str], ...] = (
    (0.25, "very_poor"),
    (0.45, "poor"),
    (0.60, "decent"),
    (0.85, "good"),
    (float("inf"), "very_good"),
)

# Suggested starting threshold for "low quality", from the reference page.
DEFAULT_THRESHOLD = 0.5


def bucket_for(score: float) -> str:
    """Name of the DESIGN.md score bucket that ``score`` falls in."""
    for upper, name in BUCKETS:
        if score < upper:
            return name
    return BUCKETS[-1][1]


# Human MOS maps linearly onto the [0, 1] scale (DESIGN.md): LIVE Challenge MOS/100,
# KonIQ (MOS-1)/4 on its 1-5 scale.
def normalise_mos(mos: float, low: float, high: float, higher_is_better: bool = True) -> float:
    """Map a raw MOS on [low, high] linearly onto [0, 1], higher meaning better."""
    if high <= low:
        raise ValueError(f"MOS range must have high > low, got [{low}, {high}]")
    value = (mos - low) / (high - low)
    return value if higher_is_better else 1.0 - value
