"""Trimming, paper 000 Algorithm 1 lines 1-7: score, select the top-k, re-initialise."""

from __future__ import annotations

import logging
from typing import Any, Iterable

from torch import Tensor, nn

from erasure.config import MethodConfig
from erasure.reinit import reinitialize_
from erasure.scope import scope_parameters
from erasure.sensitivity import LossFn, connection_sensitivity, resolve_num_batches
from erasure.sharding import shard_groups
from erasure.topk import topk_masks

logger = logging.getLogger(__name__)


def trim(model: nn.Module, loss_fn: LossFn, forget_batches: Iterable[Any], config: MethodConfig,
         backward=Tensor.backward, scaler: Any = None) -> tuple[dict[str, Tensor], dict[str, float]]:
    """Re-initialise the parameters most sensitive to the forget data, in place.

    Args:
        model: the original model (possibly DDP-wrapped; gradients then synchronise), or one
            sharded with FSDP2 (``fully_shard``): every rank scores its shards, the global top-k is
            agreed over the ranks and the masks are of the local shards.
        loss_fn: per-sample forget loss ``(model, batch) -> Tensor[B]``.
        forget_batches: forget batches to score (a loader).
        config: ``kept_fraction``, ``sensitivity_*``, ``init*``, ``trim_*`` are read.
        backward: the job's backward (``accelerator.backward``).
        scaler: its fp16 GradScaler, if any (``erasure.scaling``): the scores are of unscaled gradients.

    Returns:
        ``(masks, summary)``: the selected entries per parameter name and a summary with
        ``trimmed`` (count), ``scored`` (count) and ``trimmed_fraction``.
    """
    params = scope_parameters(model, config.trim_include, config.trim_exclude)
    num_batches = resolve_num_batches(config.sensitivity_batches, config.sensitivity_fraction,
                                      len(forget_batches) if hasattr(forget_batches, "__len__") else None)
    scores = connection_sensitivity(model, loss_fn, forget_batches, params, backward, num_batches, scaler)
    masks = topk_masks(scores, config.kept_fraction, shard_groups(params.values()))
    del scores
    trimmed = reinitialize_(params, masks, config.init, config.bias_init, config.init_value, config.seed)
    scored = sum(p.numel() for p in params.values())
    summary = {"trimmed": trimmed, "scored": scored, "trimmed_fraction": trimmed / scored,
               "scored_tensors": len(params)}
    logger.info("trimmed %d of %d scored weights (%.3f%%) in %d tensors", trimmed, scored,
                100 * trimmed / scored, len(params))
    return masks, summary
