"""Parameters and gradients sharded by PyTorch FSDP2 (``torch.distributed.fsdp.fully_shard``).

Under FSDP2 each parameter and its gradient is a ``DTensor`` whose local tensor is this rank's
shard. The core works on those local shards and reduces what must be global with explicit
collectives: an inner product or a count is the sum of the per-shard partial sums over the
ranks that hold different shards (the mesh dimensions whose placement is ``Shard``), never over
replicas, which hold the same numbers. Plain tensors pass through unchanged (no collective), so
single-process and DDP code paths are the ones they were.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor

try:  # torch >= 2.5
    from torch.distributed.tensor import DTensor, Shard, distribute_tensor
except ImportError:  # pragma: no cover - older torch (FSDP2 there is torch.distributed._composable.fsdp)
    try:
        from torch.distributed._tensor import DTensor, Shard, distribute_tensor
    except ImportError:  # torch built without distributed: nothing can be sharded
        DTensor = None


def is_sharded(tensor: Tensor) -> bool:
    """Whether ``tensor`` is a ``DTensor`` (an FSDP2 parameter or gradient)."""
    return DTensor is not None and isinstance(tensor, DTensor)


def has_shards(module) -> bool:
    """Whether any parameter of ``module`` (a DDP wrapper is looked through) is an FSDP2 shard."""
    return any(is_sharded(p) for p in getattr(module, "module", module).parameters())


def local(tensor: Tensor) -> Tensor:
    """This rank's shard of a ``DTensor`` (writes to it change the parameter); a plain tensor as is."""
    return tensor.to_local() if is_sharded(tensor) else tensor


def resharded(module):
    """``module`` with its FSDP2 parameters sharded again (a no-op if they are, or if it is not an
    ``FSDPModule``). Between a forward and its backward FSDP2 keeps the root's parameters unsharded
    and *registered* on the module in place of the sharded ones: a parameter list taken then holds
    tensors whose gradients FSDP2 never writes (it writes the sharded parameters' ``.grad``)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover
        return module
    if isinstance(module, FSDPModule):
        module.reshard()
    return module


def shard_groups(tensors: Iterable[Tensor]) -> tuple:
    """The process groups a sum over local shards must be all-reduced over (empty: nothing sharded).

    Raises:
        ValueError: when sharded and plain tensors are mixed, when the DTensors live on different
            meshes or are sharded over different mesh dimensions, or for ``Partial`` placements:
            one reduction could not then give every tensor its global sum.
    """
    tensors = list(tensors)
    sharded = [t for t in tensors if is_sharded(t)]
    if not sharded:
        return ()
    if len(sharded) != len(tensors):
        raise ValueError(f"{len(sharded)} of {len(tensors)} tensors are FSDP2 DTensors and the rest plain: shard "
                         "every trained parameter (fully_shard on the root module) or none")
    mesh, dims = sharded[0].device_mesh, _shard_dims(sharded[0])
    for t in sharded[1:]:
        if t.device_mesh != mesh or _shard_dims(t) != dims:
            raise ValueError(f"FSDP2 tensors on different meshes or shard dimensions ({mesh}, {dims} vs "
                             f"{t.device_mesh}, {_shard_dims(t)}); use one mesh for the whole model")
    return tuple(mesh.get_group(d) for d in dims)


def _shard_dims(tensor: Tensor) -> tuple[int, ...]:
    dims = []
    for d, placement in enumerate(tensor.placements):
        if placement.is_partial():
            raise ValueError(f"a DTensor with a Partial placement ({tensor.placements}) has no local sum; "
                             "redistribute it first")
        if isinstance(placement, Shard):
            dims.append(d)
    return tuple(dims)


def all_reduce_(tensor: Tensor, groups: tuple, op: str = "sum") -> Tensor:
    """Reduce ``tensor`` in place over each group (sum, min or max); a no-op without groups."""
    if groups:
        reduce_op = {"sum": torch.distributed.ReduceOp.SUM, "min": torch.distributed.ReduceOp.MIN,
                     "max": torch.distributed.ReduceOp.MAX}[op]
        for group in groups:
            torch.distributed.all_reduce(tensor, reduce_op, group=group)
    return tensor


def all_gather_cat(tensor: Tensor, groups: tuple) -> Tensor:
    """1-d tensors of any lengths concatenated in rank order over the (single) shard group."""
    if not groups:
        return tensor
    if len(groups) != 1:
        raise NotImplementedError("gathering over more than one sharded mesh dimension (2-d sharding) is not "
                                  "supported; shard parameters over one mesh dimension (FSDP2 or HSDP)")
    group = groups[0]
    world = torch.distributed.get_world_size(group)
    length = torch.tensor([tensor.numel()], dtype=torch.int64, device=tensor.device)
    lengths = [torch.zeros_like(length) for _ in range(world)]
    torch.distributed.all_gather(lengths, length, group=group)
    longest = int(max(int(n) for n in lengths))
    padded = torch.zeros(longest, dtype=tensor.dtype, device=tensor.device)
    padded[: tensor.numel()] = tensor
    parts = [torch.empty_like(padded) for _ in range(world)]
    torch.distributed.all_gather(parts, padded, group=group)
    return torch.cat([p[: int(n)] for p, n in zip(parts, lengths)])


def gathered_like(part: Tensor, like: Tensor) -> Tensor:
    """The whole tensor whose shard on this rank is ``part``, laid out as the DTensor ``like``
    (every rank of ``like``'s mesh must call this: one all-gather); ``part`` itself when ``like``
    is plain. The inverse of `local_part`."""
    if not is_sharded(like):
        return part
    return DTensor.from_local(part, like.device_mesh, like.placements, shape=like.shape,
                              stride=like.stride()).full_tensor()


def local_part(full: Tensor, like: Tensor) -> Tensor:
    """This rank's shard of ``full`` (the whole parameter's values, the same on every rank) laid
    out as ``like``'s: no communication, each rank slices its own part."""
    if not is_sharded(like):
        return full
    return distribute_tensor(full, like.device_mesh, like.placements, src_data_rank=None).to_local()


def whole_module(module):
    """``module`` itself, or for an FSDP2-sharded one an unsharded copy built from its config
    (diffusers models: ``type(module).from_config``) holding the gathered full weights, on the
    shards' device: what an export or a check of the whole model reads. Every rank takes part
    (one all-gather per tensor)."""
    if not has_shards(module):
        return module
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True))
    if not hasattr(type(module), "from_config"):
        raise TypeError(f"cannot rebuild an unsharded {type(module).__name__}: it has no from_config; gather "
                        "get_model_state_dict(module, full_state_dict=True) into your own copy")
    whole = type(module).from_config(module.config)
    whole.load_state_dict(state)
    return whole.to(next(iter(state.values())).device)
