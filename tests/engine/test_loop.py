import io

import pytest
import torch
from torch import nn

from tocha.engine.batches import DeviceTransform, ResidentBatches
from tocha.engine.loop import train_loop
from tocha.engine.optim import build_optimizer, build_scheduler
from tocha.engine.progress import Progress

CPU = torch.device("cpu")


def _data(n=512, d=20, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, k, generator=g)
    return x, (x @ w).argmax(1)


def _mlp(d=20, k=4, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, 32), nn.ReLU(), nn.Linear(32, k))


def _train(
    model,
    x,
    y,
    *,
    batch_size,
    accum=1,
    epochs=1,
    lr=0.1,
    log_every=1000,
    on_log=None,
    optimizer="sgd",
    scheduler="none",
    progress=None,
):
    batches = ResidentBatches(
        x, y, batch_size, device=CPU, transform=DeviceTransform(None, None, device=CPU), train=True, seed=0
    )
    opt = build_optimizer(model, optimizer, lr=lr, momentum=0.9 if optimizer == "sgd" else 0.0)
    steps = -(-len(batches) // accum)
    sched = build_scheduler(opt, scheduler, total_steps=epochs * steps, steps_per_epoch=steps)
    return train_loop(
        model,
        batches,
        device=CPU,
        optimizer=opt,
        scheduler=sched,
        epochs=epochs,
        loss_fn=nn.CrossEntropyLoss(),
        grad_accum_steps=accum,
        log_every=log_every,
        on_log=on_log,
        progress=progress,
    )


def test_grad_accumulation_4x32_equals_1x128():
    x, y = _data()
    a, b = _mlp(), _mlp()
    _train(a, x, y, batch_size=128, epochs=2)
    _train(b, x, y, batch_size=32, accum=4, epochs=2)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-6, rtol=0), (pa - pb).abs().max()


def test_short_last_accumulation_group_is_averaged_over_its_real_size():
    # 5 micro-batches with accum 4: the last step averages 1 micro-batch, like a plain batch would.
    x, y = _data(n=160)
    a, b = _mlp(), _mlp()
    _train(a, x, y, batch_size=32, accum=4)
    # Reference: same order, steps of 128 then 32 samples, each averaged over its own samples.
    perm = torch.randperm(160, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9)
    for idx in (perm[:128], perm[128:]):
        nn.functional.cross_entropy(b(x[idx]), y[idx]).backward()
        opt.step()
        opt.zero_grad()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-6, rtol=0)


def test_golden_loss_after_20_deterministic_steps():
    """Pins the loss after 20 CPU steps: any unintended change to the step shows up here."""
    x, y = _data()
    records = []
    _train(
        _mlp(),
        x,
        y,
        batch_size=32,
        epochs=2,
        log_every=20,
        on_log=records.append,
        optimizer="adamw",
        lr=1e-2,
        scheduler="cosine",
    )
    first = records[0]
    assert first["step"] == 20
    assert first["train.loss"] == pytest.approx(1.021934, rel=1e-4)


def test_training_learns_and_history_is_ordered():
    x, y = _data()
    result = _train(_mlp(), x, y, batch_size=32, epochs=3, log_every=5)
    evals = [r for r in result.history if r["kind"] == "eval"]
    assert len(evals) == 3 and [r["epoch"] for r in evals] == [1, 2, 3]
    assert evals[-1]["train.accuracy"] > 0.8 and evals[-1]["train.loss"] < evals[0]["train.loss"]
    steps = [r["step"] for r in result.history]
    assert steps == sorted(steps) and result.steps == 3 * 16


def test_progress_without_tty_prints_one_line_per_epoch():
    x, y = _data()
    stream = io.StringIO()
    progress = Progress(epochs=2, steps_per_epoch=16, stream=stream, tty=False)
    _train(_mlp(), x, y, batch_size=32, epochs=2, log_every=2, progress=progress)
    text = stream.getvalue()
    assert "\r" not in text
    lines = text.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("epoch 1/2") and "train.loss" in lines[0]


def test_device_transform_normalises_and_augments_shapes():
    x = torch.randint(0, 256, (8, 3, 6, 6), dtype=torch.uint8)
    plain = DeviceTransform((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), device=CPU)
    out = plain(x, train=True)
    assert out.dtype == torch.float32
    assert torch.allclose(out, (x.float() / 255 - 0.5) / 0.25)
    aug = DeviceTransform(None, None, augment=("crop", "flip"), crop_padding=2, device=CPU, seed=1)
    a = aug(x, train=True)
    assert a.shape == x.shape
    assert torch.equal(aug(x, train=False), x.float() / 255)  # no augmentation at evaluation
    # A crop only shifts: every output value is an input value or the zero padding.
    allowed = set((x.float() / 255).unique().tolist()) | {0.0}
    assert set(a.unique().tolist()) <= allowed


def test_flip_really_flips_some_images():
    x = torch.arange(2 * 16, dtype=torch.float32).view(2, 1, 4, 4).repeat(16, 1, 1, 1)
    out = DeviceTransform(None, None, augment=("flip",), device=CPU, seed=0)(x, train=True)
    flipped = [torch.equal(o, i.flip(2)) for o, i in zip(out, x)]
    kept = [torch.equal(o, i) for o, i in zip(out, x)]
    assert any(flipped) and any(kept) and all(f or k for f, k in zip(flipped, kept))


def test_resident_batches_order_depends_on_seed_and_epoch_only():
    x, y = torch.arange(10).float().view(10, 1), torch.arange(10)
    t = DeviceTransform(None, None, device=CPU)
    a = ResidentBatches(x, y, 4, device=CPU, transform=t, train=True, seed=3)
    b = ResidentBatches(x, y, 4, device=CPU, transform=t, train=True, seed=3)
    first = torch.cat([yy for _, yy in a])
    assert torch.equal(first, torch.cat([yy for _, yy in b]))
    assert sorted(first.tolist()) == list(range(10))
    a.set_epoch(1)
    assert not torch.equal(first, torch.cat([yy for _, yy in a]))
    evaluation = ResidentBatches(x, y, 4, device=CPU, transform=t, train=False)
    assert torch.cat([yy for _, yy in evaluation]).tolist() == list(range(10))
    assert len(evaluation) == 3


def test_last_training_batch_of_one_is_dropped():
    x, y = torch.zeros(9, 1), torch.zeros(9, dtype=torch.long)
    batches = ResidentBatches(x, y, 4, device=CPU, transform=DeviceTransform(None, None, device=CPU), train=True)
    assert len(batches) == 2 and sum(len(b[1]) for b in batches) == 8


def test_accuracy_counts_every_target_of_a_sequence_model():
    """For a language model, logits [B, T, V] are scored per token: accuracy = correct tokens / tokens."""
    from tocha.engine.loop import top1_correct

    logits = torch.tensor([[[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]]])  # [1, 3, 2]: predicts 0, 1, 0
    y = torch.tensor([[0, 0, 0]])
    hits, n = top1_correct(logits, y)
    assert (int(hits), n) == (2, 3)


def test_accumulation_weights_samples_when_the_last_group_is_short():
    # 1,000 samples: the epoch's last group is (32, 32, 32, 8); each sample must count once, as in batch 128.
    x, y = _data(n=1000)
    a, b = _mlp(), _mlp()
    _train(a, x, y, batch_size=128, epochs=2)
    _train(b, x, y, batch_size=32, accum=4, epochs=2)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-6, rtol=0), (pa - pb).abs().max()


def test_fp16_group_of_skipped_batches_steps_nothing():
    """precision=fp16 with on_nonfinite=skip: a group whose every micro-batch is NaN takes no step."""
    from tocha.engine.state import LoopState
    from tocha.engine.step import Stepper

    x, y = _data(n=64)
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    stepper = Stepper(
        model, opt, sched, device=CPU, loss_fn=nn.CrossEntropyLoss(), precision="fp16", skip_nonfinite=True
    )
    state = LoopState()
    before = [p.detach().clone() for p in model.parameters()]
    bad = x[:32].clone()
    bad[0, 0] = float("nan")
    scale = stepper.scaler.get_scale()
    assert stepper.step([(bad, y[:32])], state) == 0
    assert state.skipped_steps == 1 and state.seen == 0
    assert stepper.scaler.get_scale() == scale and sched.last_epoch == 0  # no update, no schedule step
    assert all(torch.equal(p0, p) for p0, p in zip(before, model.parameters()))
    assert stepper.step([(x[32:], y[32:])], state) == 32  # a good group still steps
    assert sched.last_epoch == 1 and not all(torch.equal(p0, p) for p0, p in zip(before, model.parameters()))
