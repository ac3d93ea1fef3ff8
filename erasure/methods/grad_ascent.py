"""Gradient ascent (GA / NegGrad): ascend on the forget loss only."""

from __future__ import annotations

from torch import Tensor

from erasure.methods.base import UnlearningMethod
from erasure.objective import finite_or_raise


class GradAscent(UnlearningMethod):
    name = "grad_ascent"
    uses_retain = False

    def compute_gradients(self, model, forget_batch, retain_batch, backward=Tensor.backward):
        losses = self.objective.loss(model, forget_batch)
        loss_forget = self.reduce_forget(self.capped(losses), forget_batch, weighting_losses=losses)
        loss = finite_or_raise(-loss_forget, "negated forget loss (gradient ascent)")
        backward(loss)
        return {"loss_forget": loss_forget.item()}
