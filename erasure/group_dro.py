"""Online group DRO weights for the retain term (Sagawa et al. 2020, Algorithm 1).

A retain set mixes groups (the testbed's nine kept digits, Imagenette's kept classes) and a mean
retain loss lets the erasure sacrifice one of them: the group that shares the most with the erased
concept drifts while the mean stays low. Group DRO keeps a distribution q over the groups, makes the
retain term the q-weighted mean of the groups' mean losses, ``sum_g q_g L_g / sum_g q_g`` over the
groups a batch holds, and raises the weight of the groups whose loss is high by exponentiated
gradient, ``q_g <- q_g exp(step_size * (r_g - 1))``, then normalises.

``r_g`` is the group's mean loss over the mean loss of every sample (not the raw loss of the paper):
a diffusion loss varies by orders of magnitude with the timestep and the retain term's scale with the
objective, so the step size is in units of "times the mean" and one setting carries across
objectives. Subtracting 1 leaves an average group where it is, so a group's weight does not grow
just because it is in more batches (a bigger group) than another. The losses of every micro-batch
of an optimizer step, on every process, are pooled into one step (``step``, once per optimizer
step): q is one distribution on every rank, and gradient accumulation does not multiply the step.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from erasure.replicas import sum_tensor_across_processes


class GroupWeights:
    """The group distribution q of online group DRO, kept in log space.

    Args:
        num_groups: how many groups the retain samples fall into (ids ``0 .. num_groups - 1``).
        step_size: the exponentiated-gradient step (>= 0; 0 keeps q uniform).
    """

    def __init__(self, num_groups: int, step_size: float) -> None:
        if num_groups < 1:
            raise ValueError(f"num_groups={num_groups} must be >= 1")
        if not 0 <= step_size < math.inf:
            raise ValueError(f"step_size={step_size} must be a finite number >= 0")
        self.step_size = step_size
        self.log_weights = torch.full((num_groups,), -math.log(num_groups), dtype=torch.float64)
        self._pending = torch.zeros(2 * num_groups + 2, dtype=torch.float64)  # group sums, counts, total, count
        self._device: torch.device | str = "cpu"

    @property
    def weights(self) -> Tensor:
        """q, summing to one over the groups."""
        return self.log_weights.exp()

    def _check(self, groups: Tensor, size: int) -> Tensor:
        if groups.ndim != 1 or len(groups) != size:
            raise ValueError(f"groups must hold one id per sample ({size}), got shape {tuple(groups.shape)}")
        groups = groups.detach().long().cpu()
        if len(groups) and (int(groups.min()) < 0 or int(groups.max()) >= len(self.log_weights)):
            raise ValueError(f"groups holds ids {int(groups.min())}..{int(groups.max())}; they must lie in "
                             f"[0, {len(self.log_weights)})")
        return groups

    def sample_weights(self, groups: Tensor, base: Tensor) -> Tensor:
        """Per-sample weights that make ``sum_i w_i l_i`` the q-weighted mean of the batch's group means:
        ``q_g base_i / sum_{j in g} base_j`` over ``sum_g q_g`` (groups in the batch). ``base``: the weights
        within a group (uniform, or LoReUn's), positive; the result has its dtype and device."""
        groups = self._check(groups, len(base))
        within = base.detach().double().cpu()
        totals = torch.zeros(len(self.log_weights), dtype=torch.float64).index_add_(0, groups, within)
        q = self.weights
        weights = q[groups] * within / totals[groups]
        return (weights / q[totals > 0].sum()).to(base)

    def accumulate(self, losses: Tensor, groups: Tensor) -> None:
        """Add a micro-batch's per-sample ``losses`` (detached) to the pending step."""
        if losses.ndim != 1:
            raise ValueError(f"losses must be per sample [B], got shape {tuple(losses.shape)}")
        groups = self._check(groups, len(losses))
        values = losses.detach().double().cpu()
        num_groups = len(self.log_weights)
        self._pending[:num_groups].index_add_(0, groups, values)
        self._pending[num_groups:2 * num_groups].index_add_(0, groups, torch.ones_like(values))
        self._pending[-2:] += torch.stack([values.sum(), values.new_tensor(float(len(values)))])
        self._device = losses.device

    def step(self) -> None:
        """One exponentiated-gradient step on the losses accumulated since the last (every process's: an
        all-reduce, so every rank calls it at the same point), then clear them."""
        num_groups = len(self.log_weights)
        pending = sum_tensor_across_processes(self._pending, self._device)
        self._pending = torch.zeros_like(self._pending)
        sums, counts, (total, count) = pending[:num_groups], pending[num_groups:2 * num_groups], pending[-2:]
        if count <= 0 or total <= 0:
            return
        seen = counts > 0
        moved = self.log_weights.clone()
        moved[seen] += self.step_size * (sums[seen] / counts[seen] / (total / count) - 1.0)
        self.log_weights = torch.log_softmax(moved, dim=0)

    def state_dict(self) -> dict[str, Tensor]:
        return {"log_weights": self.log_weights.clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        log_weights = torch.as_tensor(state["log_weights"], dtype=torch.float64)
        if log_weights.shape != self.log_weights.shape:
            raise ValueError(f"a checkpoint's group weights cover {len(log_weights)} groups; this run has "
                             f"{len(self.log_weights)} (another retain set or grouping)")
        self.log_weights = log_weights
