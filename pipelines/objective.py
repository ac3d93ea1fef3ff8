"""The diffusion adapter: per-sample epsilon (or v) MSE of a UNet on cached latents.

A batch is ``{"x": latents [B,C,h,w], "y": prompt ids [B], "index", "noise", "timesteps"}``;
prompt ids index a table of text embeddings computed once with the frozen text encoder(s)
(`pipelines.conditioning`; an SDXL UNet also gets each prompt's pooled embedding and the
time ids of the training images' size).
The job attaches the same noise and timesteps to the forget and the retain batch of a step
(paper 000 §4.3: both terms of L = L_r - lam L_f see the same corruption).
"""

from __future__ import annotations

import itertools
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from erasure.config import MethodConfig
from erasure.loreun import fit_exponential
from erasure.objective import Objective
from erasure.replicas import sum_across_processes

RELABEL_TARGETS = ("noise", "prediction")


def _check_listed_ids(name: str, listed: Tensor | None, num_prompts: int) -> None:
    """``[P, K]`` ids per prompt, listed first and padded with -1 (``neutral_ids``, ``anchor_ids``)."""
    if listed is None:
        return
    if listed.ndim != 2 or len(listed) != num_prompts:
        raise ValueError(f"{name} must be [prompts, K] for {num_prompts} prompts, got {tuple(listed.shape)}")
    if bool(((listed[:, 1:] >= 0) & (listed[:, :-1] < 0)).any()):
        raise ValueError(f"{name} must list each prompt's ids first and pad with -1 after them")


class DiffusionObjective(Objective):
    """Per-sample diffusion losses of a UNet (SD 1.x / 2.x / SDXL; epsilon or v prediction).

    Args:
        scheduler: the training noise scheduler (``DDPMScheduler``) of the base model.
        embeddings: text embeddings [P, L, D], one per prompt id.
        relabel_ids: for each prompt id, the id of its substitute prompt (random-label
            methods and ``forget_loss="substitute"``), e.g. the retain prompt.
        uncond_id: id of the empty prompt (ESD's unconditional prediction).
        relabel_target: ``"prediction"`` (the default; SalUn's public SD code and paper 004
            Eq. 3: eps(z_t | c_forget) is pulled to the detached eps(z_t | c_substitute), so
            the forget prompt's own prediction is what changes) or ``"noise"`` (fit the true
            noise under the *substitute* prompt: the forget prompt never enters the loss, so
            this does not erase it; kept for comparison).
        pooled: SDXL's pooled text embeddings [P, D2], one per prompt id (the UNet's added
            ``text_embeds``); None for SD 1.x / 2.x.
        time_ids: SDXL's six added time ids of the training images (`pipelines.conditioning.time_ids`);
            given exactly when ``pooled`` is.
        neutral_ids: ``[P, K]``: for each prompt id, the ids of its neutral prompts, first,
            then -1 (none): the wordings on neither side of the erasure (the testbed's colour-free
            prompts beside a retained colour prompt); ``distilled_loss`` also pulls eps(z_t | neutral)
            to the original's eps(z_t | prompt), weighted by ``neutral_weight``, for one of them per
            sample (the sample's timestep modulo their count: a fresh one as the steps are drawn, the
            same on a resumed run).
        uncond_weight: ``distilled_loss`` also pulls the unconditional prediction eps(z_t | "") to the
            original's at the same noisy latents and steps, with this weight (0: off).
        anchor_ids: ``[P, K]`` as ``neutral_ids``: for each prompt id, the forget prompts whose
            substitute it is (``pipelines.erase.build_objective`` fills it from the substitute pairs);
            ``distilled_loss`` also pulls eps(z_t | forget prompt) to the original's eps(z_t | prompt)
            on the retain image, weighted by ``anchor_weight``, for one of them per sample: the forget
            prompt learns the substitute's prediction on the substitute's own images too (concept
            ablation's model-based target, Kumari et al. 2023), not only on the forget images (where,
            with the substitute term alone, some testbed pairs learned a blend of the two colours).
    """

    measure = "ratio"  # paper 004: d(l, l0, t) = l / l0(t) for generation

    def __init__(self, scheduler: Any, embeddings: Tensor, relabel_ids: Tensor, uncond_id: int,
                 relabel_target: str = "prediction", negative_guidance: float = 1.0, seed: int = 0,
                 pooled: Tensor | None = None, time_ids: Tensor | None = None, neutral_ids: Tensor | None = None,
                 neutral_weight: float = MethodConfig.neutral_weight,
                 uncond_weight: float = MethodConfig.uncond_weight, anchor_ids: Tensor | None = None,
                 anchor_weight: float = MethodConfig.anchor_weight) -> None:
        if relabel_target not in RELABEL_TARGETS:
            raise ValueError(f"relabel_target='{relabel_target}' is unknown; choose one of {list(RELABEL_TARGETS)}")
        if (pooled is None) != (time_ids is None):
            raise ValueError("an SDXL objective needs both pooled embeddings and time ids (or neither)")
        if pooled is not None and len(pooled) != len(embeddings):
            raise ValueError(f"pooled embeddings for {len(pooled)} prompts, text embeddings for {len(embeddings)}")
        for name, listed in (("neutral_ids", neutral_ids), ("anchor_ids", anchor_ids)):
            _check_listed_ids(name, listed, len(embeddings))
        self.neutral_ids = neutral_ids
        self.anchor_ids = anchor_ids
        self.anchor_weight = anchor_weight
        self.neutral_weight = neutral_weight
        self.uncond_weight = uncond_weight
        self.pooled = pooled
        self.time_ids = time_ids
        self.scheduler = scheduler
        self.embeddings = embeddings
        self.relabel_ids = relabel_ids
        self.uncond_id = uncond_id
        self.relabel_target = relabel_target
        self.negative_guidance = negative_guidance
        self.seed = seed
        self.prediction_type = scheduler.config.get("prediction_type", "epsilon")
        self.adversary = None  # pipelines.prompt_prefix.AdversarialPrefixes, for adversarial repair
        self.substitute_choice = None  # the erase job's chosen replacement word (pipelines.erase.choose_replacement)

    def hold_anchors(self, anchor_ids: Tensor | None) -> None:
        """Set ``anchor_ids`` once the substitute pairs are known (they may wait for a word chosen with
        this objective's own ``prediction_gap``), checked as the constructor checks them."""
        _check_listed_ids("anchor_ids", anchor_ids, len(self.embeddings))
        self.anchor_ids = anchor_ids

    def add_prompts(self, hidden: Tensor, pooled: Tensor | None = None) -> Tensor:
        """Append prompts' conditioning rows (``pipelines.conditioning.encode_prompt_table``) after the
        table's, each relabelled to itself and holding no neutral or anchor prompts, and return their ids.
        The existing rows are left as they are (encoded in one call, they would not be bit-equal)."""
        if (pooled is None) != (self.pooled is None) or hidden.shape[1:] != self.embeddings.shape[1:]:
            raise ValueError(f"add_prompts: rows of shape {tuple(hidden.shape[1:])} (pooled: {pooled is not None}) "
                             f"do not fit the table's {tuple(self.embeddings.shape[1:])} (pooled: "
                             f"{self.pooled is not None})")
        start, count = len(self.embeddings), len(hidden)
        self.embeddings = torch.cat([self.embeddings, hidden.to(self.embeddings)])
        if pooled is not None:
            self.pooled = torch.cat([self.pooled, pooled.to(self.pooled)])
        added = torch.arange(start, start + count)
        self.relabel_ids = torch.cat([self.relabel_ids, added.to(self.relabel_ids)])
        pad = lambda listed: None if listed is None else torch.cat([listed, listed.new_full((count, listed.shape[1]), -1)])
        self.neutral_ids, self.anchor_ids = pad(self.neutral_ids), pad(self.anchor_ids)
        return added

    # -- pieces ---------------------------------------------------------------------------
    def _embed(self, ids: Tensor, like: Tensor) -> Tensor:
        if self.embeddings.device != like.device:  # the table moves to the UNet's device once, not every call
            self.embeddings = self.embeddings.to(like.device)
        return self.embeddings[ids.to(like.device)]

    def _added(self, ids: Tensor, like: Tensor, dtype: torch.dtype) -> dict:
        """The UNet's ``added_cond_kwargs`` for SDXL; {} for SD 1.x / 2.x."""
        if self.pooled is None:
            return {}
        if self.pooled.device != like.device:
            self.pooled, self.time_ids = self.pooled.to(like.device), self.time_ids.to(like.device)
        return {"added_cond_kwargs": {"text_embeds": self.pooled[ids.to(like.device)].to(dtype),
                                      "time_ids": self.time_ids.to(dtype).expand(len(ids), -1)}}

    def _with_noise(self, batch: dict) -> dict:
        """Batches of the one-off passes (sensitivity, saliency) carry no noise: draw it per
        sample from the sample's index, so every run and every process scores the same."""
        if "noise" in batch:
            return batch
        noise, steps = [], []
        for index in batch["index"].tolist():
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
            noise.append(torch.randn(batch["x"].shape[1:], generator=gen))
            steps.append(torch.randint(0, self.scheduler.config.num_train_timesteps, (), generator=gen))
        like = batch["x"]
        return {**batch, "noise": torch.stack(noise).to(like), "timesteps": torch.stack(steps).to(like.device)}

    def _noisy_and_target(self, batch: dict) -> tuple[Tensor, Tensor]:
        latents, noise, t = batch["x"], batch["noise"], batch["timesteps"]
        noisy = self.scheduler.add_noise(latents, noise, t)
        target = noise if self.prediction_type == "epsilon" else self.scheduler.get_velocity(latents, noise, t)
        return noisy, target

    @staticmethod
    def _mse(pred: Tensor, target: Tensor) -> Tensor:
        return F.mse_loss(pred.float(), target.float(), reduction="none").flatten(1).mean(1)

    def _predict(self, unet: nn.Module, noisy: Tensor, t: Tensor, ids: Tensor) -> Tensor:
        dtype = getattr(unet, "dtype", noisy.dtype)  # a DDP wrapper has none
        if dtype != noisy.dtype:  # a frozen copy kept in the compute dtype (bf16 / fp16)
            return unet(noisy.to(dtype), t, self._embed(ids, noisy).to(dtype), **self._added(ids, noisy, dtype)).sample
        return unet(noisy, t, self._embed(ids, noisy), **self._added(ids, noisy, noisy.dtype)).sample

    # -- Objective ------------------------------------------------------------------------
    def loss(self, unet: nn.Module, batch: dict) -> Tensor:
        batch = self._with_noise(batch)
        noisy, target = self._noisy_and_target(batch)
        return self._mse(self._predict(unet, noisy, batch["timesteps"], batch["y"]), target)

    @torch.no_grad()
    def prediction_gap(self, unet: nn.Module, batch: dict, other_ids: Tensor) -> Tensor:
        """The mean squared difference between ``unet``'s predictions under the batch's prompts and
        under ``other_ids`` at the same noisy latents and steps (the batch's noise, or the index-seeded
        draw of ``_with_noise``): how far the model must move a prompt to draw the other. ``other_ids``
        ``[N]`` gives ``[N]``; ``[K, N]`` (K alternatives) gives ``[K, N]``, the batch's own prediction
        computed once."""
        batch = self._with_noise(batch)
        noisy = self.scheduler.add_noise(batch["x"], batch["noise"], batch["timesteps"])
        own = self._predict(unet, noisy, batch["timesteps"], batch["y"])
        rows = other_ids.to(batch["y"].device)
        gaps = [self._mse(own, self._predict(unet, noisy, batch["timesteps"], ids)) for ids in rows.view(-1, len(own))]
        return torch.stack(gaps).view(rows.shape)

    def relabeled_loss(self, unet: nn.Module, batch: dict, reference: nn.Module | None = None) -> Tensor:
        """``prediction``: eps(z_t | c_forget) against the detached eps(z_t | c_substitute) of
        ``reference`` (default ``unet`` itself, as SalUn's code; a frozen original gives a target
        that does not move with the training); ``noise``: the substitute prompt fits the noise."""
        batch = self._with_noise(batch)
        noisy, target = self._noisy_and_target(batch)
        substitute = self.relabel_ids.to(batch["y"].device)[batch["y"]]
        if self.relabel_target == "prediction":
            with torch.no_grad():
                target = self._predict(reference if reference is not None else unet, noisy, batch["timesteps"],
                                       substitute)
            return self._mse(self._predict(unet, noisy, batch["timesteps"], batch["y"]), target)
        return self._mse(self._predict(unet, noisy, batch["timesteps"], substitute), target)

    def adversarial_relabeled_loss(self, unet: nn.Module, batch: dict, reference: nn.Module | None = None,
                                   scaler: Any = None) -> tuple[Tensor, Tensor]:
        """AdvUnlearn's two levels on the substitute term. Inner: the prefixes of the batch's prompts
        move (``self.adversary.attack``) so that ``unet`` under the prefixed prompt predicts what
        ``reference`` (the frozen original) predicts under the plain prompt, at fresh noise and
        steps on the batch's latents. Outer: ``(plain, prefixed)`` per-sample losses pulling
        eps(z_t | c_forget) and eps(z_t | prefix + c_forget) to the one detached
        eps(z_t | c_substitute) of ``reference`` at the batch's noise and steps (``relabeled_loss``'s
        ``prediction`` target, drawn once for both). ``scaler``: the job's fp16 GradScaler, for the
        inner attack's gradients."""
        if self.adversary is None:
            raise ValueError("adversarial_relabeled_loss needs the objective's adversary (adversarial_prefix > 0 in the "
                             "erase job, which builds it from the pipeline's text encoder)")
        batch = self._with_noise(batch)
        reference = reference if reference is not None else unet
        inner = getattr(unet, "module", unet)  # the attack's forwards need no DDP bookkeeping: no weight gets a gradient
        latents, ids = batch["x"], batch["y"]
        steps = self.scheduler.config.num_train_timesteps

        def attack_loss(hidden: Tensor, generator: torch.Generator) -> Tensor:
            noise = torch.randn(latents.shape, generator=generator).to(latents)
            t = torch.randint(0, steps, (len(latents),), generator=generator).to(latents.device)
            noisy = self.scheduler.add_noise(latents, noise, t)
            with torch.no_grad():
                goal = self._predict(reference, noisy, t, ids)
            dtype = getattr(inner, "dtype", noisy.dtype)
            return self._mse(inner(noisy.to(dtype), t, hidden.to(dtype)).sample, goal).mean()

        self.adversary.attack(ids, attack_loss, scaler)
        noisy, _ = self._noisy_and_target(batch)
        substitute = self.relabel_ids.to(ids.device)[ids]
        with torch.no_grad():
            target = self._predict(reference, noisy, batch["timesteps"], substitute)
            hidden = self.adversary.hidden(ids).to(noisy)
        dtype = getattr(unet, "dtype", noisy.dtype)
        plain = self._mse(self._predict(unet, noisy, batch["timesteps"], ids), target)
        return plain, self._mse(unet(noisy.to(dtype), batch["timesteps"], hidden.to(dtype)).sample, target)

    def guided_loss(self, unet: nn.Module, frozen: nn.Module, batch: dict) -> Tensor:
        """ESD (Gandikota et al. 2023): eps(x_t, c) -> eps*(x_t) - eta (eps*(x_t, c) - eps*(x_t))."""
        batch = self._with_noise(batch)
        noisy, _ = self._noisy_and_target(batch)
        t = batch["timesteps"]
        with torch.no_grad():
            uncond = self._predict(frozen, noisy, t, torch.full_like(batch["y"], self.uncond_id))
            cond = self._predict(frozen, noisy, t, batch["y"])
            target = uncond - self.negative_guidance * (cond - uncond)
        return self._mse(self._predict(unet, noisy, t, batch["y"]), target)

    def distilled_loss(self, unet: nn.Module, frozen: nn.Module, batch: dict) -> Tensor:
        """The retain term of ``retain_loss="distill"``: the first of ``distilled_parts``."""
        return self.distilled_parts(unet, frozen, batch)[0]

    def distilled_parts(self, unet: nn.Module, frozen: nn.Module, batch: dict) -> tuple[Tensor, Tensor]:
        """MSE between ``unet``'s prediction and the frozen original's at the same noisy latent,
        step and prompt: the retain term of ``retain_loss="distill"``.

        With ``uncond_weight``, each sample adds that weight times the same MSE under the empty
        prompt: classifier-free guidance reads every prompt against the unconditional prediction,
        so an unconditional that drifts moves what every prompt draws (on the testbed, erasing red
        drew the empty prompt red 28% of the time against the original's 16%, and the colour-free
        prompts, guided away from it, lost red's neighbour magenta). Samples whose prompt has a
        neutral prompt (``neutral_ids``) add ``neutral_weight`` times the MSE between ``unet``'s
        prediction under the neutral prompt and the original's under the sample's own prompt: the
        neutral prompt learns the original's retained distribution (over the retain images, the
        original's score of their mixture), not the erased concept's share of it. Samples whose prompt
        is a forget prompt's substitute (``anchor_ids``) add ``anchor_weight`` times the MSE between
        ``unet``'s prediction under that forget prompt and the same target.

        Returns ``(the sum, the first MSE alone)``: the sample's own prompt against the original's, what group
        DRO reads (a substitute's retain images carry the anchor term too, and their group would always look
        the most damaged)."""
        batch = self._with_noise(batch)
        noisy, _ = self._noisy_and_target(batch)
        t, ids = batch["timesteps"], batch["y"]
        with torch.no_grad():
            target = self._predict(frozen, noisy, t, ids)
        own = self._mse(self._predict(unet, noisy, t, ids), target)
        losses = own
        if self.uncond_weight:
            empty = torch.full_like(ids, self.uncond_id)
            with torch.no_grad():
                unconditional = self._predict(frozen, noisy, t, empty)
            losses = losses + self.uncond_weight * self._mse(self._predict(unet, noisy, t, empty), unconditional)
        for listed, weight in ((self.neutral_ids, self.neutral_weight), (self.anchor_ids, self.anchor_weight)):
            if listed is not None and weight:
                losses = losses + weight * self._held_to(unet, noisy, t, ids, listed, target)
        return losses, own

    def _held_to(self, unet: nn.Module, noisy: Tensor, t: Tensor, ids: Tensor, listed: Tensor,
                 target: Tensor) -> Tensor:
        """Per sample, the MSE between ``unet``'s prediction under one of the prompts ``listed`` for the
        sample's own prompt (the sample's timestep modulo their count) and ``target``; 0 where none is listed."""
        alternatives = listed.to(ids.device)[ids]  # [N, K]
        count = (alternatives >= 0).sum(1)
        has = count > 0
        # the whole batch goes through this forward whether or not its samples list a prompt (those
        # without one take their own prompt and weight 0): under FSDP2 every rank must run the same
        # forwards, and a rank whose batch held none would otherwise skip one and hang
        pick = (t % count.clamp_min(1)).long()
        chosen = torch.where(has, alternatives.gather(1, pick[:, None]).squeeze(1), ids)
        held = self._mse(self._predict(unet, noisy, t, chosen), target)
        return held * has.to(held.dtype)

    @torch.no_grad()
    def fit_reference(self, unet: nn.Module, batches: Iterable[Any], num_batches: int | None = None,
                      timesteps: tuple[int, ...] | None = None) -> dict[str, float]:
        """LoReUn Step 1 for diffusion: mean loss at fixed timesteps (over every process's
        batches), fitted by a*exp(b t)."""
        train_steps = self.scheduler.config.num_train_timesteps
        timesteps = timesteps or tuple(range(train_steps // 20, train_steps, train_steps // 10))
        gen = torch.Generator().manual_seed(0)
        sums = {t: 0.0 for t in timesteps}
        count = 0
        for batch in itertools.islice(batches, num_batches or 4):
            for t in timesteps:
                noise = torch.randn(batch["x"].shape, generator=gen).to(batch["x"])
                steps = torch.full((len(batch["x"]),), t, device=batch["x"].device, dtype=torch.long)
                sums[t] += float(self.loss(unet, {**batch, "noise": noise, "timesteps": steps}).sum())
            count += len(batch["x"])
            device = batch["x"].device
        # every rank fits the same curve, on the batches of all ranks
        *totals, count = sum_across_processes([*sums.values(), count], device if count else "cpu")
        if count == 0:
            raise ValueError("cannot fit a LoReUn reference loss on an empty loader")
        curve = fit_exponential(list(sums), [v / count for v in totals])
        return {"a": curve.a, "b": curve.b}

    def reference_loss(self, reference: dict[str, float], batch: dict) -> Tensor:
        return reference["a"] * torch.exp(reference["b"] * batch["timesteps"].float())
