"""The unlearning loop shared by every domain: micro-batch pairs, accumulation, resume."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from erasure.batches import TensorBatches
from erasure.methods import UnlearningMethod
from erasure.methods.base import trainable

BatchHook = Callable[[int, Any, Any], tuple[Any, Any]]


def steps_per_epoch(method: UnlearningMethod, forget: TensorBatches, retain: TensorBatches, accumulation: int) -> int:
    """Optimizer steps per epoch: one pass over D_r (or D_f for forget-only methods).

    Raises:
        ValueError: fewer micro-batches per epoch than ``accumulation`` (a step would read past
            the end of the set and average an empty batch into NaN).
    """
    primary, role = (retain, "retain") if method.uses_retain else (forget, "forget")
    if len(primary) < accumulation:
        raise ValueError(f"gradient_accumulation_steps={accumulation} needs at least {accumulation} batches per "
                         f"epoch, but the {role} set gives {len(primary)} (per process); lower "
                         "gradient_accumulation_steps or train_batch_size, or add images")
    return len(primary) // accumulation


def unlearn(accelerator, model: nn.Module, method: UnlearningMethod, optimizer: torch.optim.Optimizer,
            forget: TensorBatches, retain: TensorBatches, epochs: int, start_step: int = 0,
            max_grad_norm: float | None = None, on_step: Callable[[int, dict], None] | None = None,
            batch_hook: BatchHook | None = None, max_steps: int | None = None) -> dict[str, float]:
    """The repair / unlearning loop, resumable at any optimizer step.

    Each optimizer step consumes ``gradient_accumulation_steps`` micro-batch pairs; the
    primary loader (D_r, or D_f for forget-only methods) sets the epoch, the other cycles.

    Args:
        accelerator: an ``accelerate.Accelerator`` (model and optimizer already prepared).
        start_step: optimizer steps already taken (resume).
        on_step: called as ``on_step(global_step, logs)`` after each optimizer step.
        max_steps: stop after this many optimizer steps (diffusers' ``max_train_steps``).
        batch_hook: ``(micro_step, forget_batch, retain_batch) -> (forget_batch, retain_batch)``,
            e.g. to attach the noise and timesteps a diffusion step shares between both.

    Returns:
        The logs of the last step.
    """
    accumulation = accelerator.gradient_accumulation_steps
    per_epoch = steps_per_epoch(method, forget, retain, accumulation)
    total = epochs * per_epoch if max_steps is None else min(max_steps, epochs * per_epoch)
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
            if batch_hook is not None:
                forget_batch, retain_batch = batch_hook(step * accumulation + micro, forget_batch, retain_batch)
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
