"""fp16 loss scaling outside the optimiser step: the one-off gradient passes and the extra terms.

Under ``mixed_precision="fp16"`` accelerate's ``backward`` multiplies the loss by the GradScaler's
scale S, and the optimiser step unscales. Everything that reads gradients *before* that step must
know S: the sensitivity and saliency passes (a gradient that overflows at S would otherwise reach
the top-k as inf), the min-max ascent (its ``autograd.grad`` bypasses the scaler, so small fp16
gradients would underflow), and l1-sparse's penalty (added to gradients that are still scaled).
``grad_at_job_scale`` is the one-off ``autograd.grad`` pass (the min-max ascent, the tamper steps, the
adversarial prefix steps).
These passes never call ``scaler.update``: on an overflow they halve a scale of their own and
redo the batch, and divide by the scale they used.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

MAX_BACKOFFS = 40  # 2**-40 of fp16's usual 65536 start is far below any useful scale


def scaling_enabled(scaler: Any) -> bool:
    """Whether the job's backward scales the loss (an enabled fp16 GradScaler)."""
    return scaler is not None and scaler.is_enabled()


def loss_scale(scaler: Any) -> float:
    """The scale accelerate's ``backward`` multiplies the loss by now (1.0 without an enabled scaler)."""
    return float(scaler.get_scale()) if scaling_enabled(scaler) else 1.0


def all_finite(tensors: list[Tensor], groups: tuple = ()) -> bool:
    """Whether every tensor is finite on every rank that holds a shard of them."""
    from erasure.sharding import all_reduce_, local

    bad = torch.zeros((), dtype=torch.int64, device=local(tensors[0]).device if tensors else "cpu")
    for t in tensors:
        bad += (~torch.isfinite(local(t))).any().to(torch.int64)
    return int(all_reduce_(bad, groups)) == 0


def at_finite_scale(attempt: Callable[[float], list[Tensor | None]], scaler: Any, scale: float,
                    groups: tuple = (), what: str = "gradient pass") -> tuple[list[Tensor | None], float]:
    """Run ``attempt(scale)`` (a gradient pass at effective loss scale ``scale``, returning the
    gradients it produced), halving ``scale`` and running it again while they overflow. Without an
    enabled scaler it is one plain pass.

    Returns:
        ``(gradients, scale)``: divide the gradients by the scale they carry.

    Raises:
        FloatingPointError: gradients still not finite after ``MAX_BACKOFFS`` halvings.
    """
    for _ in range(MAX_BACKOFFS + 1):
        grads = attempt(scale)
        if not scaling_enabled(scaler) or all_finite([g for g in grads if g is not None], groups):
            return grads, scale
        logger.warning("%s: gradients overflow at loss scale %g; halving it and redoing the pass", what, scale)
        scale *= 0.5
    raise FloatingPointError(f"{what}: gradients are not finite even at loss scale {scale:g}; the model or data "
                             "produce inf/NaN gradients (try mixed_precision bf16 or no)")


def grad_at_job_scale(loss_fn: Callable[[], Tensor], params: list[Tensor], scaler: Any,
                      what: str) -> tuple[list[Tensor | None], Tensor]:
    """``autograd.grad`` of the scalar ``loss_fn()`` in ``params``, taken at the job's fp16 loss scale
    (an unscaled fp16 backward flushes small gradients to zero), halved and redone while it overflows,
    and unscaled. ``None`` for a parameter the loss does not use.

    Returns:
        ``(gradients, loss)``: the loss of the pass whose gradients are returned.
    """
    losses = []

    def attempt(scale: float) -> list[Tensor | None]:  # an overflow redoes the forward rather than keeping the graph
        losses.append(loss_fn())
        return list(torch.autograd.grad(losses[-1] * scale if scale != 1.0 else losses[-1], params,
                                        allow_unused=True))

    grads, scale = at_finite_scale(attempt, scaler, loss_scale(scaler), what=what)
    return [g if g is None or scale == 1.0 else g / scale for g in grads], losses[-1]
