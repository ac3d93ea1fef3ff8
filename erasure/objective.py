"""The one place a domain (classifier, diffusion UNet) meets the core.

An :class:`Objective` maps ``(model, batch)`` to per-sample losses. Methods never look
inside a batch: the objective decides what a batch is.
"""

from __future__ import annotations

import itertools
from typing import Any, Iterable

import torch
from torch import Tensor, nn

from erasure.replicas import sum_across_processes



class Objective:
    """Per-sample losses of a domain. Subclass and implement :meth:`loss`.

    Attributes:
        measure: LoReUn's excess-loss measure for this domain, ``"difference"`` (l - l0,
            classification) or ``"ratio"`` (l / l0(t), diffusion).
    """

    measure: str = "difference"

    def loss(self, model: nn.Module, batch: Any) -> Tensor:
        """Per-sample loss of ``model`` on ``batch`` with its true targets, shape ``[B]``."""
        raise NotImplementedError

    def relabeled_loss(self, model: nn.Module, batch: Any, reference: nn.Module | None = None) -> Tensor:
        """Per-sample loss on ``batch`` with substituted targets (random labels for a
        classifier; another prompt's prediction for diffusion, made by ``reference``, by
        default ``model`` itself), shape ``[B]``."""
        raise NotImplementedError(f"{type(self).__name__} has no relabeled loss; random-label methods need one")

    def adversarial_relabeled_loss(self, model: nn.Module, batch: Any, reference: nn.Module | None = None,
                                   scaler: Any = None) -> tuple[Tensor, Tensor]:
        """``(plain, prefixed)``: the relabeled loss, and the same with each sample's prompt behind an
        adversarial prefix that an inner attack has just moved to bring the concept back (adversarial
        repair), each of shape ``[B]``. ``scaler``: the job's fp16 GradScaler, for the inner attack's gradients."""
        raise NotImplementedError(f"{type(self).__name__} has no adversarial prompts; adversarial_prefix needs the "
                                  "diffusion objective built with a text encoder")

    def guided_loss(self, model: nn.Module, frozen: nn.Module, batch: Any) -> Tensor:
        """Per-sample loss against a frozen model's negatively guided prediction (ESD)."""
        raise NotImplementedError(f"{type(self).__name__} has no guided loss; ESD needs a diffusion objective")

    def distilled_loss(self, model: nn.Module, frozen: nn.Module, batch: Any) -> Tensor:
        """Per-sample distance between ``model``'s and the frozen original's outputs on ``batch``
        (``retain_loss="distill"``), shape ``[B]``."""
        raise NotImplementedError(f"{type(self).__name__} has no distilled loss; use retain_loss='data'")

    def distilled_parts(self, model: nn.Module, frozen: nn.Module, batch: Any) -> tuple[Tensor, Tensor]:
        """``(distilled_loss, own)``: the retain term and, per sample, the part that measures the sample itself
        (its own input against the original's output), which group DRO reads: terms a sample carries for other
        inputs (the diffusion objective's anchor and neutral prompts) would make its group look damaged. Here
        the two are the same."""
        losses = self.distilled_loss(model, frozen, batch)
        return losses, losses

    @torch.no_grad()
    def fit_reference(self, model: nn.Module, batches: Iterable[Any], num_batches: int | None = None) -> dict[str, float]:
        """LoReUn Step 1: parameters of the original model's reference loss.

        Here the mean loss over the batches (classification), over every process's batches
        under data parallelism. Plain floats, so the method's state checkpoints without pickling code.

        Raises:
            ValueError: if there is no batch.
        """
        total, count, device = 0.0, 0, "cpu"
        for batch in itertools.islice(batches, num_batches):
            losses = self.loss(model, batch)
            total, count, device = total + float(losses.sum()), count + losses.numel(), losses.device
        total, count = sum_across_processes([total, count], device)  # one reference for every rank
        if count == 0:
            raise ValueError("cannot fit a LoReUn reference loss on an empty loader")
        return {"mean": total / count}

    def reference_loss(self, reference: dict[str, float], batch: Any) -> Tensor | float:
        """The reference loss l0 for each sample of ``batch`` (a scalar here)."""
        return reference["mean"]


def finite_or_raise(loss: Tensor, what: str) -> Tensor:
    """Stop with a clear error instead of stepping (and later saving) a NaN/inf model."""
    if not torch.isfinite(loss.detach()).all():
        raise FloatingPointError(
            f"the {what} is {loss.detach().float().mean().item()}: training diverged. Lower the learning "
            f"rate (or lam / ascent_lr), or enable gradient clipping; nothing was saved from this step"
        )
    return loss
