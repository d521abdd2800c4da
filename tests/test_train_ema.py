"""optim.ema_decay: checkpoints hold an exponential moving average of the weights as their
"model" and the optimiser's own weights as "live_model", and a resumed run continues both."""

from __future__ import annotations

import torch
from test_train_fakes import (  # noqa: F401  (fixtures)
    CONFIGS,
    cli_args,
    fake_root,
    feature_cache_dir,
    one_thread,
    tiny_overrides,
)

from iqa.inference.cli import main
from iqa.training.trainer import STOP_AFTER_ENV


def test_the_average_is_the_decayed_mean_of_the_optimisers_weights(
        fake_root, feature_cache_dir, tmp_path, monkeypatch, one_thread):  # noqa: F811
    # 12 training images / batch 3 = 4 steps; a checkpoint after every step. With
    # ema_start 0 the average copies step 1's weights, then mixes half of each new step in.
    sets = tiny_overrides(feature_cache_dir, steps=None, batch_size=3) + [
        "optim.epochs=1", "checkpoint_every_steps=1", "data.split.val_fraction=0.2",
        "optim.ema_decay=0.5", "optim.ema_start=0",
    ]
    base = cli_args(str(CONFIGS / "livec.yaml"), "--data-root", str(fake_root), "--no-progress",
                    "--threads", one_thread, sets=sets)
    run = tmp_path / "run"
    monkeypatch.setenv(STOP_AFTER_ENV, "3")
    assert main(["train", *base, "--output", str(run)]) == 3
    monkeypatch.delenv(STOP_AFTER_ENV)
    at3 = torch.load(run / "last.pt", weights_only=False)
    assert at3["step"] == 3
    assert main(["train", "--resume", str(run), "--no-progress", "--threads", one_thread]) == 0
    at4 = torch.load(run / "last.pt", weights_only=False)
    assert at4["step"] == 4

    moved = 0
    for key, average in at4["model"].items():
        if not average.is_floating_point():
            continue
        live = at4["live_model"][key]
        expected = 0.5 * at3["model"][key] + 0.5 * live
        torch.testing.assert_close(average, expected, rtol=1e-6, atol=1e-7, msg=key)
        moved += not torch.equal(average, live)
    assert moved > 10  # the trained layers' average lags behind the optimiser's weights

    # Without the option a checkpoint holds one copy of the weights, as before.
    plain = tmp_path / "plain"
    sets = [s for s in sets if not s.startswith("optim.ema")] + ["optim.max_steps=1"]
    assert main(["train", *cli_args(str(CONFIGS / "livec.yaml"), "--data-root", str(fake_root),
                                    "--no-progress", "--threads", one_thread, sets=sets),
                 "--output", str(plain)]) == 0
    assert "live_model" not in torch.load(plain / "last.pt", weights_only=False)
