"""l1-sparse (Jia et al., NeurIPS 2023): fine-tune on D_r with a decaying ||theta||_1 penalty.

The penalty's subgradient gamma_t * sign(theta) is added to the gradients after they are
synchronised, with gamma_t decaying linearly from ``l1_gamma`` to 0 over the run.
"""

from __future__ import annotations

import torch

from erasure.methods.base import trainable
from erasure.methods.finetune import Finetune
from erasure.scaling import loss_scale


class L1Sparse(Finetune):
    name = "l1_sparse"
    supports_loreun = True

    @torch.no_grad()
    def finalize_gradients(self, model):
        gamma = self.config.l1_gamma * max(0.0, 1.0 - self.step_index / self.total_steps)
        params = [p for p in trainable(model) if p.grad is not None]
        # under fp16 the gradients are still scaled by S here (the optimiser step unscales): so is the penalty
        torch._foreach_add_([p.grad for p in params], [torch.sign(p) for p in params],
                            alpha=gamma * loss_scale(self.loss_scaler))
        logs = super().finalize_gradients(model)
        return {**logs, "l1_gamma": gamma}
