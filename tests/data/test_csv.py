"""load_csv: numeric and string-class targets, train-only statistics, seeded splits, and every bad file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tocha.data.csv import TabularData, load_csv
from tocha.errors import UserError


def _write(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    lines = [",".join(header)] + [",".join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _regression_csv(tmp_path: Path, n: int = 40) -> Path:
    rng = np.random.default_rng(0)
    a, b = rng.normal(5, 2, n), rng.normal(-3, 0.5, n)
    y = 3 * a - 2 * b + 10
    return _write(
        tmp_path / "reg.csv", ["a", "b", "y"], [[f"{p:.6f}", f"{q:.6f}", f"{r:.6f}"] for p, q, r in zip(a, b, y)]
    )


def _class_csv(tmp_path: Path, per_class: int = 10) -> Path:
    rows = []
    for k, name in enumerate(("setosa", "virginica", "versicolor")):
        rows += [[k + 0.1 * i, 2 * k - 0.05 * i, name] for i in range(per_class)]
    return _write(tmp_path / "cls.csv", ["x1", "x2", "species"], rows)


def _all_rows(data: TabularData) -> list[torch.Tensor]:
    return [s.x for s in (data.train, data.val, data.test) if s is not None]


def test_numeric_target_is_regression_standardised_with_train_stats(tmp_path):
    path = _regression_csv(tmp_path)
    data = load_csv(path, target="y", val_fraction=0.25, test_fraction=0.2, seed=1)
    assert data.kind == "regress" and data.classes == ()
    assert data.feature_names == ("a", "b") and data.target == "y"
    assert (len(data.train), len(data.val), len(data.test)) == (24, 8, 8)
    assert data.train.x.dtype == torch.float32 and data.train.x.shape == (24, 2)
    assert data.train.y.dtype == torch.float32 and data.train.y.shape == (24,)
    # Train-only statistics: train is exactly standardised, the other splits are not.
    assert torch.allclose(data.train.x.mean(0), torch.zeros(2), atol=1e-5)
    assert torch.allclose(data.train.x.std(0, unbiased=False), torch.ones(2), atol=1e-5)
    assert abs(float(data.train.y.mean())) < 1e-5
    assert not torch.allclose(data.test.x.mean(0), torch.zeros(2), atol=1e-3)
    # The stored stats are those of the file's train rows (found by matching), not of all rows.
    raw = np.loadtxt(path, delimiter=",", skiprows=1)
    nearest = torch.cdist(data.train.x.double(), data.standardise(raw[:, :2]).double()).argmin(1).numpy()
    assert len(set(nearest.tolist())) == 24
    train_raw = raw[nearest]
    assert np.allclose(data.feature_mean, train_raw[:, :2].mean(0), atol=1e-9)
    assert np.allclose(data.feature_std, train_raw[:, :2].std(0), atol=1e-9)
    assert data.target_mean == pytest.approx(train_raw[:, 2].mean(), abs=1e-9)
    assert data.target_std == pytest.approx(train_raw[:, 2].std(), abs=1e-9)
    assert not np.allclose(data.feature_mean, raw[:, :2].mean(0), atol=1e-3)


def test_standardise_and_to_original_round_trip(tmp_path):
    path = _regression_csv(tmp_path)
    data = load_csv(path, target="y", val_fraction=0.25, seed=0)
    raw = np.loadtxt(path, delimiter=",", skiprows=1)
    x_all = data.standardise(raw[:, :2])
    # Every stored split row is one of the file's rows standardised with the stored stats.
    stored = torch.cat(_all_rows(data))
    matches = torch.cdist(stored.double(), x_all.double()).min(1).values
    assert float(matches.max()) < 1e-5
    y_all = torch.cat([s.y for s in (data.train, data.val, data.test)])
    assert np.allclose(np.sort(data.to_original(y_all).numpy()), np.sort(raw[:, 2]), atol=1e-3)
    assert data.standardise([raw[0, :2]]).shape == (1, 2)


def test_string_target_is_classification_stratified(tmp_path):
    data = load_csv(_class_csv(tmp_path), target="species", val_fraction=0.25, test_fraction=0.2, seed=0)
    assert data.kind == "classify"
    assert data.classes == ("setosa", "versicolor", "virginica")
    assert data.target_mean is None and data.target_std is None
    assert data.train.y.dtype == torch.int64
    # 10 per class: 2 to test, then 2 of the remaining 8 to val, in every class.
    assert torch.bincount(data.test.y).tolist() == [2, 2, 2]
    assert torch.bincount(data.val.y).tolist() == [2, 2, 2]
    assert torch.bincount(data.train.y).tolist() == [6, 6, 6]
    with pytest.raises(ValueError, match="regression"):
        data.to_original(data.train.y)


def test_classification_to_splits_carries_flat_features(tmp_path):
    data = load_csv(_class_csv(tmp_path), target="species", val_fraction=0.25, seed=0)
    splits = data.to_splits()
    assert splits.image_size == 0 and splits.in_channels == 2 and splits.num_classes == 3
    assert splits.mean is None and splits.std is None
    assert torch.equal(splits.train.inputs, data.train.x) and torch.equal(splits.test.labels, data.test.y)


def test_kind_can_be_forced_and_few_integer_codes_get_a_note(tmp_path):
    rows = [[i, i % 3] for i in range(30)]
    path = _write(tmp_path / "codes.csv", ["x", "grade"], rows)
    auto = load_csv(path, target="grade", val_fraction=0.2, seed=0)
    assert auto.kind == "regress"
    assert any("kind=classify" in n for n in auto.notes)
    forced = load_csv(path, target="grade", val_fraction=0.2, seed=0, kind="classify")
    assert forced.kind == "classify" and forced.classes == ("0", "1", "2")
    with pytest.raises(UserError, match="cannot be regressed"):
        load_csv(_class_csv(tmp_path), target="species", val_fraction=0.2, seed=0, kind="regress")
    with pytest.raises(UserError, match="did you mean 'classify'"):
        load_csv(path, target="grade", val_fraction=0.2, seed=0, kind="clasify")


def test_split_is_deterministic_per_seed_and_test_rows_fixed(tmp_path):
    path = _regression_csv(tmp_path)
    one = load_csv(path, target="y", val_fraction=0.25, seed=3)
    again = load_csv(path, target="y", val_fraction=0.25, seed=3)
    other = load_csv(path, target="y", val_fraction=0.25, seed=4)
    assert torch.equal(one.train.x, again.train.x) and torch.equal(one.val.y, again.val.y)
    assert not torch.equal(one.val.y.sort().values, other.val.y.sort().values)
    # The test rows do not depend on the run's seed (only on test_seed).
    as_raw = lambda d: np.sort(d.to_original(d.test.y).numpy())  # noqa: E731
    assert np.allclose(as_raw(one), as_raw(other))
    moved = load_csv(path, target="y", val_fraction=0.25, seed=3, test_seed=7)
    assert not np.allclose(as_raw(one), as_raw(moved))


def test_constant_feature_and_zero_fractions(tmp_path):
    path = _write(tmp_path / "c.csv", ["k", "x", "y"], [[7, i, 2 * i] for i in range(10)])
    data = load_csv(path, target="y", val_fraction=0.0, test_fraction=0.0, seed=0)
    assert data.val is None and data.test is None and len(data.train) == 10
    assert data.feature_std[0] == 1.0 and torch.all(data.train.x[:, 0] == 0)
    assert any("'k'" not in n and "k" in n and "constant" in n for n in data.notes)


def test_bom_quotes_and_blank_lines_are_accepted(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes('\ufeff"a",b,y\n1,"2",3\n\n4,5,6\n7,8,9\n10,11,12\n\n'.encode())
    data = load_csv(path, target="y", val_fraction=0.0, test_fraction=0.0, seed=0)
    assert data.feature_names == ("a", "b") and len(data.train) == 4


# --- every bad file is a UserError that names what and where --------------------------------------


def _error(path: Path, **kwargs: object) -> str:
    kwargs = {"target": "y", "val_fraction": 0.2, "seed": 0, **kwargs}
    with pytest.raises(UserError) as info:
        load_csv(path, **kwargs)
    return str(info.value)


def test_non_numeric_feature_names_column_row_and_fix(tmp_path):
    rows = [[1, "Paris", 0.5, 1.0], [2, "Rome", "red", 2.0], [3, "Oslo", 0.1, 3.0]]
    msg = _error(_write(tmp_path / "f.csv", ["a", "city", "colour", "y"], rows))
    assert "'city' (line 2: 'Paris')" in msg and "'colour' (line 3: 'red')" in msg
    assert "'a'" not in msg and "drop the column or encode it" in msg


def test_missing_target_column_lists_columns_and_suggests(tmp_path):
    msg = _error(_regression_csv(tmp_path), target="Y ")
    assert "no column 'Y '" in msg and "allowed: a, b, y" in msg and "did you mean 'y'?" in msg
    path = _write(tmp_path / "t.csv", ["height", "price"], [[1, 2], [3, 4], [5, 6]])
    assert "did you mean 'price'?" in _error(path, target="prise")


def test_missing_value_names_line_and_column(tmp_path):
    rows = [[1, 2, 3], [4, "", 6], [7, 8, 9]]
    msg = _error(_write(tmp_path / "m.csv", ["a", "b", "y"], rows))
    assert "missing value at line 3, column 'b'" in msg and "fill the missing values" in msg
    rows = [[1, 2, 3], [4, 5, 6], [7, 8, "NA"]]
    assert "line 4, column 'y'" in _error(_write(tmp_path / "m2.csv", ["a", "b", "y"], rows))


def test_ragged_row_names_line(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("a,b,y\n1,2,3\n4,5\n6,7,8\n")
    msg = _error(path)
    assert "line 3" in msg and "2 values but the header has 3 columns" in msg


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"", "is empty"),
        (b"\n\n", "is empty"),
        (b"a,b,y\n", "has a header but no rows"),
        (b"a,,y\n1,2,3\n", "column 2 of"),
        (b"a,a,y\n1,2,3\n", "column 'a' appears twice"),
        (b"y\n1\n2\n", "no features"),
        (b"a,y\n1,\xe9t\xe9\n", "is not UTF-8 text (byte 6"),
        (b"a,y\n1,\x002\n", "looks binary"),
    ],
)
def test_bad_files(tmp_path, content, expected):
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    assert expected in _error(path)


def test_folder_and_missing_file(tmp_path):
    assert "is a folder, not a CSV file" in _error(tmp_path)
    assert "does not exist" in _error(tmp_path / "nope.csv")


def test_single_class_target(tmp_path):
    path = _write(tmp_path / "one.csv", ["a", "y"], [[i, "cat"] for i in range(5)])
    assert "single value 'cat'" in _error(path)


def test_too_few_rows_for_the_fractions(tmp_path):
    path = _write(tmp_path / "two.csv", ["a", "y"], [[1, 2], [3, 4]])
    assert "cannot hold out" in _error(path, val_fraction=0.5, test_fraction=0.5)
