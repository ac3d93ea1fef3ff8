"""Data-parallel helpers: replicas hold bit-identical parameters (cheap insurance), and
statistics every rank must share are summed over the processes."""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)


def parameter_digest(model: nn.Module) -> str:
    """sha256 of every parameter's bytes, in ``named_parameters`` order."""
    digest = hashlib.sha256()
    for name, param in getattr(model, "module", model).named_parameters():
        digest.update(name.encode())
        digest.update(param.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def check_replicas(model: nn.Module, accelerator: Any, when: str) -> list[str]:
    """Gather each process's digest; raise if any differs.

    Raises:
        RuntimeError: naming the moment (``when``) at which replicas diverged.
    """
    from accelerate.utils import gather_object

    from erasure.sharding import has_shards

    if has_shards(model):
        # FSDP2: each rank holds other shards, there are no replicas to compare
        logger.info("parameters are sharded (FSDP2): no replica check %s", when)
        return []
    digests = gather_object([parameter_digest(model)])
    if len(set(digests)) != 1:
        raise RuntimeError(f"data-parallel replicas differ {when}: {digests}")
    if accelerator.num_processes > 1:
        logger.info("%d replicas identical %s (%s)", len(digests), when, digests[0][:12])
    return digests


def sum_across_processes(values: list[float], device: torch.device | str = "cpu") -> list[float]:
    """``values`` summed over every process of the default process group (unchanged without one).

    Statistics fitted on each rank's shard (LoReUn's reference losses) must be one figure for
    all ranks: otherwise each rank weights its losses by its own reference and only rank 0's
    is saved. NCCL needs the tensor on the rank's GPU, hence ``device``.
    """
    return sum_tensor_across_processes(torch.tensor(values, dtype=torch.float64), device).tolist()


def sum_tensor_across_processes(values: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """A tensor summed over every process of the default process group (a copy; unchanged without one)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return values.clone()
    if torch.distributed.get_backend() == "nccl" and torch.device(device).type != "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    total = values.to(device, copy=True)
    torch.distributed.all_reduce(total)
    return total.to(values.device)
