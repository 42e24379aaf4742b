"""Transfer learning: pretrained weights with a new head, adapted first conv, freezing, discriminative rates."""

import json

import pytest
import torch
from torch import nn

from tocha.engine.batches import DeviceTransform, ResidentBatches
from tocha.engine.checkpoint import save_weights
from tocha.engine.loop import train_loop
from tocha.engine.optim import build_optimizer
from tocha.errors import UserError
from tocha.models import ModelSpec, build_model
from tocha.models.transfer import Freezing, load_pretrained

CPU = torch.device("cpu")


def test_torchvision_weights_into_resnet18_with_a_new_head_and_gray_input(tmp_path):
    import torchvision

    torch.manual_seed(0)
    source = torchvision.models.resnet18(weights=None)  # the ImageNet layout: 3 channels, 1000 classes
    torch.save(source.state_dict(), tmp_path / "resnet18.pth")
    model = build_model(ModelSpec("resnet18", 1, 5, 32))
    head_before = model.fc.weight.detach().clone()
    notes = load_pretrained(model, tmp_path / "resnet18.pth", classes=tuple("abcde"))
    text = "\n".join(notes)
    assert "'conv1.weight' adapted from 3 to 1 input channel(s)" in text
    assert "head 'fc' newly initialised for 5 classes" in text
    assert torch.equal(model.conv1.weight, source.conv1.weight.sum(1, keepdim=True))
    assert torch.equal(model.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    assert torch.equal(model.layer1[0].bn1.running_var, source.layer1[0].bn1.running_var)
    assert torch.equal(model.fc.weight, head_before) and model.fc.weight.shape == (5, 512)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 5)


def _run_folder(path, model, classes):
    (path / "checkpoints").mkdir(parents=True)
    save_weights(model, path / "checkpoints" / "best.safetensors")
    (path / "config.yaml").write_text("epochs: 1\n")
    (path / "meta.json").write_text(json.dumps({"classes": list(classes)}))
    return path


def test_run_folder_weights_new_head_only_for_other_classes(tmp_path):
    torch.manual_seed(0)
    pretrained = build_model(ModelSpec("cnn", 1, 5, 28, width=4))
    run = _run_folder(tmp_path / "first5", pretrained, ["0", "1", "2", "3", "4"])
    same = build_model(ModelSpec("cnn", 1, 5, 28, width=4))
    load_pretrained(same, run, classes=("0", "1", "2", "3", "4"))
    assert all(torch.equal(a, b) for a, b in zip(same.state_dict().values(), pretrained.state_dict().values()))
    other = build_model(ModelSpec("cnn", 1, 5, 28, width=4))
    notes = load_pretrained(other, run, classes=("5", "6", "7", "8", "9"))
    assert any("newly initialised: that run learned other classes" in n for n in notes)
    assert torch.equal(other[0].weight, pretrained[0].weight) and not torch.equal(
        other[-1].weight, pretrained[-1].weight
    )


def test_weights_of_another_architecture_are_refused(tmp_path):
    torch.save(build_model(ModelSpec("mlp", 1, 5, 28)).state_dict(), tmp_path / "mlp.pt")
    with pytest.raises(UserError, match=r"in '.*mlp.pt' fits the model; it was saved from another architecture"):
        load_pretrained(build_model(ModelSpec("resnet18", 1, 5, 32)), tmp_path / "mlp.pt")


def _cnn_and_batches(seed=0):
    torch.manual_seed(seed)
    model = build_model(ModelSpec("cnn", 1, 3, 8, width=4))
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(64, 1, 8, 8, generator=g), torch.randint(0, 3, (64,), generator=g)
    batches = ResidentBatches(x, y, 16, device=CPU, transform=DeviceTransform(None, None, device=CPU), train=True)
    return model, batches


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_frozen_backbone_does_not_change_then_unfreezes():
    model, batches = _cnn_and_batches()
    freezing = Freezing(model, ["backbone"], unfreeze_at_epoch=2, pretrained=True)
    assert freezing.head == "16" and freezing.active
    lr_of = freezing.lr_of(1e-2, 1e-3)
    opt = build_optimizer(model, "adamw", lr=1e-2, weight_decay=5e-4, lr_of=lr_of)
    assert sorted({g["lr"] for g in opt.param_groups}) == [1e-3, 1e-2]
    before = _snapshot(model)
    train_loop(
        model,
        freezing.wrap(batches),
        device=CPU,
        optimizer=opt,
        scheduler=None,
        epochs=1,
        loss_fn=nn.CrossEntropyLoss(),
    )
    after = _snapshot(model)
    for k in before:
        changed = not torch.equal(before[k], after[k])
        # BatchNorm statistics are buffers: eval mode while frozen keeps them as they were.
        assert changed == k.startswith("16."), k
    train_loop(
        model,
        freezing.wrap(batches),
        device=CPU,
        optimizer=opt,
        scheduler=None,
        epochs=2,
        loss_fn=nn.CrossEntropyLoss(),
        start={"epoch": 1},
    )
    final = _snapshot(model)
    assert not torch.equal(after["0.weight"], final["0.weight"])  # unfrozen at epoch 2
    assert not torch.equal(after["1.running_mean"], final["1.running_mean"])  # BatchNorm back to training
    assert all(p.requires_grad for p in model.parameters())


def test_freeze_prefixes_and_unknown_prefix():
    model, batches = _cnn_and_batches()
    freezing = Freezing(model, ["0", "1"])
    freezing.set_epoch(0)
    assert [n for n, p in model.named_parameters() if not p.requires_grad] == ["0.weight", "1.weight", "1.bias"]
    with pytest.raises(UserError, match="model.freeze names 'layer9'"):
        Freezing(model, ["layer9"])
