"""Classifiers for the unlearning benchmarks, chosen by name.

Every model is built from plain ``nn.Conv2d``, ``nn.Linear`` and ``nn.BatchNorm2d`` so
that a parameter scope selected by module type (as the trimming step of Scissorhands,
paper 000 §2.2, does) finds all of their weights. PyTorch's default initialisation is
kept on purpose: re-initialising trimmed weights uses the same default (papers/README).

Example:
    >>> model = build_model("resnet20", num_classes=10)
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity or 1x1-conv+BN (option B) shortcut.

    Args:
        in_channels: Channels of the block's input.
        out_channels: Channels of the block's output.
        stride: Stride of the first conv; 2 halves the spatial size.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            # He et al. 2016 option B: project the shortcut when the shape changes.
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """A CIFAR-style ResNet: 3x3 stem without max-pool, stages of basic blocks.

    The first stage keeps the spatial size; every later stage halves it.

    Args:
        blocks_per_stage: Number of basic blocks in each stage.
        widths: Output channels of each stage; the stem uses ``widths[0]``.
        num_classes: Size of the output logits.
        in_channels: Channels of the input images.
    """

    def __init__(
        self,
        blocks_per_stage: tuple[int, ...],
        widths: tuple[int, ...],
        num_classes: int,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages = []
        channels = widths[0]
        for stage, (num_blocks, width) in enumerate(zip(blocks_per_stage, widths)):
            strides = [1 if stage == 0 else 2] + [1] * (num_blocks - 1)
            blocks = []
            for stride in strides:
                blocks.append(BasicBlock(channels, width, stride))
                channels = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.stages(out)
        out = torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1)
        return self.fc(out)


class DigitsCNN(nn.Module):
    """A small CNN for 8x8 single-channel images (scikit-learn digits).

    conv 32 -> conv 64 -> 2x2 max-pool -> linear 128 -> classes.

    Args:
        num_classes: Size of the output logits.
        in_channels: Channels of the input images.
        image_size: Side of the square input; the default fits sklearn digits.
    """

    def __init__(self, num_classes: int, in_channels: int = 1, image_size: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * (image_size // 2) ** 2, 128)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.conv1(x))
        out = nn.functional.max_pool2d(torch.relu(self.conv2(out)), 2)
        out = torch.relu(self.fc1(torch.flatten(out, 1)))
        return self.fc2(out)


def resnet18(num_classes: int, in_channels: int = 3) -> nn.Module:
    """CIFAR ResNet-18: BasicBlock [2, 2, 2, 2], widths 64..512 (about 11.2M parameters)."""
    return ResNet((2, 2, 2, 2), (64, 128, 256, 512), num_classes, in_channels)


def resnet20(num_classes: int, in_channels: int = 3) -> nn.Module:
    """He et al. CIFAR ResNet-20: 3 stages of 3 blocks, 16/32/64 channels (about 0.27M)."""
    return ResNet((3, 3, 3), (16, 32, 64), num_classes, in_channels)


def resnet32(num_classes: int, in_channels: int = 3) -> nn.Module:
    """He et al. CIFAR ResNet-32: 3 stages of 5 blocks, 16/32/64 channels (about 0.46M)."""
    return ResNet((5, 5, 5), (16, 32, 64), num_classes, in_channels)


def digits_cnn(num_classes: int, in_channels: int = 1) -> nn.Module:
    """Small CNN for 8x8 inputs such as scikit-learn digits (about 0.15M parameters)."""
    return DigitsCNN(num_classes, in_channels)


MODELS: dict[str, Callable[[int, int], nn.Module]] = {
    "resnet18": resnet18,
    "resnet20": resnet20,
    "resnet32": resnet32,
    "digits_cnn": digits_cnn,
}


def build_model(name: str, num_classes: int, in_channels: int = 3) -> nn.Module:
    """Build a registered model by name.

    Args:
        name: A key of ``MODELS``.
        num_classes: Size of the output logits.
        in_channels: Channels of the input images (1 for digits).

    Returns:
        A freshly initialised ``nn.Module``.

    Raises:
        ValueError: If ``name`` is not registered or ``num_classes`` < 1.
    """
    if name not in MODELS:
        raise ValueError(f"model={name!r} is unknown; choose one of {sorted(MODELS)}")
    if num_classes < 1:
        raise ValueError(f"num_classes={num_classes} must be a positive integer")
    return MODELS[name](num_classes, in_channels)
