"""Deterministic, resumable batches over in-memory tensors, sharded across processes.

The order of epoch ``e`` is ``randperm(n, seed + e)``: the same on every process, in every
run and after a resume, so batch ``i`` of epoch ``e`` can be produced without replaying the
ones before it. Each global batch of ``batch_size * world_size`` samples is split between
processes (rank ``r`` takes the ``r``-th slice), as a DistributedSampler would.
"""

from __future__ import annotations

import math
from typing import Iterator

import torch
from torch import Tensor


class TensorBatches:
    """Batches ``{"x", "y", "index"}`` of a subset of ``(x, y)``.

    Args:
        x, y: the full tensors (a dataset split).
        indices: the subset's dataset indices (e.g. the forget set).
        batch_size: samples per process and batch.
        shuffle: permute per epoch (else dataset order).
        seed: base seed of the permutations.
        world_size, rank: data-parallel sharding.
        device: where batches are moved.
    """

    def __init__(self, x: Tensor, y: Tensor, indices: Tensor, batch_size: int, shuffle: bool = True,
                 seed: int = 0, world_size: int = 1, rank: int = 0, device: torch.device | str = "cpu") -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        if len(indices) == 0:
            raise ValueError("cannot batch an empty subset")
        self.x, self.y, self.indices = x, y, indices.long()
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.world_size, self.rank, self.device = world_size, rank, device
        self.epoch = 0

    def __len__(self) -> int:
        return math.ceil(len(self.indices) / (self.batch_size * self.world_size))

    def order(self, epoch: int) -> Tensor:
        if not self.shuffle:
            return self.indices
        perm = torch.randperm(len(self.indices), generator=torch.Generator().manual_seed(self.seed + epoch))
        return self.indices[perm]

    def batch(self, epoch: int, i: int, order: Tensor | None = None) -> dict[str, Tensor]:
        """Batch ``i`` of epoch ``epoch`` for this process."""
        order = self.order(epoch) if order is None else order
        global_size = self.batch_size * self.world_size
        chunk = order[i * global_size:(i + 1) * global_size]
        if len(chunk) < global_size and self.world_size > 1:  # pad the last batch like DistributedSampler
            chunk = torch.cat([chunk, order[: global_size - len(chunk)]])
        mine = chunk[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
        return {"x": self.x[mine].to(self.device), "y": self.y[mine].to(self.device), "index": mine.to(self.device)}

    def iterate(self, epoch: int, start: int = 0) -> Iterator[dict[str, Tensor]]:
        order = self.order(epoch)
        for i in range(start, len(self)):
            yield self.batch(epoch, i, order)

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        return self.iterate(self.epoch)

    def cycle_batch(self, step: int) -> dict[str, Tensor]:
        """The ``step``-th batch of an endless pass over epochs 0, 1, 2, ..."""
        return self.batch(step // len(self), step % len(self))


def subset(indices: Tensor, fraction: float, seed: int) -> Tensor:
    """A seeded random ``fraction`` of ``indices`` (paper 001's r), at least one element."""
    if fraction >= 1.0:
        return indices
    count = max(1, round(fraction * len(indices)))
    perm = torch.randperm(len(indices), generator=torch.Generator().manual_seed(seed))
    return indices[perm[:count]].sort().values
