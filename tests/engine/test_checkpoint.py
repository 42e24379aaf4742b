import pytest
import torch
from torch import nn

from tocha.engine.checkpoint import atomic_path, load_weights, read_state_dict, save_weights
from tocha.errors import UserError


def test_weights_round_trip_through_safetensors(tmp_path):
    a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    save_weights(a, tmp_path / "w.safetensors")
    assert load_weights(b, tmp_path / "w.safetensors") == []
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]  # no temp file left behind


def test_failed_write_keeps_the_previous_file(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("good")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_mismatching_shapes_are_named(tmp_path):
    save_weights(nn.Linear(3, 2), tmp_path / "w.safetensors")
    with pytest.raises(UserError, match=r"weight: file \(2, 3\) vs model \(5, 3\)"):
        load_weights(nn.Linear(3, 5), tmp_path / "w.safetensors")


def test_non_strict_load_skips_and_reports(tmp_path):
    src = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    save_weights(src, tmp_path / "w.safetensors")
    dst = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 7))  # new head
    notes = load_weights(dst, tmp_path / "w.safetensors", strict=False)
    assert torch.equal(dst[0].weight, src[0].weight)
    assert any(n.startswith("1.weight") for n in notes)


def test_pickled_objects_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, path)
    with pytest.raises(UserError, match="safely"):
        read_state_dict(path)


def test_plain_torch_state_dict_loads(tmp_path):
    a = nn.Linear(2, 2)
    torch.save(a.state_dict(), tmp_path / "w.pth")
    assert set(read_state_dict(tmp_path / "w.pth")) == {"weight", "bias"}


def test_atomic_writes_get_the_usual_file_permissions(tmp_path):
    import os
    import stat

    from tocha.engine.checkpoint import write_text_atomic

    write_text_atomic(tmp_path / "a.json", "{}")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o666 & ~mask
