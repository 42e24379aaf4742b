import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, Subset

from tocha.data.tensors import splits_from_dataset, splits_from_tensors
from tocha.errors import UserError


def _images(n=40, shape=(12, 12), seed=0):
    return torch.randint(0, 256, (n, *shape), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_uint8_hw_images_get_a_channel_and_stats():
    x, y = _images(), torch.arange(40) % 4
    d = splits_from_tensors(x, y, val_fraction=0.25, seed=0)
    assert d.train.inputs.shape == (30, 1, 12, 12) and d.val.inputs.shape == (10, 1, 12, 12)
    assert (d.in_channels, d.image_size, d.classes) == (1, 12, ("0", "1", "2", "3"))
    assert d.test is None and d.train.labels.dtype == torch.int64
    assert sorted(torch.bincount(d.val.labels).tolist()) == [2, 2, 3, 3]  # 2.5 each, rounded
    assert d.mean[0] == pytest.approx(d.train.inputs.double().mean().item() / 255, rel=1e-12)


def test_numpy_rgb_images_with_given_val_and_test():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (20, 3, 8, 8), dtype=np.uint8)
    val = (rng.integers(0, 256, (6, 3, 8, 8), dtype=np.uint8), np.array([0, 1, 2, 0, 1, 2]))
    test = (rng.integers(0, 256, (5, 3, 8, 8), dtype=np.uint8), np.array([0, 1, 2, 3, 4]))
    d = splits_from_tensors(x, np.arange(20) % 3, val=val, test=test, classes=list("abcde"))
    assert len(d.train) == 20 and len(d.val) == 6 and len(d.test) == 5  # nothing split off train
    assert torch.equal(d.train.inputs, torch.from_numpy(x))
    assert d.classes == ("a", "b", "c", "d", "e") and d.in_channels == 3 and len(d.mean) == 3
    # default class names cover labels of every split, not just train
    assert len(splits_from_tensors(x, np.arange(20) % 3, test=test).classes) == 5


def test_float_images_and_flat_features_are_not_normalised():
    d = splits_from_tensors(torch.rand(10, 2, 6, 6), torch.arange(10) % 2, val_fraction=0.0)
    assert (d.in_channels, d.image_size, d.mean, d.std) == (2, 6, None, None)
    flat = splits_from_tensors(np.random.rand(30, 7), np.arange(30) % 3)
    assert (flat.in_channels, flat.image_size, flat.mean) == (7, 0, None)
    assert flat.train.inputs.dtype == torch.float32 and flat.train.inputs.shape == (24, 7)
    assert any("float64 to float32" in n for n in flat.notes)


def test_tensor_input_errors():
    x = _images(10)
    with pytest.raises(UserError, match="10 inputs but 9 labels"):
        splits_from_tensors(x, torch.arange(9))
    with pytest.raises(UserError, match="labels must be integers"):
        splits_from_tensors(x, torch.rand(10))
    with pytest.raises(UserError, match=">= 0, found -1"):
        splits_from_tensors(x, torch.arange(10) - 1)
    with pytest.raises(UserError, match="one-dimensional"):
        splits_from_tensors(x, torch.zeros(10, 2, dtype=torch.int64))
    with pytest.raises(UserError, match="uint8 images or floating point"):
        splits_from_tensors(torch.zeros(10, 4, dtype=torch.int32), torch.arange(10))
    with pytest.raises(UserError, match="square"):
        splits_from_tensors(torch.zeros(10, 1, 4, 5, dtype=torch.uint8), torch.arange(10))
    with pytest.raises(UserError, match="val inputs"):
        splits_from_tensors(x, torch.arange(10), val=(_images(4, (8, 8)), torch.arange(4)))
    with pytest.raises(UserError, match="out of range for 2 class names"):
        splits_from_tensors(x, torch.arange(10) % 3, classes=["a", "b"])


class _Pairs(Dataset):
    def __init__(self, images, labels, with_targets):
        self.images, self._labels = images, labels
        if with_targets:
            self.targets = labels.tolist()
            self.classes = ["zero", "one"]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], int(self._labels[i])


@pytest.mark.parametrize("with_targets", [True, False])
def test_splits_from_dataset(with_targets):
    images = _images(20, (3, 5, 5))
    labels = torch.arange(20) % 2
    d = splits_from_dataset(
        _Pairs(images, labels, with_targets), test_ds=_Pairs(images[:4], labels[:4], False), val_fraction=0.2, seed=0
    )
    assert isinstance(d.train.dataset, Subset) and len(d.train) == 16 and len(d.val) == 4 and len(d.test) == 4
    assert (d.in_channels, d.image_size) == (3, 5)
    assert d.classes == (("zero", "one") if with_targets else ("0", "1"))
    for i in range(len(d.val)):
        assert d.val.dataset[i][1] == int(d.val.labels[i])
    assert d.mean[0] == pytest.approx(images[d.train.dataset.indices][:, 0].double().mean().item() / 255, rel=1e-12)


def test_splits_from_dataset_errors():
    class Pil(Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return "not a tensor", i

    with pytest.raises(UserError, match="PILToTensor"):
        splits_from_dataset(Pil())
    bad = _Pairs(torch.rand(4, 3), torch.tensor([0, 1, 0, 1]), True)
    bad.targets = [0, 1, 0]
    with pytest.raises(UserError, match="4 items but 3 targets"):
        splits_from_dataset(bad)
    bad.targets = [0, 1, 0, -2]
    with pytest.raises(UserError, match=">= 0"):
        splits_from_dataset(bad)
    flat = splits_from_dataset(_Pairs(torch.rand(10, 3), torch.arange(10) % 2, False), val_fraction=0.0)
    assert (flat.in_channels, flat.image_size, flat.mean) == (3, 0, None)
