import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from tocha.data import image_folder, load_data
from tocha.data.image_folder import ImageFiles
from tocha.errors import UserError


def _value_of(image: torch.Tensor) -> int:
    """The flat value a fixture image was written with (channel 0)."""
    assert image.min() == image.max() or image[0].min() == image[0].max()
    return int(image[0, 0, 0])


def test_flat_rgb_folder_holds_out_a_fixed_test_split(tmp_path, fixtures):
    fixtures.make_image_folder(tmp_path, {"cat": 10, "dog": 10, "owl": 5})
    d = load_data("imagefolder", root=str(tmp_path), val_fraction=0.25, seed=0)
    assert d.classes == ("cat", "dog", "owl") and d.in_channels == 3 and d.image_size == 64
    assert len(d.test) == 5 and torch.bincount(d.test.labels).tolist() == [2, 2, 1]
    assert len(d.train) + len(d.val) == 20 and len(d.val) == 5
    assert any("held out a stratified 20%" in n for n in d.notes)
    assert any("64x64" in n for n in d.notes)
    image, label = d.train.dataset[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.uint8 and isinstance(label, int)
    # each item's pixels say which class folder it came from, so labels follow the files
    for split in (d.train, d.val, d.test):
        for i in range(len(split)):
            image, label = split.dataset[i]
            assert _value_of(image) == 40 * (label + 1)
            assert label == int(split.labels[i])
    # the test split does not depend on the run seed; val does
    other = load_data("imagefolder", root=str(tmp_path), val_fraction=0.25, seed=1)
    assert other.test.dataset.indices == d.test.dataset.indices
    assert other.val.dataset.indices != d.val.dataset.indices


def test_stats_are_computed_on_train_images(tmp_path, fixtures):
    fixtures.make_image_folder(tmp_path, {"a": 4, "b": 6})
    d = load_data("imagefolder", root=str(tmp_path), image_size=8, val_fraction=0.0)
    stacked = torch.stack([d.train.dataset[i][0] for i in range(len(d.train))]).double() / 255
    np.testing.assert_allclose(d.mean, stacked.mean(dim=(0, 2, 3)).numpy(), rtol=1e-12)
    np.testing.assert_allclose(d.std, stacked.std(dim=(0, 2, 3), unbiased=False).numpy(), atol=1e-12)


def test_grayscale_auto_and_forced_channels(tmp_path, fixtures):
    fixtures.make_image_folder(tmp_path, {"x": 5, "y": 5}, mode="L")
    d = load_data("imagefolder", root=str(tmp_path), image_size=16)
    assert d.in_channels == 1 and d.train.dataset[0][0].shape == (1, 16, 16)
    d3 = load_data("imagefolder", root=str(tmp_path), image_size=16, channels="3")
    image = d3.train.dataset[0][0]
    assert d3.in_channels == 3 and image.shape == (3, 16, 16) and torch.equal(image[0], image[2])


def test_rgb_forced_to_one_channel(tmp_path, fixtures):
    fixtures.make_image_folder(tmp_path, {"x": 5, "y": 5})
    d = load_data("imagefolder", root=str(tmp_path), image_size=16, channels="1")
    assert d.in_channels == 1 and d.train.dataset[0][0].shape == (1, 16, 16)


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path, fixtures):
    fixtures.make_image_folder(tmp_path, {"a": 2}, mode="L")
    arr = np.full((6, 6), 40000, dtype=np.uint16)
    (tmp_path / "b").mkdir()
    Image.fromarray(arr).save(tmp_path / "b" / "deep.png")
    assert Image.open(tmp_path / "b" / "deep.png").mode.startswith("I")
    image = image_folder.decode_image(str(tmp_path / "b" / "deep.png"), 4, 1)
    assert image.shape == (1, 4, 4) and int(image[0, 0, 0]) == 40000 >> 8


def test_train_and_test_subfolders(tmp_path, fixtures):
    fixtures.make_image_folder(tmp_path / "train", {"a": 6, "b": 6})
    fixtures.make_image_folder(tmp_path / "test", {"a": 2, "b": 3})
    d = load_data("imagefolder", root=str(tmp_path), image_size=8, val_fraction=0.0)
    assert d.classes == ("a", "b") and len(d.train) == 12 and len(d.test) == 5
    assert torch.bincount(d.test.labels).tolist() == [2, 3]
    assert not any("held out" in n for n in d.notes)
    assert "12 train, 5 test" in d.source


def test_val_folder_used_as_test_when_no_test_folder(tmp_path, fixtures):
    fixtures.make_image_folder(tmp_path / "train", {"a": 6, "b": 6})
    fixtures.make_image_folder(tmp_path / "val", {"a": 1, "b": 1})
    d = load_data("imagefolder", root=str(tmp_path), image_size=8)
    assert len(d.test) == 2 and any("val/" in n for n in d.notes)


def test_test_folder_with_unknown_class(tmp_path, fixtures):
    fixtures.make_image_folder(tmp_path / "train", {"a": 3, "b": 3})
    fixtures.make_image_folder(tmp_path / "test", {"a": 1, "c": 1})
    with pytest.raises(UserError, match="lacks: c"):
        load_data("imagefolder", root=str(tmp_path))


def test_folder_errors(tmp_path, fixtures):
    with pytest.raises(UserError, match="does not exist"):
        load_data("imagefolder", root=str(tmp_path / "missing"))
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        load_data("imagefolder", root=str(tmp_path / "file.txt"))
    with pytest.raises(UserError, match="data.root"):
        load_data("imagefolder", root=None)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no class sub-folders"):
        load_data("imagefolder", root=str(empty))
    (empty / "a").mkdir()
    (empty / "b").mkdir()
    (empty / "a" / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="no readable images .*1 files without an image extension"):
        load_data("imagefolder", root=str(empty))
    with pytest.raises(UserError, match="on_bad_file"):
        load_data("imagefolder", root=str(empty), on_bad_file="ignore")


def test_one_class_is_an_error_but_an_empty_extra_class_is_fine(tmp_path, fixtures):
    fixtures.make_image_folder(tmp_path, {"only": 5})
    with pytest.raises(UserError, match="only one class"):
        load_data("imagefolder", root=str(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="only one class"):
        load_data("imagefolder", root=str(tmp_path))
    fixtures.make_image_folder(tmp_path, {"other": 5})
    d = load_data("imagefolder", root=str(tmp_path), image_size=8, val_fraction=0.0)
    assert d.classes == ("empty", "only", "other")
    assert any("no images: empty" in n for n in d.notes)
    assert sorted(set(torch.cat([d.train.labels, d.test.labels]).tolist())) == [1, 2]


def test_corrupt_file_error_or_skip(tmp_path, fixtures):
    fixtures.make_image_folder(tmp_path, {"a": 5, "b": 5})
    bad = tmp_path / "b" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(UserError) as err:
        load_data("imagefolder", root=str(tmp_path))
    assert str(bad) in str(err.value) and "on_bad_file=skip" in str(err.value)
    d = load_data("imagefolder", root=str(tmp_path), on_bad_file="skip", image_size=8, val_fraction=0.0)
    assert len(d.train) + len(d.test) == 10
    assert any("skipped 1 unreadable" in n and str(bad) in n for n in d.notes)


def test_large_folders_check_files_when_read(tmp_path, fixtures, monkeypatch):
    monkeypatch.setattr(image_folder, "VERIFY_LIMIT_FILES", 3)
    fixtures.make_image_folder(tmp_path, {"a": 5, "b": 5})
    bad = tmp_path / "b" / "broken.png"
    bad.write_bytes(b"garbage")
    d = load_data("imagefolder", root=str(tmp_path), on_bad_file="skip", image_size=8, val_fraction=0.0)
    assert len(d.train) + len(d.test) == 11 and any("too many to check" in n for n in d.notes)
    ds = ImageFiles([str(bad)], [1], 8, 3, on_bad_file="skip")
    image, label = ds[0]
    assert label == 1 and image.shape == (3, 8, 8) and int(image.max()) == 0
    with pytest.raises(UserError, match="broken.png"):
        ImageFiles([str(bad)], [1], 8, 3, on_bad_file="error")[0]


def test_dataset_pickles_for_workers(tmp_path, fixtures):
    fixtures.make_image_folder(tmp_path, {"a": 3, "b": 3})
    d = load_data("imagefolder", root=str(tmp_path), image_size=8, val_fraction=0.0)
    clone = pickle.loads(pickle.dumps(d.train.dataset))
    a, b = clone[1], d.train.dataset[1]
    assert torch.equal(a[0], b[0]) and a[1] == b[1]
