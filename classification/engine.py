"""Training and unlearning loops for classifiers (the job and the benchmark share them)."""

from __future__ import annotations

import logging
import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from classification.batches import TensorBatches
from classification.metrics import accuracy
from erasure.methods import UnlearningMethod
from erasure.methods.base import trainable

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


def steps_per_epoch(method: UnlearningMethod, forget: TensorBatches, retain: TensorBatches, accumulation: int) -> int:
    """Optimizer steps per epoch: one pass over D_r (or D_f for forget-only methods)."""
    primary = retain if method.uses_retain else forget
    return max(1, len(primary) // accumulation)


def unlearn(accelerator, model: nn.Module, method: UnlearningMethod, optimizer: torch.optim.Optimizer,
            forget: TensorBatches, retain: TensorBatches, epochs: int, start_step: int = 0,
            max_grad_norm: float | None = None, on_step: Callable[[int, dict], None] | None = None) -> dict[str, float]:
    """The repair / unlearning loop, resumable at any optimizer step.

    Each optimizer step consumes ``gradient_accumulation_steps`` micro-batch pairs; the
    primary loader (D_r, or D_f for forget-only methods) sets the epoch, the other cycles.

    Args:
        accelerator: an ``accelerate.Accelerator`` (model and optimizer already prepared).
        start_step: optimizer steps already taken (resume).
        on_step: called as ``on_step(global_step, logs)`` after each optimizer step.

    Returns:
        The logs of the last step.
    """
    accumulation = accelerator.gradient_accumulation_steps
    per_epoch = steps_per_epoch(method, forget, retain, accumulation)
    total = epochs * per_epoch
    method.on_train_begin(total)
    primary, secondary = (retain, forget) if method.uses_retain else (forget, retain)
    progress = tqdm(total=total, initial=start_step, desc=f"unlearn[{method.name}]", leave=False,
                    disable=not accelerator.is_local_main_process)
    model.train()
    logs: dict[str, float] = {}
    for step in range(start_step, total):
        epoch, position = divmod(step, per_epoch)
        for micro in range(accumulation):
            index = position * accumulation + micro
            main_batch = primary.batch(epoch, index)
            other_batch = secondary.cycle_batch(step * accumulation + micro)
            forget_batch, retain_batch = (other_batch, main_batch) if method.uses_retain else (main_batch, other_batch)
            with accelerator.accumulate(model):
                logs = method.compute_gradients(model, forget_batch, retain_batch, backward=accelerator.backward)
                if accelerator.sync_gradients:
                    logs.update(method.finalize_gradients(model))
                    if max_grad_norm:
                        accelerator.clip_grad_norm_(trainable(model), max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        progress.update(1)
        progress.set_postfix({k: f"{v:.3g}" for k, v in logs.items() if k.startswith("loss")})
        if on_step is not None:
            on_step(step + 1, logs)
    progress.close()
    return logs
