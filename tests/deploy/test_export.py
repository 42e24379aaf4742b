"""`tocha export`: every format passes its parity check, a broken export is caught, ONNX files predict alone."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from tocha.cli import main as cli
from tocha.deploy import export
from tocha.errors import UserError


@pytest.fixture(scope="module")
def run(tmp_path_factory, train_digits_cnn):
    out = tmp_path_factory.mktemp("export") / "run"
    return train_digits_cnn(out, width=4, epochs=1)


@pytest.mark.parametrize("fmt", ["onnx", "pt2", "torchscript", "safetensors"])
def test_every_format_passes_parity_and_records_it(run, fmt, tmp_path):
    target = tmp_path / f"model{export.FORMATS[fmt]}"
    result = export.export_run(run, fmt, out=target, samples=100)
    assert result.path == target and target.stat().st_size > 0
    assert result.parity.ok and result.parity.samples == 100 and result.parity.top1_agreement == 1.0
    stored = json.loads((tmp_path / f"{target.name}.parity.json").read_text())
    assert stored["format"] == fmt and stored["max_abs_diff"] <= 1e-4
    assert not list(tmp_path.glob(".*tmp*"))


@pytest.mark.parametrize("fmt, precision", [("onnx", "fp16"), ("pt2", "bf16"), ("torchscript", "fp16")])
def test_half_precision_exports_are_half_the_size_and_checked(run, tmp_path, fmt, precision):
    full = export.export_run(run, fmt, out=tmp_path / f"full{export.FORMATS[fmt]}", samples=100)
    half = export.export_run(run, fmt, out=tmp_path / f"half{export.FORMATS[fmt]}", samples=100, precision=precision)
    assert half.parity.ok and half.parity.min_agreement < 1.0 and half.parity.tolerance > export.FP32_TOLERANCE
    assert 0 < half.parity.max_abs_diff  # really computed in half precision
    if fmt == "onnx":  # pt2/TorchScript archives carry more than weights
        assert half.bytes < 0.85 * full.bytes  # a width-4 net: graph overhead weighs; 0.55x on the default CNN
        from tocha.deploy.measure import open_artifact

        artifact = open_artifact(str(half.path))  # float32 in, float32 out, like every export
        assert artifact.meta["precision"] == "fp16" and artifact.predict(torch.randn(3, 1, 8, 8)).dtype == np.float32


def test_parity_check_catches_a_wrong_artifact():
    model = torch.nn.Linear(4, 3)
    x = torch.randn(50, 4)
    good = export.check_parity(model, lambda xb: model(xb).detach().numpy(), x)
    assert good.ok and good.max_abs_diff == 0.0
    shifted = export.check_parity(model, lambda xb: model(xb).detach().numpy() + 1e-3, x)
    assert not shifted.ok and shifted.max_abs_diff == pytest.approx(1e-3, rel=1e-2)
    swapped = export.check_parity(model, lambda xb: model(xb).detach().numpy()[:, ::-1], x)
    assert not swapped.ok and swapped.top1_agreement < 1.0
    wrong_shape = export.check_parity(model, lambda xb: np.zeros((len(xb), 2)), x)
    assert not wrong_shape.ok


def test_a_broken_export_is_refused_and_not_written(run, tmp_path, monkeypatch):
    real = export._onnx

    def broken(*args, **kwargs):
        predict = real(*args, **kwargs)
        return lambda xb: predict(xb) * 1.01  # e.g. a wrongly folded scale

    monkeypatch.setattr(export, "_onnx", broken)
    with pytest.raises(UserError, match="does not match the PyTorch model"):
        export.export_run(run, "onnx", out=tmp_path / "m.onnx", samples=64)
    assert list(tmp_path.iterdir()) == []


def test_onnx_file_alone_predicts_like_the_run(run, tmp_path, capsys):
    target = tmp_path / "m.onnx"
    assert cli(["export", str(run), "--out", str(target), "--no-dynamic-batch", "--samples", "32"]) == 0
    assert "top-1 agreement 100.00%" in capsys.readouterr().out
    images = []
    for i, value in enumerate((30, 200)):
        Image.new("L", (8, 8), value).save(tmp_path / f"{i}.png")
        images.append(str(tmp_path / f"{i}.png"))
    moved = tmp_path / "elsewhere.onnx"
    shutil.move(target, moved)  # no run folder needed
    assert cli(["predict", str(moved), *images]) == 0
    from_onnx = capsys.readouterr().out
    assert cli(["predict", str(run), *images]) == 0
    assert from_onnx == capsys.readouterr().out


@pytest.mark.parametrize(
    "args, words",
    [
        (["--format", "keras"], ["unknown export format", "onnx, pt2"]),
        (["--out", "EXISTING"], ["already exists", "not written by tocha"]),
        (["--out", "EXISTING", "--overwrite"], ["already exists", "not written by tocha"]),  # not tocha's: kept
        (["--out", "nowhere/m.onnx"], ["does not exist"]),
        (["--precision", "int4"], ["unknown precision", "fp32, fp16, bf16"]),
        (["--precision", "bf16"], ["bf16 ONNX", "--precision fp16"]),
    ],
)
def test_bad_export_arguments(run, tmp_path, capsys, args, words):
    existing = tmp_path / "old.onnx"
    existing.write_text("keep")
    args = [str(existing) if a == "EXISTING" else str(tmp_path / a) if a.startswith("nowhere") else a for a in args]
    assert cli(["export", str(run), *args]) == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words) and "Traceback" not in err
    assert existing.read_text() == "keep"


def test_run_without_a_best_checkpoint(run, tmp_path, capsys):
    broken = tmp_path / "run"
    shutil.copytree(run, broken)
    (broken / "checkpoints" / "best.safetensors").unlink()
    assert cli(["export", str(broken)]) == 2
    assert "no best checkpoint" in capsys.readouterr().err
