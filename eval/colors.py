"""The colour judge of the offline testbed: which named colour a digit's stroke is drawn in.

A rule, not a network, so that it can be checked on hand-made images: take the stroke (the
pixels whose brightest channel is at least half the image's brightest, and above
``min_brightness``), average its RGB weighted by brightness, divide by the largest channel,
and name the nearest colour of the grammar (``prompts/data/colored_digits.json``). An image
with no stroke (all dark) is judged ``NO_STROKE``. The grammar's colours are corners of the
RGB cube, at least 1.0 apart, so mixtures land on the nearest named one.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

__all__ = ["NO_STROKE", "ColorJudge", "color_entropy"]

NO_STROKE = -1


class ColorJudge:
    """``predict(images [N, 3, H, W] in [0, 1]) -> [N]`` colour indices (``NO_STROKE`` if blank).

    Args:
        palette: ``[K, 3]`` named colours in [0, 1] (default: the grammar's, in grammar order).
        names: their names (default: the grammar's).
        min_brightness: an image whose brightest pixel is below this has no stroke.
    """

    def __init__(self, palette: Tensor | None = None, names: Sequence[str] | None = None,
                 min_brightness: float = 0.25) -> None:
        if palette is None:
            from pipelines.testbed_data import color_table
            from prompts.colored_digits import COLOR_NAMES

            palette, names = color_table(), COLOR_NAMES
        palette = torch.as_tensor(palette, dtype=torch.float32)
        if palette.ndim != 2 or palette.shape[1] != 3:
            raise ValueError(f"palette must be [K, 3], got {tuple(palette.shape)}")
        if not 0.0 < min_brightness < 1.0:
            raise ValueError(f"min_brightness must be in (0, 1), got {min_brightness}")
        self.palette = palette / palette.amax(dim=1, keepdim=True).clamp_min(1e-6)
        self.names = tuple(names) if names is not None else tuple(str(k) for k in range(len(palette)))
        self.min_brightness = min_brightness

    @torch.no_grad()
    def stroke_color(self, images: Tensor) -> Tensor:
        """The normalised mean stroke colour ``[N, 3]`` (largest channel 1; zeros if blank)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [N, 3, H, W] RGB, got shape {tuple(images.shape)}")
        images = images.float().clamp(0.0, 1.0)
        value = images.amax(dim=1)  # [N, H, W]
        peak = value.flatten(1).amax(dim=1).view(-1, 1, 1)
        weight = value * (value >= 0.5 * peak) * (peak >= self.min_brightness)
        mean = (images * weight.unsqueeze(1)).sum(dim=(2, 3)) / weight.sum(dim=(1, 2)).clamp_min(1e-6).unsqueeze(1)
        return mean / mean.amax(dim=1, keepdim=True).clamp_min(1e-6)

    @torch.no_grad()
    def predict(self, images: Tensor) -> Tensor:
        """Colour indices ``[N]`` (int64), ``NO_STROKE`` for images without a stroke."""
        colors = self.stroke_color(images)
        nearest = torch.cdist(colors, self.palette).argmin(dim=1)
        blank = colors.amax(dim=1) == 0
        return torch.where(blank, torch.full_like(nearest, NO_STROKE), nearest)


def color_entropy(labels: Tensor, num_colors: int) -> float:
    """Entropy of judged colours as a fraction of the uniform entropy ``log(num_colors)``.

    Blank images (``NO_STROKE``) count as one more outcome, so a model that stops drawing does
    not look diverse; 1.0 means every colour equally often, 0.0 a single colour.
    """
    if labels.numel() == 0:
        raise ValueError("color_entropy needs at least one label")
    counts = torch.bincount(labels.flatten() + 1, minlength=num_colors + 1).float()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log()).sum() / math.log(num_colors))
