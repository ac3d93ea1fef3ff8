"""The contract every unlearning method follows.

A job calls, per run: ``prepare`` once on the original model (trimming, saliency masks,
LoReUn references), then per optimisation step ``compute_gradients`` for each micro-batch
(back-propagating with the job's ``backward``, e.g. ``accelerator.backward``) and, once the
gradients are synchronised, ``finalize_gradients`` before ``optimizer.step()``.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, ClassVar, Iterable, NamedTuple

import torch
from torch import Tensor, nn

from erasure.config import MethodConfig
from erasure.group_dro import GroupWeights
from erasure.loreun import loreun_weights, weighted_sum
from erasure.objective import Objective, finite_or_raise
from erasure.sharding import has_shards, resharded

Backward = Callable[[Tensor], None]


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP / compiled wrapper."""
    return getattr(model, "module", model)


def trainable(model: nn.Module) -> list[nn.Parameter]:
    """The parameters the optimiser steps (FSDP2: the sharded ones, whatever the moment)."""
    return [p for p in resharded(unwrap(model)).parameters() if p.requires_grad]


class PlugIn(NamedTuple):
    """An option a method must support to be given: its config field, the class flag that says so,
    what it adds, and why a method without it cannot take it."""

    field: str
    flag: str
    what: str
    why: str


class UnlearningMethod:
    """Base class: subclasses set ``name`` and implement :meth:`compute_gradients`."""

    name: ClassVar[str] = ""
    uses_forget: ClassVar[bool] = True
    uses_retain: ClassVar[bool] = True
    # trimming re-initialises weights of the model itself: no adapter-only training can hold it
    reinitializes_weights: ClassVar[bool] = False
    supports_loreun: ClassVar[bool] = True
    # trains its substitute term under adversaries too: prompt prefixes (config.adversarial_prefix) and
    # relearned weights (config.tamper_steps)
    supports_adversarial: ClassVar[bool] = False
    # run prepare() again when resuming (it must not change the model then)
    prepare_on_resume: ClassVar[bool] = False

    @classmethod
    def uses_substitute(cls, config) -> bool:
        """Whether this method, under ``config``, trains the forget prompts toward a substitute prompt
        (the objective's relabelled loss): only then do an erase job's substitute settings matter."""
        return False

    PLUG_INS: ClassVar[tuple[PlugIn, ...]] = (
        PlugIn("loreun", "supports_loreun", "LoReUn", "it has no per-sample forget/retain losses to reweight"),
        PlugIn("adversarial_prefix", "supports_adversarial", "adversarial repair",
               "it has no substitute term to train under attacked prompts"),
        PlugIn("tamper_steps", "supports_adversarial", "tamper-resistant repair",
               "it has no substitute term to train at relearned weights"),
        PlugIn("retain_dro", "uses_retain", "group DRO on the retain term", "it has no retain term to reweight"),
    )

    @classmethod
    def unsupported(cls, config: MethodConfig) -> PlugIn | None:
        """The first ``PLUG_INS`` option that ``config`` turns on and this method does not support (None: none)."""
        return next((p for p in cls.PLUG_INS if getattr(config, p.field) and not getattr(cls, p.flag)), None)

    def __init__(self, config: MethodConfig, objective: Objective) -> None:
        plug_in = self.unsupported(config)
        if plug_in is not None:
            raise ValueError(f"{plug_in.field}={getattr(config, plug_in.field)} does not apply to method "
                             f"'{self.name}' ({plug_in.why})")
        self.config = config
        self.objective = objective
        self.forget_reference: dict[str, float] | None = None
        self.retain_reference: dict[str, float] | None = None
        self.total_steps = 1
        self.step_index = 0
        self.original: nn.Module | None = None  # frozen copy for retain_loss="distill"
        # the job's fp16 GradScaler (accelerator.scaler), set before prepare: gradients read before the
        # optimiser step are still scaled by it (erasure.scaling)
        self.loss_scaler: Any = None
        # dtype of the frozen copies that only run forward (ESD's, retain_loss="distill"'s original);
        # None keeps the model's. The diffusion job sets its compute dtype (bf16: half the memory)
        self.frozen_dtype: Any = None
        # retain_dro: the group of every retain sample (by its batch "index") and the groups' weights q
        self.retain_groups: Tensor | None = None
        self.retain_group_names: list[str] | None = None
        self.group_weights: GroupWeights | None = None

    def hold_retain_groups(self, groups: Tensor, names: list[str] | None = None, indices: Tensor | None = None) -> None:
        """Name the group of each retain sample, ``groups[index]`` for the batches' ``"index"`` (``names[g]`` for
        group id g, in the summary): ``retain_dro`` weights the retain term by group. ``indices``: the samples the
        retain batches draw (all when None); only the groups they hold take part, renumbered in order (a class
        the classification job forgets holds no weight). The job calls it after building the method, before
        training.

        Raises:
            ValueError: for ids < 0, names that do not cover the ids, or no sample to draw.
        """
        groups = torch.as_tensor(groups).long().cpu()
        if groups.ndim != 1 or not len(groups):
            raise ValueError(f"groups must be a non-empty 1-D tensor of group ids, got shape {tuple(groups.shape)}")
        if int(groups.min()) < 0:
            raise ValueError(f"groups holds the id {int(groups.min())}; group ids must be >= 0")
        if names is not None and len(names) <= int(groups.max()):
            raise ValueError(f"{len(names)} group names for group ids up to {int(groups.max())}")
        drawn = groups if indices is None else groups[torch.as_tensor(indices).long().cpu()]
        if not len(drawn):
            raise ValueError("indices is empty: no retain sample to group")
        used = torch.unique(drawn)
        renumber = torch.full((int(groups.max()) + 1,), -1, dtype=torch.long)
        renumber[used] = torch.arange(len(used))
        self.retain_groups = renumber[groups]
        self.retain_group_names = [names[g] if names is not None else str(g) for g in used.tolist()]
        if self.config.retain_dro:
            self.group_weights = GroupWeights(len(used), self.config.retain_dro)

    def group_weight_table(self) -> dict[str, float] | None:
        """The retain groups' DRO weights q by name (by id without names); None without ``retain_dro``."""
        if self.group_weights is None:
            return None
        return {name: round(float(q), 6) for name, q in zip(self.retain_group_names, self.group_weights.weights)}

    def snapshot(self, model: nn.Module) -> None:
        """Keep what the method needs of the *original* model; the job calls it on a fresh start
        and on resume alike, before ``prepare`` and before any checkpoint is loaded. The first call
        wins (the erase job takes it before sharding, the resume path calls again).

        Raises:
            ValueError: for an FSDP2-sharded model: its copy would hold shards and no FSDP state.
        """
        if self.config.retain_loss == "distill" and self.original is None:
            if has_shards(model):
                raise ValueError("retain_loss='distill' needs a whole copy of the original model, and this one is "
                                 "sharded (FSDP2): call snapshot(model) before fully_shard / accelerator.prepare")
            self.original = self.frozen_copy(model)

    def frozen_copy(self, model: nn.Module) -> nn.Module:
        """A frozen copy of ``model`` in ``frozen_dtype`` (or its own)."""
        frozen = copy.deepcopy(unwrap(model)).eval().requires_grad_(False)
        dtypes = {p.dtype for p in frozen.parameters()}
        if self.frozen_dtype is None or dtypes == {self.frozen_dtype}:
            return frozen  # (diffusers warns on every dtype cast, even to the same dtype)
        return frozen.to(self.frozen_dtype)

    # -- life cycle -----------------------------------------------------------------------
    def prepare(self, model: nn.Module, forget_loader: Iterable[Any], retain_loader: Iterable[Any],
                backward: Backward = Tensor.backward) -> dict[str, float]:
        """One-off work on the original model before the first step. Returns a summary."""
        if self.config.loreun:  # Step 1 of paper 004 Algorithm 1, on the original model
            n = self.config.loreun_reference_batches
            self.forget_reference = self.objective.fit_reference(model, forget_loader, n)
            self.retain_reference = self.objective.fit_reference(model, retain_loader, n)
        return {}

    def on_train_begin(self, total_steps: int) -> None:
        self.total_steps = max(1, total_steps)

    def compute_gradients(self, model: nn.Module, forget_batch: Any, retain_batch: Any,
                          backward: Backward = Tensor.backward) -> dict[str, float]:
        """Forward/backward one micro-batch pair, accumulating into ``.grad``. Returns logs."""
        raise NotImplementedError

    def finalize_gradients(self, model: nn.Module) -> dict[str, float]:
        """Edit the synchronised gradients before the optimiser step. Returns logs."""
        self.step_index += 1
        if self.group_weights is None:
            return {}
        self.group_weights.step()  # once per optimizer step, on every rank (an all-reduce)
        q = self.group_weights.weights  # the heaviest group's weight against a uniform q's
        return {"retain_dro_max": float(q.max() * len(q))}

    # -- LoReUn-aware reductions ---------------------------------------------------------
    def reduce_forget(self, losses: Tensor, batch: Any, weighting_losses: Tensor | None = None) -> Tensor:
        """Mean of per-sample forget losses, or their LoReUn-weighted sum (Eq. 4, 6).

        ``weighting_losses`` are the clean-label losses the weights come from when ``losses``
        are random-label losses (paper 004 Algorithm 1, line 6).
        """
        if not self.config.loreun:
            return losses.mean()
        basis = losses if weighting_losses is None else weighting_losses
        weights = loreun_weights(basis, self.objective.reference_loss(self.forget_reference, batch), self.config.eta_forget, True, self.objective.measure)
        return weighted_sum(losses, weights)

    def capped(self, losses: Tensor) -> Tensor:
        """Per-sample losses clamped at ``forget_loss_cap`` (no gradient above it)."""
        cap = self.config.forget_loss_cap
        return losses if cap is None else losses.clamp(max=cap)

    def reduce_retain(self, losses: Tensor, batch: Any, signal: Tensor | None = None) -> Tensor:
        """Mean of per-sample retain losses, or their LoReUn-weighted sum (Eq. 5, 6); with ``retain_dro`` the
        q-weighted mean of the batch's group means (LoReUn's weights, if on, within each group), and ``signal``
        (the per-sample losses the groups are judged by; ``losses`` when None) joins q's next step
        (``finalize_gradients``)."""
        if not self.config.loreun and not self.config.retain_dro:
            return losses.mean()
        weights = (loreun_weights(losses, self.objective.reference_loss(self.retain_reference, batch),
                                  self.config.eta_retain, False, self.objective.measure)
                   if self.config.loreun else torch.full_like(losses, 1.0 / len(losses)))
        if self.config.retain_dro:
            if self.group_weights is None:
                raise RuntimeError(f"retain_dro={self.config.retain_dro} needs the retain samples' groups: the job calls "
                                   "method.hold_retain_groups(groups) before training")
            groups = self.retain_groups[batch["index"].cpu()]
            weights = self.group_weights.sample_weights(groups, weights)
            self.group_weights.accumulate(losses if signal is None else signal, groups)
        return weighted_sum(losses, weights)

    def retain_loss(self, model: nn.Module, batch: Any) -> Tensor:
        """The retain term: the task loss on ``batch`` or, with ``retain_loss="distill"``, the
        distance to the original model's output on it (LoReUn weights either)."""
        if self.config.retain_loss == "distill":
            if self.original is None:
                raise RuntimeError("retain_loss='distill' needs snapshot(model) on the original model before training")
            # retain_dro's group weights read each sample's own distance, not its anchor / neutral terms
            losses, own = self.objective.distilled_parts(model, self.original, batch)
            return finite_or_raise(self.reduce_retain(losses, batch, signal=own), "retain loss")
        losses = self.objective.loss(model, batch)
        return finite_or_raise(self.reduce_retain(losses, batch), "retain loss")

    # -- checkpointing (accelerator.register_for_checkpointing) --------------------------
    def state_dict(self) -> dict[str, Any]:
        state = {"step_index": self.step_index, "total_steps": self.total_steps,
                 "forget_reference": self.forget_reference, "retain_reference": self.retain_reference}
        if self.group_weights is not None:
            state["retain_group_log_weights"] = self.group_weights.state_dict()["log_weights"]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_index = state["step_index"]
        self.total_steps = state["total_steps"]
        self.forget_reference = state["forget_reference"]
        self.retain_reference = state["retain_reference"]
        if self.group_weights is not None and "retain_group_log_weights" in state:
            self.group_weights.load_state_dict({"log_weights": state["retain_group_log_weights"]})
