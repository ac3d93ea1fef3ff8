"""A small CNN that judges 32x32 coloured digits: the offline recogniser and FID feature extractor.

The default offline model (``pipelines/default_model.py``) draws scikit-learn's digits as
coloured strokes (``pipelines/testbed_data.py``). ``DigitsJudge`` tells which digit a
generation shows, whatever its colour (the erasure success metric). It is trained with a
second head on the stroke colour, so that its penultimate features, which stand in for
Inception features in the offline FID, move when a model loses a colour as well as when it
loses a shape. The colour itself is judged by the rule in ``eval/colors.py``.
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

    channels: tuple[int, int, int] = (32, 64, 128)
    image_size: int = 32
    num_classes: int = 10
    num_colors: int = 6

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        if len(self.channels) != 3 or min(self.channels) < 1:
            raise ValueError(f"channels must be 3 positive ints, got {self.channels}")
        if self.image_size < 8 or self.image_size % 8:
            raise ValueError(f"image_size must be a multiple of 8 and >= 8, got {self.image_size}")
        if self.num_classes < 2 or self.num_colors < 1:
            raise ValueError(f"num_classes must be >= 2 and num_colors >= 1, got {self.num_classes}, {self.num_colors}")


@dataclass
class JudgeTrainConfig:
    """How ``build_digits_judge`` trains: Adam on renders of the train digits, new renders each epoch."""

    epochs: int = 32
    renders_per_digit: int = 1
    batch_size: int = 64
    learning_rate: float = 5e-3
    color_loss_weight: float = 0.5

    def __post_init__(self) -> None:
        for name in ("epochs", "renders_per_digit", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.learning_rate < 1.0:
            raise ValueError(f"learning_rate must be in (0, 1), got {self.learning_rate}")
        if not self.color_loss_weight >= 0.0:
            raise ValueError(f"color_loss_weight must be >= 0, got {self.color_loss_weight}")


def degrade(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Blur, contrast, offset and noise: the ways generations differ from clean renders."""
    n = images.shape[0]
    blurred = F.avg_pool2d(images, 3, stride=1, padding=1, count_include_pad=False)
    mix = torch.rand(n, 1, 1, 1, generator=generator)
    images = mix * blurred + (1 - mix) * images
    contrast = 0.7 + 0.5 * torch.rand(n, 1, 1, 1, generator=generator)
    offset = (torch.rand(n, 1, 1, 1, generator=generator) - 0.5) * 0.1
    noise = torch.randn(images.shape, generator=generator) * 0.05 * torch.rand(n, 1, 1, 1, generator=generator)
    return (images * contrast + offset + noise).clamp(0.0, 1.0)


class DigitsJudge(nn.Module):
    """Conv-BN-ReLU-pool x3 on RGB, global average pool (the features), digit and colour heads."""

    def __init__(self, config: DigitsJudgeConfig | None = None) -> None:
        super().__init__()
        self.config = config or DigitsJudgeConfig()
        layers, in_channels = [], 3
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
        self.color_head = nn.Linear(in_channels, self.config.num_colors)

    def prepare(self, images: torch.Tensor | list) -> torch.Tensor:
        """Map PIL images or ``[N, C, H, W]`` tensors in [0, 1] (C = 1 or 3) to normalised RGB."""
        if isinstance(images, (list, tuple)):
            rgb = [np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0 for image in images]
            images = torch.from_numpy(np.stack(rgb)).permute(0, 3, 1, 2)
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"images must be [N, 1 or 3, H, W], got shape {tuple(images.shape)}")
        param = next(self.parameters())
        images = images.to(device=param.device, dtype=param.dtype).expand(-1, 3, -1, -1)
        size = self.config.image_size
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return (images - 0.5) / 0.5

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Digit logits ``[N, num_classes]`` and colour logits ``[N, num_colors]`` of prepared images."""
        features = self.body(images).mean(dim=(2, 3))
        return self.head(features), self.color_head(features)

    @torch.no_grad()
    def features(self, images: torch.Tensor | list) -> torch.Tensor:
        """Penultimate-layer features ``[N, channels[-1]]`` (the offline FID embedding)."""
        return self.body(self.prepare(images)).mean(dim=(2, 3))

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor | list) -> torch.Tensor:
        """Softmax over digits ``[N, num_classes]`` (the alignment score reads the prompted one)."""
        return self.forward(self.prepare(images))[0].softmax(dim=1)

    @torch.no_grad()
    def predict(self, images: torch.Tensor | list) -> torch.Tensor:
        """Predicted digit labels ``[N]`` (int64) for images in [0, 1]."""
        return self.forward(self.prepare(images))[0].argmax(dim=1)


def load_digits_judge(path: str | Path, device: str | torch.device = "cpu") -> DigitsJudge:
    """Load a judge saved by ``build_digits_judge`` (safetensors weights, never pickle).

    Raises:
        FileNotFoundError: if ``path`` lacks ``config.json`` or ``model.safetensors``.
        ValueError: a config or weights file that cannot be read or does not fit, naming it.
    """
    from erasure.tensor_files import read_tensors

    path = Path(path)
    for name in (JUDGE_CONFIG_NAME, JUDGE_WEIGHTS_NAME):
        if not (path / name).is_file():
            raise FileNotFoundError(f"no {name} in judge folder {path}; build it with build_digits_judge")
    try:
        config = json.loads((path / JUDGE_CONFIG_NAME).read_text(encoding="utf-8"))
        judge = DigitsJudge(DigitsJudgeConfig(**config["architecture"]))
    except (ValueError, TypeError, KeyError) as err:  # not JSON, no "architecture", unknown fields
        raise ValueError(f"judge {path / JUDGE_CONFIG_NAME}: not a build_digits_judge config ({err!r}); "
                         "rebuild the judge") from None
    weights = read_tensors(path / JUDGE_WEIGHTS_NAME, "judge weights")
    try:
        judge.load_state_dict(weights)
    except RuntimeError as err:
        raise ValueError(f"judge weights {path / JUDGE_WEIGHTS_NAME} do not fit {path / JUDGE_CONFIG_NAME} "
                         f"({' '.join(str(err).split())[:200]}); rebuild the judge") from None
    return judge.to(device).eval()


@torch.no_grad()
def per_class_accuracy(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float]:
    """Accuracy of ``predictions`` within each class of ``labels``."""
    return [float((predictions[labels == c] == c).float().mean()) for c in range(num_classes)]


def train_digits_judge(strokes: torch.Tensor, labels: torch.Tensor, config: JudgeTrainConfig,
                       seed: int = 0) -> DigitsJudge:
    """Train a ``DigitsJudge`` on fresh coloured renders of ``strokes`` ``[N, 1, 32, 32]`` each epoch."""
    from pipelines.testbed_data import color_table, render_digits

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    num_colors = len(color_table())
    judge = DigitsJudge(DigitsJudgeConfig(num_colors=num_colors)).train()
    strokes, labels = strokes.repeat(config.renders_per_digit, 1, 1, 1), labels.repeat(config.renders_per_digit)
    steps_per_epoch = math.ceil(len(strokes) / config.batch_size)
    optimizer = torch.optim.Adam(judge.parameters(), lr=config.learning_rate)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.learning_rate, total_steps=config.epochs * steps_per_epoch
    )
    for _ in tqdm(range(config.epochs), desc="digits judge", unit="epoch"):
        colors = torch.randint(num_colors, (len(strokes),), generator=generator)
        for batch in torch.randperm(len(strokes), generator=generator).split(config.batch_size):
            images = degrade(render_digits(strokes[batch], colors[batch], generator), generator)
            digit_logits, color_logits = judge(judge.prepare(images))
            loss = F.cross_entropy(digit_logits, labels[batch])
            loss = loss + config.color_loss_weight * F.cross_entropy(color_logits, colors[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return judge.eval()


@torch.no_grad()
def held_out_report(judge: DigitsJudge, strokes: torch.Tensor, labels: torch.Tensor, seed: int) -> dict:
    """Digit accuracy per class of ``judge`` and of the colour rule on renders of held-out digits.

    Each held-out digit is rendered once in every colour (augmented, not degraded), so the
    figures are over ``len(strokes) * num_colors`` images.
    """
    from pipelines.testbed_data import color_table, render_digits

    from .colors import ColorJudge

    generator = torch.Generator().manual_seed(seed + 1)
    num_colors = len(color_table())
    colors = torch.arange(num_colors).repeat_interleave(len(strokes))
    images = render_digits(strokes.repeat(num_colors, 1, 1, 1), colors, generator)
    labels = labels.repeat(num_colors)
    digits = torch.cat([judge.predict(chunk) for chunk in images.split(512)]).cpu()
    judged_colors = ColorJudge().predict(images)
    per_class = per_class_accuracy(digits, labels, judge.config.num_classes)
    return {"test_accuracy": float((digits == labels).float().mean()), "test_accuracy_per_class": per_class,
            "test_worst_class_accuracy": min(per_class),
            "color_rule_accuracy": float((judged_colors == colors).float().mean()),
            "num_test_images": len(images)}


def build_digits_judge(output_dir: str | Path, seed: int = 0, config: JudgeTrainConfig | None = None,
                       test_fraction: float = 0.2) -> Path:
    """Train the judge on renders of the train digits, measure it on held-out ones, save it.

    Writes ``model.safetensors`` and ``config.json`` (architecture, training settings, the
    held-out report of ``held_out_report``) into ``output_dir``. The split is
    ``pipelines.testbed_data.split_digits(test_fraction=..., seed=seed)``, the same one the
    default model trains on.

    Returns:
        ``output_dir`` as a ``Path``.
    """
    from safetensors.torch import save_file

    from pipelines.testbed_data import split_digits

    config = config or JudgeTrainConfig()
    split = split_digits(DigitsJudgeConfig().image_size, test_fraction, seed)
    judge = train_digits_judge(split.train_strokes, split.train_labels, config, seed)
    report = held_out_report(judge, split.test_strokes, split.test_labels, seed)
    logger.info("digits judge: held-out accuracy %.4f (worst digit %.4f), colour rule %.4f on %d renders",
                report["test_accuracy"], report["test_worst_class_accuracy"], report["color_rule_accuracy"],
                report["num_test_images"])
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.contiguous() for name, tensor in judge.state_dict().items()}
    save_file(state, output_dir / JUDGE_WEIGHTS_NAME)
    record = {"architecture": asdict(judge.config), "training": asdict(config), "seed": seed,
              "test_fraction": test_fraction, **report}
    (output_dir / JUDGE_CONFIG_NAME).write_text(json.dumps(record, indent=2))
    return output_dir
