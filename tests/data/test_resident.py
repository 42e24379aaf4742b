"""data.resident: which data becomes device tensors, and decoding file datasets once."""

from __future__ import annotations

import pytest
import torch

from tocha.data import load_data, resident
from tocha.data.tensors import splits_from_dataset, splits_from_tensors
from tocha.errors import UserError

CPU = torch.device("cpu")


def tensor_splits(n: int = 40):
    x = torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8)
    return splits_from_tensors(x, torch.arange(n) % 4, val_fraction=0.25)


def test_in_memory_data_is_resident_and_prepared_once():
    r = resident.decide(tensor_splits(), "auto", CPU)
    assert r.resident and r.prepare_once
    assert "resident tensors" in r.reason and "normalised once" in r.reason


def test_false_always_uses_the_dataloader():
    r = resident.decide(tensor_splits(), False, CPU)
    assert not r.resident and "data.resident=false" in r.reason


def test_float_copy_over_budget_normalises_per_batch(monkeypatch):
    data = tensor_splits()  # 40 x 64 bytes stored, 4x that as float32
    monkeypatch.setattr(resident, "memory_budget", lambda device: (40 * 64 * 2, "test budget"))
    r = resident.decide(data, "auto", CPU)
    assert r.resident and not r.prepare_once and "normalised per batch" in r.reason


def test_image_folder_is_decoded_once_when_it_fits(tmp_path, fixtures):
    fixtures.make_image_folder(tmp_path, {"a": 6, "b": 6})
    data = load_data("imagefolder", root=str(tmp_path), image_size=8, val_fraction=0.25)
    r = resident.decide(data, "auto", CPU)
    assert r.resident and "decoded once" in r.reason
    held = resident.materialise(data, workers=0)
    for before, after in ((data.train, held.train), (data.val, held.val), (data.test, held.test)):
        assert after.dataset is None and after.inputs.dtype == torch.uint8
        assert torch.equal(after.labels, before.labels)
        assert all(torch.equal(after.inputs[i], before.dataset[i][0]) for i in range(len(before)))


def test_image_folder_over_budget_falls_back_with_the_reason(tmp_path, fixtures, monkeypatch):
    fixtures.make_image_folder(tmp_path, {"a": 6, "b": 6})
    data = load_data("imagefolder", root=str(tmp_path), image_size=8, val_fraction=0.25)
    monkeypatch.setattr(resident, "memory_budget", lambda device: (100, "test budget"))
    r = resident.decide(data, "auto", CPU)
    assert not r.resident and "over the budget" in r.reason and "test budget" in r.reason
    with pytest.raises(UserError) as e:
        resident.decide(data, True, CPU)
    assert "data.resident" in e.value.where and "data.resident=auto" in e.value.fix


class RandomItems(torch.utils.data.Dataset):
    """A Dataset with a random transform inside: each read differs."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i):
        return torch.randint(0, 256, (1, 4, 4), dtype=torch.uint8), i % 2


def test_dataset_with_random_items_is_not_frozen():
    data = splits_from_dataset(RandomItems(), val_fraction=0.25)
    r = resident.decide(data, "auto", CPU)
    assert not r.resident and "differ between reads" in r.reason
    assert resident.decide(data, True, CPU).resident  # the user insisted
