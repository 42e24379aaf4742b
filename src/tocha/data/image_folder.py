"""A user's folder of images, one sub-folder per class; decoded lazily, in DataLoader workers."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS

from tocha.data.images import check_image_size, parse_channels
from tocha.data.splits import can_stratify, channel_stats, split_off, stratified_split
from tocha.data.types import DataSplits, Split
from tocha.errors import UserError
from tocha.paths import require_dir

log = logging.getLogger(__name__)

ON_BAD_FILE = ("error", "skip")
DEFAULT_IMAGE_SIZE = 64
TEST_FRACTION = 0.2
TEST_SEED = 0  # fixed so `tocha eval` scores the same held-out images whatever the run's seed
# Opening every file once at load costs about a second per few thousand small images: worth it
# to fail before training starts, but not for huge folders, where files are checked as they are
# read instead (a bad file then fails, or turns blank, mid-epoch).
VERIFY_LIMIT_FILES = 20_000
_GRAY_MODES = {"1", "L", "LA", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"}
_BAD_FILE_FIX = "remove or replace the file, or set data.on_bad_file=skip to leave such files out"


def to_mode(img: Image.Image, channels: int) -> Image.Image:
    if img.mode.startswith("I"):
        # PIL's own I;16 -> L conversion clips at 255 instead of scaling; 16-bit is the common case.
        arr = np.asarray(img).astype(np.int64)
        if arr.max(initial=0) > 255:
            arr >>= 8
        img = Image.fromarray(arr.clip(0, 255).astype(np.uint8), mode="L")
    elif img.mode == "P":
        img = img.convert("RGBA")  # palette transparency must go through RGBA (PIL warns otherwise)
    return img.convert("L" if channels == 1 else "RGB")


def decode_image(path: str, image_size: int | None, channels: int) -> torch.Tensor:
    """uint8 [channels, image_size, image_size] from an image file (squashed, not cropped); None keeps
    the file's own size."""
    with Image.open(path) as img:
        img = to_mode(img, channels)
        if image_size is not None and img.size != (image_size, image_size):
            img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
        arr = np.array(img, dtype=np.uint8)
    t = torch.from_numpy(arr)
    return t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1).contiguous()


class ImageFiles(Dataset):
    """Item i -> (uint8 [C,S,S], label). Holds only paths and ints, so it pickles to workers."""

    def __init__(
        self, paths: list[str], labels: list[int], image_size: int, channels: int, on_bad_file: str = "error"
    ) -> None:
        self.paths, self.labels = paths, labels
        self.image_size, self.channels, self.on_bad_file = image_size, channels, on_bad_file

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path = self.paths[i]
        try:
            image = decode_image(path, self.image_size, self.channels)
        except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for broken files
            if self.on_bad_file == "error":
                raise UserError(f"cannot read image '{path}' ({e})", where="data.root", fix=_BAD_FILE_FIX) from None
            # A blank image keeps the index, label and batch shapes consistent; it is rare by design.
            log.warning("unreadable image %s (%s): using a blank image", path, e)
            image = torch.zeros((self.channels, self.image_size, self.image_size), dtype=torch.uint8)
        return image, self.labels[i]


def find_classes(folder: Path) -> list[str]:
    """Sorted names of the non-hidden sub-folders: the class names, in label order."""
    try:
        return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    except OSError as err:
        raise UserError(
            f"folder '{folder}' cannot be read ({err.strerror or err})",
            where="config key data.root",
            fix="make it readable (chmod -R u+rX), or pass another folder",
        ) from None


def _links_to_ancestor(path: str, parent_real: str) -> bool:
    """Whether `path` is a link to its own folder or to one above it (a loop when followed)."""
    if not os.path.islink(path):
        return False
    target = os.path.realpath(path)
    return os.path.commonpath([target, parent_real]) == target


def list_images(folder: Path, class_to_idx: dict[str, int]) -> tuple[list[str], list[int], int]:
    """(paths, labels, other_files): images under each class folder (recursively), sorted.

    Symbolic links to folders are followed, but never to a folder above the link (`cat/up -> ..`
    would otherwise list every image again, forever) nor into one already walked for that class; a
    file reached twice through links counts once; hidden sub-folders are skipped, as hidden class
    folders are. A folder that cannot be read is an error naming it (os.walk would silently leave it
    out)."""
    paths, labels, other = [], [], 0

    def unreadable(err: OSError) -> None:
        raise UserError(
            f"folder '{err.filename}' cannot be read ({err.strerror or err})",
            where="config key data.root",
            fix="make it readable (chmod -R u+rX), or move it out of the image folder",
        )

    for name, index in class_to_idx.items():
        base = folder / name
        if not base.is_dir():
            continue
        walked: set[str] = set()
        listing = []
        for dirpath, dirnames, filenames in os.walk(base, followlinks=True, onerror=unreadable):
            real = os.path.realpath(dirpath)
            if real in walked:  # a link back to an ancestor or to a folder already listed
                dirnames[:] = []
                continue
            walked.add(real)
            dirnames[:] = sorted(
                d for d in dirnames if not d.startswith(".") and not _links_to_ancestor(os.path.join(dirpath, d), real)
            )
            listing.append((dirpath, filenames))
        seen_files: set[str] = set()
        for dirpath, filenames in sorted(listing):
            for f in sorted(filenames):
                if f.lower().endswith(IMG_EXTENSIONS):
                    path = os.path.join(dirpath, f)
                    target = os.path.realpath(path)
                    if target in seen_files:
                        continue
                    seen_files.add(target)
                    paths.append(path)
                    labels.append(index)
                elif not f.startswith("."):
                    other += 1
    return paths, labels, other


def _layout(root: Path) -> tuple[Path, Path | None, list[str]]:
    if not (root / "train").is_dir():
        return root, None, []
    for name in ("test", "val"):
        if (root / name).is_dir():
            note = [] if name == "test" else ["no test/ folder: using val/ as the test split"]
            return root / "train", root / name, note
    return root / "train", None, []


def _verify(paths: list[str], labels: list[int], on_bad_file: str) -> tuple[list[str], list[int], list[str]]:
    good_paths, good_labels, bad = [], [], []
    for path, label in zip(paths, labels):
        try:
            with Image.open(path) as img:
                img.verify()
        except Exception as e:  # anything PIL raises means the file cannot be used
            if on_bad_file == "error":
                raise UserError(
                    f"cannot read image '{path}' ({type(e).__name__}: {e})", where="data.root", fix=_BAD_FILE_FIX
                ) from None
            bad.append(path)
            continue
        good_paths.append(path)
        good_labels.append(label)
    return good_paths, good_labels, bad


def _auto_channels(path: str) -> int:
    with Image.open(path) as img:
        return 1 if img.mode in _GRAY_MODES else 3


def _check_args(root: str | None, on_bad_file: str) -> Path:
    if on_bad_file not in ON_BAD_FILE:
        raise UserError(
            f"on_bad_file {on_bad_file!r} is not supported",
            where="config key data.on_bad_file",
            allowed=", ".join(ON_BAD_FILE),
            fix="use error (stop) or skip (leave the file out)",
        )
    if not root:
        raise UserError(
            "data=imagefolder needs a folder",
            where="config key data.root",
            fix="pass data.root=PATH/TO/FOLDERS (one sub-folder per class)",
        )
    return require_dir(root, "config key data.root", expected="a folder that holds one sub-folder per class")


def load(
    *,
    root: str | None,
    val_fraction: float = 0.2,
    seed: int = 0,
    image_size: int | None = None,
    channels: str | int = "auto",
    on_bad_file: str = "error",
) -> DataSplits:
    """Images in `root/<class>/...` (or `root/train/<class>`, `root/test/<class>`), file-backed."""
    root_path = _check_args(root, on_bad_file)
    check_image_size(image_size)
    channels = parse_channels(channels)
    train_dir, test_dir, notes = _layout(root_path)
    classes = find_classes(train_dir)
    if not classes:
        raise UserError(
            f"'{train_dir}' has no class sub-folders",
            where="config key data.root",
            fix=f"put each class's images in its own folder, e.g. {train_dir}/cat/1.png",
        )
    class_to_idx = {c: i for i, c in enumerate(classes)}
    paths, labels, other = list_images(train_dir, class_to_idx)
    test_paths: list[str] = []
    test_labels: list[int] = []
    if test_dir is not None:
        extra = sorted(set(find_classes(test_dir)) - set(classes))
        if extra:
            raise UserError(
                f"'{test_dir}' has class folders that '{train_dir}' lacks: {', '.join(extra)}",
                where="config key data.root",
                allowed=", ".join(classes),
                fix="use the same class folder names in train/ and in the test folder",
            )
        test_paths, test_labels, _ = list_images(test_dir, class_to_idx)

    bad: list[str] = []
    if len(paths) + len(test_paths) <= VERIFY_LIMIT_FILES:
        paths, labels, bad = _verify(paths, labels, on_bad_file)
        test_paths, test_labels, bad_test = _verify(test_paths, test_labels, on_bad_file)
        bad += bad_test
    else:
        notes.append(
            f"{len(paths) + len(test_paths)} image files: too many to check up front "
            f"(limit {VERIFY_LIMIT_FILES}); an unreadable one is handled when read "
            f"(on_bad_file={on_bad_file}; skip gives a blank image)"
        )
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        notes.append(f"skipped {len(bad)} unreadable image file(s): {shown}")

    if not paths:
        found = f" (found {other} files without an image extension)" if other else ""
        raise UserError(
            f"no readable images in the class folders of '{train_dir}'{found}",
            where="config key data.root",
            allowed=" ".join(IMG_EXTENSIONS),
            fix="put image files into one sub-folder per class",
        )
    counts = np.bincount(labels, minlength=len(classes))
    if (counts > 0).sum() < 2:
        raise UserError(
            f"'{train_dir}' has images of only one class ({classes[int(counts.argmax())]}); "
            "classification needs at least two",
            where="config key data.root",
            fix="add a sub-folder with images for each other class",
        )
    empty = [c for c, n in zip(classes, counts) if n == 0]
    if empty:
        notes.append(f"class folder(s) with no images: {', '.join(empty)} (kept as classes)")
    if image_size is None:
        image_size = DEFAULT_IMAGE_SIZE
        notes.append(f"images resized to {image_size}x{image_size} (set image_size to change)")
    if channels == "auto":
        channels = _auto_channels(paths[0])

    def split_of(p: list[str], y: list[int]) -> Split:
        return Split(
            labels=torch.tensor(y, dtype=torch.int64), dataset=ImageFiles(p, y, image_size, channels, on_bad_file)
        )

    train = split_of(paths, labels)
    if test_dir is not None:
        test = split_of(test_paths, test_labels) if test_paths else None
        if test is None:
            notes.append(f"'{test_dir}' has no images: no test split")
    else:
        where = "test split held out of data.root"
        keep, held = stratified_split(train.labels, TEST_FRACTION, TEST_SEED, where=where)
        stratified = "stratified " if can_stratify(train.labels) else "random "
        notes.append(
            f"no test/ folder: held out a {stratified}{TEST_FRACTION:.0%} of images "
            f"({len(held)}) as the test split (seed {TEST_SEED})"
        )
        train, test = train.subset(keep), train.subset(held)
    train, val, split_notes = split_off(train, val_fraction, seed)
    mean, std = channel_stats(train)
    counted = f"{len(paths)} train" + (f", {len(test_paths)} test" if test_dir is not None else "")
    return DataSplits(
        train=train,
        val=val,
        test=test,
        classes=tuple(classes),
        in_channels=channels,
        image_size=image_size,
        mean=mean,
        std=std,
        source=f"{root_path} (image folders, {counted} files)",
        notes=tuple(notes) + split_notes,
    )
