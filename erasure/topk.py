"""Global top-k selection over all scored parameters without sorting them.

``kept_fraction`` follows the papers: 0.995 keeps 99.5% and selects the top 0.5%.
The threshold is found with histograms over shrinking value ranges (a few passes over the
scores, O(bins) extra memory) and finished with an exact ``topk`` on the few candidates
left, so it scales to ~1e9 scores; ties at the threshold are broken in parameter order so
exactly ``n_select`` entries are selected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Threshold:
    """Select ``score > value`` plus the first ``ties`` entries with ``score == value``."""

    value: float
    ties: int
    n_select: int
    n_total: int


def count_to_select(n_total: int, kept_fraction: float) -> int:
    """Number of entries in the top ``1 - kept_fraction`` of ``n_total``.

    Raises:
        ValueError: if ``kept_fraction`` is not in (0, 1).
    """
    if not 0.0 < kept_fraction < 1.0 or math.isnan(kept_fraction):
        raise ValueError(f"kept_fraction={kept_fraction} must be in (0, 1): 0.995 keeps 99.5% and trims 0.5%")
    return int(round((1.0 - kept_fraction) * n_total))


def _histogram(scores: list[Tensor], lo: float, hi: float, bins: int) -> Tensor:
    # histc ignores values outside [lo, hi]; slices bound the temporaries of huge tensors
    hist = torch.zeros(bins, dtype=torch.float64)
    for s in scores:
        for part in s.reshape(-1).split(2**22):
            hist += torch.histc(part.float(), bins, lo, hi).double().cpu()
    return hist


def _count_above(scores: list[Tensor], value: float) -> int:
    return sum(int((s > value).sum()) for s in scores)


def global_threshold(scores: list[Tensor], kept_fraction: float, bins: int = 4096,
                     max_candidates: int = 2**22) -> Threshold:
    """Find the threshold selecting exactly the top ``1 - kept_fraction`` of all scores.

    Args:
        scores: non-negative finite score tensors (any shapes, any devices).
        kept_fraction: fraction of entries kept, in (0, 1).
        bins: histogram bins per refinement pass.
        max_candidates: refine until at most this many candidates remain.

    Returns:
        A :class:`Threshold`.
    """
    n_total = sum(s.numel() for s in scores)
    n_select = count_to_select(n_total, kept_fraction)
    if n_select == 0:
        return Threshold(math.inf, 0, 0, n_total)
    lo = min(s.min().item() for s in scores)
    hi = max(s.max().item() for s in scores)
    # invariant: fewer than n_select entries lie above hi, at least n_select at or above lo
    while True:
        in_range = sum(int(((s >= lo) & (s <= hi)).sum()) for s in scores)
        if in_range <= max_candidates or math.nextafter(lo, math.inf) >= hi:
            break
        above = _count_above(scores, hi)
        from_top = torch.flip(_histogram(scores, lo, hi, bins), [0]).cumsum(0)
        k = min(int(torch.searchsorted(from_top, float(n_select - above))), bins - 1)
        width = (hi - lo) / bins
        new_lo, new_hi = lo + (bins - 1 - k) * width, lo + (bins - k) * width
        # float bin edges may disagree with histc by an ulp: keep the invariant exactly
        while _count_above(scores, new_hi) >= n_select:
            new_hi = math.nextafter(new_hi, math.inf)
        if _count_above(scores, math.nextafter(new_lo, -math.inf)) < n_select:
            new_lo = lo
        if (new_lo, new_hi) == (lo, hi):
            break
        lo, hi = new_lo, new_hi
    above = _count_above(scores, hi)
    candidates = torch.cat([s[(s >= lo) & (s <= hi)].reshape(-1).float().cpu() for s in scores])
    need = n_select - above
    value = torch.topk(candidates, need).values[-1].item()
    strictly_above = sum(int((s > value).sum()) for s in scores)
    return Threshold(value, n_select - strictly_above, n_select, n_total)


def threshold_masks(scores: dict[str, Tensor], threshold: Threshold) -> dict[str, Tensor]:
    """Boolean masks (True = selected) for a threshold, ties broken in dict order."""
    masks, ties_left = {}, threshold.ties
    for name, s in scores.items():
        mask = s > threshold.value
        if ties_left > 0:
            tie_positions = (s == threshold.value).reshape(-1).nonzero().squeeze(1)[:ties_left]
            mask.view(-1)[tie_positions] = True
            ties_left -= tie_positions.numel()
        masks[name] = mask
    return masks


def topk_masks(scores: dict[str, Tensor], kept_fraction: float) -> dict[str, Tensor]:
    """Masks selecting the global top ``1 - kept_fraction`` of ``scores`` (exact count).

    Raises:
        ValueError: for a bad ``kept_fraction`` or non-finite scores.
    """
    for name, s in scores.items():
        if not torch.isfinite(s).all():
            raise ValueError(f"scores of '{name}' contain NaN or inf; the sensitivity pass diverged")
    return threshold_masks(scores, global_threshold(list(scores.values()), kept_fraction))
