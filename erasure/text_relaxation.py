"""The math of UnlearnDiffAtk's text attack (Zhang et al., ECCV 2024), as pure functions.

The attack optimises ``k`` prompt tokens, each relaxed to a distribution over the vocabulary
(a point of the probability simplex): a token's embedding is ``one_hot(sample) @ E`` with a
straight-through gradient (the public code's ``STERandSelect``: a multinomial draw forward,
``hardtanh`` of the gradient backward), Adam updates the distributions, and every step
projects them back onto the simplex (`project_simplex`, the Euclidean projection the public
code finds by bisection, here in closed form). The discrete prompt is the per-token argmax.
Used by the attack (`eval.attack`) and by the repair's token-space adversary
(`pipelines.prompt_prefix.TokenPrefixes`), which must search the space the attack searches.
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
    (last step's point plus one Adam step) settle in about ten rounds, 18 ms a call over 7 prompts'
    5 x 49,408 CLIP tokens on 2 cores; sorting them (Held et al. 1974) took 62 ms. A row
    still moving after ``max_rounds`` falls back to the sort. `simplex_projection` starts nearer.
    """
    return simplex_projection(values, max_rounds=max_rounds)[0]


def simplex_projection(values: Tensor, start: Tensor | None = None, max_rounds: int = 64) -> tuple[Tensor, Tensor]:
    """`project_simplex`, also returning each row's ``theta`` ([..., 1]), warm-started from ``start``.

    ``start`` is a guess of ``theta`` (the last call's, in the attack, where a step moves the rows
    little). Any set S of a row's entries gives a lower bound of its ``theta``, ``(sum_S v - 1) / |S|``
    (the entries of S above ``theta`` sum to at most one), and from any lower bound Michelot's rounds
    climb to the same fixed point; so the entries above ``start`` give a start close below it, and
    the projection takes fewer rounds (12 ms a call in the attack against 19 ms cold). The fixed
    point, hence the result, is the cold start's bit for bit (the final ``theta`` is computed the
    same way, from the same set)."""
    active = torch.ones_like(values, dtype=torch.bool) if start is None else values > start
    active |= ~active.any(-1, keepdim=True)  # a row with no entry above its guess starts from all its entries
    count = active.sum(-1, keepdim=True)
    theta = ((values * active).sum(-1, keepdim=True) - 1.0) / count
    for _ in range(max_rounds):
        now = values > theta
        now_count = now.sum(-1, keepdim=True)
        # the sets are nested after the first round, so equal counts nearly always mean equal sets:
        # compare the counts every round and the sets only then
        if torch.equal(now_count, count) and torch.equal(now, active):
            return (values - theta).clamp(min=0), theta
        active, count = now, now_count
        theta = ((values * active).sum(-1, keepdim=True) - 1.0) / count
    projected = _project_simplex_by_sorting(values)
    return projected, _threshold_of(values, projected)


def _threshold_of(values: Tensor, projected: Tensor) -> Tensor:
    """The ``theta`` of a projection: ``v - p`` on any entry left positive (the row's largest is)."""
    return (values - projected).gather(-1, projected.argmax(-1, keepdim=True))


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
