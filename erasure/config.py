"""Hyperparameters of the unlearning methods, one typed dataclass shared by all domains.

Each field maps one-to-one onto a CLI flag of the jobs. A method reads only the fields it
uses; ``__post_init__`` rejects bad values with a message naming the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from erasure.reinit import check_init

FORGET_LOSSES = ("ascent", "substitute")
RETAIN_LOSSES = ("data", "distill")
PROJECTIONS = ("forget", "conditional", "none")
FORGET_GRAD_DTYPES = ("float32", "bfloat16")
ADVERSARIAL_SPACES = ("embedding", "tokens")  # where the repair's inner attack searches (pipelines.prompt_prefix)


@dataclass
class MethodConfig:
    """Hyperparameters of an unlearning method (see each method's docstring)."""

    method: str = "scissorhands"  # a registered method (erasure/methods): unknown names list the known ones
    # trimming (paper 000 §2.2): kept_fraction=0.97 keeps 97% and re-initialises the top 3%
    kept_fraction: float = 0.97
    sensitivity_batches: int | None = None  # forget batches the connection sensitivity is scored on (None: all)
    sensitivity_fraction: float | None = None  # or this share of the forget set (None: all)
    init: str = "kaiming_uniform"  # how trimmed weights are re-initialised (erasure/reinit.py)
    bias_init: str = "zero"  # how trimmed biases are re-initialised
    init_value: float = 0.01  # the scale of the "constant" / "normal" inits
    trim_include: tuple[str, ...] = ("*",)  # glob patterns of parameter names that may be trimmed
    trim_exclude: tuple[str, ...] = ()  # glob patterns of parameter names never trimmed (e.g. "*attn2*")
    # repair
    lam: float = 0.1  # lambda of Eq. 3: L = L_r - lam * L_f
    forget_loss: str = "ascent"  # or "substitute": + lam * relabeled loss on D_f (public SD code)
    # ascent on an unbounded loss (cross-entropy) diverges: per-sample forget losses above the
    # cap leave L_f (None: no cap, as paper 000 writes it). The cap defines L_f, so a sample
    # past it neither pushes the ascent nor constrains Scissorhands' projection (g_f = grad of
    # the capped L_f): it is already forgotten that far
    forget_loss_cap: float | None = None
    # "forget": every repair step is projected onto {g : <g_f, g> <= 0} (paper 000 Eq. 4-5);
    # "conditional" (prompt-conditioned objectives, forget_loss="substitute"): the guard's L_f is the forget prompt's
    # loss minus the empty prompt's on the same noisy latents, so it guards what the prompt adds,
    # not the denoising every class shares; "none": the step is g_o as is. The plain guard blocks
    # the repair of classes that share features with the erased one (scissorhands docstring)
    projection: str = "forget"
    # dtype Scissorhands keeps g_f in between its backward and the projected step: "bfloat16" halves the
    # buffer (1.7 GB less on SD v1.4's UNet; g_f is accumulated in float32 and rounded once per micro-step)
    forget_grad_dtype: str = "float32"
    # adversarial repair (AdvUnlearn, Zhang et al. 2024; pipelines.prompt_prefix): each step, an inner attack moves a
    # k-token prefix per forget prompt so that the model being erased draws the concept again, and the substitute
    # term is trained under the prefixed prompt as well as the plain one (0: off; forget_loss="substitute" only)
    adversarial_prefix: int = 0
    adversarial_steps: int = 5  # signed-gradient steps of the inner attack per repair step
    adversarial_step_size: float = 0.05  # per step, in units of the vocabulary embeddings' RMS coordinate
    adversarial_weight: float = 1.0  # of the prefixed substitute term, beside the plain one (both times lam)
    # share of an attack call's prompts whose prefix starts again from random vocabulary tokens before its steps
    # (AdvUnlearn's attack_init: 0.0 is "latest", 1.0 "random"); the rest carry on from their last prefix
    adversarial_restart: float = 0.0
    # prefixes kept per forget prompt, attacked in turn (slot (call + prompt id) % population): the repair sees that
    # many modes of each prompt, each carried on from its own last state (1: AdvUnlearn's one prefix a prompt)
    adversarial_population: int = 1
    # where the inner attack searches: "embedding" (AdvUnlearn: word embeddings within the vocabulary's norm) or
    # "tokens" (UnlearnDiffAtk's space: each prefix token a distribution over the vocabulary, Adam at
    # adversarial_token_lr with the attack's weight decay 0.1, the repair trained under the argmax tokens)
    adversarial_space: str = "embedding"
    adversarial_token_lr: float = 0.01
    # tamper-resistant repair (weight space; TAR, Tamirisa et al. 2024, first order): each step, an inner fine-tune
    # takes tamper_steps signed-gradient steps of tamper_step_size per weight on the plain loss of the forget batch
    # (what a relearning attack does), the substitute term is trained once more at those weights (weight
    # tamper_weight, times lam) and the weights go back (0: off; forget_loss="substitute" only)
    tamper_steps: int = 0
    tamper_step_size: float = 1e-3  # per weight and step, like Adam's step at that learning rate
    tamper_weight: float = 1.0
    alpha: float = 1.0  # retain weight of random-label style losses (paper 004 Eq. 6)
    ascent_lr: float = 1e-2  # eta of the inner maximisation (paper 001 Eq. 4)
    retain_fraction: float = 1.0  # r of paper 001: share of D_r the repair may use
    # "data": the task loss on D_r (paper 000 Eq. 3); "distill": the distance to the original
    # model's output on D_r at the same noise and step (a frozen copy is kept): it asks the
    # repaired model to be the original on retain prompts, not to refit the few retain samples
    retain_loss: str = "data"
    # retain_loss="distill": weight of the neutral prompts' term (retain rows whose metadata names a neutral
    # prompt, the wording on neither side: the testbed's colour-free prompt under a colour concept). The neutral
    # prompt's prediction is pulled to the original's under the row's own prompt; 0: off
    neutral_weight: float = 3.0  # tuned on the testbed's colour concepts (configs/erase_digits_scissorhands.yaml, round 12)
    # retain_loss="distill": weight of the unconditional term, eps(z_t | "") pulled to the original's on the retain
    # samples' noisy latents. Classifier-free guidance reads every prompt against it; 0: off
    uncond_weight: float = 1.0  # tuned on the testbed (configs/erase_digits_scissorhands.yaml, round 11)
    # retain_loss="distill" with a substitute: weight of the anchor term (concept ablation's model-based target on
    # the substitute's own images, Kumari et al. 2023): a retain row whose prompt is some forget prompt's substitute
    # also pulls eps(z_t | forget prompt) to the original's eps(z_t | substitute) on that retain image; 0: off
    anchor_weight: float = 1.0  # tuned on the testbed (configs/erase_digits_scissorhands.yaml, round 15)
    # group DRO on the retain term (Sagawa et al. 2020, online; erasure/group_dro.py): each optimizer step the retain
    # groups' weights q move by exp(retain_dro * (the group's mean loss over the mean of all - 1)) and the retain term is
    # the q-weighted mean of the groups' means, so the kept class the erasure costs most is held hardest. The job names
    # the groups (the erase job's retain_group_by, the classification job's classes); 0: off (the plain mean)
    retain_dro: float = 0.0
    saliency_fraction: float = 0.5  # SalUn: share of weights that may change
    l1_gamma: float = 5e-4  # l1_sparse: initial weight of ||theta||_1, decays linearly to 0
    # LoReUn plug-in (paper 004)
    loreun: bool = False  # reweight per-sample losses by their difficulty (paper 004)
    eta_forget: float = 0.1  # LoReUn weight scale on forget losses
    eta_retain: float = 0.25  # LoReUn weight scale on retain losses
    loreun_reference_batches: int | None = None  # batches the reference losses l0 are fitted on (None: all)
    seed: int = 0  # sampling of batches and re-initialisation

    def __post_init__(self) -> None:
        self.trim_include, self.trim_exclude = tuple(self.trim_include), tuple(self.trim_exclude)
        if not 0.0 < self.kept_fraction < 1.0 or math.isnan(self.kept_fraction):
            raise ValueError(f"kept_fraction={self.kept_fraction} must be in (0, 1): 0.995 keeps 99.5% and trims 0.5%")
        for name in ("lam", "alpha", "ascent_lr", "l1_gamma", "eta_forget", "eta_retain", "init_value",
                     "neutral_weight", "uncond_weight", "anchor_weight", "retain_dro"):
            value = getattr(self, name)
            if not value >= 0 or math.isinf(value):
                raise ValueError(f"{name}={value} must be a finite number >= 0")
        if self.forget_loss_cap is not None and not self.forget_loss_cap > 0:
            raise ValueError(f"forget_loss_cap={self.forget_loss_cap} must be > 0 (or unset)")
        for name in ("retain_fraction", "saliency_fraction"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ValueError(f"{name}={value} must be in (0, 1]")
        if self.sensitivity_fraction is not None and not 0.0 < self.sensitivity_fraction <= 1.0:
            raise ValueError(f"sensitivity_fraction={self.sensitivity_fraction} must be in (0, 1]")
        for name in ("sensitivity_batches", "loreun_reference_batches"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name}={value} must be >= 1 (or unset for all batches)")
        if self.retain_loss not in RETAIN_LOSSES:
            raise ValueError(f"retain_loss='{self.retain_loss}' is unknown; choose one of {list(RETAIN_LOSSES)}")
        if self.loreun and self.retain_loss == "distill":
            raise ValueError("loreun=True reweights task losses against the original model's; it does not apply to "
                             "retain_loss='distill' (use retain_loss='data')")
        if self.projection not in PROJECTIONS:
            raise ValueError(f"projection='{self.projection}' is unknown; choose one of {list(PROJECTIONS)}")
        if self.projection == "conditional" and self.forget_loss == "ascent":
            raise ValueError("projection='conditional' guards the substitute form (forget_loss='substitute'); with "
                             "forget_loss='ascent' the ascent would follow the guard's loss instead of L_f: use "
                             "projection 'forget' or 'none'")
        if self.forget_grad_dtype not in FORGET_GRAD_DTYPES:
            raise ValueError(f"forget_grad_dtype='{self.forget_grad_dtype}' is unknown; choose one of "
                             f"{list(FORGET_GRAD_DTYPES)}")
        if self.adversarial_prefix < 0 or self.adversarial_steps < 1:
            raise ValueError(f"adversarial_prefix={self.adversarial_prefix} must be >= 0 (0: off) and adversarial_steps="
                             f"{self.adversarial_steps} >= 1")
        if not 0 <= self.adversarial_restart <= 1:
            raise ValueError(f"adversarial_restart={self.adversarial_restart} must be a share in [0, 1]")
        if self.adversarial_population < 1:
            raise ValueError(f"adversarial_population={self.adversarial_population} must be >= 1 (prefixes a prompt)")
        if self.adversarial_space not in ADVERSARIAL_SPACES:
            raise ValueError(f"adversarial_space='{self.adversarial_space}' is unknown; choose one of "
                             f"{list(ADVERSARIAL_SPACES)}")
        if not 0 < self.adversarial_token_lr < math.inf:
            raise ValueError(f"adversarial_token_lr={self.adversarial_token_lr} must be a finite number > 0")
        if self.adversarial_space == "tokens" and (self.adversarial_restart or self.adversarial_population != 1):
            raise ValueError(f"adversarial_restart={self.adversarial_restart} and adversarial_population="
                             f"{self.adversarial_population} apply to adversarial_space='embedding'; the token "
                             "space keeps one distribution a prompt (restart 0, population 1)")
        if not self.adversarial_step_size > 0 or not 0 <= self.adversarial_weight < math.inf:
            raise ValueError(f"adversarial_step_size={self.adversarial_step_size} must be > 0 and adversarial_weight="
                             f"{self.adversarial_weight} a finite number >= 0")
        if self.adversarial_prefix and self.forget_loss != "substitute":
            raise ValueError(f"adversarial_prefix={self.adversarial_prefix} trains the substitute term under attacked "
                             f"prompts: it needs forget_loss='substitute' (got '{self.forget_loss}')")
        if self.tamper_steps < 0 or not 0 < self.tamper_step_size < math.inf or not 0 <= self.tamper_weight < math.inf:
            raise ValueError(f"tamper_steps={self.tamper_steps} must be >= 0 (0: off), tamper_step_size="
                             f"{self.tamper_step_size} a finite number > 0 and tamper_weight={self.tamper_weight} "
                             "a finite number >= 0")
        if self.tamper_steps and self.forget_loss != "substitute":
            raise ValueError(f"tamper_steps={self.tamper_steps} trains the substitute term at relearned weights: it needs "
                             f"forget_loss='substitute' (got '{self.forget_loss}')")
        if self.forget_loss not in FORGET_LOSSES:
            raise ValueError(f"forget_loss='{self.forget_loss}' is unknown; choose one of {list(FORGET_LOSSES)}")
        check_init(self.init, self.bias_init)
        if not self.trim_include:
            raise ValueError("trim_include is empty; use ('*',) for every trimmable parameter")
