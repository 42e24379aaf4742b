"""int8 with per-layer fallback (deploy/fallback.py): the layer that costs most goes back to fp32 first."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from tocha.deploy import fallback  # noqa: E402
from tocha.deploy.artifact import METADATA_KEY  # noqa: E402


def conv_model(path, fragile: int | None):
    """A small CNN (3 convs, a linear head) exported by torch.onnx, with tocha metadata; returns its inputs.

    `fragile` (0 or 2) is the conv made to suffer from int8: each output channel of its weight gets
    one huge entry on an input channel that is always 0 (the input's second channel for conv 0;
    for conv 2, conv 1's channel 7, held below its Relu by a large negative bias). In fp32 that
    changes nothing; int8's per-channel weight scales are then set by that entry, and the layer's
    real weights round to zero."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    ).eval()
    with torch.no_grad():
        model[2].bias[7] = -1000.0  # conv 1's channel 7 is always 0 after its Relu
        if fragile == 0:
            model[0].weight[:, 1] = 5000.0
        elif fragile == 2:
            model[4].weight[:, 7] = 5000.0
    x = torch.randn(1024, 2, 8, 8)
    x[:, 1] = 0.0
    with contextlib.redirect_stdout(io.StringIO()):
        torch.onnx.export(
            model,
            (x[:2],),
            str(path),
            dynamo=True,
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
            external_data=False,
        )
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps({"classes": ["a", "b", "c", "d"]})
    onnx.save(proto, str(path))
    return x.numpy()


def fidelity(reference, x):
    """1 - the relative error of a file's logits against the fp32 file's: a label-free score in [0, 1]."""
    want = fallback._logits(reference, x)
    return lambda file: 1 - float(np.abs(fallback._logits(file, x) - want).mean() / np.abs(want).mean())


def fallback_of(tmp_path, fragile, **options):
    x = conv_model(tmp_path / "m.onnx", fragile)
    options = {"evaluate": fidelity(tmp_path / "m.onnx", x), "max_drop_points": 1.0, **options}
    return fallback.int8_with_fallback(
        tmp_path / "m.onnx", tmp_path / "q.onnx", calibration=x[:256], echo=lambda *_: None, **options
    )


def test_the_layer_made_to_cost_most_is_reverted_first(tmp_path):
    result = fallback_of(tmp_path, fragile=0)
    layers = list(result.sensitivity)
    assert result.accuracies[0] < 0.97  # every layer int8: the fragile conv wrecks it
    assert max(result.sensitivity, key=result.sensitivity.get) == layers[0]  # the first conv
    assert result.reverted == [layers[0]] and result.within_budget and result.accuracy > 0.99
    # The file is the reverted one, with the metadata kept, and nothing else is left beside it.
    assert any(p.key == METADATA_KEY for p in onnx.load(str(tmp_path / "q.onnx")).metadata_props)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "q.onnx"]


def test_the_ranking_follows_the_fragile_layer(tmp_path):
    """The same model with the damage moved to the third conv: the ranking moves with it (not graph order)."""
    result = fallback_of(tmp_path, fragile=2)
    assert result.reverted[0] == list(result.sensitivity)[2] and result.within_budget


def test_nothing_is_reverted_when_every_layer_int8_is_within_budget(tmp_path):
    result = fallback_of(tmp_path, fragile=None)
    assert result.reverted == [] and result.sensitivity == {} and result.within_budget
    assert result.accuracies[0] > 0.99


def test_a_budget_it_cannot_meet_reverts_until_told_to_stop(tmp_path):
    never = lambda file: 1.0 if file.name == "m.onnx" else 0.0  # noqa: E731 - int8 is never good enough
    result = fallback_of(tmp_path, fragile=0, evaluate=never, max_reverts=2)
    assert len(result.reverted) == 2 and not result.within_budget
    assert result.reverted[0] == list(result.sensitivity)[0] and result.accuracies == [0.0, 0.0, 0.0]
