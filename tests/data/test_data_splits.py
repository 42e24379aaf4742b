import numpy as np
import pytest
import torch

from tocha.data import splits as splits_mod
from tocha.data.splits import can_stratify, channel_stats, split_off, stratified_split
from tocha.data.types import Split
from tocha.errors import UserError


def _imbalanced_labels():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 17 + [3] * 3)
    return labels[torch.randperm(100, generator=torch.Generator().manual_seed(5))]


def test_stratified_split_keeps_class_proportions_within_one_example():
    labels = _imbalanced_labels()
    keep, held = stratified_split(labels, 0.25, seed=0)
    assert len(held) == 25 and len(keep) == 75
    assert torch.cat([keep, held]).sort().values.tolist() == list(range(100))
    assert keep.tolist() == sorted(keep.tolist()) and held.tolist() == sorted(held.tolist())
    counts = torch.bincount(labels).double()
    held_counts = torch.bincount(labels[held], minlength=4).double()
    assert ((held_counts - counts * 0.25).abs() < 1).all(), held_counts


def test_stratified_split_is_seeded():
    labels = _imbalanced_labels()
    a = stratified_split(labels, 0.2, seed=3)
    b = stratified_split(labels, 0.2, seed=3)
    c = stratified_split(labels, 0.2, seed=4)
    assert torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_fraction_zero_holds_nothing():
    keep, held = stratified_split(torch.tensor([0, 1, 0, 1]), 0.0, seed=0)
    assert keep.tolist() == [0, 1, 2, 3] and held.numel() == 0
    split = Split(labels=torch.tensor([0, 1, 0, 1]), inputs=torch.zeros(4, 2))
    kept, val, notes = split_off(split, 0.0, 0)
    assert kept is split and val is None and notes == ()


def test_singleton_class_falls_back_to_random_split_with_a_note():
    labels = torch.tensor([0] * 10 + [1] * 9 + [2])
    assert not can_stratify(labels)
    split = Split(labels=labels, inputs=torch.arange(20).float().unsqueeze(1))
    kept, held, notes = split_off(split, 0.2, seed=1)
    assert len(held) == 4 and len(kept) == 16
    assert len(notes) == 1 and "not stratified" in notes[0]
    # the held-out inputs are the rows of the held-out labels
    assert torch.equal(labels[held.inputs[:, 0].long()], held.labels)


def test_bad_fractions_are_user_errors():
    labels = torch.tensor([0, 1] * 5)
    for fraction in (-0.1, 1.0, 1.5):
        with pytest.raises(UserError, match="val_fraction"):
            stratified_split(labels, fraction, 0)
    with pytest.raises(UserError, match="cannot hold out"):
        stratified_split(torch.tensor([0]), 0.2, 0)


def test_channel_stats_match_direct_computation():
    x = torch.randint(0, 256, (300, 3, 7, 7), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    x[:, 1] //= 4  # make the channels differ
    mean, std = channel_stats(Split(labels=torch.zeros(300, dtype=torch.int64), inputs=x))
    direct = x.double().div(255)
    np.testing.assert_allclose(mean, direct.mean(dim=(0, 2, 3)).numpy(), rtol=1e-12)
    np.testing.assert_allclose(std, direct.std(dim=(0, 2, 3), unbiased=False).numpy(), rtol=1e-9)
    assert mean[1] < mean[0] / 2


def test_channel_stats_none_for_float_inputs():
    split = Split(labels=torch.zeros(4, dtype=torch.int64), inputs=torch.rand(4, 1, 3, 3))
    assert channel_stats(split) == (None, None)


class _Counting(torch.utils.data.Dataset):
    def __init__(self, images):
        self.images, self.reads = images, 0

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        self.reads += 1
        return self.images[i], 0


def test_channel_stats_of_a_dataset_is_exact_when_small_and_capped_when_large(monkeypatch):
    x = torch.randint(0, 256, (50, 1, 4, 4), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    ds = _Counting(x)
    mean, std = channel_stats(Split(labels=torch.zeros(50, dtype=torch.int64), dataset=ds))
    assert mean[0] == pytest.approx(x.double().mean().item() / 255, rel=1e-12)
    assert std[0] == pytest.approx(x.double().std(unbiased=False).item() / 255, rel=1e-9)

    monkeypatch.setattr(splits_mod, "STATS_SAMPLE_IMAGES", 10)
    ds = _Counting(x)
    first = channel_stats(Split(labels=torch.zeros(50, dtype=torch.int64), dataset=ds))
    assert ds.reads <= 11  # the cap plus one look at the first item
    again = channel_stats(Split(labels=torch.zeros(50, dtype=torch.int64), dataset=_Counting(x)))
    assert first == again  # fixed seed: the same sample every time
