"""A numeric CSV table as standardised train/val/test tensors, for regression or classification.

Read with the stdlib `csv` module (no pandas). The first row names the columns; one of them is the
target, every other column is a numeric feature. Feature mean/std and, for regression, target
mean/std come from the train split only and are stored, so new rows are standardised with
`TabularData.standardise` and predictions are unscaled with `TabularData.to_original`.

kind="auto" is deliberately simple: a target column with any non-numeric value is classification
(class names = the sorted distinct strings), a fully numeric one is regression. A numeric target
with few distinct integer values gets a note suggesting kind="classify", never a silent switch.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tocha.errors import UserError, did_you_mean

if TYPE_CHECKING:
    import torch

    from tocha.data.types import DataSplits

__all__ = ["KINDS", "MISSING_TOKENS", "TEST_SEED", "TabularData", "TabularSplit", "load_csv"]

KINDS = ("auto", "regress", "classify")
# Cells that mean "no value" in CSVs written by pandas, R and spreadsheets (compared case-insensitively).
MISSING_TOKENS = frozenset({"", "na", "n/a", "nan", "null", "?"})
# Fixed, not the run's seed (as for digits): runs with different seeds, and `tocha eval`, score the
# same held-out test rows.
TEST_SEED = 0
# A numeric target with at most this many distinct integer values looks like class codes: say so.
_FEW_CODES = 10
_WHERE_PATH = "config key data.path"
_WHERE_TARGET = "config key data.target"


@dataclass(frozen=True)
class TabularSplit:
    """One role's rows: standardised float32 features x [N, F] and targets y, on the CPU.

    y is float32 [N] standardised with the train target mean/std (regression) or int64 [N] class
    indices into `TabularData.classes` (classification).
    """

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class TabularData:
    """A CSV table ready for training: splits, column names and the train-split statistics."""

    train: TabularSplit
    val: TabularSplit | None  # None when val_fraction is 0
    test: TabularSplit | None  # None when test_fraction is 0
    feature_names: tuple[str, ...]
    target: str
    kind: str  # "regress" or "classify"
    classes: tuple[str, ...]  # class names in index order; () for regression
    feature_mean: tuple[float, ...]  # per feature, raw units, train split only
    feature_std: tuple[float, ...]  # a constant feature (std 0) gets 1, so it stays finite
    target_mean: float | None  # regression only, raw units, train split only
    target_std: float | None
    source: str  # where it was read from, for people
    notes: tuple[str, ...] = ()  # one-line messages the CLI prints

    @property
    def num_features(self) -> int:
        return len(self.feature_names)

    def standardise(self, rows: Any) -> torch.Tensor:
        """Raw feature rows [N, F] (array-like, columns in `feature_names` order) -> float32 [N, F]."""
        import torch

        x = torch.as_tensor(np.asarray(rows, dtype=np.float64)).reshape(-1, self.num_features)
        mean = torch.tensor(self.feature_mean, dtype=torch.float64)
        std = torch.tensor(self.feature_std, dtype=torch.float64)
        return ((x - mean) / std).to(torch.float32)

    def to_original(self, y: Any) -> torch.Tensor:
        """Standardised regression targets or predictions -> raw target units (float32, same shape)."""
        import torch

        if self.kind != "regress":
            raise ValueError(f"to_original unscales regression targets; this table is kind={self.kind!r}")
        y = torch.as_tensor(y).detach().cpu().to(torch.float64)
        return (y * self.target_std + self.target_mean).to(torch.float32)

    def to_splits(self) -> DataSplits:
        """The classification table as DataSplits of flat features (image_size 0, in_channels F).

        mean/std are None because the features are already standardised here.
        """
        from tocha.data.types import DataSplits, Split

        if self.kind != "classify":
            raise ValueError("DataSplits carries int class labels; a regression table has float targets")
        part = {
            role: None if s is None else Split(labels=s.y, inputs=s.x)
            for role, s in (("train", self.train), ("val", self.val), ("test", self.test))
        }
        return DataSplits(
            train=part["train"],
            val=part["val"],
            test=part["test"],
            classes=self.classes,
            in_channels=self.num_features,
            image_size=0,
            mean=None,
            std=None,
            source=self.source,
            notes=self.notes,
        )


def _read_rows(path: str | Path) -> tuple[list[str], list[tuple[int, list[str]]], Path]:
    """(header, [(line number, cells)], path): blank lines skipped, every row as wide as the header."""
    file = Path(path)
    if file.is_dir():
        raise UserError(
            f"'{file}' is a folder, not a CSV file", where=_WHERE_PATH, fix="point data.path at one .csv file"
        )
    if not file.is_file():
        raise UserError(
            f"CSV file '{file}' does not exist",
            where=_WHERE_PATH,
            fix="check the path (relative paths start from the current directory)",
        )
    raw = file.read_bytes()
    if b"\x00" in raw[: 1 << 20]:
        raise UserError(
            f"'{file}' looks binary (it contains NUL bytes), not a CSV file",
            where=_WHERE_PATH,
            fix="export the table as CSV text",
        )
    try:
        text = raw.decode("utf-8-sig")  # -sig: spreadsheets often start UTF-8 CSVs with a byte-order mark
    except UnicodeDecodeError as exc:
        raise UserError(
            f"'{file}' is not UTF-8 text (byte {exc.start}: {raw[exc.start : exc.start + 1]!r})",
            where=_WHERE_PATH,
            fix="save it as UTF-8, e.g. iconv -f latin1 -t utf-8 FILE > FILE.utf8",
        ) from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    rows: list[tuple[int, list[str]]] = []
    try:
        for cells in reader:
            if not any(c.strip() for c in cells):
                continue
            if header is None:
                header = [c.strip() for c in cells]
                continue
            if len(cells) != len(header):
                raise UserError(
                    f"line {reader.line_num} of '{file}' has {len(cells)} values but the header "
                    f"has {len(header)} columns",
                    where=_WHERE_PATH,
                    fix="give every row one value per column (quote values that contain commas)",
                )
            rows.append((reader.line_num, cells))
    except csv.Error as exc:
        raise UserError(
            f"'{file}' is not valid CSV at line {reader.line_num}: {exc}",
            where=_WHERE_PATH,
            fix="check the quoting on that line",
        ) from None
    if header is None:
        raise UserError(
            f"CSV file '{file}' is empty",
            where=_WHERE_PATH,
            fix="the first line must name the columns, one row per example after it",
        )
    if not rows:
        raise UserError(
            f"CSV file '{file}' has a header but no rows",
            where=_WHERE_PATH,
            fix="add one row per example below the header",
        )
    blank = [i + 1 for i, name in enumerate(header) if not name]
    if blank:
        raise UserError(
            f"column {blank[0]} of '{file}' has no name in the header",
            where=_WHERE_PATH,
            fix="name every column on the first line",
        )
    seen: set[str] = set()
    for name in header:
        if name in seen:
            raise UserError(
                f"column '{name}' appears twice in the header of '{file}'",
                where=_WHERE_PATH,
                fix="give every column a distinct name",
            )
        seen.add(name)
    return header, rows, file


def _is_missing(cell: str) -> bool:
    return cell.strip().lower() in MISSING_TOKENS


def _number(cell: str) -> float | None:
    """The cell as a finite float, or None when it is not a number."""
    try:
        value = float(cell)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _check_missing(rows: list[tuple[int, list[str]]], header: list[str], file: Path) -> None:
    for line, cells in rows:
        for name, cell in zip(header, cells):
            if _is_missing(cell):
                raise UserError(
                    f"missing value at line {line}, column '{name}' of '{file}' (cell {cell!r})",
                    where=_WHERE_PATH,
                    fix="fill the missing values or drop those rows before training",
                )


def _numeric_column(rows: list[tuple[int, list[str]]], col: int) -> tuple[np.ndarray, tuple[int, str] | None]:
    """(float64 values, None) or (partial, (line, cell) of the first non-numeric cell)."""
    values = np.empty(len(rows), dtype=np.float64)
    for i, (line, cells) in enumerate(rows):
        value = _number(cells[col])
        if value is None:
            return values, (line, cells[col])
        values[i] = value
    return values, None


def _class_names(values: list[str]) -> tuple[str, ...]:
    """Distinct target values in a stable order: numerically when every value is a number."""
    distinct = set(values)
    if all(_number(v) is not None for v in distinct):
        return tuple(sorted(distinct, key=lambda v: (float(v), v)))
    return tuple(sorted(distinct))


def _stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) per column; std 0 (a constant column) becomes 1 so standardising stays finite."""
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    return mean, np.where(std > 0, std, 1.0)


def load_csv(
    path: str | Path,
    *,
    target: str,
    val_fraction: float,
    test_fraction: float = 0.2,
    seed: int,
    kind: str = "auto",
    test_seed: int = TEST_SEED,
) -> TabularData:
    """Read a numeric CSV and split it: test_fraction of all rows, then val_fraction of the rest.

    The test rows are drawn with `test_seed` (fixed by default, so every run scores the same rows),
    the validation rows with `seed`. Classification splits are stratified by class; regression
    splits are a seeded shuffle. kind: "auto" (non-numeric target -> classify, numeric -> regress),
    "regress" or "classify".
    """
    import torch

    if kind not in KINDS:
        raise UserError(
            f"unknown kind '{kind}'",
            where="load_csv kind",
            allowed=", ".join(KINDS),
            fix=did_you_mean(kind, KINDS) or "use one of the kinds above",
        )
    header, rows, file = _read_rows(path)
    if target not in header:
        # Case and stray spaces are the usual slips, and too small for difflib to notice on short names.
        same = [name for name in header if name.strip().lower() == target.strip().lower()]
        hint = f"did you mean '{same[0]}'?" if same else did_you_mean(target, header)
        raise UserError(
            f"no column '{target}' in '{file}'",
            where=_WHERE_TARGET,
            allowed=", ".join(header),
            fix=hint or "set data.target to one of the columns above",
        )
    t_col = header.index(target)
    features = [name for name in header if name != target]
    if not features:
        raise UserError(
            f"'{file}' has only the target column '{target}', no features",
            where=_WHERE_PATH,
            fix="add at least one numeric feature column",
        )
    _check_missing(rows, header, file)

    columns, bad = [], []
    for col, name in enumerate(header):
        if col == t_col:
            continue
        values, first_bad = _numeric_column(rows, col)
        if first_bad is not None:
            bad.append(f"'{name}' (line {first_bad[0]}: {first_bad[1]!r})")
        columns.append(values)
    if bad:
        many = len(bad) > 1
        raise UserError(
            f"non-numeric value{'s' if many else ''} in feature column{'s' if many else ''} "
            f"{', '.join(bad)} of '{file}'",
            where=_WHERE_PATH,
            fix="drop the column or encode it as numbers (one-hot or integer codes) first",
        )
    x = np.stack(columns, axis=1)

    raw_target = [cells[t_col].strip() for _, cells in rows]
    target_values, first_bad = _numeric_column(rows, t_col)
    notes: list[str] = []
    if kind == "auto":
        kind = "regress" if first_bad is None else "classify"
        if kind == "regress":
            distinct = np.unique(target_values)
            if len(distinct) <= _FEW_CODES and np.all(distinct == np.round(distinct)):
                notes.append(
                    f"target '{target}' is numeric with only {len(distinct)} distinct integer values: "
                    "trained as regression; pass kind=classify to treat them as classes"
                )
    elif kind == "regress" and first_bad is not None:
        raise UserError(
            f"target column '{target}' is not numeric (line {first_bad[0]}: {first_bad[1]!r}), "
            "so it cannot be regressed",
            where=_WHERE_TARGET,
            fix="use kind=classify (or auto) for a categorical target, or fix that value",
        )

    classes: tuple[str, ...] = ()
    if kind == "classify":
        classes = _class_names(raw_target)
        if len(classes) < 2:
            raise UserError(
                f"target column '{target}' has a single value {classes[0]!r}: nothing to classify",
                where=_WHERE_TARGET,
                fix="choose a target with at least 2 classes",
            )
        index = {name: i for i, name in enumerate(classes)}
        labels = torch.tensor([index[v] for v in raw_target], dtype=torch.int64)
    else:
        labels = torch.zeros(len(rows), dtype=torch.int64)  # one group: the split is a seeded shuffle

    return tabulate(
        x,
        target_values,
        labels,
        kind=kind,
        classes=classes,
        feature_names=tuple(features),
        target=target,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
        test_seed=test_seed,
        source=f"{file} ({len(rows)} rows, {len(features)} features, target '{target}')",
        notes=notes,
    )


def tabulate(
    x: np.ndarray,
    target_values: np.ndarray | None,
    labels,
    *,
    kind: str,
    classes: tuple[str, ...],
    feature_names: tuple[str, ...],
    target: str,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    test_seed: int = TEST_SEED,
    source: str,
    notes: list[str],
) -> TabularData:
    """Split a numeric table and standardise it with training-split statistics (a CSV file or tensors)."""
    import torch

    from tocha.data.splits import can_stratify, stratified_split

    features = feature_names
    # Splitting by position with stratified_split reuses its rounding, range checks and seeding.
    keep, test_idx = stratified_split(labels, test_fraction, test_seed, where="load_csv test_fraction")
    train_idx, val_idx = stratified_split(labels[keep], val_fraction, seed, where="config key data.val_fraction")
    train_idx, val_idx = keep[train_idx], keep[val_idx]
    if kind == "classify" and not (can_stratify(labels) and can_stratify(labels[keep])):
        notes.append("some class has fewer than 2 examples: the splits are a random shuffle, not stratified")

    mean, std = _stats(x[train_idx.numpy()])
    constant = [name for name, s in zip(features, x[train_idx.numpy()].std(axis=0)) if s == 0]
    if constant:
        notes.append(
            f"feature{'s' if len(constant) > 1 else ''} {', '.join(constant)} "
            f"{'are' if len(constant) > 1 else 'is'} constant on the train split: centred, not scaled"
        )
    x_std = torch.from_numpy((x - mean) / std).to(torch.float32)
    t_mean = t_std = None
    if kind == "regress":
        t_mean_a, t_std_a = _stats(target_values[train_idx.numpy()])
        t_mean, t_std = float(t_mean_a), float(t_std_a)
        y = torch.from_numpy((target_values - t_mean) / t_std).to(torch.float32)
    else:
        y = labels

    def part(idx: torch.Tensor) -> TabularSplit | None:
        return TabularSplit(x=x_std[idx].contiguous(), y=y[idx].contiguous()) if len(idx) else None

    return TabularData(
        train=part(train_idx),
        val=part(val_idx),
        test=part(test_idx),
        feature_names=tuple(features),
        target=target,
        kind=kind,
        classes=classes,
        feature_mean=tuple(float(m) for m in mean),
        feature_std=tuple(float(s) for s in std),
        target_mean=t_mean,
        target_std=t_std,
        source=source,
        notes=tuple(notes),
    )
