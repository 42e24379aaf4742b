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


def test_bn_momentum_replaces_the_momentum_a_torchvision_model_sets():
    """MobileNetV3 sets 0.01 (for ImageNet-length runs); at that momentum one epoch of Fashion-MNIST
    evaluated at chance. tocha's model.bn_momentum (default 0.1) reaches every BatchNorm of it."""
    import torchvision

    stock = torchvision.models.mobilenet_v3_small(weights=None, num_classes=10)
    assert {m.momentum for m in stock.modules() if isinstance(m, nn.BatchNorm2d)} == {0.01}
    for momentum in (0.1, 0.3):
        model = build_model(ModelSpec("mobilenet_v3_small", 1, 10, 32, bn_momentum=momentum))
        assert {m.momentum for m in model.modules() if isinstance(m, nn.BatchNorm2d)} == {momentum}


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


def test_flip_tta_run_scores_the_same_in_eval_predict_and_its_export(tmp_path):
    """A tta=flip run: `tocha eval`, tocha.evaluate, tocha.predict and the exported ONNX graph all score
    what training scored (both views averaged), not the bare model."""
    import json
    import subprocess
    import sys

    import tocha
    from tocha.recipes.runs import load_run

    run = tmp_path / "run"
    tocha.fit({"name": "cnn", "width": 8}, "digits", epochs=4, tta="flip", threads=1, out=str(run),
              log={"tensorboard": False, "progress": False})  # fmt: skip
    trained = json.loads((run / "summary.json").read_text())["test"]["test.accuracy"]
    cli = [sys.executable, "-m", "tocha.cli"]
    ev = subprocess.run([*cli, "eval", str(run), "--json"], capture_output=True, text=True, check=True)
    assert json.loads(ev.stdout)["accuracy"] == trained
    loaded = load_run(run)
    assert isinstance(loaded.inference_model, FlipTTA) and not isinstance(loaded.model, FlipTTA)
    ex = subprocess.run([*cli, "export", str(run), "--format", "onnx", "--out", str(tmp_path / "m.onnx")],
                        capture_output=True, text=True)  # fmt: skip
    assert ex.returncode == 0, ex.stderr
    onnx_eval = subprocess.run([*cli, "eval", str(tmp_path / "m.onnx"), "--json"], capture_output=True, text=True)
    assert onnx_eval.returncode == 0, onnx_eval.stderr
    assert abs(json.loads(onnx_eval.stdout)["accuracy"] - trained) <= 1 / 300  # ONNX Runtime's float sums: 1 image
    from tocha.engine.batches import DeviceTransform

    x = torch.randint(0, 256, (7, 1, 8, 8), dtype=torch.uint8)
    got = tocha.predict(run, x)
    prepared = DeviceTransform(loaded.meta["mean"], loaded.meta["std"], device=torch.device("cpu")).prepare(x)
    with torch.no_grad():
        want = torch.softmax(FlipTTA(loaded.model)(prepared), 1)
    torch.testing.assert_close(torch.as_tensor(got.probabilities), want, atol=1e-5, rtol=1e-4)


def test_whitened_first_conv_decorrelates_patches_and_stays_fixed():
    from tocha.models.whiten import whiten_first_conv

    g = torch.Generator().manual_seed(0)
    base = torch.randn(400, 1, 10, 10, generator=g)
    images = base + 0.8 * base.roll(1, dims=3)  # neighbouring pixels correlated, as in real images
    conv = nn.Conv2d(1, 20, 3, padding=1, bias=False)
    model = nn.Sequential(conv, nn.ReLU())
    note = whiten_first_conv(model, images)
    assert "18 fixed filters" in note and "2 more fixed" in note  # 9 directions x 2 signs, of 20
    responses = nn.functional.conv2d(images, conv.weight[:9])  # the + filters, no padding: whole patches
    flat = responses.transpose(0, 1).reshape(9, -1)
    cov = torch.cov(flat)
    torch.testing.assert_close(torch.diag(cov), torch.ones(9), atol=0.05, rtol=0)  # unit variance each
    assert (cov - torch.diag(torch.diag(cov))).abs().max() < 0.02  # and decorrelated
    torch.testing.assert_close(conv.weight[9:18], -conv.weight[:9])
    assert not conv.weight.requires_grad


def test_model_whiten_trains_and_refuses_feature_vectors(tmp_path, caplog):
    import logging

    import tocha

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (96, 1, 8, 8), dtype=torch.uint8, generator=g)
    y = torch.arange(96) % 3
    with caplog.at_level(logging.INFO, logger="tocha"):
        result = tocha.fit({"name": "cnn", "width": 4, "whiten": True}, (x, y), epochs=1, batch_size=32, threads=1,
                           log={"progress": False})  # fmt: skip
    first = next(m for m in result.model.modules() if isinstance(m, nn.Conv2d))
    assert not first.weight.requires_grad and "first conv whitened" in caplog.text
    with pytest.raises(UserError, match="model.whiten=true needs image data"):
        tocha.fit({"name": "mlp", "whiten": True}, (torch.randn(64, 5), torch.arange(64) % 2), epochs=1,
                  log={"progress": False})  # fmt: skip


def test_a_preset_that_whitens_names_itself_when_the_model_cannot_be_whitened(tmp_path, capsys):
    from tocha.cli import main as cli

    out = tmp_path / "run"
    assert cli(["train", "preset=best", "model=mlp", "data=digits", "max_steps=2", f"out={out}"]) == 2
    err = capsys.readouterr().err
    assert "model.whiten=true needs images and a model with a convolution" in err
    assert "preset=best sets it" in err and "Traceback" not in err
    assert not out.exists()
