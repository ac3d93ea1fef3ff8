"""Projected repair, paper 000 Eq. 3-5 and Algorithm 1.

With g_o = grad[L_r - lambda L_f] and g_f = grad L_f, the step direction solves
    min_g 1/2 ||g - g_o||^2  s.t.  <g_f, g> <= 0                          (Eq. 4)
whose dual (Eq. 5) has the closed form v* = max(0, <g_o, g_f> / <g_f, g_f>), g = g_o - v* g_f.
Descending along g therefore never lowers the forget loss to first order.

Gradients are lists of tensors (one per parameter). Inner products are per-tensor ``vdot``
summed in float64 on the gradients' device, read back once per step: no flattened copy of the
model's gradients is made. Under FSDP2 (gradients are ``DTensor`` shards) both products are
summed over each rank's local shards and all-reduced together, one collective per step, and the
update runs on the shards (``erasure.sharding``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from erasure.sharding import all_reduce_, local, shard_groups


def inner(a: list[Tensor], b: list[Tensor]) -> float:
    """Global inner product ``<a, b>`` over lists of same-shaped tensors (sharded or not)."""
    return float(all_reduce_(inner_tensor(a, b), shard_groups(a)))


def inner_tensor(a: list[Tensor], b: list[Tensor]) -> Tensor:
    """``<a, b>`` as a 0-dim tensor on the first tensor's device, float64 where the device has it:
    per-tensor ``vdot`` accumulated there, so reading it is one host sync however many tensors
    (SD v1.4's UNet has ~700 parameter tensors). For DTensors, the sum over this rank's shards
    only: all-reduce it over ``shard_groups`` for the global product."""
    if len(a) != len(b):
        raise ValueError(f"gradient lists differ in length: {len(a)} vs {len(b)}")
    if not a:
        return torch.zeros((), dtype=torch.float64)
    device = local(a[0]).device
    dtype = torch.float32 if device.type == "mps" else torch.float64
    total = torch.zeros((), dtype=dtype, device=device)
    for x, y in zip(a, b):
        x, y = local(x), local(y)
        total += torch.vdot(x.reshape(-1).float(), y.reshape(-1).float()).to(device=device, dtype=dtype)
    return total


def dual_coefficient(go_dot_gf: float, gf_dot_gf: float, eps: float = 1e-30) -> float:
    """Eq. 5 closed form: v* = max(0, <g_o,g_f> / <g_f,g_f>) (0 when g_f vanishes)."""
    if gf_dot_gf <= eps or go_dot_gf <= 0.0:
        return 0.0
    return go_dot_gf / gf_dot_gf


def combine_projected_(retain_grads: list[Tensor], forget_grads: list[Tensor], lam: float) -> dict[str, float]:
    """Turn ``retain_grads`` (g_r) in place into the projected direction g.

    g_o = g_r - lam * g_f, hence <g_o, g_f> = <g_r, g_f> - lam <g_f, g_f> and
    g = g_o - v* g_f = g_r - (lam + v*) g_f: two inner products and one fused update.

    Args:
        retain_grads: gradients of the retain loss L_r (modified in place).
        forget_grads: gradients of the forget loss L_f.
        lam: lambda >= 0 of Eq. 3.

    Returns:
        Diagnostics: ``v`` (v*), ``go_dot_gf`` (<g_o, g_f> before projection), ``projected`` (1/0).
    """
    if lam < 0:
        raise ValueError(f"lam={lam} must be >= 0 (Eq. 3 subtracts lambda * L_f)")
    # both inner products reduced over the shards and read back together: one collective and one
    # host sync per step
    products = torch.stack([inner_tensor(retain_grads, forget_grads), inner_tensor(forget_grads, forget_grads)])
    gr_gf, gf_gf = all_reduce_(products, shard_groups([*retain_grads, *forget_grads])).cpu().tolist()
    go_gf = gr_gf - lam * gf_gf
    v = dual_coefficient(go_gf, gf_gf)
    if retain_grads:
        torch._foreach_add_([local(g) for g in retain_grads], [local(f) for f in forget_grads], alpha=-(lam + v))
    return {"v": v, "go_dot_gf": go_gf, "projected": float(v > 0.0)}


def project(go: list[Tensor], gf: list[Tensor]) -> list[Tensor]:
    """Reference form of Eq. 4-5 on explicit g_o, g_f (returns new tensors; for tests)."""
    v = dual_coefficient(inner(go, gf), inner(gf, gf))
    return [o - v * f for o, f in zip(go, gf)]
