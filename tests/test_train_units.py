"""The training pipeline's parts, one at a time: config, losses, epoch plans, synthetic
pool, feature cache, checkpoints and the metrics log."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train_fakes import CONFIGS, fake_livec, fake_pristine, make_photo

from iqa.inference.contract import FACTOR_NAMES, Preprocessing
from iqa.inference.preprocess import normalise
from iqa.training import checkpoint as ckpt
from iqa.training import losses
from iqa.training.config import DATA_ROOT_ENV, ConfigError, build_config
from iqa.training.data import (
    COMPOSE,
    FeatureSource,
    ImageSource,
    ImageSpec,
    StepDataset,
    build_synthetic_pool,
    list_photos,
    plan_epoch,
    render,
    window,
)
from iqa.training.front_cache import FeatureCache
from iqa.training.run_log import MetricsLog
from iqa.training.trainer import lr_factor

TINY_PREP = Preprocessing(mean=(0.5,) * 3, std=(0.5,) * 3, shorter_side=64, max_longer_side=128)


# --------------------------------------------------------------------------- config


def test_config_layers_defaults_base_file_and_overrides(tmp_path, monkeypatch):
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    cfg = build_config(CONFIGS / "livec_full.yaml",
                       ["optim.lr=3e-4", "preprocessing.shorter_side=64", "synthetic.enabled=false"],
                       cwd=tmp_path)
    assert cfg["name"] == "livec_full"  # own file
    assert cfg["data"]["split"]["method"] == "none"  # own file over its base
    assert cfg["model"]["freeze_blocks"] == 4  # from base livec.yaml
    assert cfg["optim"]["lr"] == pytest.approx(3e-4)  # "3e-4" is a number, not a string
    assert cfg["preprocessing"] == {"shorter_side": 64}  # free-form section
    assert cfg["loss"]["pristine_floor"] is None  # default, untouched
    # data paths hang off data_root (relative to the cwd); local paths off the cwd
    assert cfg["data"]["root"] == str((tmp_path / "../shared/datasets/livec").resolve())
    assert cfg["cache_dir"] == str(tmp_path / ".cache/iqa-features")


def test_a_recipe_adds_preprocessing_keys_to_its_bases(tmp_path):
    # configs/livec_levels_budget.yaml builds on livec_levels.yaml, whose preprocessing
    # section already has a key: free-form sections merge key by key at every level.
    cfg = build_config(CONFIGS / "livec_levels_budget.yaml", cwd=tmp_path)
    assert cfg["preprocessing"] == {"shorter_side": 448, "pixel_budget": 384 * 512}
    assert cfg["model"]["pool_stages"] == [3, 4, 5, 6] and cfg["augment"]["crop"] == 416
    child = tmp_path / "child.yaml"
    child.write_text(f"base: {CONFIGS / 'livec_levels.yaml'}\npreprocessing:\n  resample: bilinear\n")
    assert build_config(child, cwd=tmp_path)["preprocessing"] == {"shorter_side": 384,
                                                                  "resample": "bilinear"}
    # Sections that are not free-form still reject keys they do not know.
    child.write_text(f"base: {CONFIGS / 'livec_levels.yaml'}\naugment:\n  rotate: 1\n")
    with pytest.raises(ConfigError, match="unknown config key 'augment.rotate'"):
        build_config(child, cwd=tmp_path)


def test_data_root_precedence_cli_then_env_then_config(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path / "env"))
    assert build_config(CONFIGS / "livec.yaml", cwd=tmp_path)["data"]["root"] == str(
        tmp_path / "env" / "livec")
    cfg = build_config(CONFIGS / "livec.yaml", data_root=tmp_path / "cli", cwd=tmp_path)
    assert (cfg["data"]["root"], cfg["synthetic"]["root"]) == (
        str(tmp_path / "cli" / "livec"), str(tmp_path / "cli" / "pristine"))


@pytest.mark.parametrize("text, message", [
    ("optim:\n  lr_max: 1\n", "unknown config key 'optim.lr_max'"),
    ("data:\n  split:\n    method: kfold\n", "data.split.method must be"),
    ("- a list\n", "top level must be a mapping"),
    ("base: loop.yaml\n", "loops back"),
    ("optim:\n  batch_size: 0\n", "optim.batch_size must be >= 1, got 0"),
    # Values of the wrong kind are refused by key before anything reads them.
    ("optim: 5\n", "optim must be a section"),
    ("data:\n  split: random\n", "data.split must be a section"),
    ("synthetic:\n  subsets: kodak24\n", "synthetic.subsets must be a list of strings or null"),
    ("optim:\n  lr: fast\n", "optim.lr must be a number, got 'fast'"),
    ("optim:\n  lr: -1.0e-3\n", r"optim.lr must be > 0"),
    ("model:\n  dropout: 1.5\n", "model.dropout must be < 1"),
    ("optim:\n  ema_decay: 1\n", "optim.ema_decay must be < 1"),
    ("optim:\n  ema_start: -0.1\n", "optim.ema_start must be >= 0"),
])
def test_config_errors_name_the_problem(tmp_path, text, message):
    path = tmp_path / "loop.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        build_config(path, cwd=tmp_path)


def test_override_errors():
    with pytest.raises(ConfigError, match="unknown config key 'optim.nope'"):
        build_config(CONFIGS / "livec.yaml", ["optim.nope=1"])
    with pytest.raises(ConfigError, match="key.sub=value"):
        build_config(CONFIGS / "livec.yaml", ["optim.lr"])


@pytest.mark.parametrize("override, message", [
    ("optim.batch_size=abc", "optim.batch_size must be a whole number, got 'abc'"),
    ("optim.epochs=1.7", "optim.epochs must be a whole number, got 1.7"),
    ("optim.epochs=null", "optim.epochs must be a whole number, got None"),
    ("augment.flip=nope", "augment.flip must be true or false, got 'nope'"),
    ("optim.amp=maybe", "optim.amp must be true or false"),
    ("seed=abc", "seed must be a whole number"),
    ("loss.mos_weight=abc", "loss.mos_weight must be a number"),
    ("synthetic.severity_weak=0.2", "synthetic.severity_weak must be a list of two numbers"),
    ("loss.level_weights=5", "loss.level_weights must be a mapping of names to numbers"),
    ("augment.crop=abc", "augment.crop must be a whole number or null"),
    # The section itself is named, not the override after it.
    ("optim=5", "'optim' is a section, in 'optim=5'; set one of its keys instead"),
])
def test_overrides_of_the_wrong_kind_name_the_key(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_config(CONFIGS / "livec.yaml", [override, "optim.max_steps=1"])


def test_kinds_that_mean_the_same_are_accepted(tmp_path):
    # YAML 1.1 reads 3e-4 as a string; a whole number is a number; a mapping given to a
    # section merges into it rather than replacing it.
    path = tmp_path / "r.yaml"
    path.write_text(f"base: {CONFIGS / 'livec.yaml'}\noptim:\n  lr: 3e-4\n  grad_clip: 2\n")
    cfg = build_config(path, ["optim={epochs: 3}"], cwd=tmp_path)
    assert cfg["optim"]["lr"] == pytest.approx(3e-4) and cfg["optim"]["grad_clip"] == 2
    assert cfg["optim"]["epochs"] == 3 and cfg["optim"]["batch_size"] == 16
    with pytest.raises(ConfigError, match="unknown config key 'optim.lr_max'"):
        build_config(path, ["optim={lr_max: 3}"], cwd=tmp_path)


# --------------------------------------------------------------------------- losses


def test_plcc_loss_is_scale_free_and_signed():
    target = torch.tensor([0.1, 0.4, 0.5, 0.9])
    assert float(losses.plcc_loss(3 * target + 1, target)) == pytest.approx(0.0, abs=1e-6)
    assert float(losses.plcc_loss(-target, target)) == pytest.approx(1.0, abs=1e-6)
    pred = torch.tensor([0.3, 0.2, 0.6, 0.7], requires_grad=True)
    losses.plcc_loss(pred, target).backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0


def test_pairwise_rank_loss_wants_the_human_gap():
    target = torch.tensor([0.2, 0.5, 0.9])
    assert float(losses.pairwise_rank_loss(target.clone(), target)) == pytest.approx(0.0)
    assert float(losses.pairwise_rank_loss(2 * target, target)) == pytest.approx(0.0)
    # right order, half the gap: each pair misses by half its MOS gap
    half = float(losses.pairwise_rank_loss(target / 2, target))
    assert half == pytest.approx(np.mean([0.15, 0.35, 0.2]))
    assert float(losses.pairwise_rank_loss(target.flip(0), target)) > half


def test_margin_rank_and_floor():
    better, worse = torch.tensor([0.8, 0.5]), torch.tensor([0.7, 0.6])
    # relu(0.2 - 0.1) and relu(0.2 + 0.1), averaged
    assert float(losses.margin_rank_loss(better, worse, 0.2)) == pytest.approx(0.2)
    assert float(losses.floor_loss(torch.tensor([0.9, 0.5]), 0.7)) == pytest.approx(0.1)


def test_training_loss_combines_only_what_the_batch_supports():
    # synthetic group 3 > 4 > 5: pair (3, 4) is violated, the others hold with room to spare
    scores = torch.tensor([0.2, 0.6, 0.5, 0.9, 0.95, 0.3], requires_grad=True)
    factors = torch.full((6, len(FACTOR_NAMES)), 0.5, requires_grad=True)
    batch = {
        "auth_index": torch.tensor([0, 1, 2]), "mos": torch.tensor([0.1, 0.7, 0.4]),
        "syn_index": torch.tensor([3, 4, 5]),
        "factor_target": torch.zeros(3, len(FACTOR_NAMES)),
        "pair_better": torch.tensor([3, 3, 4]), "pair_worse": torch.tensor([4, 5, 5]),
        "pair_gap": torch.tensor([0.3, 0.7, 0.4]), "original_index": torch.tensor([3]),
    }
    weights = losses.LossWeights()
    total, parts = losses.training_loss(scores, factors, batch, weights)
    assert set(parts) == {"mos", "plcc", "rank", "syn_rank", "factor"}  # no floor by default
    assert float(total.detach()) == pytest.approx(sum(parts.values()), rel=1e-5)
    # margin 0.02 + 0.1 * 0.3 = 0.05 missed by 0.1, averaged over the 3 pairs
    assert parts["syn_rank"] == pytest.approx(0.1 / 3, abs=1e-6)
    total.backward()
    assert scores.grad[3] < 0 < scores.grad[4] and scores.grad[5] == 0
    assert factors.grad.abs().sum() > 0
    _, parts = losses.training_loss(scores, factors, batch,
                                    dataclasses.replace(weights, pristine_floor=0.95))
    assert parts["floor"] == pytest.approx(0.05, abs=1e-6)


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    assert lr_factor(0, 10, 100, 0.01) == pytest.approx(0.1)
    assert lr_factor(9, 10, 100, 0.01) == pytest.approx(1.0)
    assert lr_factor(10, 10, 100, 0.01) == pytest.approx(1.0)
    assert lr_factor(55, 10, 100, 0.01) == pytest.approx(0.505)
    assert lr_factor(100, 10, 100, 0.01) == pytest.approx(0.01)


# --------------------------------------------------------------------------- epoch plans


def test_epoch_plan_is_a_function_of_seed_and_epoch():
    kwargs = dict(num_authentic=50, num_groups=7, batch_size=8, groups_per_epoch=12)
    first = plan_epoch(0, 3, **kwargs)
    assert first == plan_epoch(0, 3, **kwargs)
    assert first != plan_epoch(0, 4, **kwargs) and first != plan_epoch(1, 3, **kwargs)
    assert len(first) == 50 // 8  # last partial batch dropped
    authentic = [item.index for step in first for item in step.authentic]
    assert len(authentic) == len(set(authentic)) == 48
    groups = [item.index for step in first for item in step.synthetic]
    assert len(groups) == 12 and len(set(groups[:7])) == 7  # whole pool before repeats
    assert all(0 <= item.u < 1 and 0 <= item.v < 1 for step in first for item in step.authentic)
    assert any(item.flip for step in first for item in step.authentic)
    assert not any(item.flip for step in first for item in step.synthetic)  # off by default
    for step in first:  # ranks split every step between them, with nothing lost
        shards = [step.shard(r, 3) for r in range(3)]
        assert sorted(i.index for s in shards for i in s.authentic) == sorted(
            i.index for i in step.authentic)
        assert sum(s.size for s in shards) == step.size


def test_crop_window_stays_inside_on_the_stride_grid():
    for position in np.linspace(0, 0.999, 17):
        offset, size = window(20, 18, float(position), 1)
        assert size == 18 and 0 <= offset <= 2
        offset, size = window(320, 288, float(position), 16)
        assert offset % 16 == 0 and offset + size <= 320
    assert window(10, 18, 0.7, 1) == (0, 10)  # smaller than the crop: whole axis


# --------------------------------------------------------------------------- synthetic pool


def test_synthetic_pool_groups_are_seeded_and_ordered(tmp_path):
    root = fake_pristine(tmp_path / "pristine", count=3)
    syn = {"distortions": None, "severity_weak": [0.15, 0.45], "severity_gap": [0.2, 0.5],
           "groups_per_photo": 2, "composed_per_photo": 1, "compose_max_ops": 3, "seed": 7}
    photos = list_photos(root, subsets=["kodak24", "wikipedia"])
    assert [p.suffix for p in photos] == [".jpg"] * 3  # sources.csv is not a photo
    assert len(list_photos(root)) == 4  # with the bsds500 folder
    with pytest.raises(ConfigError, match="no such folder"):
        list_photos(root, subsets=["kodak24", "urban100"])
    pool = build_synthetic_pool(photos, root, syn)
    assert len(pool) == 3 * 3
    for group in pool:
        original = group.members[0]
        assert original.distortion is None
        assert all(m.path == original.path for m in group.members)
        if len(group.members) == 3:
            weak, strong = group.members[1:]
            assert weak.distortion == strong.distortion and weak.seed == strong.seed
            assert 0.15 <= weak.severity < strong.severity <= 1.0
            assert group.pairs == ((0, 1), (0, 2), (1, 2))
        else:
            assert group.members[1].distortion == COMPOSE and group.pairs == ((0, 1),)
    # Adding a photo leaves every other photo's variants alone.
    make_photo(root / "kodak24" / "extra.jpg", 96, 72, seed=9)
    bigger = build_synthetic_pool(list_photos(root, subsets=["kodak24", "wikipedia"]), root, syn)
    assert set(pool) <= set(bigger) and len(bigger) == 12
    assert build_synthetic_pool(photos, root, {**syn, "seed": 8}) != pool


# --------------------------------------------------------------------------- feature cache


@pytest.fixture(scope="module")
def tiny_model():
    from iqa.models import create_model

    torch.manual_seed(0)
    return create_model(pretrained=False, head_hidden=16, freeze_blocks=4).eval()


def test_feature_cache_matches_the_frozen_front_and_is_reused(tmp_path, tiny_model):
    photo = make_photo(tmp_path / "p.jpg", 96, 72, seed=3)
    specs = [ImageSpec(str(photo)), ImageSpec(str(photo), flip=True),
             ImageSpec(str(photo), distortion="gaussian_noise", severity=0.6, seed=5)]
    cache = FeatureCache(tmp_path / "cache", tiny_model, TINY_PREP, batch_size=2)
    assert cache.stride == 16
    stats = cache.build(specs, progress=False)
    assert (stats.total, stats.built) == (3, 3)
    for spec in specs:
        rgb, labels = render(spec, TINY_PREP)
        assert rgb.shape == (64, 96, 3)  # the inference resize: shorter side 64, x32 sides
        expected = tiny_model.forward_frozen(torch.from_numpy(normalise(rgb, TINY_PREP))[None])[0]
        feats, cached_labels = cache.load(spec)
        assert feats.dtype == np.float16 and feats.shape == (80, 4, 6)
        np.testing.assert_allclose(feats.astype(np.float32), expected.numpy(), rtol=2e-3, atol=2e-3)
        np.testing.assert_array_equal(cached_labels, labels)
    noise = FACTOR_NAMES.index("noise")
    assert cache.load(specs[2])[1][noise] == pytest.approx(0.6)
    assert cache.load(specs[0])[1].sum() == 0
    assert cache.build(specs, progress=False).built == 0  # nothing rebuilt
    # Anything the features depend on moves the cache: preprocessing, weights, the file.
    other = FeatureCache(tmp_path / "cache", tiny_model, dataclasses.replace(TINY_PREP, shorter_side=96))
    assert other.dir != cache.dir
    make_photo(photo, 96, 72, seed=4)
    assert cache.missing(specs) == specs


def test_feature_cache_keys_follow_file_content_not_timestamps(tmp_path, tiny_model):
    """A dataset re-copied with new modification times keeps its cache; new bytes do not."""
    import os

    photo = make_photo(tmp_path / "a.png", 80, 64, seed=1)
    spec = ImageSpec(str(photo))
    cache = FeatureCache(tmp_path / "cache", tiny_model, TINY_PREP)
    cache.build([spec], progress=False)
    stat = photo.stat()
    os.utime(photo, ns=(stat.st_atime_ns + 10**9, stat.st_mtime_ns + 10**9))
    assert cache.missing([spec]) == []
    make_photo(photo, 80, 64, seed=2)
    assert cache.missing([spec]) == [spec]
    assert cache.key(dataclasses.replace(spec, flip=True)) != cache.key(spec)


def test_cached_and_on_the_fly_paths_are_the_same_network(tmp_path, tiny_model):
    photos = [make_photo(tmp_path / f"{i}.png", 80 + 16 * i, 64, seed=i) for i in range(3)]
    specs = [ImageSpec(str(p)) for p in photos]
    cache = FeatureCache(tmp_path / "cache", tiny_model, TINY_PREP)
    cache.build(specs, progress=False)
    cached, live = FeatureSource(cache), ImageSource(TINY_PREP, cache.stride)
    with torch.no_grad():
        for spec in specs:
            from_cache = tiny_model.forward_trainable(cached.load(spec)[0][None])[0]
            whole = tiny_model(live.load(spec)[0][None])[0]
            assert float(from_cache) == pytest.approx(float(whole), abs=2e-3)


def test_step_batches_keep_each_synthetic_group_in_one_window(tmp_path, tiny_model):
    records_root = fake_livec(tmp_path / "livec", count=4)
    from iqa.training.datasets import load_dataset

    records = load_dataset("livec", records_root)
    root = fake_pristine(tmp_path / "pristine", count=1) / "kodak24"
    syn = {"distortions": ["gaussian_blur"], "severity_weak": [0.3, 0.3],
           "severity_gap": [0.4, 0.4], "groups_per_photo": 1, "composed_per_photo": 0,
           "compose_max_ops": 3, "seed": 0}
    pool = build_synthetic_pool(list_photos(root), root, syn)
    steps = plan_epoch(0, 0, num_authentic=4, num_groups=1, batch_size=4, groups_per_epoch=1)
    source = ImageSource(TINY_PREP, 16)
    batch = StepDataset(steps, records, pool, source, crop_px=48)[0]
    assert batch["n"] == 7 and batch["mos"].tolist() == pytest.approx([records[i.index].mos
                                                                       for i in steps[0].authentic])
    (positions, x), = batch["inputs"]  # every crop 48x48: one shape group
    assert x.shape == (7, 3, 48, 48) and positions.tolist() == list(range(7))
    blur = FACTOR_NAMES.index("blur")
    assert batch["factor_target"][:, blur].tolist() == pytest.approx([0.0, 0.3, 0.7])
    assert batch["pair_better"].tolist() == [4, 4, 5] and batch["pair_worse"].tolist() == [5, 6, 6]
    assert batch["pair_gap"].tolist() == pytest.approx([0.3, 0.7, 0.4])
    # The same window of the same photo: the original and its blurred copies differ only by
    # the blur, far less than two different windows of the photo would.
    item = steps[0].synthetic[0]
    original = source.load(pool[0].members[0])[0]
    np.testing.assert_array_equal(x[4].numpy(), source.crop(original, 48, item.u, item.v).numpy())
    assert float((x[5] - x[4]).abs().mean()) < float((x[4] - x[0]).abs().mean())


# --------------------------------------------------------------------------- checkpoints, logs


def test_atomic_save_replaces_whole_files_only(tmp_path):
    path = tmp_path / "run" / "last.pt"
    weights = {"model": {}, "model_kwargs": {}}
    ckpt.atomic_save({**weights, "step": 1}, path)
    with pytest.raises(Exception):  # noqa: B017  (pickling a lambda fails mid-write)
        ckpt.atomic_save({**weights, "step": 2, "bad": lambda: 0}, path)
    assert ckpt.load_checkpoint(path)["step"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]
    assert ckpt.find_checkpoint(path.parent) == path
    with pytest.raises(FileNotFoundError, match="nothing to resume from"):
        ckpt.find_checkpoint(tmp_path)


def test_metrics_log_drops_rows_past_the_resume_point(tmp_path):
    log = MetricsLog(tmp_path, resume_step=None, resume_epoch=None, tensorboard=False)
    for step in range(1, 7):
        log.train(step // 4, step, 1e-3, 1.0 / step, {"mos": 0.1}, 8, 0.5)
        if step == 3:
            log.val(0, 3, {"n": 5, "srcc": 0.5, "plcc": 0.4, "krcc": 0.3, "rmse": 0.2})
    log.close()
    # resume from step 4 in epoch 1: steps 5-6 are replayed, epoch 0's validation stays
    MetricsLog(tmp_path, resume_step=4, resume_epoch=1, tensorboard=False).close()
    lines = Path(tmp_path / "metrics.csv").read_text().splitlines()
    assert [line.split(",")[:3] for line in lines[1:]] == [
        ["train", "0", "1"], ["train", "0", "2"], ["train", "0", "3"], ["val", "0", "3"],
        ["train", "1", "4"]]


def test_runs_that_differ_only_after_the_front_share_a_feature_cache(tmp_path):
    from iqa.models import create_model
    from iqa.training.front_cache import FeatureCache

    def fingerprint(**kwargs) -> str:
        torch.manual_seed(0)
        model = create_model(pretrained=False, head_hidden=16, **kwargs)
        return FeatureCache(tmp_path, model, model.preprocessing).fingerprint

    shared = fingerprint(freeze_blocks=4, pool_stages=[3, 4, 5, 6])
    assert fingerprint(freeze_blocks=4, pool_stages=[3, 5], pool_head=False) == shared
    assert fingerprint(freeze_blocks=4) == shared
    assert fingerprint(freeze_blocks=3, pool_stages=[3, 4, 5, 6]) != shared
