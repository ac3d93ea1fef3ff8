"""The classification adapter: cross-entropy per sample, fixed random labels for RL/SalUn."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from erasure.objective import Objective


def random_labels(labels: Tensor, indices: Tensor, num_classes: int, seed: int = 0) -> Tensor:
    """A fixed wrong label per sample: y' = (y + 1 + h(index, seed) mod (C - 1)) mod C.

    Depends only on the sample's dataset index and the seed, so it is the same in every
    epoch, on every process and after a resume (SalUn assigns its random labels once).
    """
    mixed = (indices.long() * 2654435761 + seed * 40503 + 12345) % 2147483647
    return (labels + 1 + mixed % (num_classes - 1)) % num_classes


class ClassificationObjective(Objective):
    """Per-sample cross-entropy on ``{"x", "y", "index"}`` batches."""

    measure = "difference"  # paper 004: d(l, l0) = l - l0 for classification

    def __init__(self, num_classes: int, seed: int = 0) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes={num_classes} must be >= 2")
        self.num_classes = num_classes
        self.seed = seed

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> Tensor:
        return F.cross_entropy(model(batch["x"]), batch["y"], reduction="none")

    def distilled_loss(self, model: nn.Module, frozen: nn.Module, batch: dict[str, Any]) -> Tensor:
        """KL(original || model) of the class distributions on ``batch`` (knowledge distillation)."""
        with torch.no_grad():
            target = F.log_softmax(frozen(batch["x"]), dim=1)
        return F.kl_div(F.log_softmax(model(batch["x"]), dim=1), target, reduction="none", log_target=True).sum(1)

    def relabeled_loss(self, model: nn.Module, batch: dict[str, Any], reference: nn.Module | None = None) -> Tensor:
        # random labels need no model to make them: ``reference`` does not apply
        fake = random_labels(batch["y"], batch["index"], self.num_classes, self.seed)
        return F.cross_entropy(model(batch["x"]), fake, reduction="none")
