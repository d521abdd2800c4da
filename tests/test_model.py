"""QualityModel on the tiny contract model: scores, batching, errors in place, loading."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from iqa.inference import FACTOR_NAMES, QualityModel, QualityResult, bucket_for
from iqa.inference.contract import META_PREPROCESSING
from iqa.inference.errors import (
    ImageDecodeError,
    ImageTooSmallError,
    IQAError,
    ModelLoadError,
    TruncatedImageError,
)


@pytest.fixture(scope="module")
def model(tiny_model_path) -> QualityModel:
    return QualityModel(tiny_model_path, threads=1)


@pytest.fixture(scope="module")
def images(photo) -> list[np.ndarray]:
    """Crops of the astronaut photo of three different shapes (so several batches)."""
    return [
        photo[:300, :400],
        photo[100:400, 50:450],
        photo[:, :256],
        photo[200:, 100:],
        photo,
        photo[::2, ::2],
        photo[50:350, :400],
    ]


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def test_score_carries_bucket_and_named_factors(model, photo):
    result = model.score(photo)
    assert isinstance(result, QualityResult)
    assert 0.0 <= result.score <= 1.0
    assert result.bucket == bucket_for(result.score)
    assert list(result.factors) == list(FACTOR_NAMES)
    assert all(0.0 <= v <= 1.0 for v in result.factors.values())
    assert result.to_dict()["factors"] == result.factors


def test_score_is_deterministic_and_input_kind_does_not_matter(model, photo, tmp_path):
    path = tmp_path / "photo.png"
    path.write_bytes(png(photo))
    scores = {model.score(s).score for s in (photo, png(photo), path, str(path))}
    assert len(scores) == 1


def test_different_images_get_different_scores(model, images):
    scores = [r.score for r in model.score_many(images)]
    assert len(set(scores)) == len(images)


def test_cpu_runs_one_image_per_call_unless_asked(model, tiny_model_path):
    assert model.run_batch_size == 1
    assert QualityModel(tiny_model_path, run_batch_size=8).run_batch_size == 8


def test_batching_matches_one_by_one(model, tiny_model_path, images):
    one_by_one = [model.score(image) for image in images]
    batching = QualityModel(tiny_model_path, threads=1, run_batch_size=64)
    for batch_size, workers in [(1, 0), (3, 2), (16, 2), (16, 0)]:
        batched = batching.score_many(images, batch_size=batch_size, workers=workers)
        for single, batch in zip(one_by_one, batched, strict=True):
            assert batch.score == pytest.approx(single.score, abs=1e-5)
            for name in FACTOR_NAMES:
                assert batch.factors[name] == pytest.approx(single.factors[name], abs=1e-5)


def test_iter_scores_yields_input_order_with_errors_in_place(model, images, photo, tmp_path):
    truncated = png(photo)[:5000]
    sources = [
        images[0],
        b"not an image",
        images[1],
        tmp_path / "missing.jpg",
        np.zeros((2, 2, 3), np.uint8),
        truncated,
        images[2],
    ]
    results = list(model.iter_scores(iter(sources), batch_size=2, workers=2))
    assert [i for i, _ in results] == list(range(len(sources)))
    kinds = [type(r) for _, r in results]
    assert kinds == [
        QualityResult,
        ImageDecodeError,
        QualityResult,
        ImageDecodeError,
        ImageTooSmallError,
        TruncatedImageError,
        QualityResult,
    ]
    assert "missing.jpg" in str(results[3][1])
    good = [model.score(images[i]).score for i in (0, 1, 2)]
    got = [results[i][1].score for i in (0, 2, 6)]
    assert got == pytest.approx(good, abs=1e-5)


def test_unexpected_errors_are_returned_not_raised(model, photo):
    def loader(source):
        if isinstance(source, str):
            raise RuntimeError("loader exploded")
        return source

    results = model.score_many([photo, "boom", photo], loader=loader)
    assert isinstance(results[1], IQAError) and "loader exploded" in str(results[1])
    assert results[0].score == results[2].score


def test_loader_runs_before_decoding(model, photo):
    store = {"a": png(photo), "b": png(photo[:200, :300])}
    results = model.score_many(["a", "b"], loader=store.__getitem__)
    assert results[0].score == pytest.approx(model.score(photo).score, abs=1e-6)
    assert results[1].score == pytest.approx(model.score(photo[:200, :300]).score, abs=1e-6)


def test_empty_input_and_bad_batch_size(model):
    assert model.score_many([]) == []
    with pytest.raises(ValueError):
        list(model.iter_scores([], batch_size=0))


def test_score_raises_typed_errors(model):
    with pytest.raises(ImageDecodeError):
        model.score(b"GIF89a but not really")


def test_pixel_limits_are_configurable_per_model(tiny_model_path, photo):
    strict = QualityModel(tiny_model_path, max_pixels=1000, min_side=4)
    assert isinstance(strict.score_many([photo])[0], IQAError)
    assert strict.score(np.zeros((4, 4, 3), np.uint8)).bucket


def test_model_without_factors(tiny_model_no_factors_path, photo):
    model = QualityModel(tiny_model_no_factors_path)
    result = model.score(photo)
    assert result.factors is None and "factors" not in result.to_dict()
    assert model.score_many([photo])[0].factors is None
    assert model.info()["factor_names"] == []


def test_info_describes_the_model(model):
    info = model.info()
    assert info["version"] == "tiny-test"
    assert info["preprocessing"]["shorter_side"] == 64
    assert info["factor_names"] == list(FACTOR_NAMES)
    assert [i["name"] for i in info["inputs"]] == ["image"]
    assert [o["name"] for o in info["outputs"]] == ["score", "factors"]
    assert info["providers"] == ["CPUExecutionProvider"]
    json.dumps(info)  # serialisable as is, for `iqa info --json` and the server


def test_bad_model_files_raise_model_load_error(tmp_path, tiny_model_path):
    with pytest.raises(ModelLoadError, match="not found"):
        QualityModel(tmp_path / "nope.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\x01 definitely not protobuf" * 10)
    with pytest.raises(ModelLoadError, match="garbage.onnx"):
        QualityModel(garbage)
    with pytest.raises(ModelLoadError, match="providers not available"):
        QualityModel(tiny_model_path, providers=["NoSuchExecutionProvider"])


def test_model_without_preprocessing_metadata_is_refused(tmp_path, tiny_model_path):
    onnx = pytest.importorskip("onnx")
    proto = onnx.load(str(tiny_model_path))
    kept = [p for p in proto.metadata_props if p.key != META_PREPROCESSING]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    path = tmp_path / "no_meta.onnx"
    onnx.save(proto, str(path))
    with pytest.raises(ModelLoadError, match=META_PREPROCESSING):
        QualityModel(path)


@pytest.mark.parametrize("value, reason", [
    ("{bad", "not JSON"),
    ("[]", "not a JSON object: []"),
    # Defaults in place of the model's own policy would change its scores without a word.
    ('{"foo": 1}', "no antialias, extra, max_longer_side, mean, resample, shorter_side, "
                   "size_multiple, std"),
    ('{"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "shorter_side": 64}', "no antialias"),
])
def test_unusable_preprocessing_metadata_exits_2_naming_the_model_and_key(
        tmp_path, tiny_model_path, photo, capsys, value, reason):
    onnx = pytest.importorskip("onnx")
    from iqa.inference.cli import main

    proto = onnx.load(str(tiny_model_path))
    next(p for p in proto.metadata_props if p.key == META_PREPROCESSING).value = value
    path = tmp_path / "m.onnx"
    onnx.save(proto, str(path))
    Image.fromarray(photo).save(tmp_path / "x.jpg")
    for command in (["score", "--model", str(path), str(tmp_path / "x.jpg")],
                    ["info", "--model", str(path)]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert f"{path}: unusable '{META_PREPROCESSING}' metadata: {reason}" in err
        assert "Traceback" not in err


def test_shipped_and_older_models_keep_loading_and_extra_keys_stay_ignored(
        tmp_path, tiny_model_path):
    onnx = pytest.importorskip("onnx")
    from pathlib import Path

    v1 = Path(__file__).parent / "data" / "iqa-lite0-v1.onnx"
    assert QualityModel(v1, threads=1).preprocessing.pixel_budget is None  # written before it
    assert QualityModel(threads=1).preprocessing.pixel_budget
    proto = onnx.load(str(tiny_model_path))
    prop = next(p for p in proto.metadata_props if p.key == META_PREPROCESSING)
    prop.value = json.dumps({**json.loads(prop.value), "from_a_newer_exporter": 1})
    onnx.save(proto, str(tmp_path / "newer.onnx"))
    assert QualityModel(tmp_path / "newer.onnx", threads=1).preprocessing.shorter_side == 64


def test_a_folder_as_the_model_is_named_a_folder(tmp_path, capsys):
    from iqa.inference.cli import main

    folder = tmp_path / "somedir.onnx"
    folder.mkdir()
    Image.new("RGB", (64, 64)).save(tmp_path / "x.jpg")
    with pytest.raises(ModelLoadError, match="is a folder, not a model file"):
        QualityModel(folder)
    for command in (["score", str(tmp_path / "x.jpg"), "--model", str(folder)],
                    ["info", "--model", str(folder)]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert f"{folder} is a folder, not a model file" in err and "not found" not in err
    with pytest.raises(ModelLoadError, match="the model path is empty"):
        QualityModel("")  # not "." (the current folder) named as the model
    assert main(["info", "--model", ""]) == 2
    assert "iqa info: the model path is empty" in capsys.readouterr().err


def test_model_drafts_jpegs_to_no_less_than_three_times_its_input_size(model, photo):
    from iqa.inference.preprocess import REDUCTION_GAP

    big = Image.fromarray(photo).resize((4000, 3000))
    buffer = io.BytesIO()
    big.save(buffer, "JPEG", quality=90)
    decoded = model.decode(buffer.getvalue())
    view = model.preprocessing.target_size(4000, 3000)
    assert REDUCTION_GAP * min(view) <= min(decoded.size) < 3000
    tensor = model.prepare(buffer.getvalue())["image"]
    assert tensor.shape[1:] == view[::-1]


def test_a_pixel_budget_in_the_metadata_sizes_every_input(tmp_path, tiny_model_path, photo):
    onnx = pytest.importorskip("onnx")
    from iqa.inference.cli_info import format_info
    from iqa.inference.contract import Preprocessing

    proto = onnx.load(str(tiny_model_path))
    prop = next(p for p in proto.metadata_props if p.key == META_PREPROCESSING)
    policy = Preprocessing.from_json(prop.value)
    # 128 px shorter side but at most 96 x 128 pixels: the 512 px square astronaut is seen
    # at sqrt(12288) = 110.9 -> 96 px (not 128), a 3:2 crop at 90.5 x 135.8 -> 96 x 128.
    budget = Preprocessing.from_json(json.dumps({**json.loads(prop.value), "shorter_side": 128,
                                                 "max_longer_side": 256,
                                                 "pixel_budget": 96 * 128}))
    assert budget.mean == policy.mean and budget.size_multiple == 32
    prop.value = budget.to_json()
    path = tmp_path / "budget.onnx"
    onnx.save(proto, str(path))
    model = QualityModel(path, threads=1)
    assert model.preprocessing.pixel_budget == 96 * 128
    assert model.prepare(photo)["image"].shape[1:] == (96, 96)
    assert model.prepare(photo[:256, :384])["image"].shape[1:] == (96, 128)
    assert 0.0 <= model.score(photo).score <= 1.0
    assert "<= 12,288 pixels" in format_info({**model.info(), "path": str(path)})


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider'")
def test_a_requested_provider_that_does_not_start_is_an_error(tiny_model_path, monkeypatch):
    """onnxruntime falls back to the CPU, with only a warning, when a requested provider
    cannot start. Here the CPU build is told CUDA is available (as a GPU build without a
    working driver would report it) and onnxruntime really falls back: the model refuses."""
    import iqa.inference.model as model_module

    monkeypatch.setattr(model_module, "available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(ModelLoadError, match="could not start CUDAExecutionProvider.*running on: "
                                             "CPUExecutionProvider"):
        QualityModel(tiny_model_path, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    # Without an explicit request the same fallback is fine: CPU is what works.
    assert QualityModel(tiny_model_path).providers == ["CPUExecutionProvider"]


@pytest.mark.parametrize("option", [{"max_pixels": 0}, {"min_side": 0}, {"run_batch_size": 0},
                                    {"threads": -1}])
def test_limits_that_would_refuse_every_image_are_refused_up_front(tiny_model_path, option):
    with pytest.raises(ValueError, match=f"{next(iter(option))} must be a whole number >="):
        QualityModel(tiny_model_path, **option)


# ------------------------------------------- inputs an audit of the Python API found wrong


def test_one_file_object_or_image_listed_many_times_scores_as_once(tiny_model_path, photo,
                                                                    tmp_path):
    # Workers sharing one lazily loaded PIL image or one stream used to read each other's
    # position: failures, other scores, and a caller's image damaged afterwards.
    model = QualityModel(tiny_model_path)
    path = tmp_path / "p.png"
    Image.fromarray(photo[:200, :300]).save(path)
    expected = model.score(path).score
    image = Image.open(path)  # not loaded yet
    stream = io.BytesIO(path.read_bytes())
    with open(path, "rb") as handle:
        for sources in ([image] * 12, [stream] * 12, [handle, handle, handle, handle]):
            results = model.score_many(sources, batch_size=4, workers=4)
            assert [r.score for r in results] == pytest.approx([expected] * len(sources),
                                                               abs=1e-6), results
    assert model.score(image).score == pytest.approx(expected, abs=1e-6)


def test_a_text_mode_file_is_named_as_such(tiny_model_path, tmp_path, photo):
    path = tmp_path / "p.png"
    Image.fromarray(photo[:64, :64]).save(path)
    model = QualityModel(tiny_model_path)
    with open(path, encoding="latin-1") as text, pytest.raises(
            ImageDecodeError, match=r"opened in text mode; open it in binary mode"):
        model.score(text)


def test_premultiplied_grey_with_alpha_scores_like_plain_grey_with_alpha(tiny_model_path):
    model = QualityModel(tiny_model_path)
    plain = Image.new("LA", (64, 64), (90, 255))
    assert model.score(plain.convert("La")).score == pytest.approx(model.score(plain).score,
                                                                    abs=1e-6)


@pytest.mark.parametrize("options, message", [
    ({"min_side": None}, "min_side must be a whole number >= 1, got None"),
    ({"threads": "2"}, "threads must be a whole number >= 0, got '2'"),
    ({"threads": 1.5}, "threads must be a whole number >= 0, got 1.5"),
    ({"max_pixels": float("inf")}, "max_pixels must be a whole number >= 1, got inf"),
    ({"threads": 10**12}, "is more than onnxruntime takes"),
])
def test_constructor_options_of_the_wrong_kind_are_named(tiny_model_path, options, message):
    with pytest.raises(ValueError, match=message):
        QualityModel(tiny_model_path, **options)


def test_providers_as_a_string_or_with_options_as_onnxruntime_takes_them(tiny_model_path):
    for providers in ("CPUExecutionProvider", [("CPUExecutionProvider", {})]):
        model = QualityModel(tiny_model_path, providers=providers)
        assert model.session.get_providers() == ["CPUExecutionProvider"]
    with pytest.raises(ModelLoadError, match="providers not available: NopeProvider;"):
        QualityModel(tiny_model_path, providers=[("NopeProvider", {})])


def test_a_non_finite_score_is_an_error_not_a_very_good_photo(tiny_model_path):
    model = QualityModel(tiny_model_path)
    with pytest.raises(IQAError, match="returned a score of nan"):
        model.result_from_outputs(float("nan"), None)


def test_score_many_wants_a_list_of_images_and_whole_numbers(tiny_model_path):
    model = QualityModel(tiny_model_path)
    with pytest.raises(TypeError, match="not one str; score one image with score()"):
        model.score_many("photo.jpg")
    for options, message in (({"batch_size": 2.5}, "batch_size must be a whole number"),
                             ({"workers": -1}, "workers must be a whole number >= 0")):
        with pytest.raises(ValueError, match=message):
            model.score_many([], **options)
