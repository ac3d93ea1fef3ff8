"""Images of the offline testbed: scikit-learn's 8x8 digits drawn as coloured 32x32 strokes.

Each real digit (1,797 ship with scikit-learn) is upscaled, split into train and held-out
*before* any augmentation, then rendered as often as asked: a random shift, rotation, scale
and stroke width, its stroke in one of the grammar's named colours on black
(`prompts/data/colored_digits.json`), with a little brightness variation. The default model
(`pipelines/default_model.py`) trains on renders of the train digits; the judges
(`eval/digits_classifier.py`, `eval/colors.py`) are measured on renders of the held-out ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from prompts.colored_digits import grammar

__all__ = ["AugmentConfig", "DigitSplit", "color_table", "load_digit_strokes", "render_digits", "split_digits"]


@dataclass(frozen=True)
class AugmentConfig:
    """Per-image variation of a render; every range is drawn uniformly."""

    max_rotation_degrees: float = 12.0
    scale_range: tuple[float, float] = (0.75, 1.0)
    max_shift: float = 0.12  # fraction of the half-width: ~2 px at 32x32
    stroke_widths: tuple[int, ...] = (-1, 0, 0, 1)  # -1 thinner, 0 as drawn, 1 thicker (3x3 min/max filter)
    brightness_range: tuple[float, float] = (0.8, 1.0)

    def __post_init__(self) -> None:
        low, high = self.scale_range
        if not 0 < low <= high:
            raise ValueError(f"scale_range must be 0 < low <= high, got {self.scale_range}")
        if not 0.0 <= self.max_shift < 0.5:
            raise ValueError(f"max_shift must be in [0, 0.5), got {self.max_shift}")
        if not set(self.stroke_widths) <= {-1, 0, 1} or not self.stroke_widths:
            raise ValueError(f"stroke_widths must be a non-empty choice of -1, 0, 1, got {self.stroke_widths}")
        if not 0 < self.brightness_range[0] <= self.brightness_range[1] <= 1:
            raise ValueError(f"brightness_range must be 0 < low <= high <= 1, got {self.brightness_range}")


@dataclass(frozen=True)
class DigitSplit:
    """Upscaled grey strokes ``[N, 1, S, S]`` in [0, 1] with labels, split by real digit."""

    train_strokes: torch.Tensor
    train_labels: torch.Tensor
    test_strokes: torch.Tensor
    test_labels: torch.Tensor


def color_table() -> torch.Tensor:
    """The grammar's colours as ``[num_colors, 3]`` RGB in [0, 1], in grammar order."""
    return torch.tensor(list(grammar().colors.values()), dtype=torch.float32)


def load_digit_strokes(image_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled digits, bicubically upscaled and sharpened into strokes.

    Returns:
        ``(strokes, labels)``: float ``[1797, 1, image_size, image_size]`` in [0, 1] (ink is
        bright) and int64 labels ``[1797]``.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=(image_size, image_size), mode="bicubic", align_corners=False)
    # The 8x8 originals upscale to soft blobs; a contrast stretch turns them into strokes.
    return ((images - 0.25) / 0.5).clamp(0.0, 1.0), torch.tensor(digits.target, dtype=torch.long)


def split_digits(image_size: int = 32, test_fraction: float = 0.2, seed: int = 0) -> DigitSplit:
    """Stratified split of the real digits into train and held-out, before any augmentation."""
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    strokes, labels = load_digit_strokes(image_size)
    train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=test_fraction, random_state=seed,
                                           stratify=labels.numpy())
    train_idx, test_idx = torch.from_numpy(np.sort(train_idx)), torch.from_numpy(np.sort(test_idx))
    return DigitSplit(strokes[train_idx], labels[train_idx], strokes[test_idx], labels[test_idx])


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def _affine(strokes: torch.Tensor, augment: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    n = strokes.shape[0]
    angle = _uniform(n, -1.0, 1.0, generator) * math.radians(augment.max_rotation_degrees)
    # affine_grid maps output to input coordinates: dividing by the scale enlarges the digit.
    inverse_scale = 1.0 / _uniform(n, *augment.scale_range, generator)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = torch.cos(angle) * inverse_scale, -torch.sin(angle) * inverse_scale
    theta[:, 1, 0], theta[:, 1, 1] = torch.sin(angle) * inverse_scale, torch.cos(angle) * inverse_scale
    theta[:, :, 2] = (torch.rand(n, 2, generator=generator) * 2 - 1) * augment.max_shift
    grid = F.affine_grid(theta, list(strokes.shape), align_corners=False)
    return F.grid_sample(strokes, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _stroke_width(strokes: torch.Tensor, augment: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    choices = torch.tensor(augment.stroke_widths)
    width = choices[torch.randint(len(choices), (strokes.shape[0],), generator=generator)].view(-1, 1, 1, 1)
    thicker = F.max_pool2d(strokes, 3, stride=1, padding=1)
    thinner = -F.max_pool2d(-strokes, 3, stride=1, padding=1)
    return torch.where(width > 0, thicker, torch.where(width < 0, thinner, strokes))


def render_digits(strokes: torch.Tensor, colors: torch.Tensor, generator: torch.Generator,
                  augment: AugmentConfig | None = AugmentConfig()) -> torch.Tensor:
    """Draw grey strokes in colour on black, each with its own random variation.

    Args:
        strokes: ``[N, 1, S, S]`` in [0, 1].
        colors: ``[N]`` indices into ``color_table()``.
        generator: seeds every random draw (same generator state, same images).
        augment: the variation; ``None`` draws each stroke as it is, at full brightness.

    Returns:
        ``[N, 3, S, S]`` RGB in [0, 1].
    """
    if strokes.ndim != 4 or strokes.shape[1] != 1:
        raise ValueError(f"strokes must be [N, 1, S, S], got {tuple(strokes.shape)}")
    if colors.shape != (strokes.shape[0],):
        raise ValueError(f"colors must be [N] = [{strokes.shape[0]}], got {tuple(colors.shape)}")
    rgb = color_table()[colors].view(-1, 3, 1, 1)
    if augment is None:
        return strokes * rgb
    strokes = _stroke_width(_affine(strokes, augment, generator), augment, generator)
    brightness = _uniform(strokes.shape[0], *augment.brightness_range, generator).view(-1, 1, 1, 1)
    return (strokes * rgb * brightness).clamp(0.0, 1.0)
