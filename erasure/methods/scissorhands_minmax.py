"""Scissorhands with min-max repair (paper 001, Eq. 4 and Algorithm 1).

After the same trimming, each step first ascends on a forget batch,
    theta_hat = theta + ascent_lr * grad L_f(theta),
then takes the retain gradient at theta_hat, grad L_r(theta_hat), restores theta and lets
the optimiser descend with it (theta <- theta - lr * grad L_r(theta_hat)). The ascent is
local to each process (like SAM); the descent gradients are synchronised as usual, so all
ranks take the same step. ``retain_fraction`` (r) is applied by the job's retain loader.
"""

from __future__ import annotations

import torch
from torch import Tensor

from erasure.methods.base import UnlearningMethod, trainable, unwrap
from erasure.methods.scissorhands import Scissorhands
from erasure.objective import finite_or_raise
from erasure.scaling import grad_at_job_scale
from erasure.sharding import is_sharded


class ScissorhandsMinMax(Scissorhands):
    name = "scissorhands_minmax"
    supports_adversarial = False  # its repair has no substitute term to train under attacks

    def ascend(self, model, forget_batch) -> tuple[list[Tensor], float]:
        """Move to theta_hat in place; returns a copy of theta (restored exactly later,
        where adding and subtracting the offset would not be bit-exact) and L_f(theta)."""
        inner = unwrap(model)  # no DDP hooks: this gradient is not an optimiser gradient
        params = trainable(model)
        if any(is_sharded(p) for p in params):
            # FSDP2 runs the forward on gathered copies: autograd.grad on the shards would give None
            # everywhere (allow_unused) and the ascent would silently not move
            raise NotImplementedError("scissorhands_minmax does not run on FSDP2-sharded models (its ascent "
                                      "differentiates the parameters outside FSDP's hooks); use DDP or scissorhands")
        grads, loss_forget = grad_at_job_scale(
            lambda: finite_or_raise(self.reduce_forget(self.objective.loss(inner, forget_batch), forget_batch),
                                    "forget loss (ascent step)"),
            params, self.loss_scaler, "min-max ascent")
        theta = [p.detach().clone() for p in params]
        with torch.no_grad():
            moved = [(p, g) for p, g in zip(params, grads) if g is not None]
            torch._foreach_add_([p for p, _ in moved], [g for _, g in moved], alpha=self.config.ascent_lr)
        return theta, loss_forget.item()

    def compute_gradients(self, model, forget_batch, retain_batch, backward=Tensor.backward):
        theta, loss_forget = self.ascend(model, forget_batch)
        try:
            loss_retain = self.retain_loss(model, retain_batch)
            backward(loss_retain)
        finally:
            with torch.no_grad():
                torch._foreach_copy_(trainable(model), theta)
        return {"loss_forget": loss_forget, "loss_retain_at_ascent": loss_retain.item()}

    # the descent gradient is used as is: no projection
    finalize_gradients = UnlearningMethod.finalize_gradients
