"""Global top-k selection over all scored parameters without sorting them.

``kept_fraction`` follows the papers: 0.995 keeps 99.5% and selects the top 0.5%.
The threshold is found with histograms over shrinking value ranges (a few passes over the
scores, O(bins) extra memory) and finished with an exact ``topk`` on the few candidates
left, so it scales to ~1e9 scores; ties at the threshold are broken in parameter order so
exactly ``n_select`` entries are selected.

Sharded scores (FSDP2: each rank holds its shards' scores, ``groups`` from
``erasure.sharding.shard_groups``) give the same threshold on every rank: counts, extremes and
histograms are all-reduced, the last candidates gathered. Ties are then broken in (parameter,
rank) order, which is the unsharded order when parameters are sharded on dim 0 over one mesh
dimension (FSDP2's layout): the selection is the one a single process makes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from erasure.sharding import all_gather_cat, all_reduce_


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


def _device(scores: list[Tensor]) -> torch.device:
    # collectives need the scores' device (NCCL: the rank's GPU)
    return scores[0].device if scores else torch.device("cpu")


def _histogram(scores: list[Tensor], lo: float, hi: float, bins: int, groups: tuple = ()) -> Tensor:
    # histc ignores values outside [lo, hi]; slices bound the temporaries of huge tensors
    hist = torch.zeros(bins, dtype=torch.float64, device=_device(scores))
    for s in scores:
        for part in s.reshape(-1).split(2**22):
            hist += torch.histc(part.float(), bins, lo, hi).double()
    return all_reduce_(hist, groups).cpu()


def _total(counts: list[int], device: torch.device, groups: tuple) -> list[int]:
    """Integers summed over the shards (one collective for the list)."""
    if not groups:
        return counts
    return all_reduce_(torch.tensor(counts, dtype=torch.int64, device=device), groups).tolist()


def _count_above(scores: list[Tensor], value: float, groups: tuple = ()) -> int:
    return _total([sum(int((s > value).sum()) for s in scores)], _device(scores), groups)[0]


def _extreme(values: list[float], op: str, device: torch.device, groups: tuple) -> float:
    fallback = math.inf if op == "min" else -math.inf  # a rank whose shards are empty
    value = (min if op == "min" else max)(values, default=fallback)
    if not groups:
        return value
    return all_reduce_(torch.tensor([value], dtype=torch.float64, device=device), groups, op).item()


def global_threshold(scores: list[Tensor], kept_fraction: float, bins: int = 4096,
                     max_candidates: int = 2**22, groups: tuple = ()) -> Threshold:
    """Find the threshold selecting exactly the top ``1 - kept_fraction`` of all scores.

    Args:
        scores: non-negative finite score tensors (any shapes, any devices).
        kept_fraction: fraction of entries kept, in (0, 1).
        bins: histogram bins per refinement pass.
        max_candidates: refine until at most this many candidates remain.
        groups: process groups the scores are sharded over (``erasure.sharding.shard_groups``);
            empty for scores every rank holds whole. All ranks get the same threshold.

    Returns:
        A :class:`Threshold`.
    """
    device = _device(scores)
    n_total = _total([sum(s.numel() for s in scores)], device, groups)[0]
    n_select = count_to_select(n_total, kept_fraction)
    if n_select == 0:
        return Threshold(math.inf, 0, 0, n_total)
    lo = _extreme([s.min().item() for s in scores if s.numel()], "min", device, groups)
    hi = _extreme([s.max().item() for s in scores if s.numel()], "max", device, groups)
    # invariant: fewer than n_select entries lie above hi, at least n_select at or above lo
    while True:
        in_range = _total([sum(int(((s >= lo) & (s <= hi)).sum()) for s in scores)], device, groups)[0]
        if in_range <= max_candidates or math.nextafter(lo, math.inf) >= hi:
            break
        above = _count_above(scores, hi, groups)
        from_top = torch.flip(_histogram(scores, lo, hi, bins, groups), [0]).cumsum(0)
        k = min(int(torch.searchsorted(from_top, float(n_select - above))), bins - 1)
        width = (hi - lo) / bins
        new_lo, new_hi = lo + (bins - 1 - k) * width, lo + (bins - k) * width
        # float bin edges may disagree with histc by an ulp: keep the invariant exactly
        while _count_above(scores, new_hi, groups) >= n_select:
            new_hi = math.nextafter(new_hi, math.inf)
        if _count_above(scores, math.nextafter(new_lo, -math.inf), groups) < n_select:
            new_lo = lo
        if (new_lo, new_hi) == (lo, hi):
            break
        lo, hi = new_lo, new_hi
    above = _count_above(scores, hi, groups)
    mine = [s[(s >= lo) & (s <= hi)].reshape(-1).float() for s in scores]
    candidates = all_gather_cat(torch.cat(mine) if mine else torch.zeros(0, device=device), groups).cpu()
    need = n_select - above
    value = torch.topk(candidates, need).values[-1].item()
    strictly_above = _count_above(scores, value, groups)
    return Threshold(value, n_select - strictly_above, n_select, n_total)


def _ties_by_rank(scores: dict[str, Tensor], value: float, groups: tuple) -> tuple[list[int], list[int]]:
    """Per parameter, the entries tied at ``value`` on the ranks before this one and on all ranks
    (one all-gather), so that ties are taken in (parameter, rank) order: the unsharded order for
    dim-0 shards."""
    ties = torch.tensor([int((s == value).sum()) for s in scores.values()], dtype=torch.int64,
                        device=_device(list(scores.values())))
    per_rank = all_gather_cat(ties, groups).view(-1, len(scores))  # [ranks, parameters]
    rank = torch.distributed.get_rank(groups[0])
    return per_rank[:rank].sum(0).tolist(), per_rank.sum(0).tolist()


def threshold_masks(scores: dict[str, Tensor], threshold: Threshold, groups: tuple = ()) -> dict[str, Tensor]:
    """Boolean masks (True = selected) for a threshold, ties broken in dict order (sharded:
    (parameter, rank) order)."""
    masks, ties_left = {}, threshold.ties
    if groups and ties_left:
        earlier, total = _ties_by_rank(scores, threshold.value, groups)
    for index, (name, s) in enumerate(scores.items()):
        mask = s > threshold.value
        if ties_left > 0:
            tie_positions = (s == threshold.value).reshape(-1).nonzero().squeeze(1)
            if groups:  # this parameter's ties on earlier ranks take the budget first
                take = max(0, min(ties_left - earlier[index], tie_positions.numel()))
                ties_left -= min(ties_left, total[index])
            else:
                take = min(ties_left, tie_positions.numel())
                ties_left -= take
            mask.view(-1)[tie_positions[:take]] = True
        masks[name] = mask
    return masks


def topk_masks(scores: dict[str, Tensor], kept_fraction: float, groups: tuple = ()) -> dict[str, Tensor]:
    """Masks selecting the global top ``1 - kept_fraction`` of ``scores`` (exact count); with
    ``groups``, of the scores of every rank's shards (the masks are this rank's shards).

    Raises:
        ValueError: for a bad ``kept_fraction`` or non-finite scores (on every rank alike).
    """
    bad = [name for name, s in scores.items() if not torch.isfinite(s).all()]
    if _total([len(bad)], _device(list(scores.values())), groups)[0]:
        where = f"'{bad[0]}'" if bad else "another rank's shard"
        raise ValueError(f"scores of {where} contain NaN or inf; the sensitivity pass diverged")
    return threshold_masks(scores, global_threshold(list(scores.values()), kept_fraction, groups=groups), groups)
