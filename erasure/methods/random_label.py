"""Random label (RL): fit D_f to substituted targets while keeping D_r (paper 004 Eq. 6).

L = sum_i w_f,i l(x_i, y'_i) + alpha * sum_j w_r,j l(x_j, y_j); with LoReUn the forget
weights come from the clean-label losses l(x_i, y_i) (Algorithm 1, line 6).
"""

from __future__ import annotations

import torch
from torch import Tensor

from erasure.methods.base import UnlearningMethod
from erasure.objective import finite_or_raise


class RandomLabel(UnlearningMethod):
    name = "random_label"

    @classmethod
    def uses_substitute(cls, config) -> bool:
        return True

    def forget_term(self, model, forget_batch):
        relabeled = self.objective.relabeled_loss(model, forget_batch)
        clean = None
        if self.config.loreun:
            with torch.no_grad():
                clean = self.objective.loss(model, forget_batch)
        return self.reduce_forget(relabeled, forget_batch, weighting_losses=clean)

    def compute_gradients(self, model, forget_batch, retain_batch, backward=Tensor.backward):
        loss_forget = self.forget_term(model, forget_batch)
        loss_retain = self.retain_loss(model, retain_batch)
        loss = finite_or_raise(loss_forget + self.config.alpha * loss_retain, "random-label loss")
        backward(loss)
        return {"loss_forget_relabeled": loss_forget.item(), "loss_retain": loss_retain.item()}
