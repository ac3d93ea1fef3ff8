"""Fine-tune (FT): descend on the retain loss only, relying on catastrophic forgetting."""

from __future__ import annotations

from torch import Tensor

from erasure.methods.base import UnlearningMethod


class Finetune(UnlearningMethod):
    name = "finetune"
    uses_forget = False

    def compute_gradients(self, model, forget_batch, retain_batch, backward=Tensor.backward):
        loss = self.retain_loss(model, retain_batch)
        backward(loss)
        return {"loss_retain": loss.item()}
