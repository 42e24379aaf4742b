"""Contract test: every registered model builds on tiny input and runs forward + backward."""

import pytest
import torch

from tocha.errors import UserError
from tocha.models import MODELS, ModelSpec, build_model, check_model_name


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("channels", [1, 3])
def test_every_registered_model_trains_a_step(name, channels):
    size = 32  # the smallest input every registered model accepts (VGG pools 5 times)
    model = build_model(ModelSpec(name, channels, 7, size, hidden=(16,), width=4))
    x = torch.randn(2, channels, size, size)
    out = model(x)
    assert out.shape == (2, 7)
    out.sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_any_torchvision_classifier_by_name():
    model = build_model(ModelSpec("squeezenet1_0", 1, 4, 32))
    assert model(torch.randn(1, 1, 32, 32)).shape == (1, 4)


def test_cnn_and_mlp_take_small_and_flat_inputs():
    assert build_model(ModelSpec("cnn", 1, 10, 8))(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    assert build_model(ModelSpec("mlp", 5, 3, 0))(torch.randn(2, 5)).shape == (2, 3)


def test_user_model_by_module_function(tmp_path, monkeypatch):
    (tmp_path / "mymodels.py").write_text(
        "from torch import nn\n"
        "def tiny(in_channels, num_classes):\n"
        "    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    model = build_model(ModelSpec("mymodels:tiny", 1, 3, 8))
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 3)


def test_unknown_model_did_you_mean():
    err = check_model_name("resnet81")
    assert err is not None and "did you mean 'resnet18'?" in str(err)


def test_too_small_input_is_a_clear_error():
    with pytest.raises(UserError, match="image_size"):
        build_model(ModelSpec("vgg11_bn", 1, 10, 28))
