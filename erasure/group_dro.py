"""Online group DRO weights for the retain term (Sagawa et al. 2020, Algorithm 1).

A retain set mixes groups (the testbed's nine kept digits, Imagenette's kept classes) and a mean
retain loss lets the erasure sacrifice one of them: the group that shares the most with the erased
concept drifts while the mean stays low. Group DRO keeps a distribution q over the groups and, each
step, raises the weight of the groups whose loss is high by exponentiated gradient,
``q_g <- q_g exp(step_size * r_g)`` then normalise, and the retain term becomes the q-weighted mean.

``r_g`` is the group's mean loss in the batch *over the batch's mean loss* (not the raw loss of the
paper): a diffusion loss varies by orders of magnitude with the timestep and the retain term's scale
with the objective, so the step size is in units of "times the batch's mean" and one setting carries
across objectives. Every process adds its groups' sums and counts into one update, so q stays the
same on every rank.
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

    @property
    def weights(self) -> Tensor:
        """q, summing to one over the groups."""
        return self.log_weights.exp()

    def update(self, losses: Tensor, groups: Tensor) -> None:
        """One exponentiated-gradient step from per-sample ``losses`` of samples in ``groups`` (every process's)."""
        if groups.shape != losses.shape[:1] or losses.ndim != 1:
            raise ValueError(f"update needs one group per loss, got losses {tuple(losses.shape)} and groups "
                             f"{tuple(groups.shape)}")
        groups = groups.detach().long().cpu()
        if len(groups) and (int(groups.min()) < 0 or int(groups.max()) >= len(self.log_weights)):
            raise ValueError(f"group ids must be in [0, {len(self.log_weights)}), got {groups.min()}..{groups.max()}")
        values = losses.detach().double().cpu()
        mean = values.mean() if len(values) else values.new_zeros(())
        ratios = values / mean if mean > 0 else torch.zeros_like(values)
        num_groups = len(self.log_weights)
        totals = torch.cat([torch.zeros(num_groups, dtype=torch.float64).index_add_(0, groups, ratios),
                            torch.zeros(num_groups, dtype=torch.float64).index_add_(0, groups, torch.ones_like(ratios))])
        sums, counts = sum_tensor_across_processes(totals, losses.device).split(num_groups)
        seen = counts > 0
        moved = self.log_weights.clone()
        moved[seen] += self.step_size * sums[seen] / counts[seen]
        self.log_weights = torch.log_softmax(moved, dim=0)

    def sample_weights(self, groups: Tensor, like: Tensor) -> Tensor:
        """Per sample, its group's q (dtype and device of ``like``)."""
        return self.weights[groups.detach().long().cpu()].to(like)

    def state_dict(self) -> dict[str, Tensor]:
        return {"log_weights": self.log_weights.clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        log_weights = torch.as_tensor(state["log_weights"], dtype=torch.float64)
        if log_weights.shape != self.log_weights.shape:
            raise ValueError(f"a checkpoint's group weights cover {len(log_weights)} groups; this run has "
                             f"{len(self.log_weights)} (another retain set or grouping)")
        self.log_weights = log_weights
