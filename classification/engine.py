"""Training and unlearning loops for classifiers (the job and the benchmark share them)."""

from __future__ import annotations

import logging
import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from erasure.batches import TensorBatches
from classification.metrics import accuracy

logger = logging.getLogger(__name__)

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": lambda params, lr, momentum, weight_decay: torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay),
    "adam": lambda params, lr, momentum, weight_decay: torch.optim.Adam(params, lr=lr, weight_decay=weight_decay),
    "adamw": lambda params, lr, momentum, weight_decay: torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay),
}


def make_optimizer(params, name: str, lr: float, momentum: float = 0.9, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """An optimizer by name ("sgd", "adam", "adamw")."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer='{name}' is unknown; choose one of {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[name](params, lr, momentum, weight_decay)


def fit(model: nn.Module, batches: TensorBatches, epochs: int, lr: float, momentum: float = 0.9,
        weight_decay: float = 5e-4, desc: str = "train", show_progress: bool = True) -> nn.Module:
    """Plain supervised training (SGD, cosine schedule): original and retrained models."""
    model.train()
    optimizer = make_optimizer(model.parameters(), "sgd", lr, momentum, weight_decay)
    total = max(1, epochs * len(batches))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    for epoch in tqdm(range(epochs), desc=desc, leave=False, disable=not show_progress):
        for batch in batches.iterate(epoch):
            loss = F.cross_entropy(model(batch["x"]), batch["y"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    return model.eval()


def relearn_epochs(model: nn.Module, forget: TensorBatches, target_accuracy: float, lr: float,
                   max_epochs: int) -> int | None:
    """Relearn time (paper 000 §4): epochs of fine-tuning on D_f until its accuracy reaches
    the original model's. ``None`` if not reached within ``max_epochs``. Trains ``model``."""
    optimizer = make_optimizer(model.parameters(), "sgd", lr, 0.9, 0.0)
    for epoch in range(1, max_epochs + 1):
        model.train()
        for batch in forget.iterate(epoch):
            loss = F.cross_entropy(model(batch["x"]), batch["y"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if accuracy(model, forget.iterate(0)) >= target_accuracy:
            return epoch
    return None
