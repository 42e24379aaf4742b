from pathlib import Path

import numpy as np
import pytest
import torch

from tocha.data import fashion_mnist, load_data
from tocha.errors import UserError


@pytest.fixture(autouse=True)
def no_debian_no_download(monkeypatch, tmp_path):
    """Tests never see the real package folder or the network unless they ask."""
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "no-debian")

    def fail(root):
        raise AssertionError("download attempted")

    monkeypatch.setattr(fashion_mnist, "_download", fail)


def _rows(t: torch.Tensor) -> set[bytes]:
    return {bytes(r) for r in t.reshape(len(t), -1).numpy()}


@pytest.mark.parametrize("gz", [True, False])
def test_reads_root_folder(tmp_path, fixtures, gz):
    arrays = fixtures.write_fashion_files(tmp_path, gz=gz)
    d = load_data("fashion-mnist", root=str(tmp_path), val_fraction=0.2, seed=0)
    assert d.train.inputs.dtype == torch.uint8 and d.train.inputs.shape == (24, 1, 28, 28)
    assert d.val.inputs.shape == (6, 1, 28, 28)
    assert torch.equal(d.test.inputs[:, 0], torch.from_numpy(arrays["t10k-images-idx3-ubyte"]))
    assert d.test.labels.dtype == torch.int64
    assert d.test.labels.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    # train + val together are exactly the training file's images, with their own labels
    train_x = arrays["train-images-idx3-ubyte"]
    assert _rows(torch.cat([d.train.inputs, d.val.inputs])) == _rows(torch.from_numpy(train_x))
    lookup = {bytes(r): int(y) for r, y in zip(train_x.reshape(30, -1), arrays["train-labels-idx1-ubyte"])}
    assert [lookup[bytes(r)] for r in d.val.inputs.reshape(6, -1).numpy()] == d.val.labels.tolist()
    assert d.classes[0] == "T-shirt/top" and d.classes[9] == "Ankle boot" and len(d.classes) == 10
    assert (d.in_channels, d.image_size) == (1, 28)
    assert d.source == f"{tmp_path} (IDX, {'gzip' if gz else 'plain'})"
    expected_mean = d.train.inputs.double().mean().item() / 255
    assert d.mean[0] == pytest.approx(expected_mean, rel=1e-12)


def test_torchvision_layout_under_root(tmp_path, fixtures):
    fixtures.write_fashion_files(tmp_path / "FashionMNIST" / "raw", gz=False)
    d = load_data("fashion-mnist", root=str(tmp_path), val_fraction=0.0)
    assert d.val is None and len(d.train) == 30 and len(d.test) == 10
    assert "FashionMNIST/raw" in d.source


def test_debian_folder_is_the_default(tmp_path, fixtures, monkeypatch):
    fixtures.write_fashion_files(tmp_path / "deb")
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "deb")
    assert len(load_data("fashion-mnist", val_fraction=0.0).train) == 30


def test_missing_files_say_where_and_how_to_fix(tmp_path):
    with pytest.raises(UserError) as err:
        load_data("fashion-mnist", root=str(tmp_path))
    msg = str(err.value)
    for name in fashion_mnist.FILES.values():
        assert name in msg
    assert str(tmp_path) in msg and str(tmp_path / "FashionMNIST" / "raw") in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "data.root" in msg and "data.download" in msg
    with pytest.raises(UserError, match="no-debian"):
        load_data("fashion-mnist")


def test_download_only_when_asked(tmp_path, fixtures, monkeypatch):
    calls = []

    def fake_download(root):
        calls.append(root)
        raw = Path(root) / "FashionMNIST" / "raw"
        fixtures.write_fashion_files(raw)
        return fashion_mnist._find_in(raw)

    monkeypatch.setattr(fashion_mnist, "_download", fake_download)
    with pytest.raises(UserError):
        load_data("fashion-mnist", root=str(tmp_path))
    assert calls == []
    d = load_data("fashion-mnist", root=str(tmp_path), download=True)
    assert calls == [str(tmp_path)] and len(d.test) == 10
    assert any("downloaded" in n for n in d.notes)


def test_resize_and_channels(tmp_path, fixtures):
    arrays = fixtures.write_fashion_files(tmp_path)
    d = load_data("fashion-mnist", root=str(tmp_path), image_size=14, channels="3", val_fraction=0.0)
    assert d.train.inputs.shape == (30, 3, 14, 14) and d.train.inputs.dtype == torch.uint8
    assert d.test.inputs.shape == (10, 3, 14, 14)
    assert (d.in_channels, d.image_size) == (3, 14)
    assert torch.equal(d.train.inputs[:, 0], d.train.inputs[:, 2])
    assert d.mean[0] == d.mean[1] == d.mean[2]
    # antialiased bilinear, like PIL's resize (what image folders use), to within rounding
    from PIL import Image

    pil = np.stack(
        [
            np.array(Image.fromarray(a).resize((14, 14), Image.Resampling.BILINEAR))
            for a in arrays["train-images-idx3-ubyte"]
        ]
    )
    assert np.abs(d.train.inputs[:, 0].numpy().astype(int) - pil.astype(int)).max() <= 1


def test_bad_label_files(tmp_path, fixtures):
    fixtures.write_fashion_files(tmp_path)
    fixtures.write_idx_file(tmp_path / "t10k-labels-idx1-ubyte.gz", np.full(10, 10, np.uint8))
    with pytest.raises(UserError, match="expected 0..9"):
        load_data("fashion-mnist", root=str(tmp_path))
    fixtures.write_idx_file(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(9, np.uint8))
    with pytest.raises(UserError, match="9,.* labels for 10 images"):
        load_data("fashion-mnist", root=str(tmp_path))


def test_truncated_file_in_root_names_it(tmp_path, fixtures):
    fixtures.write_fashion_files(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(UserError) as err:
        load_data("fashion-mnist", root=str(tmp_path))
    assert str(path) in str(err.value) and "truncated" in str(err.value)


REAL = fashion_mnist.DEBIAN_DIR


@pytest.mark.slow
@pytest.mark.skipif(not (REAL / "train-images-idx3-ubyte.gz").exists(), reason="dataset-fashion-mnist not installed")
def test_real_debian_fashion_mnist(monkeypatch):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", REAL)
    d = load_data("fashion-mnist", val_fraction=0.2, seed=0)
    assert len(d.train) + len(d.val) == 60000 and len(d.test) == 10000
    assert d.train.inputs.shape == (48000, 1, 28, 28) and d.train.inputs.dtype == torch.uint8
    assert d.test.inputs.shape == (10000, 1, 28, 28)
    assert torch.bincount(d.val.labels).tolist() == [1200] * 10
    assert torch.bincount(d.test.labels).tolist() == [1000] * 10
    assert d.mean[0] == pytest.approx(0.286, abs=0.002) and d.std[0] == pytest.approx(0.353, abs=0.002)
    assert d.source.startswith(str(REAL)) and "gzip" in d.source
