"""Scissorhands (paper 000): trim by connection sensitivity, then projected repair.

Trimming (Algorithm 1, lines 1-7) re-initialises the top ``1 - kept_fraction`` of the
scored weights. Repair (lines 8-20) descends on L = L_r - lam * L_f (Eq. 3) along the
projection of g_o onto {g : <g_f, g> <= 0} (Eq. 4-5), so a step never lowers L_f to first
order. ``forget_loss="substitute"`` replaces -lam * L_f by +lam * (relabeled loss on D_f),
as the public Stable Diffusion code does; the projection still guards L_f.

Gradients of L_f are accumulated in a separate buffer per parameter by swapping ``.grad``
before the forget backward, so gradient accumulation and DDP synchronisation apply to both
g_f and g_r exactly as they do to an ordinary gradient.

``projection="none"`` drops the guard: the step is g_o itself and no g_f is computed (one
backward less per step). Measured on the offline testbed (tuning seeds, word prompts, data seed
100; substitute forget term, distilled retain term, lr 2e-4 x 20 epochs): erasing 'two', the
guard held the retained 'three' at 79% and 'seven' at 71% (both drawn as 'nine'; base 95% and
98%) where without it they came back to 99% and 99%; erasing 'four' the worst retained digit
went from 88% to 93%. The guard blocks any repair direction that would also lower L_f, and
repairing a digit that shares strokes with the erased one does. The price was erasure: 6-7% of
the erased digit's prompts still recognised instead of 0%. A guard on the conditional part of
L_f only (``projection="conditional"``: L_f minus the same loss under the empty prompt) fixed
'four' (worst 96%, erased 0%) but not 'two' (74% / 77%); over the tuning digits three, four and
eight (benchmarks/results/scissorhands-projection-tuning.md) it kept the worst retained digit at
93% / 90% / 98% against the plain guard's 90% / 88% / 90% and erased 'eight' to 19% against 40%.
Those runs trained the whole UNet; the testbed config now repairs cross-attention only
(``trainable: xattn``, README "Round 6"), which kept the retained digits and the FID better still.

``adversarial_prefix=k`` (AdvUnlearn, Zhang et al. 2024) adds the substitute term once more with
each forget prompt behind a ``k``-token prefix that an inner attack has just moved to bring the
concept back (the objective's ``adversarial_relabeled_loss``; `pipelines.prompt_prefix`): the
erasure is trained against the prefix attacks that `eval.attack` runs (UnlearnDiffAtk).

``tamper_steps=K`` does the same in weight space (TAR, Tamirisa et al. 2024, to first order): each step
an inner fine-tune takes K signed-gradient steps of ``tamper_step_size`` per trainable weight on the plain
loss of the forget batch (the relearning attack of `eval.attack`: Adam moves every weight by about its
learning rate a step), the substitute term is back-propagated once more at those relearned weights (its
gradient applied at the current ones), and the weights are put back: the erasure is trained to hold a
few relearning steps away as well as where it stands.
"""

from __future__ import annotations

import torch
from torch import Tensor

from erasure.methods.base import UnlearningMethod, trainable, unwrap
from erasure.objective import finite_or_raise
from erasure.projection import combine_projected_
from erasure.scaling import grad_at_job_scale
from erasure.trim import trim


class Scissorhands(UnlearningMethod):
    name = "scissorhands"
    reinitializes_weights = True
    supports_adversarial = True

    @classmethod
    def uses_substitute(cls, config) -> bool:
        return config.forget_loss == "substitute"

    def __init__(self, config, objective):
        super().__init__(config, objective)
        self.forget_grads: list[Tensor | None] | None = None
        self.adversarial_loss: float | None = None  # the last step's prefixed substitute term, for the logs

    def prepare(self, model, forget_loader, retain_loader, backward=Tensor.backward):
        if self.config.projection == "conditional" and getattr(self.objective, "uncond_id", None) is None:
            raise ValueError("projection='conditional' needs a prompt-conditioned objective (the diffusion one: it "
                             f"reads the empty prompt's loss); {type(self.objective).__name__} has none. Use 'forget' "
                             "or 'none'")
        if self.config.adversarial_prefix and getattr(self.objective, "adversary", None) is None:
            raise ValueError(f"adversarial_prefix={self.config.adversarial_prefix} needs prompts to attack: the diffusion "
                             f"objective with its adversary (the erase job builds it); {type(self.objective).__name__} "
                             "has none. Use adversarial_prefix 0")
        summary = super().prepare(model, forget_loader, retain_loader, backward)
        _, trim_summary = trim(model, self.objective.loss, forget_loader, self.config, backward, self.loss_scaler)
        return {**summary, **trim_summary}

    def _backward_into_forget_buffers(self, params: list[Tensor], loss: Tensor, backward) -> None:
        if self.forget_grads is None:
            self.forget_grads = [None] * len(params)
        retain_grads = [p.grad for p in params]
        store = getattr(torch, self.config.forget_grad_dtype)
        for p, g in zip(params, self.forget_grads):
            # the accumulated g_f goes back into .grad (upcast when stored in another dtype): the backward
            # adds to it, and DDP's all-reduce on the sync micro-step averages the whole accumulated g_f
            p.grad = g.to(p.dtype) if g is not None and g.dtype != p.dtype else g
        self.forget_grads = [None] * len(params)  # a converted buffer is freed during the backward
        backward(loss)
        # autograd may accumulate out of place: read the buffers back from .grad (and store them in
        # forget_grad_dtype: only the forget backward holds g_f in the parameters' dtype)
        self.forget_grads = [None if p.grad is None else p.grad if p.grad.dtype == store else p.grad.to(store)
                             for p in params]
        for p, g in zip(params, retain_grads):
            p.grad = g

    @property
    def projects(self) -> bool:
        return self.config.projection != "none"

    def guarded_loss(self, model, forget_batch, losses: Tensor, loss_forget: Tensor) -> Tensor:
        """The L_f whose gradient g_f the projection guards: ``loss_forget`` itself, or with
        ``projection="conditional"`` the per-sample ``losses`` minus the same losses under the empty
        prompt (same noise and steps), reduced with L_f's own weights: only what the prompt adds."""
        if self.config.projection != "conditional":
            return loss_forget
        uncond = {**forget_batch, "y": torch.full_like(forget_batch["y"], self.objective.uncond_id)}
        return self.reduce_forget(losses - self.objective.loss(model, uncond), forget_batch,
                                  weighting_losses=losses.detach())

    def forget_terms(self, model, forget_batch) -> tuple[Tensor, Tensor | None, Tensor]:
        """(L_f, extra term added to the descent loss or None, the per-sample forget losses)."""
        needs_grad = self.projects or self.config.forget_loss == "ascent"
        with torch.set_grad_enabled(needs_grad and torch.is_grad_enabled()):  # else L_f is only logged
            losses = self.objective.loss(model, forget_batch)
        capped = self.capped(losses) if self.config.forget_loss == "ascent" else losses
        loss_forget = finite_or_raise(self.reduce_forget(capped, forget_batch, weighting_losses=losses), "forget loss")
        if self.config.forget_loss == "substitute":
            # the original model (kept for retain_loss="distill") makes the target: the trimmed
            # model's own substitute prediction is damaged at first and moves as it trains
            reduce = lambda per_sample: self.reduce_forget(per_sample, forget_batch, weighting_losses=losses.detach())
            if not self.config.adversarial_prefix:
                relabeled = reduce(self.objective.relabeled_loss(model, forget_batch, reference=self.original))
                return loss_forget, self.config.lam * relabeled, losses
            # AdvUnlearn: the same target under the inner attack's prefixes too
            plain, attacked = self.objective.adversarial_relabeled_loss(model, forget_batch, reference=self.original,
                                                                        scaler=self.loss_scaler)
            attacked = reduce(attacked)
            self.adversarial_loss = attacked.item()
            relabeled = reduce(plain) + self.config.adversarial_weight * attacked
            return loss_forget, self.config.lam * relabeled, losses
        return loss_forget, None, losses

    def compute_gradients(self, model, forget_batch, retain_batch, backward=Tensor.backward):
        params = trainable(model)  # before the forward (FSDP2 swaps the root's parameters until the backward)
        loss_forget, substitute, losses = self.forget_terms(model, forget_batch)
        if self.projects:
            self._backward_into_forget_buffers(params, self.guarded_loss(model, forget_batch, losses, loss_forget),
                                               backward)  # g_f
        loss_retain = self.retain_loss(model, retain_batch)
        if substitute is not None:
            descent = loss_retain + substitute
        else:  # ascent: without the projection -lam * L_f enters g_o directly
            descent = loss_retain if self.projects else loss_retain - self.config.lam * loss_forget
        backward(finite_or_raise(descent, "repair loss"))  # g_r (plus the substitute term)
        logs = {"loss_forget": loss_forget.item(), "loss_retain": loss_retain.item()}
        if self.config.tamper_steps:
            logs["loss_tampered"] = self._backward_tampered(model, forget_batch, params, backward, losses)
        if substitute is not None:
            logs["loss_substitute"] = substitute.item()
        if self.adversarial_loss is not None:
            logs["loss_adversarial"] = self.adversarial_loss
        return logs

    def _backward_tampered(self, model, forget_batch, params: list[Tensor], backward, forget_losses: Tensor) -> float:
        """Relearn ``params`` in place for ``tamper_steps`` signed-gradient steps on the plain forget loss,
        back-propagate lam * tamper_weight * the substitute term there (into ``.grad``, with g_r; LoReUn
        weights from ``forget_losses``, L_f's per-sample losses where the weights stand, as the plain term's),
        restore the weights. Returns the term's value at the relearned weights."""
        inner = unwrap(model)  # the inner steps need no DDP bookkeeping: their gradients never reach .grad
        saved = [p.detach().clone() for p in params]
        try:
            for _ in range(self.config.tamper_steps):
                grads, _ = grad_at_job_scale(
                    lambda: finite_or_raise(self.objective.loss(inner, forget_batch).mean(), "tamper loss"),
                    params, self.loss_scaler, "tamper step")
                with torch.no_grad():
                    for p, g in zip(params, grads):
                        if g is not None:  # sign: every weight moves by the step size, as in Adam's first steps
                            p.sub_(g.sign(), alpha=self.config.tamper_step_size)
            relabeled = self.objective.relabeled_loss(model, forget_batch, reference=self.original)
            term = self.config.lam * self.config.tamper_weight * self.reduce_forget(
                relabeled, forget_batch, weighting_losses=forget_losses.detach())
            backward(finite_or_raise(term, "tampered substitute loss"))
        finally:
            with torch.no_grad():
                torch._foreach_copy_(params, saved)
        return term.item()

    def state_dict(self):
        state = super().state_dict()
        adversary = getattr(self.objective, "adversary", None)
        if adversary is not None:  # the prefixes carry over between steps (AdvUnlearn's "latest" start)
            state.update({f"adversarial_{key}": value for key, value in adversary.state_dict().items()})
        return state

    def load_state_dict(self, state):
        super().load_state_dict(state)
        adversary = getattr(self.objective, "adversary", None)
        if adversary is not None and "adversarial_calls" in state:  # whatever the adversary keeps (prefixes, moments)
            adversary.load_state_dict({key[len("adversarial_"):]: value for key, value in state.items()
                                       if key.startswith("adversarial_")})

    @torch.no_grad()
    def finalize_gradients(self, model):
        logs = super().finalize_gradients(model)
        if not self.projects:
            return logs
        params = trainable(model)
        pairs = [(p, f) for p, f in zip(params, self.forget_grads or []) if f is not None]
        for p, _ in pairs:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        # ascent puts -lam * g_f into g_o; the substitute form has it in g_r already
        lam = self.config.lam if self.config.forget_loss == "ascent" else 0.0
        stats = combine_projected_([p.grad for p, _ in pairs], [f for _, f in pairs], lam)
        for f in self.forget_grads or []:
            if f is not None:
                f.zero_()
        return {**logs, **stats}
