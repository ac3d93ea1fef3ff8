"""The math of UnlearnDiffAtk's text attack (Zhang et al., ECCV 2024), as pure functions.

The attack optimises ``k`` prompt tokens, each relaxed to a distribution over the vocabulary
(a point of the probability simplex): a token's embedding is ``one_hot(sample) @ E`` with a
straight-through gradient (the public code's ``STERandSelect``: a multinomial draw forward,
``hardtanh`` of the gradient backward), Adam updates the distributions, and every step
projects them back onto the simplex (`project_simplex`, the Euclidean projection the public
code finds by bisection, here in closed form). The discrete prompt is the per-token argmax.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def project_simplex(values: Tensor) -> Tensor:
    """Euclidean projection of each row of ``values`` onto the probability simplex.

    The closest point (in L2) with non-negative entries summing to one: ``max(v - theta, 0)``
    with ``theta`` from the sorted values (Held et al. 1974; Duchi et al. 2008).
    """
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
        picks = torch.multinomial(distributions.detach().float().cpu(), 1, generator=generator).view(-1)
        return F.one_hot(picks, distributions.shape[-1]).to(distributions).to(distributions.device)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # noqa: D102
        return F.hardtanh(grad), None


def sample_one_hot(distributions: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """[k, V] one-hot tokens drawn from [k, V] distributions, differentiable straight through."""
    return StraightThroughSample.apply(distributions, generator)


def with_prefix(input_ids: Tensor, prefix_ids: Tensor, pad_id: int) -> Tensor:
    """``[sot, prefix..., prompt tokens..., eot, pad...]``: the prefix after the start token,
    truncated to the original length (the public code's ``prefix_k`` insertion)."""
    length = input_ids.shape[-1]
    joined = torch.cat([input_ids[..., :1], prefix_ids.to(input_ids), input_ids[..., 1:]], dim=-1)[..., :length]
    if joined.shape[-1] < length:
        joined = F.pad(joined, (0, length - joined.shape[-1]), value=pad_id)
    return joined


@contextlib.contextmanager
def token_embeddings_replaced(text_encoder: nn.Module, replace: Tensor) -> Iterator[None]:
    """Within the block, ``text_encoder``'s token-embedding lookup returns ``replace`` [B, L, D]
    instead: the encoder's own forward (position embeddings, causal mask, final norm) then runs
    on embeddings that are differentiable in the attack's distributions."""
    module = text_encoder.get_input_embeddings()
    handle = module.register_forward_hook(lambda _module, _inputs, _output: replace)
    try:
        yield
    finally:
        handle.remove()


def prefixed_embeddings(embedding_matrix: Tensor, input_ids: Tensor, prefix_one_hot: Tensor) -> Tensor:
    """[1, L, D] token embeddings of ``[sot, prefix, prompt...]`` with the prefix as ``one_hot @ E``
    (gradients reach the one-hot rows) and the rest looked up, truncated to ``L``."""
    length = input_ids.shape[-1]
    looked_up = embedding_matrix[input_ids[0]]
    prefix = prefix_one_hot.to(embedding_matrix) @ embedding_matrix
    return torch.cat([looked_up[:1], prefix, looked_up[1:]], dim=0)[:length].unsqueeze(0)
