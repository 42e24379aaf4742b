"""Paths that are something other than what was asked for are named as such, never a traceback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tocha import config
from tocha.data import load_data
from tocha.data.image_folder import list_images
from tocha.errors import UserError
from tocha.paths import require_dir, require_file, require_file_or_dir


def _message(call) -> str:
    with pytest.raises(UserError) as info:
        call()
    return str(info.value)


# --- the helpers


def test_require_file_names_what_the_path_is(tmp_path):
    (tmp_path / "d").mkdir()
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    assert "is a folder, not a file" in _message(lambda: require_file(tmp_path / "d", "config key x"))
    assert "is not a regular file (it is a character device)" in _message(lambda: require_file("/dev/null", "k"))
    assert "(it is a named pipe)" in _message(lambda: require_file(tmp_path / "fifo", "k"))
    assert "broken symbolic link" in _message(lambda: require_file(tmp_path / "link", "k"))
    assert "does not exist" in _message(lambda: require_file(tmp_path / "nope", "k"))
    assert "part of it is a file" in _message(lambda: require_file("/dev/null/x", "k"))
    assert "config key x" in _message(lambda: require_file(tmp_path / "d", "config key x"))


def test_require_dir_names_what_the_path_is(tmp_path):
    (tmp_path / "f").write_text("x")
    assert "is a file, not a folder" in _message(lambda: require_dir(tmp_path / "f", "k"))
    assert "is not a folder (it is a character device)" in _message(lambda: require_dir("/dev/zero", "k"))
    assert require_dir(tmp_path, "k") == tmp_path
    assert require_file_or_dir(tmp_path / "f", "k") == tmp_path / "f"
    assert "not a regular file" in _message(lambda: require_file_or_dir("/dev/zero", "k"))


def test_a_name_longer_than_the_os_allows(tmp_path):
    message = _message(lambda: require_file(tmp_path / ("n" * 300), "config key data.path"))
    assert "300 bytes" in message and "255" in message and "config key data.path" in message


# --- where they are used


@pytest.mark.parametrize(
    "path, needle",
    [("/dev/null", "not a regular file"), ("/dev/zero", "not a regular file"), ("FOLDER", "is a folder")],
)
def test_yaml_config_file_that_is_not_a_file(tmp_path, path, needle):
    path = str(tmp_path) if path == "FOLDER" else path
    assert needle in _message(lambda: config.load(path))


@pytest.mark.parametrize("path", ["/dev/null", "/dev/zero"])
def test_text_corpus_that_is_a_device(path):
    from tocha.data.text import load_corpus

    message = _message(lambda: load_corpus(path))
    assert "not a regular file" in message and "data.path" in message


def test_text_folder_skips_hidden_folders(tmp_path):
    from tocha.data.text import corpus_files

    (tmp_path / "a.txt").write_text("hello")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "index").write_bytes(b"\x00binary")
    files, _ = corpus_files(str(tmp_path))
    assert files == [tmp_path / "a.txt"]


@pytest.mark.parametrize("name", ["fashion-mnist", "imagefolder"])
def test_data_root_that_is_a_file(tmp_path, name):
    (tmp_path / "f.png").write_bytes(b"x")
    message = _message(lambda: load_data(name, root=str(tmp_path / "f.png")))
    assert "is a file, not a folder" in message and "data.root" in message


@pytest.mark.parametrize("name", ["fashion-mnist", "imagefolder"])
def test_data_root_that_is_a_device(name):
    message = _message(lambda: load_data(name, root="/dev/null"))
    assert "is not a folder (it is a character device)" in message and "data.root" in message


@pytest.mark.parametrize("path, needle", [("/dev/null", "not a regular file"), ("nope.pt", "does not exist")])
def test_model_weights_that_are_not_a_file(tmp_path, path, needle):
    from tocha.models.transfer import resolve_weights_path

    message = _message(lambda: resolve_weights_path(path if path.startswith("/") else tmp_path / path))
    assert needle in message and "model.weights" in message


# --- image folders: unreadable, hidden, symlinked


def test_unreadable_class_folder_is_named(tmp_path, fixtures, monkeypatch):
    fixtures.make_image_folder(tmp_path, {"a": 3, "b": 3})
    real_scandir = os.scandir

    def scandir(path="."):  # stands for chmod 000, which root ignores
        if Path(path) == tmp_path / "b":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    message = _message(lambda: list_images(tmp_path, {"a": 0, "b": 1}))
    assert f"'{tmp_path / 'b'}'" in message and "cannot be read" in message and "data.root" in message


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads folders whatever their mode")
@pytest.mark.parametrize("which", ["root", "class"])
def test_chmod_000_folder_is_named(tmp_path, fixtures, which):
    fixtures.make_image_folder(tmp_path, {"a": 3, "b": 3})
    target = tmp_path if which == "root" else tmp_path / "b"
    target.chmod(0)
    try:
        message = _message(lambda: load_data("imagefolder", root=str(tmp_path)))
    finally:
        target.chmod(0o755)
    assert str(target) in message and "cannot be read" in message


def test_symlink_loop_does_not_multiply_images(tmp_path, fixtures):
    fixtures.make_image_folder(tmp_path, {"cat": 3, "dog": 3})
    (tmp_path / "cat" / "up").symlink_to("..")
    (tmp_path / "cat" / "again").symlink_to(".")
    (tmp_path / "cat" / "same.png").symlink_to("0.png")
    _, labels, _ = list_images(tmp_path, {"cat": 0, "dog": 1})
    assert labels.count(0) == 3 and labels.count(1) == 3


def test_symlinked_sub_folder_outside_the_tree_is_followed(tmp_path, fixtures):
    fixtures.make_image_folder(tmp_path / "data", {"cat": 2, "dog": 2})
    fixtures.make_image_folder(tmp_path / "elsewhere", {"more": 4})
    (tmp_path / "data" / "cat" / "more").symlink_to(tmp_path / "elsewhere" / "more")
    _, labels, _ = list_images(tmp_path / "data", {"cat": 0, "dog": 1})
    assert labels.count(0) == 6


def test_hidden_sub_folders_in_a_class_are_skipped(tmp_path, fixtures):
    fixtures.make_image_folder(tmp_path, {"cat": 3, "dog": 3})
    fixtures.make_image_folder(tmp_path / "cat", {".thumbnails": 5})
    _, labels, _ = list_images(tmp_path, {"cat": 0, "dog": 1})
    assert labels.count(0) == 3
