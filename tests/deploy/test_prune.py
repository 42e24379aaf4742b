"""Structured pruning really shrinks the network; mask pruning says it does not; pruned runs reload."""

from __future__ import annotations

import logging

import pytest
import torch

from tocha.deploy.prune import checkpoint_shapes, count_macs, count_params, fit_to_shapes, prune_model
from tocha.errors import UserError
from tocha.models import ModelSpec, build_model

pytest.importorskip("torch_pruning")


def model(name: str, size: int = 16, channels: int = 1):
    return build_model(ModelSpec(name, channels, 10, size, (48,), 8, 0.0)).eval()


@pytest.mark.parametrize(
    "name, size, channels, scope",
    [("cnn", 16, 1, "uniform"), ("cnn", 16, 1, "global"), ("mlp", 8, 1, "uniform"), ("resnet18", 16, 3, "global")],
)
def test_channel_pruning_hits_the_asked_mac_ratio_and_keeps_the_output_shape(name, size, channels, scope):
    net = model(name, size, channels)
    x = torch.randn(2, channels, size, size)
    result = prune_model(net, x, 0.5, scope=scope, round_to=8 if name == "resnet18" else 1)
    assert result.model(x).shape == (2, 10)
    assert abs(result.achieved - 0.5) <= 0.05, result.summary()
    assert result.macs_after == count_macs(result.model, x) < result.macs_before == count_macs(net, x)
    assert result.params_after == count_params(result.model) < result.params_before
    assert net(x).shape == (2, 10) and count_macs(net, x) == result.macs_before  # the original is untouched


def test_a_parameter_target_reduces_parameters():
    net, x = model("cnn"), torch.randn(2, 1, 16, 16)
    result = prune_model(net, x, 0.3, target="params", round_to=1)
    assert abs((1 - count_params(result.model) / count_params(net)) - 0.3) <= 0.05


def test_pruned_channel_counts_stay_multiples_of_8_by_default():
    """CPU kernels work in blocks of 8 channels; odd counts made a pruned CNN slower than the original."""
    net, x = build_model(ModelSpec("cnn", 1, 10, 16, (48,), 32, 0.0)).eval(), torch.randn(2, 1, 16, 16)
    result = prune_model(net, x, 0.5)
    convs = [m.out_channels for m in result.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c % 8 == 0 for c in convs) and convs != [32, 64, 64], convs
    assert result.macs_after < 0.6 * result.macs_before


def test_count_macs_is_per_sample_and_matches_a_hand_count():
    lin = torch.nn.Linear(20, 5)
    assert count_macs(lin, torch.randn(7, 20)) == 100
    conv = torch.nn.Conv2d(3, 4, 3, padding=1, bias=False)
    assert count_macs(conv, torch.randn(2, 3, 8, 8)) == 4 * 3 * 9 * 64


def test_a_pruned_checkpoint_reloads_into_a_freshly_built_model(tmp_path):
    from safetensors.torch import save_model

    net, x = model("resnet18", 16, 3), torch.randn(2, 3, 16, 16)
    pruned = prune_model(net, x, 0.5, scope="global").model
    save_model(pruned, str(tmp_path / "w.safetensors"))
    fresh = fit_to_shapes(model("resnet18", 16, 3), checkpoint_shapes(tmp_path / "w.safetensors"))
    fresh.load_state_dict(pruned.state_dict())
    torch.testing.assert_close(fresh.eval()(x), pruned(x))
    assert count_params(fresh) == count_params(pruned)


def test_mask_pruning_zeroes_weights_keeps_shapes_and_warns(caplog):
    net, x = model("cnn"), torch.randn(2, 1, 16, 16)
    with caplog.at_level(logging.WARNING, logger="tocha"):
        result = prune_model(net, x, 0.6, method="masks")
    assert "NOT smaller or faster" in caplog.text
    shapes = {k: v.shape for k, v in net.state_dict().items()}
    assert {k: v.shape for k, v in result.model.state_dict().items()} == shapes
    assert result.macs_after == result.macs_before
    assert abs(result.achieved - 0.6) < 0.01
    assert all(bool(((w == 0) == (m == 0)).all()) for w, m in result.masks)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"ratio": 1.0}, ["out of range", "between 0 and 1"]),
        ({"ratio": 0.0}, ["out of range"]),
        ({"ratio": 0.5, "method": "l1"}, ["--prune-method", "channels, masks"]),
        ({"ratio": 0.5, "scope": "local"}, ["--prune-scope", "uniform, global"]),
    ],
)
def test_bad_prune_options_are_user_errors(kwargs, words):
    ratio = kwargs.pop("ratio")
    with pytest.raises(UserError) as err:
        prune_model(model("cnn"), torch.randn(2, 1, 16, 16), ratio, **kwargs)
    assert all(w in str(err.value) for w in words), str(err.value)
