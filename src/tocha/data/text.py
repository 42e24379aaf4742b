"""Character-level text: a corpus read from files, its vocabulary, the 90/10 split and on-device windows.

The whole corpus is one int64 tensor of character ids on the training device; a batch is a stack of
index slices of it (airbench style), so no DataLoader is involved. Two orders are offered:

- shuffled windows: the split is cut into non-overlapping windows of ``seq_len + 1`` characters
  (inputs and next-character targets), each epoch visits every window once in a seeded order;
- streams (truncated BPTT): the split is cut into ``batch_size`` contiguous streams and batch ``i``
  holds the ``i``-th window of every stream, so row ``b`` of batch ``i + 1`` continues row ``b`` of
  batch ``i`` and a model can carry its hidden state across batches.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from tocha.engine.batches import epoch_order
from tocha.errors import UserError
from tocha.paths import require_file_or_dir

FORTUNES_DIR = Path("/usr/share/games/fortunes")
UNKNOWN = "\ufffd"  # the vocabulary's slot 0: characters the training split never showed
MAX_CORPUS_BYTES = 512 * 2**20


@dataclass(frozen=True)
class Vocab:
    """Characters <-> ids. Id 0 is UNKNOWN; the other ids follow the sorted training characters."""

    chars: tuple[str, ...]  # chars[0] == UNKNOWN

    @classmethod
    def build(cls, text: str) -> Vocab:
        return cls((UNKNOWN, *sorted(set(text) - {UNKNOWN})))

    def __len__(self) -> int:
        return len(self.chars)

    @property
    def index(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.chars)}

    def encode(self, text: str) -> torch.Tensor:
        index = self.index
        return torch.tensor([index.get(c, 0) for c in text], dtype=torch.long)

    def decode(self, ids) -> str:
        return "".join(self.chars[i] for i in (ids.tolist() if hasattr(ids, "tolist") else ids))

    def unknown_in(self, text: str) -> list[str]:
        """Characters of `text` outside the vocabulary, in order of first appearance."""
        index = self.index
        return list(dict.fromkeys(c for c in text if c not in index))


@dataclass(frozen=True)
class TextCorpus:
    train_text: str
    val_text: str
    vocab: Vocab
    train: torch.Tensor  # ids [N_train] (CPU)
    val: torch.Tensor  # ids [N_val]
    source: str  # where the text came from, for the log
    files: int
    unknown_val_chars: int  # validation characters mapped to UNKNOWN


def default_corpus_files() -> list[Path]:
    """The English fortune files of the Debian `fortunes` package (not the .dat indexes, .u8 links, off/)."""
    if not FORTUNES_DIR.is_dir():
        return []
    return sorted(
        p for p in FORTUNES_DIR.iterdir() if p.is_file() and not p.is_symlink() and p.suffix not in (".dat", ".u8")
    )


def corpus_files(path: str | None) -> tuple[list[Path], str]:
    if path is None:
        files = default_corpus_files()
        if not files:
            raise UserError(
                f"no text given and the default corpus ({FORTUNES_DIR}) is not installed",
                where="config key data.path",
                fix="pass data.path=FILE_OR_FOLDER with UTF-8 text, or install it: apt-get install fortunes",
            )
        return files, f"{FORTUNES_DIR} (Debian package fortunes, {len(files)} files)"
    root = require_file_or_dir(path, "config key data.path", expected="a UTF-8 text file or a folder of them")
    if root.is_file():
        return [root], str(root)
    try:
        # Hidden files and everything under hidden folders (.git, .cache) are not part of the corpus.
        files = sorted(
            p
            for p in root.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
        )
    except OSError as err:
        raise UserError(
            f"cannot list '{err.filename or root}' ({err.strerror or err})",
            where="config key data.path",
            fix="make the folder readable (chmod -R u+rX), or pass another one",
        ) from None
    if not files:
        raise UserError(
            f"folder '{path}' holds no files",
            where="config key data.path",
            fix="point data.path at a UTF-8 text file or a folder of them",
        )
    return files, f"{root} ({len(files)} files)"


def read_text(file: Path) -> str:
    """A UTF-8 text file; a binary or non-UTF-8 file is a user error naming it."""
    try:
        raw = file.read_bytes()
    except OSError as err:
        raise UserError(
            f"cannot read '{file}' ({err.strerror or err})",
            where="config key data.path",
            fix="make it readable (chmod +r), or move it out of the corpus folder",
        ) from None
    if b"\x00" in raw[: 1 << 20]:
        raise UserError(
            f"'{file}' looks binary (it contains NUL bytes), not text",
            where="config key data.path",
            fix="pass UTF-8 text files only (in a folder, remove or move the binary files)",
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"'{file}' is not UTF-8 text (byte {exc.start}: {raw[exc.start : exc.start + 1]!r})",
            where="config key data.path",
            fix="convert it, e.g. iconv -f latin1 -t utf-8 FILE > FILE.utf8",
        ) from None


def load_corpus(path: str | None, *, val_fraction: float = 0.1, seq_len: int = 128) -> TextCorpus:
    """Read the text, split it contiguously (train first, the last `val_fraction` for validation) and
    build the vocabulary from the training part only."""
    files, source = corpus_files(path)
    size = sum(f.stat().st_size for f in files)
    if size > MAX_CORPUS_BYTES:
        raise UserError(
            f"the text is {size / 2**20:.0f} MB; tocha holds a corpus in memory up to "
            f"{MAX_CORPUS_BYTES / 2**20:.0f} MB",
            where="config key data.path",
            fix="pass a smaller corpus",
        )
    text = "\n".join(read_text(f) for f in files)
    if not text.strip():
        raise UserError(
            f"the text in '{path or FORTUNES_DIR}' is empty",
            where="config key data.path",
            fix="pass a file or folder with some UTF-8 text",
        )
    n_val = int(len(text) * val_fraction)
    train_text, val_text = text[: len(text) - n_val], text[len(text) - n_val :]
    # A split needs one window of seq_len inputs plus the next character as the last target.
    for name, part in (("training", train_text), ("validation", val_text)):
        if len(part) < seq_len + 1:
            raise UserError(
                f"seq_len={seq_len} is longer than the {name} text ({len(part)} characters of "
                f"{len(text)}, {1 - val_fraction:.0%}/{val_fraction:.0%} split)",
                where="config keys seq_len, data.path",
                fix=f"use seq_len={max(1, min(len(train_text), len(val_text)) - 1)} or less, or a longer text",
            )
    vocab = Vocab.build(train_text)
    val = vocab.encode(val_text)
    return TextCorpus(
        train_text, val_text, vocab, vocab.encode(train_text), val, source, len(files), int((val == 0).sum())
    )


class TextBatches:
    """(x, y) batches of character windows, [B, seq_len] each, sliced from a device-resident id tensor.

    `streams=True` gives the truncated-BPTT order (see the module docstring) and calls `on_start`
    at the start of every pass, so the model can drop the hidden state of the previous pass.
    """

    def __init__(
        self,
        ids: torch.Tensor,
        seq_len: int,
        batch_size: int,
        *,
        device: torch.device,
        shuffle: bool,
        seed: int = 0,
        streams: bool = False,
        on_start: Callable[[], None] | None = None,
    ) -> None:
        self.ids = ids.to(device)
        self.seq_len, self.device, self.shuffle, self.seed = seq_len, device, shuffle, seed
        self.streams, self.on_start = streams, on_start
        self.epoch, self.first = 0, 0
        self.wait_seconds = 0.0
        n = len(ids) - 1  # the last character is only ever a target
        if streams:
            self.batch_size = max(1, min(batch_size, n // seq_len))
            self.stream_len = n // self.batch_size
            self.n_windows = self.stream_len // seq_len * self.batch_size
        else:
            self.batch_size = batch_size
            self.n_windows = n // seq_len

    def set_epoch(self, epoch: int, first_batch: int = 0) -> None:
        self.epoch, self.first = epoch, first_batch

    def __len__(self) -> int:
        if self.streams:
            return self.n_windows // self.batch_size
        return math.ceil(self.n_windows / self.batch_size)

    def window_starts(self) -> torch.Tensor:
        """Start offsets of every window of this epoch, in batch order (a flat [n_windows] tensor)."""
        t = self.seq_len
        if self.streams:
            steps = torch.arange(len(self)) * t  # window i of a stream
            rows = torch.arange(self.batch_size) * self.stream_len  # where each stream begins
            return (steps.view(-1, 1) + rows.view(1, -1)).reshape(-1)
        return epoch_order(self.n_windows, self.seed, self.epoch, self.shuffle) * t

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        first, self.first = self.first, 0
        if self.on_start is not None:
            self.on_start()
        starts = self.window_starts().to(self.device)
        offsets = torch.arange(self.seq_len + 1, device=self.device)
        b = self.batch_size
        for i in range(first, len(self)):
            idx = starts[i * b : (i + 1) * b].view(-1, 1) + offsets  # [B, seq_len + 1]
            window = self.ids[idx]
            yield window[:, :-1], window[:, 1:]
