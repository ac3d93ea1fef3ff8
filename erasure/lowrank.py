"""Low-rank factors of a weight change: the math of exporting an erasure as a LoRA adapter.

For a change ``delta`` of a linear weight [out, in] (or a convolution's [out, in, kh, kw],
flattened to [out, in * kh * kw]), the truncated SVD gives the best rank-r approximation in
Frobenius norm (Eckart-Young): ``delta ~ B @ A`` with ``B = U_r sqrt(S_r)`` [out, r] and
``A = sqrt(S_r) V_r^T`` [r, in...], split evenly so neither factor dwarfs the other.
"""

from __future__ import annotations

import torch
from torch import Tensor


def low_rank_factors(delta: Tensor, rank: int) -> tuple[Tensor, Tensor, float]:
    """``(B, A, captured)``: ``B @ A.flatten(1)`` is the best rank-``rank`` approximation of ``delta``.

    Args:
        delta: [out, in] or [out, in, kh, kw] (any float dtype; computed in float32).
        rank: at most this many singular directions (fewer when the matrix is smaller).

    Returns:
        B [out, r], A [r, *delta.shape[1:]] and the share of ``||delta||_F^2`` they keep (1.0
        for a zero delta).

    Raises:
        ValueError: rank < 1 or a delta of fewer than 2 dimensions.
    """
    if rank < 1:
        raise ValueError(f"rank={rank} must be >= 1")
    if delta.dim() < 2:
        raise ValueError(f"a weight change of shape {tuple(delta.shape)} has no low-rank form (needs >= 2 dims)")
    flat = delta.reshape(delta.shape[0], -1).float()
    u, s, vh = torch.linalg.svd(flat, full_matrices=False)
    r = min(rank, s.numel())
    root = s[:r].sqrt()
    total = float((s ** 2).sum())
    captured = float((s[:r] ** 2).sum()) / total if total > 0 else 1.0
    return u[:, :r] * root, (root[:, None] * vh[:r]).reshape(r, *delta.shape[1:]), captured
