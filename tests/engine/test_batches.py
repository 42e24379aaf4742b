"""The two data paths (resident tensors, DataLoader) and the on-device augmentation."""

from __future__ import annotations

import time

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from tocha.engine.batches import DeviceTransform, LoaderBatches, ResidentBatches, TensorItems

CPU = torch.device("cpu")


def images(n: int = 37, c: int = 3, s: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, s, s), dtype=torch.uint8, generator=g), torch.arange(n) % 5


def transform(seed: int = 7, augment=("crop", "flip"), channels_last: bool = False) -> DeviceTransform:
    return DeviceTransform(
        (0.4, 0.5, 0.6),
        (0.2, 0.25, 0.3),
        augment=augment,
        crop_padding=2,
        device=CPU,
        seed=seed,
        channels_last=channels_last,
    )


@pytest.mark.parametrize("prepare_once", [True, False])
@pytest.mark.parametrize("channels_last", [True, False])
def test_resident_and_dataloader_paths_give_identical_batches(prepare_once, channels_last):
    x, y = images()
    resident = ResidentBatches(
        x,
        y,
        8,
        device=CPU,
        transform=transform(channels_last=channels_last),
        train=True,
        seed=3,
        prepare_once=prepare_once,
    )
    loader = LoaderBatches(
        TensorItems(x, y), 8, device=CPU, transform=transform(channels_last=channels_last), train=True, seed=3
    )
    assert len(resident) == len(loader) == 5
    for epoch in range(2):  # a new order each epoch, the same on both paths
        resident.set_epoch(epoch), loader.set_epoch(epoch)
        pairs = list(zip(resident, loader, strict=True))
        for (xr, yr), (xl, yl) in pairs:
            assert torch.equal(yr, yl)
            assert torch.equal(xr, xl)  # bit for bit: same normalisation, same crops and flips
            assert xr.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert sorted(torch.cat([b[1] for b in resident]).tolist()) == sorted(y.tolist())


def test_evaluation_batches_are_in_order_and_unaugmented():
    x, y = images(n=10)
    t = transform()
    batches = ResidentBatches(x, y, 4, device=CPU, transform=t, train=False)
    got = torch.cat([b[0] for b in batches])
    assert torch.equal(got, t.prepare(x))
    assert torch.equal(torch.cat([b[1] for b in batches]), y)


def test_device_augmentation_matches_torchvision_reference():
    """Flip then zero-padded random crop, per image with torchvision, from the same random draws."""
    x, _ = images(n=16, s=6)
    t = transform(seed=11)
    out = t(x, train=True)
    g = torch.Generator().manual_seed(11)
    flips = torch.rand(16, generator=g) < 0.5
    shifts = torch.randint(0, 5, (2, 16), generator=g)
    prepared = t.prepare(x)
    for i in range(16):
        ref = TF.horizontal_flip(prepared[i]) if flips[i] else prepared[i]
        ref = TF.pad(ref, [2, 2, 2, 2], fill=0.0)
        ref = TF.crop(ref, int(shifts[0, i]), int(shifts[1, i]), 6, 6)
        assert torch.equal(out[i], ref), i
    assert flips.any() and not flips.all() and (shifts != 2).any()  # the draws really vary


def test_flat_features_pass_through_untouched():
    x = torch.randn(12, 5)
    batches = ResidentBatches(x, torch.zeros(12, dtype=torch.long), 4, device=CPU, transform=transform(), train=True)
    assert torch.equal(torch.cat([b[0] for b in batches]).sort(0).values, x.sort(0).values)


class SlowItems(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 6

    def __getitem__(self, i):
        time.sleep(0.02)
        return torch.zeros(1, 4, 4, dtype=torch.uint8), i % 2


def test_loader_reports_time_spent_waiting_for_data():
    batches = LoaderBatches(SlowItems(), 2, device=CPU, transform=transform(augment=()), train=True)
    assert batches.wait_seconds == 0.0
    assert len(list(batches)) == 3
    assert batches.wait_seconds >= 6 * 0.02 * 0.9


@pytest.mark.parametrize("path", ["resident", "loader"])
def test_an_epoch_can_start_at_any_batch_for_a_resume(path):
    x, y = images()

    def make():
        t = transform(augment=())
        if path == "resident":
            return ResidentBatches(x, y, 8, device=CPU, transform=t, train=True, seed=5)
        return LoaderBatches(TensorItems(x, y), 8, device=CPU, transform=t, train=True, seed=5)

    full = make()
    full.set_epoch(1)
    expected = list(full)
    for first in (0, 2, 4, 5):
        batches = make()
        batches.set_epoch(1, first)
        assert len(batches) == len(expected)  # the length of the whole epoch, as the loop counts it
        got = list(batches)
        assert len(got) == len(expected) - first
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(got, expected[first:]))
        assert len(list(batches)) == len(expected)  # the next epoch starts from its beginning again


def test_random_erasing_sets_one_box_per_image_to_the_mean_with_the_published_odds():
    from tocha.engine import batches

    x = torch.randn(4000, 3, 28, 28).abs() + 1.0  # never 0 before erasing
    out = DeviceTransform(None, None, augment=("erase",), device=CPU, seed=3).augment(x.clone())
    erased = out == 0
    assert torch.equal(out[~erased], x[~erased])  # nothing else changes
    assert torch.equal(erased[:, :1].expand_as(erased), erased)  # the same box on every channel
    hit = erased[:, 0].flatten(1).any(1)
    assert abs(hit.float().mean().item() - batches.ERASE_P) < 0.03
    for img in erased[hit, 0][:200]:  # each erased region is one filled rectangle
        rows, cols = img.any(1).nonzero().flatten(), img.any(0).nonzero().flatten()
        h, w = len(rows), len(cols)
        assert rows[-1] - rows[0] + 1 == h and cols[-1] - cols[0] + 1 == w and img.sum() == h * w
        assert 1 <= h * w <= 0.33 * 28 * 28 * 1.15  # the area range, up to rounding of the sides
    shares = erased[hit, 0].flatten(1).float().mean(1)
    assert shares.min() < 0.05 and shares.max() > 0.25  # boxes of many sizes, not one
    # Each image draws its own box, and the same seed draws the same boxes.
    assert len({tuple(e.nonzero()[0].tolist()) for e in erased[hit, 0][:50]}) > 40
    again = DeviceTransform(None, None, augment=("erase",), device=CPU, seed=3).augment(x.clone())
    assert torch.equal(again, out)


def test_erase_is_a_data_augment_choice_and_trains(tmp_path):
    from tocha.cli import main as cli

    out = tmp_path / "run"
    args = ["train", "data=digits", "model=cnn", "epochs=1", "data.augment=erase", f"out={out}", "log.progress=false"]
    assert cli(args) == 0
    import yaml

    assert yaml.safe_load((out / "config.yaml").read_text())["data"]["augment"] == ["erase"]
