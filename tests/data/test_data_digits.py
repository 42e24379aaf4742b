import numpy as np
import pytest
import torch

from tocha.data import load_data


@pytest.fixture(scope="module")
def seed0():
    return load_data("digits", seed=0)


def test_sizes_and_types(seed0):
    d = seed0
    assert len(d.train) + len(d.val) + len(d.test) == 1797
    assert len(d.test) == 359 and len(d.val) == 288
    assert d.train.inputs.shape[1:] == (1, 8, 8) and d.train.inputs.dtype == torch.uint8
    assert d.classes == tuple("0123456789") and (d.in_channels, d.image_size) == (1, 8)
    assert int(d.train.inputs.max()) == 255
    assert any("test split" in n and "seed 0" in n for n in d.notes)
    assert d.mean[0] == pytest.approx(d.train.inputs.double().mean().item() / 255, rel=1e-12)


def test_values_are_scaled_from_sklearn(seed0):
    from sklearn.datasets import load_digits

    expected = np.round(load_digits().images * 255 / 16).astype(np.uint8)
    have = {bytes(r) for r in expected.reshape(len(expected), -1)}
    assert all(bytes(r) in have for r in seed0.test.inputs.reshape(len(seed0.test), -1).numpy())


def test_test_split_is_fixed_and_val_follows_the_seed(seed0):
    other = load_data("digits", seed=7)
    assert torch.equal(seed0.test.inputs, other.test.inputs)
    assert torch.equal(seed0.test.labels, other.test.labels)
    assert not torch.equal(seed0.val.inputs, other.val.inputs)
    assert len(seed0.val) == len(other.val)
    # stratified test split: each class within one image of 20%
    counts = torch.bincount(torch.cat([seed0.train.labels, seed0.val.labels, seed0.test.labels])).double()
    assert ((torch.bincount(seed0.test.labels).double() - counts * 359 / 1797).abs() < 1).all()


def test_image_size_and_channels():
    d = load_data("digits", image_size=16, channels="3", val_fraction=0.0)
    assert d.val is None
    assert d.train.inputs.shape[1:] == (3, 16, 16) and d.test.inputs.shape[1:] == (3, 16, 16)
    assert (d.in_channels, d.image_size) == (3, 16)


def test_root_is_ignored_with_a_note(tmp_path):
    d = load_data("digits", root=str(tmp_path))
    assert "ignored" in d.notes[0]
