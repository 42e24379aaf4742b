"""Issue 17's recipe tools: EMA of the weights, flip TTA, BatchNorm momentum, presets."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tocha import config
from tocha.engine.ema import WeightEMA
from tocha.engine.tta import FlipTTA, with_tta
from tocha.errors import UserError
from tocha.models import ModelSpec, build_model


def test_ema_weights_are_the_formulas_average():
    model = nn.Linear(3, 2)
    ema = WeightEMA(model, decay=0.9, start_step=1)
    expected = [p.detach().clone() for p in model.parameters()]
    for step in range(1, 6):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.full_like(p, float(step)))
        ema.update()
        current = [p.detach() for p in model.parameters()]
        if step <= 1:  # before the start the average copies the weights
            expected = [c.clone() for c in current]
        else:
            expected = [0.9 * e + 0.1 * c for e, c in zip(expected, current, strict=True)]
        for got, want in zip(ema.module.parameters(), expected, strict=True):
            torch.testing.assert_close(got, want)
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_ema_copies_batchnorm_statistics():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    ema = WeightEMA(model, decay=0.5)
    model(torch.randn(4, 1, 5, 5))  # train mode: running statistics move
    ema.update()
    torch.testing.assert_close(ema.module[1].running_mean, model[1].running_mean)
    assert int(ema.module[1].num_batches_tracked) == 1


def test_flip_tta_logits_are_the_mean_of_both_views():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)).eval()
    x = torch.randn(5, 1, 6, 6)
    want = (model(x) + model(x.flip(3))) / 2
    torch.testing.assert_close(FlipTTA(model)(x), want)
    assert not torch.allclose(want, model(x))  # the mirror view really changes the logits
    assert with_tta(model, "none") is model


def test_bn_momentum_reaches_every_batchnorm():
    model = build_model(ModelSpec("cnn", 1, 10, 28, width=4, bn_momentum=0.3))
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(m.momentum == 0.3 for m in norms)
    assert (
        ModelSpec.from_dict({"name": "cnn", "in_channels": 1, "num_classes": 10, "image_size": 28}).bn_momentum == 0.1
    )


def test_presets_are_defaults_overridable_key_by_key():
    best = config.load(overrides=["preset=best"])
    preset = config.PRESETS["best"]
    assert (best.epochs, best.tta, best.ema) == (preset["epochs"], "flip", preset["ema"])
    mine = config.load(overrides=["preset=best", "epochs=5", "tta=none"])
    assert (mine.epochs, mine.tta, mine.ema, mine.model.width) == (5, "none", best.ema, preset["model.width"])
    assert config.load().preset == "none" and config.load().ema is None
    text = config.help_text()
    assert "preset=fast: epochs=" in text and "preset=best:" in text
    with pytest.raises(UserError, match="preset=fast is a recipe for task=classify"):
        config.load(overrides=["preset=fast", "task=regress", "data=csv", "data.path=x.csv", "data.target=y"])


def test_a_run_with_ema_and_tta_trains_and_records_tta():
    import tocha

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (96, 1, 8, 8), dtype=torch.uint8, generator=g)
    y = torch.arange(96) % 3
    result = tocha.fit(
        {"name": "cnn", "width": 4, "bn_momentum": 0.2},
        (x, y),
        epochs=2,
        batch_size=32,
        ema=0.9,
        tta="flip",
        threads=1,
        log={"progress": False},
    )
    assert result.meta["tta"] == "flip"
    assert result.best is not None and 0.0 <= result.best["value"] <= 1.0
