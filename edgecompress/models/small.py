"""Built-in models for small inputs (28x28 Fashion-MNIST, 32x32 CIFAR).

Shortcuts that change shape use a 1x1 convolution plus BatchNorm (He et al.'s
option B) rather than zero padding, so every channel coupling is visible to
torch-pruning's dependency graph and structured pruning stays exact.

Models are grouped in families (``lenet``, ``vgg-small``, ``cifar-resnet``,
``mobilenetv2``); a family's shallower or narrower members are the compact
students ``students_for`` offers for distillation. Descriptions give the
parameter count at 28x28, 1 channel, 10 classes (``tests/models`` checks them).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torchvision.models.mobilenetv2 import MobileNetV2

from edgecompress.analysis import register_removable_block
from edgecompress.models._registry import register_model


class LeNet5(nn.Module):
    """LeCun et al. 1998, with ReLU and max pooling; 28x28 inputs keep their size in conv1 (padding 2)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 6, kernel_size=5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5)
        self.pool = nn.MaxPool2d(2)
        # Makes the classifier independent of the input size (identity at 28x28).
        self.resize = nn.AdaptiveAvgPool2d((5, 5))
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.act(self.conv1(x)))
        x = self.resize(self.pool(self.act(self.conv2(x))))
        x = torch.flatten(x, 1)
        x = self.act(self.fc1(x))
        x = self.act(self.fc2(x))
        return self.fc3(x)


@register_model(
    "lenet5", "LeNet-5 (61.7k params at 28x28); trains to ~90% on Fashion-MNIST in 3 epochs", family="lenet"
)
def lenet5(num_classes: int, in_channels: int, input_size: int) -> nn.Module:
    return LeNet5(num_classes, in_channels)


class VGGSmall(nn.Module):
    """CIFAR-style VGG with BatchNorm, half the usual widths, four poolings, global average pooling."""

    def __init__(self, cfg: list[int | str], num_classes: int, in_channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                assert isinstance(v, int)
                layers += [
                    nn.Conv2d(c, v, 3, padding=1, bias=False),
                    nn.BatchNorm2d(v),
                    nn.ReLU(inplace=True),
                ]
                c = v
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


_VGG11_SMALL: list[int | str] = [32, "M", 64, "M", 128, 128, "M", 256, 256, "M", 256, 256]


@register_model("vgg11-small", "CIFAR-style VGG-11 with BatchNorm at half width (2.3M params)", family="vgg-small")
def vgg11_small(num_classes: int, in_channels: int, input_size: int) -> nn.Module:
    return VGGSmall(_VGG11_SMALL, num_classes, in_channels)


@register_model("vgg11-small-0.5", "vgg11-small with every width halved (0.58M params)", family="vgg-small")
def vgg11_small_half(num_classes: int, in_channels: int, input_size: int) -> nn.Module:
    return VGGSmall([v if isinstance(v, str) else v // 2 for v in _VGG11_SMALL], num_classes, in_channels)


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + self.shortcut(x))


# With an identity shortcut the block is relu(x + f(x)) on x >= 0 (every block's input leaves a ReLU):
# removing it leaves relu(x) = x, exactly the identity.
register_removable_block(BasicBlock, lambda m: isinstance(m.shortcut, nn.Identity))


def _scaled(channels: int, width: float) -> int:
    """``channels x width`` rounded to the nearest multiple of 4 (halves up), at least 4."""
    return max(4, int(channels * width / 4 + 0.5) * 4)


class CifarResNet(nn.Module):
    """He et al. 2016's CIFAR ResNet (depth 6n+2, widths 16/32/64 times ``width``, each a multiple of 4)."""

    def __init__(self, depth: int, num_classes: int, in_channels: int, width: float = 1.0) -> None:
        super().__init__()
        assert (depth - 2) % 6 == 0, "CIFAR ResNet depth must be 6n+2"
        assert width > 0, "CIFAR ResNet width must be > 0"
        n = (depth - 2) // 6
        widths = [_scaled(c, width) for c in (16, 32, 64)]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.act = nn.ReLU(inplace=True)
        blocks: list[nn.Module] = []
        in_planes = widths[0]
        for planes, stride in zip(widths, (1, 2, 2), strict=True):
            for i in range(n):
                blocks.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[2], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn1(self.conv1(x)))
        x = self.layers(x)
        return self.fc(torch.flatten(self.pool(x), 1))


@register_model("resnet8", "CIFAR-style ResNet-8, one block per stage (77.8k params)", family="cifar-resnet")
def resnet8(num_classes: int, in_channels: int, input_size: int) -> nn.Module:
    return CifarResNet(8, num_classes, in_channels)


@register_model("resnet14", "CIFAR-style ResNet-14, two blocks per stage (0.17M params)", family="cifar-resnet")
def resnet14(num_classes: int, in_channels: int, input_size: int) -> nn.Module:
    return CifarResNet(14, num_classes, in_channels)


@register_model("resnet20", "CIFAR-style ResNet-20 (0.27M params, 1x1 projection shortcuts)", family="cifar-resnet")
def resnet20(num_classes: int, in_channels: int, input_size: int) -> nn.Module:
    return CifarResNet(20, num_classes, in_channels)


@register_model("resnet56", "CIFAR-style ResNet-56 (0.86M params, 1x1 projection shortcuts)", family="cifar-resnet")
def resnet56(num_classes: int, in_channels: int, input_size: int) -> nn.Module:
    return CifarResNet(56, num_classes, in_channels)


@register_model("resnet8-0.5", "ResNet-8 at half width, 8/16/32 channels (19.8k params)", family="cifar-resnet")
def resnet8_half(num_classes: int, in_channels: int, input_size: int) -> nn.Module:
    return CifarResNet(8, num_classes, in_channels, width=0.5)


@register_model("resnet14-0.5", "ResNet-14 at half width, 8/16/32 channels (44.2k params)", family="cifar-resnet")
def resnet14_half(num_classes: int, in_channels: int, input_size: int) -> nn.Module:
    return CifarResNet(14, num_classes, in_channels, width=0.5)


@register_model("resnet20-0.5", "ResNet-20 at half width, 8/16/32 channels (68.6k params)", family="cifar-resnet")
def resnet20_half(num_classes: int, in_channels: int, input_size: int) -> nn.Module:
    return CifarResNet(20, num_classes, in_channels, width=0.5)


def _small_input_mobilenetv2(num_classes: int, in_channels: int, width_mult: float) -> nn.Module:
    # torchvision's settings with the stem and the first stride-2 stage at stride 1,
    # as CIFAR MobileNetV2 variants do: 28x28 ends at 4x4 instead of 1x1.
    setting = [
        [1, 16, 1, 1],
        [6, 24, 2, 1],
        [6, 32, 3, 2],
        [6, 64, 4, 2],
        [6, 96, 3, 1],
        [6, 160, 3, 2],
        [6, 320, 1, 1],
    ]
    model = MobileNetV2(num_classes=num_classes, width_mult=width_mult, inverted_residual_setting=setting)
    stem = model.features[0][0]
    assert isinstance(stem, nn.Conv2d)
    model.features[0][0] = nn.Conv2d(in_channels, stem.out_channels, 3, stride=1, padding=1, bias=False)
    return model


@register_model(
    "mobilenetv2",
    "torchvision MobileNetV2 with a small-input stem, total stride 8 (2.24M params)",
    family="mobilenetv2",
)
def mobilenetv2(num_classes: int, in_channels: int, input_size: int) -> nn.Module:
    return _small_input_mobilenetv2(num_classes, in_channels, 1.0)


@register_model(
    "mobilenetv2-0.5",
    "MobileNetV2 at width 0.5 (channels halved, rounded to 8), small-input stem (0.70M params)",
    family="mobilenetv2",
)
def mobilenetv2_half(num_classes: int, in_channels: int, input_size: int) -> nn.Module:
    return _small_input_mobilenetv2(num_classes, in_channels, 0.5)


@register_model(
    "mobilenetv2-0.25",
    "MobileNetV2 at width 0.25 (channels quartered, rounded to 8; the 1280-wide head stays), "
    "small-input stem (0.25M params)",
    family="mobilenetv2",
)
def mobilenetv2_quarter(num_classes: int, in_channels: int, input_size: int) -> nn.Module:
    return _small_input_mobilenetv2(num_classes, in_channels, 0.25)
