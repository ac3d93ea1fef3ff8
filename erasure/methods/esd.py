"""ESD, Erased Stable Diffusion (Gandikota et al., ICCV 2023), as a baseline.

Fine-tunes the model so its conditional prediction on the forget data follows negative
guidance away from the concept, computed by a frozen copy of the original model. The
domain's objective supplies the guided loss (``objective.guided_loss``); ESD-u and ESD-x are
this method with the job's trainable scope set to all-but-cross-attention / cross-attention.
"""

from __future__ import annotations

from torch import Tensor

from erasure.methods.base import UnlearningMethod
from erasure.objective import finite_or_raise


class ESD(UnlearningMethod):
    name = "esd"
    uses_retain = False
    supports_loreun = False
    prepare_on_resume = True  # call it before loading the checkpoint: it copies the base model

    def __init__(self, config, objective):
        super().__init__(config, objective)
        self.frozen = None

    def prepare(self, model, forget_loader, retain_loader, backward=Tensor.backward):
        self.frozen = self.frozen_copy(model)
        return {}

    def compute_gradients(self, model, forget_batch, retain_batch, backward=Tensor.backward):
        if self.frozen is None:
            raise RuntimeError("ESD needs prepare() on the original model before training")
        loss = finite_or_raise(self.objective.guided_loss(model, self.frozen, forget_batch).mean(), "ESD loss")
        backward(loss)
        return {"loss_esd": loss.item()}
