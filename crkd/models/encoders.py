"""Encoders: torchvision's ResNet-18 (CIFAR or ImageNet stem) and a small ResNet for CPU.

Every encoder has `feature_map(x)` (the last conv map [B, C, h, w]) and `forward(x)`
(its global average, [B, C]); relation terms that distil maps ask for the first.
"""
import torch
from torch import Tensor, nn


class ResNet18(nn.Module):
    """torchvision's ResNet-18 trunk (no fc). `cifar`: 3x3 stride-1 stem, no max-pool, for
    32x32 inputs, Kaiming-normal convs and BN weight 1 / bias 0 as in UNO."""

    def __init__(self, in_channels: int = 3, cifar: bool = True):
        super().__init__()
        from torchvision.models import resnet18  # torchvision costs seconds to import: only when used
        net = resnet18(weights=None)
        if cifar:
            net.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
            net.maxpool = nn.Identity()
        elif in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        # the same module names as torchvision's model, so state dicts keep their keys
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, name, getattr(net, name))
        self.out_dim = 512

    def feature_map(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: Tensor) -> Tensor:
        return self.feature_map(x).mean((2, 3))


def resnet18_cifar(in_channels: int = 3) -> nn.Module:
    return ResNet18(in_channels, cifar=True)


def resnet18_imagenet(in_channels: int = 3) -> nn.Module:
    return ResNet18(in_channels, cifar=False)


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = nn.Sequential()
        if stride != 1 or cin != cout:
            self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.skip(x))


class SmallResNet(nn.Module):
    """One basic block per stage; widths (32, 64, 128) is about 0.3M parameters."""

    def __init__(self, in_channels: int = 3, widths=(32, 64, 128), stem_stride: int = 1):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, stem_stride, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        blocks, cin = [], widths[0]
        for i, w in enumerate(widths):
            blocks.append(Block(cin, w, 1 if i == 0 else 2))
            cin = w
        self.blocks = nn.Sequential(*blocks)
        self.out_dim = cin
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def feature_map(self, x: Tensor) -> Tensor:
        return self.blocks(self.stem(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.feature_map(x).mean((2, 3))
