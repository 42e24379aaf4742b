import gzip

import numpy as np
import pytest
import torch

from tocha.data.idx import read_idx
from tocha.errors import UserError


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_round_trips_every_type_code(tmp_path, fixtures, dtype, suffix):
    rng = np.random.default_rng(1)
    array = (rng.standard_normal((3, 4, 5)) * 100).astype(dtype)
    path = fixtures.write_idx_file(tmp_path / f"a-idx3{suffix}", array)
    out = read_idx(path)
    assert out.shape == (3, 4, 5)
    assert out.dtype == torch.from_numpy(array).dtype
    np.testing.assert_array_equal(out.numpy(), array)


def test_read_idx_one_dimensional_labels(tmp_path, fixtures):
    labels = np.array([9, 0, 3, 255], dtype=np.uint8)
    out = read_idx(fixtures.write_idx_file(tmp_path / "labels-idx1-ubyte", labels))
    assert out.tolist() == [9, 0, 3, 255]


def test_truncated_plain_file_names_the_file(tmp_path, fixtures):
    data = fixtures.idx_bytes(np.zeros((4, 28, 28), np.uint8))
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(data[:-10])
    with pytest.raises(UserError) as err:
        read_idx(path)
    msg = str(err.value)
    assert str(path) in msg and "truncated" in msg and "4x28x28" in msg and "re-install" in msg


def test_file_longer_than_header_is_rejected(tmp_path, fixtures):
    path = tmp_path / "x-idx1"
    path.write_bytes(fixtures.idx_bytes(np.zeros(5, np.uint8)) + b"\0")
    with pytest.raises(UserError, match="longer than its header"):
        read_idx(path)


def test_truncated_gzip_stream_names_the_file(tmp_path, fixtures):
    packed = gzip.compress(fixtures.idx_bytes(np.arange(2000, dtype=np.int32)))
    path = tmp_path / "cut.gz"
    path.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(UserError) as err:
        read_idx(path)
    assert str(path) in str(err.value)


def test_wrong_magic_names_the_file_and_what_was_found(tmp_path):
    path = tmp_path / "not-idx"
    path.write_bytes(b"\x89PNG" + bytes(100))
    with pytest.raises(UserError) as err:
        read_idx(path)
    msg = str(err.value)
    assert str(path) in msg and "magic" in msg and "0x89504E47" in msg


def test_unknown_type_code_and_short_header(tmp_path):
    bad_type = tmp_path / "bad-type"
    bad_type.write_bytes(bytes([0, 0, 0x07, 1, 0, 0, 0, 1, 5]))
    with pytest.raises(UserError, match="magic"):
        read_idx(bad_type)
    short = tmp_path / "short"
    short.write_bytes(bytes([0, 0, 0x08, 3, 0, 0, 0, 1]))
    with pytest.raises(UserError, match="16-byte header"):
        read_idx(short)


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_idx(tmp_path / "nope.gz")
