"""The math of UnlearnDiffAtk's text attack (Zhang et al., ECCV 2024), as pure functions.

The attack optimises ``k`` prompt tokens, each relaxed to a distribution over the vocabulary
(a point of the probability simplex): a token's embedding is ``one_hot(sample) @ E`` with a
straight-through gradient (the public code's ``STERandSelect``: a multinomial draw forward,
``hardtanh`` of the gradient backward), Adam updates the distributions, and every step
projects them back onto the simplex (`project_simplex`, the Euclidean projection the public
code finds by bisection, here in closed form). The discrete prompt is the per-token argmax.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def project_simplex(values: Tensor, max_rounds: int = 64) -> Tensor:
    """Euclidean projection of each row of ``values`` onto the probability simplex.

    The closest point (in L2) with non-negative entries summing to one: ``max(v - theta, 0)``.
    ``theta`` by Michelot's algorithm (1986): the mean excess of the entries still above the last
    ``theta``, repeated until no entry leaves (``theta`` only grows, so it ends). The attack's rows
    (last step's point plus one Adam step) settle in 2-8 rounds, 5 ms a call over the 49,408 CLIP
    tokens on 2 cores; sorting them instead (Held et al. 1974) took 17 ms, 35 s of a 174 s attacked
    prompt. A row still moving after ``max_rounds`` falls back to the sort.
    """
    active = torch.ones_like(values, dtype=torch.bool)
    theta = (values.sum(-1, keepdim=True) - 1.0) / values.shape[-1]
    for _ in range(max_rounds):
        now = values > theta
        if torch.equal(now, active):
            return (values - theta).clamp(min=0)
        active = now
        theta = ((values * active).sum(-1, keepdim=True) - 1.0) / active.sum(-1, keepdim=True)
    return _project_simplex_by_sorting(values)


def _project_simplex_by_sorting(values: Tensor) -> Tensor:
    sorted_values, _ = torch.sort(values, dim=-1, descending=True)
    cumulative = sorted_values.cumsum(dim=-1) - 1.0
    positions = torch.arange(1, values.shape[-1] + 1, device=values.device, dtype=values.dtype)
    support = (sorted_values - cumulative / positions) > 0
    rho = support.to(values.dtype).cumsum(dim=-1).argmax(dim=-1, keepdim=True)  # last index in the support
    theta = cumulative.gather(-1, rho) / (rho + 1).to(values.dtype)
    return (values - theta).clamp(min=0)


class StraightThroughSample(torch.autograd.Function):
    """One-hot draws from each row's distribution; the gradient passes straight through, clipped
    to [-1, 1] (``hardtanh``), as the public code's ``STERandSelect``."""

    @staticmethod
    def forward(ctx, distributions: Tensor, generator: torch.Generator | None = None) -> Tensor:  # noqa: D102
        picks = draw_rows(distributions.detach(), generator)
        return F.one_hot(picks, distributions.shape[-1]).to(distributions).to(distributions.device)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # noqa: D102
        return F.hardtanh(grad), None


def draw_rows(distributions: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One index per row of [k, V] non-negative weights, drawn in proportion to them (inverse CDF:
    the first index whose cumulative weight exceeds a uniform draw; a zero weight owns an empty
    interval, so it is never drawn). ``torch.multinomial`` took 9 ms a call over 49,408 tokens."""
    cumulative = distributions.double().cpu().cumsum(dim=-1)
    uniform = torch.rand(cumulative.shape[0], 1, generator=generator, dtype=torch.float64) * cumulative[:, -1:]
    return torch.searchsorted(cumulative, uniform, right=True).view(-1).clamp(max=cumulative.shape[-1] - 1)


def sample_one_hot(distributions: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """[k, V] one-hot tokens drawn from [k, V] distributions, differentiable straight through."""
    return StraightThroughSample.apply(distributions, generator)
