import subprocess
import sys

import pytest
import torch

from tocha.data import DATASETS, DataSplits, Split, load_data
from tocha.errors import UserError


def test_registry_names():
    assert set(DATASETS) == {"fashion-mnist", "digits", "imagefolder", "csv"}
    assert all(isinstance(v, str) and v and "\n" not in v for v in DATASETS.values())


def test_importing_the_registry_does_not_import_torch():
    heavy = "('torch', 'numpy', 'sklearn', 'PIL', 'torchvision')"
    code = f"import sys, tocha.data; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_unknown_name_suggests_the_closest():
    with pytest.raises(UserError) as err:
        load_data("fashion_mnist")
    msg = str(err.value)
    assert "'fashion_mnist'" in msg and "data.name" in msg and "did you mean 'fashion-mnist'?" in msg
    assert "digits" in msg and "imagefolder" in msg


def test_bad_arguments_are_user_errors():
    with pytest.raises(UserError, match="data.channels"):
        load_data("digits", channels="2")
    with pytest.raises(UserError, match="image_size"):
        load_data("digits", image_size=0)
    with pytest.raises(UserError, match="val_fraction"):
        load_data("digits", val_fraction=1.0)


def test_every_registered_dataset_loads_or_explains(tmp_path, fixtures):
    """Contract: each registry entry returns a consistent DataSplits (tiny local data only)."""
    fixtures.write_fashion_files(tmp_path / "fm")
    fixtures.make_image_folder(tmp_path / "img", {"a": 5, "b": 5})
    roots = {"fashion-mnist": str(tmp_path / "fm"), "digits": None, "imagefolder": str(tmp_path / "img")}
    for name in DATASETS:
        if name == "csv":  # a table: flat features, checked in tests/data/test_csv.py
            continue
        d = load_data(name, root=roots[name], image_size=8)
        assert isinstance(d, DataSplits) and d.image_size == 8
        for split in (d.train, d.val, d.test):
            assert isinstance(split, Split) and split.labels.dtype == torch.int64
            assert int(split.labels.max()) < len(d.classes)
            x = split.inputs[0] if split.inputs is not None else split.dataset[0][0]
            assert x.dtype == torch.uint8 and x.shape == (d.in_channels, 8, 8)
        assert len(d.mean) == len(d.std) == d.in_channels
        assert all(0 < m < 1 for m in d.mean)


def test_split_holds_exactly_one_source():
    with pytest.raises(ValueError):
        Split(labels=torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError):
        Split(labels=torch.zeros(2, dtype=torch.int64), inputs=torch.zeros(3, 1))
    s = Split(labels=torch.tensor([5, 6, 7]), inputs=torch.tensor([[0.0], [1.0], [2.0]]))
    sub = s.subset(torch.tensor([2, 0]))
    assert len(sub) == 2 and sub.labels.tolist() == [7, 5] and sub.inputs[:, 0].tolist() == [2.0, 0.0]


def test_default_augment_covers_every_dataset_with_known_names():
    from tocha.data import DEFAULT_AUGMENT

    assert set(DEFAULT_AUGMENT) == set(DATASETS)
    assert all(set(v) <= {"crop", "flip"} for v in DEFAULT_AUGMENT.values())
    assert DEFAULT_AUGMENT["digits"] == ()  # a mirrored digit is a different symbol
