"""Re-initialise the selected entries of parameters (paper 000 §2.2, Remark 2).

A fresh tensor is drawn for the whole parameter with the chosen scheme and only the
masked entries are copied in, so the kept entries are untouched bit for bit. Draws come
from a dedicated seeded generator: every DDP rank re-initialises identically. An FSDP2 shard
draws the whole parameter the same way and keeps its own part, so the re-initialised values do
not depend on the sharding.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn

from erasure.sharding import all_reduce_, local, local_part, shard_groups

Initializer = Callable[[Tensor, torch.Generator, float], None]


def _fan_in(weight: Tensor) -> int:
    return weight.shape[1] * math.prod(weight.shape[2:]) if weight.dim() > 1 else weight.shape[0]


def _kaiming_uniform(t: Tensor, gen: torch.Generator, value: float) -> None:
    # PyTorch's default for nn.Linear / nn.Conv weights: kaiming_uniform_(a=sqrt(5)),
    # i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    bound = 1.0 / math.sqrt(max(1, _fan_in(t)))
    t.uniform_(-bound, bound, generator=gen)


def _kaiming_normal(t: Tensor, gen: torch.Generator, value: float) -> None:
    t.normal_(0.0, math.sqrt(2.0 / max(1, _fan_in(t))), generator=gen)


def _normal(t: Tensor, gen: torch.Generator, value: float) -> None:
    t.normal_(0.0, value, generator=gen)


def _trunc_normal(t: Tensor, gen: torch.Generator, value: float) -> None:
    nn.init.trunc_normal_(t, 0.0, value, -2 * value, 2 * value, generator=gen)


def _uniform(t: Tensor, gen: torch.Generator, value: float) -> None:
    t.uniform_(-value, value, generator=gen)


def _constant(t: Tensor, gen: torch.Generator, value: float) -> None:
    t.fill_(value)


def _zero(t: Tensor, gen: torch.Generator, value: float) -> None:
    t.zero_()


INITIALIZERS: dict[str, Initializer] = {
    "kaiming_uniform": _kaiming_uniform,
    "kaiming_normal": _kaiming_normal,
    "normal": _normal,
    "trunc_normal": _trunc_normal,
    "uniform": _uniform,
    "constant": _constant,
    "zero": _zero,
}
BIAS_INITIALIZERS = ("zero", "kaiming_uniform", "keep")


def check_init(init: str, bias_init: str) -> None:
    """Raise a ValueError naming the option when a scheme is unknown."""
    if init not in INITIALIZERS:
        raise ValueError(f"init='{init}' is unknown; choose one of {sorted(INITIALIZERS)}")
    if bias_init not in BIAS_INITIALIZERS:
        raise ValueError(f"bias_init='{bias_init}' is unknown; choose one of {list(BIAS_INITIALIZERS)}")


@torch.no_grad()
def reinitialize_(
    params: dict[str, nn.Parameter],
    masks: dict[str, Tensor],
    init: str = "kaiming_uniform",
    bias_init: str = "zero",
    value: float = 0.01,
    seed: int = 0,
) -> int:
    """Re-initialise the masked entries of each parameter in place.

    Args:
        params: ``{name: parameter}``; names ending in ``bias`` use ``bias_init``.
        masks: ``{name: bool mask}`` of the same shapes (missing names are skipped); for FSDP2
            parameters, of their local shards' shapes.
        init: weight scheme, a key of :data:`INITIALIZERS`.
        bias_init: ``zero`` (public code), ``kaiming_uniform`` (bound from the weight's
            fan-in is unknown here, so the bias's own size is used) or ``keep``.
        value: std for normal schemes, bound for ``uniform``, fill for ``constant``.
        seed: seed of the generator the fresh values are drawn from.

    Returns:
        The number of entries re-initialised (over every shard).
    """
    check_init(init, bias_init)
    changed = 0
    for index, (name, param) in enumerate(params.items()):
        mask = masks.get(name)
        if mask is None or not mask.any():
            continue
        is_bias = name.endswith("bias")
        if is_bias and bias_init == "keep":
            continue
        scheme = INITIALIZERS[bias_init if is_bias else init]
        shard = local(param.data)
        # one generator per tensor: results do not depend on which tensors are selected (or sharded)
        gen = torch.Generator(device=shard.device).manual_seed(seed * 1_000_003 + index)
        fresh = torch.empty(param.shape, dtype=param.dtype, device=shard.device)
        scheme(fresh, gen, value)
        shard[mask] = local_part(fresh, param)[mask]
        changed += int(mask.sum())
    groups = shard_groups(params.values())
    if groups:
        changed = int(all_reduce_(torch.tensor([changed], dtype=torch.int64, device=local(
            next(iter(params.values()))).device), groups).item())
    return changed
