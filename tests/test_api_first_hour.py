"""The Python API as a notebook user meets it: predict, a custom loss, callbacks that stop a run,
DataLoaders, max_steps, honest logs for tensor data."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from torch import nn

import tocha
from tocha.hardware import cpu_lacks_bf16

QUIET = {"threads": 1, "log": {"tensorboard": False, "progress": False}}


def _data(n: int = 400, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return x, (x[:, 0] + 0.5 * x[:, 1] > 0).long()


def _module():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))


def test_custom_loss_replaces_the_task_loss_and_the_train_curve_is_a_per_interval_mean():
    x, y = _data(320)
    calls = []

    def counting_loss(out, target):  # 1, 2, 3, ... : a per-interval mean of 2 steps is 1.5, 3.5, ...
        calls.append(1)
        return out.sum() * 0 + float(len(calls))

    result = tocha.fit(
        _module(), (x, y), epochs=1, batch_size=32, log_every=2, loss=counting_loss, data={"val_fraction": 0.2}, **QUIET
    )
    train = [r["train.loss"] for r in result.history if r["kind"] == "train"]
    assert len(calls) == 8  # 256 train rows / 32: the given loss was used for every step
    assert train == pytest.approx([1.5, 3.5, 5.5, 7.5])  # not the running mean 1.5, 2.5, 3.5, 4.5


def test_regress_takes_a_custom_loss_on_its_squeezed_output(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 3, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5])
    table = tmp_path / "t.csv"
    table.write_text(
        "a,b,c,y\n" + "".join(",".join(f"{v:.5f}" for v in [*r, t]) + "\n" for r, t in zip(x.tolist(), y.tolist()))
    )
    shapes = []

    def l1(pred, target):
        shapes.append((pred.shape, target.shape))
        return (pred - target).abs().mean()

    result = tocha.fit(None, task="regress", data={"path": str(table), "target": "y"}, epochs=30, loss=l1, **QUIET)
    assert shapes and all(p == t and len(p) == 1 for p, t in shapes)
    assert result.summary["val"]["val.rmse"] < 1.0  # the target std is about 2.3


def test_a_callback_stops_the_run_cleanly_with_a_checkpoint(tmp_path):
    x, y = _data()
    seen = {"on_log": 0, "on_eval_end": 0, "checkpoints": []}

    class StopAfterFirstEval:
        def on_log(self, record):
            seen["on_log"] += 1
            record["train.loss"] = -1.0  # a copy: the run's history keeps its own value

        def on_eval_end(self, record, improved):
            seen["on_eval_end"] += 1
            assert improved and "val.accuracy" in record
            raise tocha.StopTraining("one evaluation is enough")

        def on_checkpoint(self, info):
            seen["checkpoints"].append(info)

    out = tmp_path / "run"
    result = tocha.fit(
        _module(), (x, y), epochs=5, batch_size=32, log_every=2, out=str(out), callbacks=[StopAfterFirstEval()], **QUIET
    )
    assert seen["on_eval_end"] == 1 and seen["on_log"] == 5
    assert [c["epoch"] for c in seen["checkpoints"]] == [1] and seen["checkpoints"][0]["run_dir"] == out
    assert all(r["train.loss"] >= 0 for r in result.history)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["early_stop"] == "stopped by a callback at step 10: one evaluation is enough"
    assert list((out / "checkpoints").iterdir())  # it can be resumed
    assert "stopped by a callback" in repr(result) and "best val.accuracy" in repr(result)


def test_dict_callbacks_and_a_stop_from_on_log_mid_epoch():
    x, y = _data()
    steps = []

    def on_log(record):
        steps.append(record["step"])
        if record["step"] >= 4:
            raise tocha.StopTraining("enough steps")

    result = tocha.fit(_module(), (x, y), epochs=3, batch_size=32, log_every=2, callbacks={"on_log": on_log}, **QUIET)
    assert steps == [2, 4] and result.summary["steps"] == 4
    with pytest.raises(tocha.UserError, match="unknown callback hook 'on_step'"):
        tocha.fit(_module(), (x, y), epochs=1, callbacks={"on_step": on_log}, **QUIET)


def test_max_steps_sizes_the_schedule_and_limit_val_batches_evaluates_a_little():
    x, y = _data()
    result = tocha.fit(
        _module(), (x, y), epochs=6, batch_size=32, max_steps=7, limit_val_batches=1, optimizer="adam", **QUIET
    )
    evals = [r for r in result.history if r["kind"] == "eval"]
    assert result.summary["steps"] == 7 and len(evals) == 1 and evals[0]["step"] == 7
    assert result.summary["early_stop"] == "stopped at max_steps=7"
    assert result.val.n_samples == 32  # one batch of the 80 validation rows
    assert evals[0]["lr"] < 5e-4  # onecycle over 7 steps ran down (over 60 it would be near its 3e-3 peak)


def test_predict_uses_the_runs_preprocessing_and_evaluate_matches_fit():
    x, y = _data()
    xv, yv = _data(120, seed=1)
    result = tocha.fit(_module(), (x * 10 + 3, y), (xv * 10 + 3, yv), epochs=3, batch_size=32, **QUIET)
    predictions = tocha.predict(result, xv * 10 + 3)
    assert predictions.probabilities.shape == (120, 2) and len(predictions.labels) == 120
    accuracy = (predictions.indices == yv).float().mean().item()
    assert accuracy == pytest.approx(result.summary["val"]["val.accuracy"])
    assert tocha.evaluate(result.model, (xv * 10 + 3, yv)).metrics.accuracy == pytest.approx(accuracy)
    dataset = torch.utils.data.TensorDataset(xv * 10 + 3, yv)
    assert torch.equal(tocha.predict(result.model, dataset).indices, predictions.indices)
    with pytest.raises(tocha.UserError, match="no tocha metadata"):
        tocha.predict(_module(), xv)


def test_predict_image_files_from_a_run_folder(tmp_path):
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    y = torch.arange(64) % 2
    x = (torch.rand(64, 1, 8, 8, generator=g) * 60 + y.view(-1, 1, 1, 1) * 180).to(torch.uint8)
    out = tmp_path / "run"
    tocha.fit("mlp", (x, y), epochs=3, batch_size=16, out=str(out), classes=["dark", "bright"], **QUIET)
    files = []
    for i in range(4):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(x[i, 0].numpy()).resize((16, 16)).save(path)  # another size: resized as in training
        files.append(str(path))
    from_files = tocha.predict(str(out), files)
    assert from_files.names == tuple(files) and from_files.labels == ["dark", "bright", "dark", "bright"]
    assert from_files.top(1)[0][0][0] == "dark"


def test_a_dataloader_is_accepted_and_tensor_data_is_not_called_fashion_mnist(caplog):
    x, y = _data()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=40, shuffle=True)
    with caplog.at_level(logging.INFO, logger="tocha"):
        result = tocha.fit(_module(), loader, epochs=1, verbose=False, **QUIET)
    text = "\n".join(caplog.messages)
    assert "train_data is a DataLoader (batch_size 40)" in text
    assert "batches    resident tensors" in text  # items that repeat and fit: held in memory
    assert "fashion-mnist" not in text and "data       in-memory data: 320 train" in text
    assert result.summary["batch_size_global"] == 40
    hardware = [line for line in text.splitlines() if line.startswith(("hardware", "device", "precision"))]
    assert len(hardware) == 1 and hardware[0].startswith("hardware   cpu, fp32, 1 thread(s)")


class _Noisy(torch.utils.data.Dataset):
    """Items that differ between reads (a random transform inside), counted per read."""

    def __init__(self, x, y):
        self.x, self.y, self.reads = x, y, 0

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        self.reads += 1
        return self.x[i] + 0.01 * torch.randn(self.x.shape[1]), int(self.y[i])


def test_a_dataloader_that_cannot_be_resident_makes_the_batches_itself(caplog):
    x, y = _data()
    seen = []

    def collate(items):  # the user's own collate_fn: it must be the one that makes every batch
        seen.append(len(items))
        return torch.stack([a for a, _ in items]), torch.tensor([b for _, b in items])

    train = torch.utils.data.DataLoader(_Noisy(x[:320], y[:320]), batch_size=32, shuffle=True, collate_fn=collate)
    val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[320:], y[320:]), batch_size=40)
    with caplog.at_level(logging.INFO, logger="tocha"):
        result = tocha.fit(_module(), train, val, epochs=2, lr=0.05, verbose=False, **QUIET)
    text = "\n".join(caplog.messages)
    assert "batches    the DataLoader as given, not held in memory: its collate_fn (collate) makes the batches" in text
    assert seen.count(32) >= 2 * 10  # every training batch of both epochs went through it
    assert "data.workers (now 0)" in text or "input bound" not in text  # the loader's own workers
    assert result.summary["batch_size_global"] == 32 and result.val.accuracy > 0.8


def test_a_dataloader_with_its_own_sampler_keeps_it_and_needs_a_validation_split():
    x, y = _data()
    weights = torch.where(y[:320] == 1, 3.0, 1.0)
    sampler = torch.utils.data.WeightedRandomSampler(
        weights, num_samples=160, generator=torch.Generator().manual_seed(0)
    )
    train = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x[:320], y[:320]), batch_size=16, sampler=sampler
    )
    with pytest.raises(tocha.UserError, match="its own sampler .WeightedRandomSampler.*validation") as info:
        tocha.fit(_module(), train, epochs=1, verbose=False, **QUIET)
    assert "val_data=" in info.value.fix
    result = tocha.fit(_module(), train, (x[320:], y[320:]), epochs=1, verbose=False, **QUIET)
    assert result.summary["steps"] == 160 // 16  # the sampler's 160 draws, not the dataset's 320


def test_bf16_on_a_cpu_without_bf16_instructions_is_named():
    assert (
        cpu_lacks_bf16("flags\t\t: fpu avx2 avx512f") == "the CPU has neither avx512_bf16 nor amx_bf16 in /proc/cpuinfo"
    )
    assert cpu_lacks_bf16("flags\t\t: fpu avx512_bf16") == ""
    assert cpu_lacks_bf16("Features\t: fp asimd") == ""  # ARM: not judged
    from tocha.hardware import plan

    reason = plan("cpu", "bf16", "auto", "auto").reasons["precision"]
    assert ("slow here" in reason) == bool(cpu_lacks_bf16())
