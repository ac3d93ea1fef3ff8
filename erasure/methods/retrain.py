"""Retrain: the reference. Re-initialise every layer, then train on D_r only."""

from __future__ import annotations

import torch

from erasure.methods.base import unwrap
from erasure.methods.finetune import Finetune


class Retrain(Finetune):
    name = "retrain"
    supports_loreun = False

    def prepare(self, model, forget_loader, retain_loader, backward=None):
        torch.manual_seed(self.config.seed)
        reset = 0
        for module in unwrap(model).modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
                reset += 1
        return {"reset_modules": reset}
