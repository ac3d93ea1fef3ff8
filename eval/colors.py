"""The colour judge of the offline testbed: which named colour a digit's stroke is drawn in.

A rule, not a network, so that it can be checked on hand-made images: take the stroke (the
pixels whose brightest channel is at least half the image's brightest, and above
``min_brightness``), give each stroke pixel the nearest colour of the grammar
(``prompts/data/colored_digits.json``) after dividing it by its largest channel, and let the
pixels vote, weighted by brightness. An image with no stroke (all dark) is ``NO_STROKE``; one
whose winning colour has less than ``min_agreement`` of the vote is ``UNCLEAR`` (a
multicoloured smear is not "white" just because its mean is pale). The grammar's colours are
corners of the RGB cube, at least 1.0 apart.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

__all__ = ["NO_STROKE", "UNCLEAR", "ColorJudge", "color_entropy"]

NO_STROKE = -1
UNCLEAR = -2


class ColorJudge:
    """``predict(images [N, 3, H, W] in [0, 1]) -> [N]`` colour indices (``NO_STROKE`` if blank).

    Args:
        palette: ``[K, 3]`` named colours in [0, 1] (default: the grammar's, in grammar order).
        names: their names (default: the grammar's).
        min_brightness: an image whose brightest pixel is below this has no stroke.
        min_agreement: share of the stroke's (brightness-weighted) pixels that must agree on
            the colour; below it the image is ``UNCLEAR``.
    """

    def __init__(self, palette: Tensor | None = None, names: Sequence[str] | None = None,
                 min_brightness: float = 0.25, min_agreement: float = 0.6) -> None:
        if palette is None:
            from pipelines.testbed_data import color_table
            from prompts.colored_digits import COLOR_NAMES

            palette, names = color_table(), COLOR_NAMES
        palette = torch.as_tensor(palette, dtype=torch.float32)
        if palette.ndim != 2 or palette.shape[1] != 3:
            raise ValueError(f"palette must be [K, 3], got {tuple(palette.shape)}")
        if not 0.0 < min_brightness < 1.0:
            raise ValueError(f"min_brightness must be in (0, 1), got {min_brightness}")
        if not 0.0 <= min_agreement <= 1.0:
            raise ValueError(f"min_agreement must be in [0, 1], got {min_agreement}")
        self.min_agreement = min_agreement
        self.palette = palette / palette.amax(dim=1, keepdim=True).clamp_min(1e-6)
        self.names = tuple(names) if names is not None else tuple(str(k) for k in range(len(palette)))
        self.min_brightness = min_brightness

    @torch.no_grad()
    def votes(self, images: Tensor) -> Tensor:
        """Brightness-weighted share of the stroke's pixels nearest each colour, ``[N, K]`` (rows sum
        to 1, or to 0 for an image without a stroke)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [N, 3, H, W] RGB, got shape {tuple(images.shape)}")
        images = images.float().clamp(0.0, 1.0)
        value = images.amax(dim=1)  # [N, H, W]
        peak = value.flatten(1).amax(dim=1).view(-1, 1, 1)
        weight = (value * (value >= 0.5 * peak) * (peak >= self.min_brightness)).flatten(1)  # [N, P]
        pixels = images.flatten(2).transpose(1, 2)  # [N, P, 3]
        chroma = pixels / pixels.amax(dim=2, keepdim=True).clamp_min(1e-6)
        nearest = torch.cdist(chroma, self.palette.expand(len(images), -1, -1)).argmin(dim=2)  # [N, P]
        votes = torch.zeros(len(images), len(self.palette)).scatter_add_(1, nearest, weight)
        return votes / votes.sum(dim=1, keepdim=True).clamp_min(1e-12)

    @torch.no_grad()
    def judge(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``(colours, purity)`` from one vote: ``predict``'s colour indices, and the winning colour's
        share of the stroke's vote, ``[N]`` in [0, 1] (0 without a stroke): 1 for a stroke in one
        colour, lower for a stroke whose pixels fall on several (a blend that the majority still
        names, which the colour only shows as ``UNCLEAR`` below ``min_agreement``)."""
        votes = self.votes(images)
        share, winner = votes.max(dim=1)
        blank = votes.sum(dim=1) == 0
        winner = torch.where(share < self.min_agreement, torch.full_like(winner, UNCLEAR), winner)
        return torch.where(blank, torch.full_like(winner, NO_STROKE), winner), share

    @torch.no_grad()
    def predict(self, images: Tensor) -> Tensor:
        """Colour indices ``[N]`` (int64); ``NO_STROKE`` without a stroke, ``UNCLEAR`` when the
        stroke's pixels do not agree on one colour."""
        return self.judge(images)[0]

    @torch.no_grad()
    def purity(self, images: Tensor) -> Tensor:
        """``judge``'s purity alone."""
        return self.judge(images)[1]


def color_entropy(labels: Tensor, num_colors: int) -> float:
    """Entropy of judged colours as a fraction of the uniform entropy ``log(num_colors)``.

    Blank (``NO_STROKE``) and ``UNCLEAR`` images count as one outcome each, so a model that stops
    drawing or smears colours does not look diverse; 1.0 means every colour equally often, 0.0
    a single outcome.
    """
    if labels.numel() == 0:
        raise ValueError("color_entropy needs at least one label")
    counts = torch.bincount(labels.flatten() - UNCLEAR, minlength=num_colors + 2).float()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log()).sum() / math.log(num_colors))
