"""Connection sensitivity (SNIP) scores, paper 000 Eq. 2.

s_j = E[ dl/dtheta_j * theta_j ]. Here the expectation is the sum of the (signed) gradients of
the scored batches, and the score its magnitude: |theta * sum_batches grad|, as Eq. 2 writes it.
The public SD code differs (JingWu321/Scissorhands ``SD/shs.py``, ``snip``): it sums |grad|
per batch (``absolute=True`` of `accumulate_gradients`; the same for one batch, its README's
``--prune_num 1``; ``train_shs.sh`` scores 10), and although it scores every UNet parameter
it re-initialises only the selected entries of the self-attention (``attn1``) layers of
output blocks 4 and 7. This toolkit re-initialises every selected entry in its scope.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any, Callable, Iterable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from erasure.scaling import at_finite_scale, loss_scale
from erasure.sharding import local, shard_groups

logger = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, Any], Tensor]


def accumulate_gradients(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Iterable[Any],
    params: dict[str, nn.Parameter],
    backward: Callable[[Tensor], None] = Tensor.backward,
    num_batches: int | None = None,
    absolute: bool = False,
    desc: str = "scoring",
    scaler: Any = None,
) -> dict[str, Tensor]:
    """Sum the gradients of the mean per-sample loss over batches, one buffer per parameter.

    Gradients are taken with ``backward`` (pass ``accelerator.backward``), so under DDP the
    summed gradients are the synchronised ones and every rank gets the same scores.

    Args:
        model: the (possibly wrapped) model.
        loss_fn: maps ``(model, batch)`` to per-sample losses.
        batches: an iterable of batches.
        params: the parameters to score.
        backward: how to back-propagate a scalar loss.
        num_batches: stop after this many batches (``None``: all).
        absolute: sum ``|grad|`` per batch instead of ``grad`` (SalUn's saliency).
        desc: progress-bar label.
        scaler: the job's fp16 GradScaler (``accelerator.scaler``) or None. ``backward`` scales the
            loss by it; the sums are of unscaled gradients, and a batch whose gradients overflow is
            redone at half the scale (``erasure.scaling``) instead of reaching the top-k as inf.

    Returns:
        ``{name: summed gradient}``, fp32, on each parameter's device; for FSDP2 parameters the
        sums of this rank's shards (plain tensors of the local shapes).

    Raises:
        ValueError: if no batch was seen or the loss is not finite.
    """
    sums = {name: torch.zeros_like(local(p.detach()), dtype=torch.float32) for name, p in params.items()}
    seen, base, groups = 0, loss_scale(scaler), shard_groups(params.values())
    scale = base
    for batch in tqdm(itertools.islice(batches, num_batches), total=num_batches, desc=desc, leave=False):

        def attempt(at: float) -> list[Tensor | None]:  # backward applies the scaler's own scale, base
            model.zero_grad(set_to_none=True)
            loss = loss_fn(model, batch).mean()
            if not torch.isfinite(loss):
                raise ValueError(f"non-finite loss {loss.item()} while {desc}; check the data and model")
            backward(loss if at == base else loss * (at / base))
            return [p.grad for p in params.values()]

        _, scale = at_finite_scale(attempt, scaler, scale, groups, desc)
        for name, p in params.items():
            if p.grad is not None:
                grad = local(p.grad).float()
                if scale != 1.0:
                    grad = grad / scale
                sums[name].add_(grad.abs() if absolute else grad)
        seen += 1
    model.zero_grad(set_to_none=True)
    if seen == 0:
        raise ValueError(f"no batch to score ({desc}): the forget loader is empty")
    return sums


def connection_sensitivity(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Iterable[Any],
    params: dict[str, nn.Parameter],
    backward: Callable[[Tensor], None] = Tensor.backward,
    num_batches: int | None = None,
    scaler: Any = None,
) -> dict[str, Tensor]:
    """Connection sensitivity ``|theta * sum_batches grad|`` for each parameter (Eq. 2).

    Returns:
        ``{name: scores}`` with each parameter's shape (FSDP2: its local shard's), fp32.
    """
    grads = accumulate_gradients(model, loss_fn, batches, params, backward, num_batches, desc="sensitivity",
                                 scaler=scaler)
    with torch.no_grad():
        return {name: grads[name].mul_(local(params[name].detach()).float()).abs_() for name in params}


def resolve_num_batches(num_batches: int | None, fraction: float | None, loader_len: int | None) -> int | None:
    """How many forget batches to score, from a count or a fraction of the loader (Remark 1)."""
    if num_batches is not None and fraction is not None:
        raise ValueError("give either sensitivity_batches or sensitivity_fraction, not both")
    if fraction is None:
        return num_batches
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"sensitivity_fraction={fraction} is outside (0, 1]")
    if loader_len is None:
        raise ValueError("sensitivity_fraction needs a loader with a length")
    return max(1, round(fraction * loader_len))
