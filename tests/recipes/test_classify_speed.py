"""The speed options of the classify recipe, through `tocha.fit` on digits (seconds each)."""

from __future__ import annotations

import logging

import pytest
import torch

import tocha

FAST = dict(epochs=2, batch_size=64, threads=1, log={"tensorboard": False})


def test_resident_and_dataloader_runs_train_identically():
    a = tocha.fit("cnn", "digits", data={"resident": True, "augment": ["flip", "crop"]}, **FAST)
    b = tocha.fit("cnn", "digits", data={"resident": False, "augment": ["flip", "crop"]}, **FAST)
    assert a.val.accuracy == b.val.accuracy and a.test.accuracy == b.test.accuracy
    for (name, wa), (_, wb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(wa, wb), name


def test_failed_compile_falls_back_to_eager_with_a_message(monkeypatch, caplog):
    def broken(model, *args, **kwargs):
        raise RuntimeError("no C++ compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    with caplog.at_level(logging.INFO, logger="tocha"):
        result = tocha.fit("mlp", "digits", compile=True, **FAST)
    assert "torch.compile failed, training eagerly instead (RuntimeError: no C++ compiler here)" in caplog.text
    assert result.test.accuracy > 0.1


def test_thread_count_is_measured_on_cpu(caplog):
    with caplog.at_level(logging.INFO, logger="tocha"):
        tocha.fit("mlp", "digits", **{**FAST, "threads": "auto", "epochs": 1})
    threads_line = next(m for m in caplog.messages if m.startswith("threads"))
    assert "measured ms/step" in threads_line or "1 usable CPU core" in threads_line


def test_constant_learning_rate_needs_no_scheduler():
    result = tocha.fit("mlp", "digits", scheduler="none", optimizer="sgd", lr=0.2, **FAST)
    assert {r["lr"] for r in result.history} == {0.2}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_epoch_makes_no_host_sync_inside_the_step():
    """The resident data path and the step never wait for the GPU: sync debug mode turns any sync into an error."""
    from tocha.engine.batches import DeviceTransform, ResidentBatches

    dev = torch.device("cuda")
    x = torch.randint(0, 256, (512, 1, 28, 28), dtype=torch.uint8)
    y = torch.randint(0, 10, (512,))
    t = DeviceTransform((0.3,), (0.3,), augment=("flip", "crop"), device=dev, channels_last=True)
    batches = ResidentBatches(x, y, 64, device=dev, transform=t, train=True)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 26 * 26, 10)
    ).to(dev, memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), fused=True)
    loss_sum = torch.zeros((), device=dev)
    batches.set_epoch(0)
    order = iter(batches)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for xb, yb in order:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            loss_sum.add_(loss.detach(), alpha=yb.shape[0])
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert loss_sum.item() > 0
