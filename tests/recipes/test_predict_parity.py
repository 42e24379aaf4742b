"""`tocha predict` prepares a file exactly as training prepared the data (same modes, same resize)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import tocha
from tocha.data import load_data
from tocha.engine.batches import DeviceTransform
from tocha.errors import UserError
from tocha.recipes.runs import load_run, predict_files


@pytest.fixture(scope="module")
def digits32(tmp_path_factory):
    out = tmp_path_factory.mktemp("p") / "run"
    tocha.fit(
        "mlp", "digits", out=str(out), epochs=1, image_size=32, threads=1, log={"progress": False, "tensorboard": False}
    )
    return out


def test_predicting_a_file_equals_the_in_memory_pipeline(digits32, tmp_path):
    raw = load_data("digits", image_size=None)  # 8x8 uint8, as stored
    big = load_data("digits", image_size=32)  # what training saw: torch antialiased resize
    files = []
    for i in range(5):
        path = tmp_path / f"d{i}.png"
        Image.fromarray(raw.test.inputs[i, 0].numpy(), mode="L").save(path)
        files.append(str(path))
    got = predict_files(digits32, files, top_k=10, device="cpu")
    loaded = load_run(digits32, "best", "cpu")
    transform = DeviceTransform(loaded.meta["mean"], loaded.meta["std"], device=torch.device("cpu"))
    with torch.inference_mode():
        want = loaded.model(transform(big.test.inputs[:5], train=False)).softmax(1)
    classes = loaded.meta["classes"]
    for p, row in zip(got, want):
        probs = dict(p.top)
        assert max(abs(probs[c] - float(row[k])) for k, c in enumerate(classes)) < 1e-6


def test_a_folder_predicts_its_images_and_a_bomb_is_refused(digits32, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8), 40 * i, dtype=np.uint8), mode="L").save(folder / f"{i}.png")
    assert [p.file for p in predict_files(digits32, [str(folder)], device="cpu")] == [
        str(folder / f"{i}.png") for i in range(3)
    ]
    bomb = tmp_path / "bomb.png"
    Image.new("L", (1, 1)).save(bomb)
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 0  # every image counts as too large: the real PIL guard, set low
    try:
        with pytest.raises(UserError, match="too large"):
            predict_files(digits32, [str(bomb)], device="cpu")
    finally:
        Image.MAX_IMAGE_PIXELS = limit
