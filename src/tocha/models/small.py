"""The seeds' small networks: the MLP of seed 004 and the 3-conv CNN of seeds 000/002."""

from __future__ import annotations

from torch import nn

from tocha.models.spec import ModelSpec


def build_mlp(spec: ModelSpec) -> nn.Module:
    in_features = spec.in_channels * max(spec.image_size, 1) ** 2
    layers: list[nn.Module] = [nn.Flatten()]
    for width in spec.hidden:
        layers += [nn.Linear(in_features, width), nn.ReLU(inplace=True)]
        in_features = width
    if spec.dropout and spec.hidden:
        layers.append(nn.Dropout(spec.dropout))
    layers.append(nn.Linear(in_features, spec.num_classes))
    return nn.Sequential(*layers)


def _conv_block(c_in: int, c_out: int, pool: bool, bn_momentum: float = 0.1) -> list[nn.Module]:
    # bias=False: the BatchNorm right after supplies the shift.
    conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
    block = [conv, nn.BatchNorm2d(c_out, momentum=bn_momentum), nn.ReLU(inplace=True)]
    return block + [nn.MaxPool2d(2)] if pool else block


def build_cnn(spec: ModelSpec) -> nn.Module:
    """conv(w) -> pool -> conv(2w) -> pool -> conv(2w) -> pool -> fc(128) -> dropout -> fc(classes).

    What seed 000 describes ("three convolutional layers and two fully connected, ReLU,
    dropout") with seed 002's widths pattern (32, 64, 64 at width=32). A pool is skipped when
    the feature map is already 1 pixel, so small inputs such as 8x8 digits work too.
    """
    if spec.image_size == 0:
        raise ValueError("the cnn needs image inputs [N, C, H, W]; use model=mlp for flat features")
    w, size = spec.width, spec.image_size
    layers: list[nn.Module] = []
    for c_in, c_out in [(spec.in_channels, w), (w, 2 * w), (2 * w, 2 * w)]:
        pool = size >= 2
        layers += _conv_block(c_in, c_out, pool, spec.bn_momentum)
        size = size // 2 if pool else size
    return nn.Sequential(
        *layers,
        nn.Flatten(),
        nn.Linear(2 * w * size * size, 128),
        nn.ReLU(inplace=True),
        nn.Dropout(spec.dropout),
        nn.Linear(128, spec.num_classes),
    )
