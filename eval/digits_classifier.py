"""A small CNN that judges 32x32 digit images: the offline recogniser and FID feature extractor.

The default offline model (``pipelines/default_model.py``) draws scikit-learn's 8x8 digits at
32x32. ``DigitsJudge`` tells which digit a generated image shows (the erasure success metric)
and its penultimate layer stands in for Inception features in the offline FID.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

JUDGE_CONFIG_NAME = "config.json"
JUDGE_WEIGHTS_NAME = "model.safetensors"


@dataclass
class DigitsJudgeConfig:
    """Architecture of ``DigitsJudge``: three conv stages, each halving the resolution."""

    channels: tuple[int, int, int] = (16, 32, 64)
    image_size: int = 32
    num_classes: int = 10

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        if len(self.channels) != 3 or min(self.channels) < 1:
            raise ValueError(f"channels must be 3 positive ints, got {self.channels}")
        if self.image_size < 8 or self.image_size % 8:
            raise ValueError(f"image_size must be a multiple of 8 and >= 8, got {self.image_size}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")


@dataclass
class JudgeTrainConfig:
    """How ``build_digits_judge`` trains: Adam on augmented upscaled digits, a held-out split."""

    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 5e-3
    test_fraction: float = 0.2
    max_shift: float = 0.12  # fraction of the half-width, ~2 px at 32x32

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")
        if not 0.0 < self.learning_rate < 1.0:
            raise ValueError(f"learning_rate must be in (0, 1), got {self.learning_rate}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if not 0.0 <= self.max_shift < 0.5:
            raise ValueError(f"max_shift must be in [0, 0.5), got {self.max_shift}")


def load_upscaled_digits(image_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled 8x8 digits, bilinearly upscaled.

    Returns:
        ``(images, labels)``: float images ``[1797, 1, image_size, image_size]`` in [0, 1]
        (ink is bright, as in the data set) and int64 labels ``[1797]``.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return images.clamp(0.0, 1.0), torch.tensor(digits.target, dtype=torch.long)


def _augment(images: torch.Tensor, max_shift: float, generator: torch.Generator) -> torch.Tensor:
    """Shifts, slight scale/rotation, blur, contrast and noise: the ways generations differ."""
    n = images.shape[0]
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(10)
    scale = 1.0 + (torch.rand(n, generator=generator) * 2 - 1) * 0.1
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = torch.cos(angle) * scale, -torch.sin(angle) * scale
    theta[:, 1, 0], theta[:, 1, 1] = torch.sin(angle) * scale, torch.cos(angle) * scale
    theta[:, :, 2] = (torch.rand(n, 2, generator=generator) * 2 - 1) * max_shift
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    images = F.grid_sample(images, grid, padding_mode="zeros", align_corners=False)
    blurred = F.avg_pool2d(images, 3, stride=1, padding=1, count_include_pad=False)
    mix = torch.rand(n, 1, 1, 1, generator=generator)
    images = mix * blurred + (1 - mix) * images
    contrast = 0.7 + 0.6 * torch.rand(n, 1, 1, 1, generator=generator)
    offset = (torch.rand(n, 1, 1, 1, generator=generator) - 0.5) * 0.2
    noise = torch.randn(images.shape, generator=generator) * 0.05 * torch.rand(n, 1, 1, 1, generator=generator)
    return (images * contrast + offset + noise).clamp(0.0, 1.0)


class DigitsJudge(nn.Module):
    """Conv-BN-ReLU-pool x3, global average pool (the features), linear classifier."""

    def __init__(self, config: DigitsJudgeConfig | None = None) -> None:
        super().__init__()
        self.config = config or DigitsJudgeConfig()
        layers, in_channels = [], 1
        for out_channels in self.config.channels:
            layers += [
                nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            in_channels = out_channels
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(in_channels, self.config.num_classes)

    def prepare(self, images: torch.Tensor | list) -> torch.Tensor:
        """Map PIL images or ``[N, C, H, W]`` tensors in [0, 1] (C = 1 or 3) to normalised grey."""
        if isinstance(images, (list, tuple)):
            grey = [np.asarray(image.convert("L"), dtype=np.float32) / 255.0 for image in images]
            images = torch.from_numpy(np.stack(grey)).unsqueeze(1)
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"images must be [N, 1 or 3, H, W], got shape {tuple(images.shape)}")
        param = next(self.parameters())
        images = images.to(device=param.device, dtype=param.dtype).mean(dim=1, keepdim=True)
        size = self.config.image_size
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return (images - 0.5) / 0.5

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, num_classes]`` for prepared (normalised grey) images."""
        return self.head(self.body(images).mean(dim=(2, 3)))

    @torch.no_grad()
    def features(self, images: torch.Tensor | list) -> torch.Tensor:
        """Penultimate-layer features ``[N, channels[-1]]`` (the offline FID embedding)."""
        return self.body(self.prepare(images)).mean(dim=(2, 3))

    @torch.no_grad()
    def predict(self, images: torch.Tensor | list) -> torch.Tensor:
        """Predicted digit labels ``[N]`` (int64) for images in [0, 1]."""
        return self.forward(self.prepare(images)).argmax(dim=1)


def load_digits_judge(path: str | Path, device: str | torch.device = "cpu") -> DigitsJudge:
    """Load a judge saved by ``build_digits_judge`` (safetensors weights, never pickle).

    Raises:
        FileNotFoundError: if ``path`` lacks ``config.json`` or ``model.safetensors``.
    """
    from safetensors.torch import load_file

    path = Path(path)
    for name in (JUDGE_CONFIG_NAME, JUDGE_WEIGHTS_NAME):
        if not (path / name).is_file():
            raise FileNotFoundError(f"no {name} in judge folder {path}; build it with build_digits_judge")
    config = json.loads((path / JUDGE_CONFIG_NAME).read_text())
    judge = DigitsJudge(DigitsJudgeConfig(**config["architecture"]))
    judge.load_state_dict(load_file(path / JUDGE_WEIGHTS_NAME))
    return judge.to(device).eval()


@torch.no_grad()
def judge_accuracy(judge: DigitsJudge, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of ``images`` (in [0, 1]) that ``judge`` labels correctly."""
    was_training = judge.training
    judge.eval()
    accuracy = (judge.predict(images).cpu() == labels).float().mean().item()
    judge.train(was_training)
    return accuracy


def train_digits_judge(
    train_images: torch.Tensor, train_labels: torch.Tensor, config: JudgeTrainConfig, seed: int = 0
) -> DigitsJudge:
    """Train a ``DigitsJudge`` on augmented ``[N, 1, 32, 32]`` images in [0, 1]."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    judge = DigitsJudge().train()
    steps_per_epoch = math.ceil(len(train_images) / config.batch_size)
    optimizer = torch.optim.Adam(judge.parameters(), lr=config.learning_rate)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.learning_rate, total_steps=config.epochs * steps_per_epoch
    )
    for _ in tqdm(range(config.epochs), desc="digits judge", unit="epoch"):
        order = torch.randperm(len(train_images), generator=generator)
        for batch in order.split(config.batch_size):
            images = _augment(train_images[batch], config.max_shift, generator)
            loss = F.cross_entropy(judge(judge.prepare(images)), train_labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return judge.eval()


def build_digits_judge(output_dir: str | Path, seed: int = 0, config: JudgeTrainConfig | None = None) -> Path:
    """Train the judge on a stratified split of the upscaled digits and save it.

    Writes ``model.safetensors`` and ``config.json`` (architecture, held-out accuracy) into
    ``output_dir``.

    Returns:
        ``output_dir`` as a ``Path``.
    """
    from safetensors.torch import save_file
    from sklearn.model_selection import train_test_split

    config = config or JudgeTrainConfig()
    images, labels = load_upscaled_digits(DigitsJudgeConfig().image_size)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=config.test_fraction, random_state=seed, stratify=labels.numpy()
    )
    train_idx, test_idx = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    judge = train_digits_judge(images[train_idx], labels[train_idx], config, seed)
    test_accuracy = judge_accuracy(judge, images[test_idx], labels[test_idx])
    logger.info("digits judge: held-out accuracy %.4f on %d images", test_accuracy, len(test_idx))
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.contiguous() for name, tensor in judge.state_dict().items()}
    save_file(state, output_dir / JUDGE_WEIGHTS_NAME)
    record = {"architecture": asdict(judge.config), "training": asdict(config), "seed": seed,
              "test_accuracy": test_accuracy, "num_test_images": len(test_idx)}
    (output_dir / JUDGE_CONFIG_NAME).write_text(json.dumps(record, indent=2))
    return output_dir
