"""Erase a concept from a Stable Diffusion UNet: ``accelerate launch -m pipelines.erase``.

    accelerate launch -m pipelines.erase --pretrained_model_name_or_path CompVis/stable-diffusion-v1-4 \\
        --data_dir data/nudity --concept nudity --method scissorhands --output_dir erased-nudity \\
        --mixed_precision bf16 --gradient_checkpointing

``--data_dir`` is the output of ``pipelines.generate`` (``forget/`` and ``retain/`` with cached
latents); ``--forget_dir/--retain_dir`` take any image folders instead (encoded once and cached;
``--forget_prompt/--retain_prompt`` give the prompt of images whose metadata has none).
Skeleton of the diffusers training examples: parse -> Accelerator -> seed -> load -> prepare ->
method.prepare (trimming) -> loop with accumulate -> checkpoint-N -> resume -> export ->
model card -> push -> end_training. The math lives in ``erasure/`` and ``pipelines/objective.py``.

``--output_dir`` holds the export (a diffusers folder: ``StableDiffusionPipeline.from_pretrained
(output_dir)``, ``StableDiffusionXLPipeline`` for an SDXL base, or ``unet/`` alone), ``README.md`` and ``erase_config.json``, replaced as a whole
on re-export (``erasure.exports``; ``.export.json`` records it), next to ``checkpoint-N/`` (each
complete or absent, ``erasure.checkpoints``) and ``logs/``. ``.lock`` names the running job.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.utils import broadcast_object_list, set_seed

from erasure import jobconfig
from erasure.bounds import check_image_side, check_training
from erasure.batches import TensorBatches, subset
from erasure.config import MethodConfig
from erasure.launch import compute_dtype, finish, make_accelerator
from erasure.loop import steps_per_epoch, unlearn
from erasure.methods import build_method, get_method, validate_method
from erasure.exports import publish_export, staging_folder
from erasure.output import OutputDir, check_finite
from erasure.replicas import check_replicas
from erasure.sharding import has_shards, whole_module
from erasure.resume import checkpointer, resolve_resume, start_or_resume
from pipelines.card import write_card
from pipelines.conditioning import encode_prompt_table, is_xl, time_ids
from pipelines.data import ConceptImageSet
from pipelines.objective import RELABEL_TARGETS, DiffusionObjective
from pipelines.prompt_prefix import AdversarialPrefixes, TokenPrefixes
from pipelines.push import push_to_hub
from pipelines.sampling import load_pipeline
from prompts.base import closest_prompts, has_ties, replacement_words, rewritten_prompts

logger = logging.getLogger("pipelines.erase")

SCOPES = {"full": lambda name: True, "xattn": lambda name: "attn2" in name, "noxattn": lambda name: "attn2" not in name}
# trainable="lora": a PEFT LoRA on the attention projections trains instead (the diffusers LoRA examples' targets)
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
EXPORTS = ("pipeline", "unet", "lora")
# the papers' defaults for Stable Diffusion (paper 000 §8.1.2; the public SD code's train_shs.sh
# runs nudity with --sparsity 0.995 --lam 0.1)
DOMAIN_DEFAULTS = {"kept_fraction": 0.995, "lam": 0.1}
SUBSTITUTE_TIES = ("nearest", "farthest", "rotate")
GAP_RULES = {"nearest": min, "farthest": max}  # the substitute_ties that choose one word by prediction gap


@dataclass
class EraseConfig:
    """Options of the erase job (the method's are in :class:`MethodConfig`)."""

    pretrained_model_name_or_path: str = "default"  # "default": the embedded digits model, built once
    revision: str | None = None  # Hub branch, tag or commit of pretrained_model_name_or_path
    data_dir: str | None = None  # pipelines.generate output: forget/ and retain/ with cached latents
    forget_dir: str | None = None  # any image folder of the concept (with --retain_dir instead of --data_dir)
    retain_dir: str | None = None  # any image folder of what to keep
    # the prompt of forget_dir/retain_dir images that have none (no metadata.jsonl, or rows
    # without a "prompt"); a row's own prompt wins
    forget_prompt: str | None = None
    retain_prompt: str | None = None
    resolution: int | None = None  # image side for --forget_dir/--retain_dir images (a multiple of 8); None: as stored
    concept: str | None = None  # a label only: recorded in the model card and erase_config.json
    substitute_prompt: str | None = None  # what forget prompts should draw instead; None: for each, the retain prompt closest in wording (prompts.base.closest_prompts)
    # one replacement for the concept: each forget prompt's substitute is the closest retain prompt that holds this
    # word (blue for color:yellow: "a yellow handwritten digit five" -> "a blue handwritten digit five"); None: the
    # closest of all, ties rotating over the candidates
    substitute_word: str | None = None
    # with neither substitute_prompt nor substitute_word: how a forget prompt's tied closest retain prompts are
    # shared out. "nearest": one word
    # replaces the concept in every prompt, the one whose prompts the base model already predicts closest to
    # the forget prompts' on the forget images (the smallest edit; substitute_choice in the run's summary);
    # "farthest": the word with the largest gap (the most distinct target); "rotate": ties rotate over the
    # candidates (before round 14; the concept word then learns a blend)
    substitute_ties: str = "nearest"
    # with one replacement word (substitute_word, or chosen by substitute_ties nearest / farthest): each forget
    # prompt's substitute is the prompt itself with the concept's word replaced (prompts.base.rewritten_prompts:
    # "a handwritten digit two in blue" -> "... three in blue"), drawn by the frozen model whether or not a
    # retain image has that prompt; False: the closest retain prompt holding the word, which can change more
    # than the concept (the colour) where the retain set lacks the exact prompt. The nearest / farthest word is
    # still chosen on the gaps to those closest retain prompts (choose_replacement)
    substitute_rewrite: bool = False
    relabel_target: str = "prediction"  # "noise" never puts the forget prompt in the loss
    # the groups of --retain_dro: "prompt" (each retain prompt its own group) or a key of the retain rows' "extra"
    # metadata (the testbed's "label": the kept digit whatever the colour or wording; "color")
    retain_group_by: str = "prompt"
    negative_guidance: float = 1.0  # ESD eta: how far below the unconditional the concept is pushed
    # UNet weights that train: full, xattn (cross-attention only), noxattn, or lora (a PEFT LoRA of
    # rank lora_rank on the attention projections; needs --export lora)
    trainable: str = "full"
    export: str = "pipeline"  # pipeline (a full diffusers folder), unet (unet/ alone) or lora (an adapter)
    lora_rank: int = 16  # --export lora: rank of the adapter extracted from the weight change (pipelines.lora)
    # the base's safety checker and feature extractor are kept in a pipeline export; this drops them
    no_safety_checker: bool = False
    output_dir: str = "runs/erase"  # the export, its card, checkpoint-N/ and logs/
    overwrite_output_dir: bool = False  # replace a non-empty output_dir (refused with --resume_from_checkpoint)
    learning_rate: float = 1e-5
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 0.0
    adam_epsilon: float = 1e-8
    use_8bit_adam: bool = False  # bitsandbytes AdamW8bit (pip install scissorhands[adam8bit])
    train_batch_size: int = 16  # per process, for the forget and the retain batch each
    num_train_epochs: int = 5  # passes over the forget set
    max_train_steps: int | None = None  # stop after this many optimiser steps (overrides num_train_epochs)
    gradient_accumulation_steps: int = 1
    gradient_checkpointing: bool = False  # recompute UNet activations in the backward pass: less memory, slower
    max_grad_norm: float | None = 1.0  # clip the gradient norm (None: no clipping)
    mixed_precision: str | None = None  # no, fp16 or bf16 (default: accelerate's config)
    checkpointing_steps: int | None = None  # save checkpoint-N every N steps (None: none)
    checkpoints_total_limit: int | None = 2  # keep the newest N checkpoints
    resume_from_checkpoint: str | None = None  # a checkpoint-N folder, or "latest" in output_dir
    push_to_hub: bool = False  # upload the export after training (scissorhands push uploads an audited one)
    hub_model_id: str | None = None  # the Hub repo, e.g. your-name/sd-v1-4-erased-nudity
    hub_token: str | None = None  # default: the token of `huggingface-cli login`; never written anywhere
    report_to: str | None = None  # tensorboard or wandb (accelerate trackers)
    seed: int = 0  # data order, noise and timesteps

    def __post_init__(self) -> None:
        check_training(self)
        check_image_side("resolution", self.resolution, multiple=8)
        folders = self.forget_dir is not None or self.retain_dir is not None
        if self.data_dir is not None and folders:
            raise ValueError(f"data_dir={self.data_dir} excludes --forget_dir/--retain_dir (got forget_dir="
                             f"{self.forget_dir}, retain_dir={self.retain_dir}); give one or the other")
        if self.data_dir is None and (self.forget_dir is None or self.retain_dir is None):
            raise ValueError("give --data_dir (pipelines.generate output) or both --forget_dir and --retain_dir")
        if self.substitute_word is not None and not re.fullmatch(r"\s*\w+\s*", self.substitute_word):
            raise ValueError(f"substitute_word={self.substitute_word!r} must be a single word (letters, digits, _)")
        if self.substitute_word is not None and self.substitute_prompt is not None:
            raise ValueError(f"substitute_word={self.substitute_word!r} and substitute_prompt={self.substitute_prompt!r} "
                             "exclude each other; give one")
        if self.substitute_ties not in SUBSTITUTE_TIES:
            raise ValueError(f"substitute_ties={self.substitute_ties!r} is unknown; choose one of {list(SUBSTITUTE_TIES)}")
        if self.substitute_rewrite and (self.substitute_prompt is not None or (
                self.substitute_word is None and self.substitute_ties not in GAP_RULES)):
            raise ValueError(f"substitute_rewrite=True replaces the concept's word with one word: it needs "
                             f"substitute_word or substitute_ties in {list(GAP_RULES)}, not substitute_prompt="
                             f"{self.substitute_prompt!r} / substitute_ties={self.substitute_ties!r}")
        for name in ("forget_prompt", "retain_prompt"):
            value = getattr(self, name)
            if value is not None and (self.data_dir is not None or not value.strip()):
                raise ValueError(f"{name}={value!r} needs --forget_dir/--retain_dir (pipelines.generate folders "
                                 "carry their prompts) and must not be empty")
        for name in ("data_dir", "forget_dir", "retain_dir"):
            value = getattr(self, name)
            if value is not None and not Path(value).is_dir():
                raise FileNotFoundError(f"{name}={value}: no such folder")
        if self.trainable not in (*SCOPES, "lora"):
            raise ValueError(f"trainable='{self.trainable}' is unknown; choose one of {[*SCOPES, 'lora']}")
        if self.trainable == "lora" and self.export != "lora":
            raise ValueError(f"trainable='lora' trains an adapter only: it needs --export lora (got export="
                             f"'{self.export}')")
        if self.export not in EXPORTS:
            raise ValueError(f"export='{self.export}' is unknown; choose one of {list(EXPORTS)}")
        if self.relabel_target not in RELABEL_TARGETS:
            raise ValueError(f"relabel_target='{self.relabel_target}' is unknown; choose one of {list(RELABEL_TARGETS)}")
        for name in ("train_batch_size", "num_train_epochs", "gradient_accumulation_steps", "lora_rank"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate={self.learning_rate} must be > 0")
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("push_to_hub needs --hub_model_id (e.g. your-name/sd-v1-4-erased-nudity)")

    def data_dirs(self) -> tuple[Path, Path]:
        if self.data_dir is not None:
            return Path(self.data_dir) / "forget", Path(self.data_dir) / "retain"
        return Path(self.forget_dir), Path(self.retain_dir)


def resolve_model(name: str) -> str:
    """``default`` -> the embedded digits pipeline (built and cached on first use)."""
    if name != "default":
        return name
    from pipelines.default_model import build_default_model

    return str(build_default_model())


def choose_replacement(objective: DiffusionObjective, unet, forget: ConceptImageSet, ids: dict[str, int],
                        retain_prompts: list[str], words: list[str], device, max_samples: int = 64,
                        batch_size: int = 16, rule: str = "nearest") -> tuple[str, dict[str, float]]:
    """Of ``words`` (``prompts.base.replacement_words``), the one the base ``unet`` is closest to drawing
    already (``rule="farthest"``: the one it is farthest from).

    For each word, the mean ``objective.prediction_gap`` between each forget prompt and its substitute
    holding the word (``closest_prompts(prefer=word)``), over ``max_samples`` forget images spread evenly
    over the set, at their index-seeded noise and steps; under ``accelerate launch`` rank 0's gaps decide
    for every rank (kernels may round a near tie apart). The smallest gap is the
    smallest edit that moves the concept whole (README, erasure quality, round 14, with what it does
    on the testbed's six colours).

    Returns:
        ``(word, {word: gap})``.
    """
    forget_prompts = sorted(set(forget.prompts))
    pairs = {word: closest_prompts(forget_prompts, retain_prompts, prefer=word) for word in words}
    # evenly over the set (a folder ordered by prompt would otherwise give its first prompts only)
    rows = torch.linspace(0, len(forget.prompts) - 1, min(len(forget.prompts), max_samples)).round().long().unique()
    totals = torch.zeros(len(words), dtype=torch.float64)
    unet.to(device)  # where it trains next
    for chunk in rows.split(batch_size):
        own = torch.tensor([ids[forget.prompts[i]] for i in chunk.tolist()])
        batch = {"x": forget.latents[chunk].to(device), "y": own.to(device), "index": chunk}
        others = torch.tensor([[ids[pairs[word][forget.prompts[i]]] for i in chunk.tolist()] for word in words])
        totals += objective.prediction_gap(unet, batch, others).double().sum(dim=1).cpu()
    totals = broadcast_object_list([totals])[0]  # every rank trains toward rank 0's word
    gaps = {word: float(total) / len(rows) for word, total in zip(words, totals)}
    return GAP_RULES[rule](words, key=gaps.get), gaps


def listed_ids(listed: dict[str, list[str]], ids: dict[str, int]) -> torch.Tensor | None:
    """``[P, K]`` prompt ids for ``DiffusionObjective``'s ``neutral_ids`` / ``anchor_ids``: for each prompt of
    ``listed``, its prompts' ids first, -1 after them; every other row -1; None when nothing is listed."""
    if not listed:
        return None
    table = torch.full((len(ids), max(map(len, listed.values()))), -1)
    for prompt, held in listed.items():
        table[ids[prompt], :len(held)] = torch.tensor([ids[p] for p in held])
    return table


def anchor_table(pairs: dict[str, str], ids: dict[str, int], retain_prompts: set[str]) -> torch.Tensor | None:
    """``DiffusionObjective.anchor_ids`` from the substitute ``pairs`` (forget prompt -> substitute): for
    each retain prompt that is some forget prompt's substitute, those forget prompts' ids, -1 after them;
    None when no retain image is drawn from a substitute (the term would have nothing to hold)."""
    anchors: dict[str, list[str]] = {}
    for prompt, replacement in sorted(pairs.items()):
        if replacement in retain_prompts:
            anchors.setdefault(replacement, []).append(prompt)
    return listed_ids(anchors, ids)


def build_objective(pipe, config: EraseConfig, forget: ConceptImageSet, retain: ConceptImageSet, device,
                    method_config: MethodConfig | None = None):
    """Prompt table, substitute mapping and the diffusion objective (with ``method_config.adversarial_prefix``,
    its adversary: the pipeline's text encoder stays on ``device`` for the inner attack)."""
    from diffusers import DDPMScheduler

    substitute = config.substitute_prompt
    # the retain rows' neutral prompts, held by the distilled retain term only
    listed = neutral_prompts(retain, forget) if method_config is not None else {}
    holds_neutral = listed and method_config.retain_loss == "distill" and method_config.neutral_weight > 0
    neutral_of = listed if holds_neutral else {}
    if listed and not holds_neutral:
        logger.warning("the retain rows name neutral prompts, which only retain_loss='distill' with neutral_weight > 0 "
                       "uses; this run ignores them")
    prompts = sorted(set(forget.prompts) | set(retain.prompts) | {""} | ({substitute} if substitute else set())
                     | {n for held in neutral_of.values() for n in held})
    ids = {p: i for i, p in enumerate(prompts)}
    forget_prompts = sorted(set(forget.prompts))
    retain_prompts = sorted(set(retain.prompts))
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    table = encode_prompt_table(pipe, prompts, device)
    # SDXL: the time ids of the training images' size, as the pipeline sets them when it drew them
    size = [side * pipe.vae_scale_factor for side in forget.latents.shape[-2:]]
    neutral = listed_ids(neutral_of, ids)
    objective = DiffusionObjective(scheduler, table.hidden, torch.arange(len(prompts)), ids[""], config.relabel_target,
                                   config.negative_guidance, config.seed, pooled=table.pooled,
                                   time_ids=time_ids(*size) if table.pooled is not None else None,
                                   neutral_ids=neutral,
                                   neutral_weight=method_config.neutral_weight if method_config is not None else 0.0,
                                   uncond_weight=method_config.uncond_weight if method_config is not None else 0.0,
                                   anchor_weight=method_config.anchor_weight if method_config is not None else 0.0)
    trains_substitute = method_config is None or get_method(method_config.method).uses_substitute(method_config)
    # the job chooses the replacement word only when the user named none and the method trains toward it
    word = config.substitute_word
    if substitute is None and word is None and config.substitute_ties in GAP_RULES and trains_substitute:
        words = replacement_words(forget_prompts, retain_prompts)
        if words:
            rule = config.substitute_ties
            word, gaps = choose_replacement(objective, pipe.unet, forget, ids, retain_prompts, words, device,
                                             rule=rule)
            objective.substitute_choice = {"rule": rule, "word": word, "prediction_gaps": gaps}
            logger.info("substitute word '%s' for every forget prompt: the base model's prediction gap to it is the "
                        "%s (%s; --substitute_ties rotate shares the ties out instead)", word,
                        "smallest" if rule == "nearest" else "largest",
                        ", ".join(f"{w} {g:.4g}" for w, g in sorted(gaps.items(), key=lambda item: item[1])))
        elif has_ties(forget_prompts, retain_prompts):
            logger.warning("the forget prompts' closest retain prompts tie, but no one word replaces the concept in "
                           "them (prompts.base.replacement_words): the ties rotate over the candidates; name the "
                           "replacement with --substitute_word or --substitute_prompt")
    # forget prompt -> the substitute, the prompt with `word` in the concept's place (substitute_rewrite), or the
    # retain prompt that keeps the most of its wording (holding `word`)
    rewrites = (rewrite_substitutes(pipe, objective, ids, prompts, forget_prompts, retain_prompts, word, device)
                if config.substitute_rewrite and word is not None else {})
    pairs = ({p: substitute for p in forget_prompts} if substitute
             else rewrites or closest_prompts(forget_prompts, retain_prompts, prefer=word))
    for prompt, replacement in pairs.items():
        objective.relabel_ids[ids[prompt]] = ids[replacement]
    if (trains_substitute and method_config is not None and method_config.retain_loss == "distill"
            and method_config.anchor_weight > 0):
        objective.hold_anchors(anchor_table(pairs, ids, set(retain.prompts)))
    if method_config is not None and method_config.adversarial_prefix:
        objective.adversary = build_adversary(pipe, prompts, method_config, device,
                                              torch.tensor([ids[p] for p in forget_prompts]))
    label = lambda s: torch.tensor([ids[p] for p in s.prompts])
    return objective, label(forget), label(retain)


def rewrite_substitutes(pipe, objective: DiffusionObjective, ids: dict[str, int], prompts: list[str],
                        forget_prompts: list[str], retain_prompts: list[str], word: str, device) -> dict[str, str]:
    """``EraseConfig.substitute_rewrite``: forget prompt -> the prompt with the concept's word replaced by
    ``word`` (``prompts.base.rewritten_prompts``). The rewrites no retain image has are encoded apart and
    appended to ``objective``'s table, ``ids`` and ``prompts`` (in place), so the other rows stay bit-equal
    to a run without them. Empty (with a warning) when no single word names the concept in every prompt."""
    rewrites = rewritten_prompts(forget_prompts, retain_prompts, word)
    if not rewrites:
        logger.warning("substitute_rewrite: no one word is in every forget prompt and in no retain prompt, so "
                       "nothing is rewritten; the substitutes stay the closest retain prompts holding '%s'", word)
        return {}
    extra = sorted(set(rewrites.values()) - set(ids))
    if extra:
        table = encode_prompt_table(pipe, extra, device)
        for prompt, index in zip(extra, objective.add_prompts(table.hidden, table.pooled).tolist()):
            ids[prompt] = index
        prompts.extend(extra)
    new = [(p, r) for p, r in rewrites.items() if r in extra]
    logger.info("substitute_rewrite: %d of %d forget prompts are taught a prompt no retain image has%s", len(new),
                len(rewrites), f" (e.g. {new[0][0]!r} -> {new[0][1]!r})" if new else "")
    return rewrites


def neutral_prompts(retain: ConceptImageSet, forget: ConceptImageSet) -> dict[str, tuple[str, ...]]:
    """Retain prompt -> its neutral prompts, from the retain rows' ``extra["neutral"]`` (one prompt
    or a list; `pipelines.generate` writes the testbed colour concepts': the colour-free wordings
    of the same digit).

    Raises:
        ValueError: one retain prompt given different neutral prompts by two rows, or a neutral
            prompt that the forget set holds (holding it would train the concept back).
    """
    pairs: dict[str, tuple[str, ...]] = {}
    forgotten = set(forget.prompts)
    for prompt, row in zip(retain.prompts, retain.metadata):
        held = (row.get("extra") or {}).get("neutral")
        if not held:
            continue
        held = (held,) if isinstance(held, str) else tuple(held)
        if pairs.setdefault(prompt, held) != held:
            raise ValueError(f"retain prompt {prompt!r} has two sets of neutral prompts in its metadata: "
                             f"{list(pairs[prompt])} and {list(held)}")
        for neutral in held:
            if neutral in forgotten:
                raise ValueError(f"the neutral prompt {neutral!r} of retain prompt {prompt!r} is a forget prompt")
    return pairs


def build_adversary(pipe, prompts: list[str], method_config: MethodConfig, device,
                    attacked: torch.Tensor) -> AdversarialPrefixes | TokenPrefixes:
    """The adversarial prefixes of the prompts ``attacked`` (ids into ``prompts``, the objective's table;
    AdvUnlearn; SD 1.x / 2.x text encoders), in ``method_config.adversarial_space``.

    Raises:
        ValueError: for an SDXL pipeline (two encoders and pooled embeddings: not supported).
    """
    if is_xl(pipe):
        raise ValueError(f"adversarial_prefix={method_config.adversarial_prefix} supports SD 1.x / 2.x pipelines (one "
                         "CLIP text encoder); this one is SDXL: set adversarial_prefix 0")
    tokens = pipe.tokenizer(prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                            truncation=True, return_tensors="pt").input_ids
    c, encoder, pad = method_config, pipe.text_encoder.to(device), pipe.tokenizer.pad_token_id
    spaces = {
        "embedding": lambda: AdversarialPrefixes(encoder, tokens, c.adversarial_prefix, c.adversarial_steps,
                                                 c.adversarial_step_size, c.seed, pad, c.adversarial_restart,
                                                 c.adversarial_population),
        # the attack's weight decay (eval.attack's AttackConfig, UnlearnDiffAtk's public configuration)
        "tokens": lambda: TokenPrefixes(encoder, tokens, attacked, c.adversarial_prefix, c.adversarial_steps,
                                        c.adversarial_token_lr, 0.1, c.seed, pad),
    }
    return spaces[c.adversarial_space]()


def noise_hook(objective: DiffusionObjective, seed: int, rank: int):
    """Attach the same noise and timesteps to the forget and retain batch of a micro-step."""

    def hook(micro_step: int, forget_batch: dict, retain_batch: dict):
        batches = [b for b in (forget_batch, retain_batch) if b is not None]
        size = max(len(b["x"]) for b in batches)
        gen = torch.Generator().manual_seed(seed * 1_000_003 + rank * 10_007 + micro_step)
        like = batches[0]["x"]
        noise = torch.randn((size, *like.shape[1:]), generator=gen).to(like)
        steps = torch.randint(0, objective.scheduler.config.num_train_timesteps, (size,), generator=gen).to(like.device)
        attach = lambda b: None if b is None else {**b, "noise": noise[: len(b["x"])], "timesteps": steps[: len(b["x"])]}
        return attach(forget_batch), attach(retain_batch)

    return hook


def make_optimizer(params, config: EraseConfig):
    if config.use_8bit_adam:
        try:
            import bitsandbytes as bnb
        except ImportError as err:
            raise ImportError("use_8bit_adam needs bitsandbytes: pip install scissorhands[adam8bit]") from err
        optimizer_class = bnb.optim.AdamW8bit
    else:
        optimizer_class = torch.optim.AdamW
    return optimizer_class(params, lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
                           weight_decay=config.adam_weight_decay, eps=config.adam_epsilon)


def export(pipe, unet, config: EraseConfig, output: Path, card: tuple[dict, dict, dict]) -> None:
    """Replace the folder's export as a whole (``erasure.exports``): the diffusers components (or
    ``unet/`` alone), the model card ``README.md`` and ``erase_config.json`` are written into
    ``.export-<pid>/`` and swapped in by renames, ``model_index.json`` last. Checkpoints and logs
    in the same folder stay; ``from_pretrained(output_dir)`` loads the old or the new export.

    Args:
        card: (settings, summary, data) for :func:`pipelines.card.write_card`.
    """
    staging = staging_folder(output)
    key = "model_index.json"
    if config.export == "unet":
        unet.save_pretrained(staging / "unet", safe_serialization=True)
    elif config.export == "lora":
        from diffusers import UNet2DConditionModel

        from pipelines.lora import LORA_WEIGHTS, save_lora

        if config.trainable == "lora":  # the trained adapter itself
            from pipelines.lora import save_trained_lora

            card[1]["lora"] = save_trained_lora(unet, staging)
        else:  # extracted from the full weight change
            base = UNet2DConditionModel.from_pretrained(card[0]["pretrained_model_name_or_path"], subfolder="unet",
                                                        revision=config.revision)
            card[1]["lora"] = save_lora(unet, base, staging, config.lora_rank)
        key = LORA_WEIGHTS
    else:
        pipe.unet = unet
        pipe.save_pretrained(staging, safe_serialization=True)
    write_card(staging, *card, pipeline=type(pipe).__name__)
    publish_export(output, staging, key=key)


def main(argv: list[str] | None = None) -> dict:
    config, method_config = jobconfig.parse((EraseConfig, MethodConfig), argv, __doc__, defaults=DOMAIN_DEFAULTS)
    validate_method(method_config)
    with OutputDir(config.output_dir, config.overwrite_output_dir, config.resume_from_checkpoint) as output:
        return erase(config, method_config, output)


def retain_groups(retain: ConceptImageSet, by: str) -> tuple[torch.Tensor, list[str]]:
    """The group id of every retain image and the groups' names (sorted), by ``EraseConfig.retain_group_by``.

    Raises:
        ValueError: naming the option, the first image whose metadata lacks the key, and the keys it has.
    """
    if by == "prompt":
        values = list(retain.prompts)
    else:
        values = []
        for file, row in zip(retain.files, retain.metadata):
            extra = row.get("extra") or {}
            if by not in extra:
                raise ValueError(f"retain_group_by={by!r}: the retain image {file} has no {by!r} in its metadata's "
                                 f"\"extra\" (it has {sorted(extra) or 'none'}); use 'prompt' or one of those keys")
            values.append(str(extra[by]))
    names = sorted(set(values))
    index = {name: i for i, name in enumerate(names)}
    return torch.tensor([index[v] for v in values]), names


def warn_unused_substitute(config: EraseConfig, method_config: MethodConfig) -> bool:
    """Warn (and return True) when the job names a substitute that its method never trains toward."""
    named = {k: getattr(config, k) for k in ("substitute_prompt", "substitute_word") if getattr(config, k) is not None}
    if config.substitute_rewrite:
        named["substitute_rewrite"] = True
    if not named or get_method(method_config.method).uses_substitute(method_config):
        return False
    logger.warning("%s: method '%s' (forget_loss '%s') has no substitute term, so this run does not use them; the "
                   "substitute settings matter to scissorhands with forget_loss 'substitute', random_label and salun",
                   ", ".join(f"{k}={v!r}" for k, v in named.items()), method_config.method, method_config.forget_loss)
    return True


def erase(config: EraseConfig, method_config: MethodConfig, output: OutputDir) -> dict:
    """The job after its flags are validated: load, train (`train_unet`), export on the main process."""
    accelerator = make_accelerator(gradient_accumulation_steps=config.gradient_accumulation_steps,
                                   mixed_precision=config.mixed_precision, log_with=config.report_to,
                                   output_dir=config.output_dir)
    logging.basicConfig(level=logging.INFO if accelerator.is_main_process else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    set_seed(config.seed)
    model_id = resolve_model(config.pretrained_model_name_or_path)
    pipe = load_pipeline(model_id, revision=config.revision, safety_checker=not config.no_safety_checker)
    forget, retain = load_concept_sets(pipe, config, accelerator.device)
    unet, summary = train_unet(accelerator, pipe, forget, retain, config, method_config, output)
    if accelerator.is_main_process:
        settings = {**jobconfig.to_dict(config, method_config), "pretrained_model_name_or_path": model_id}
        export(pipe, unet, config, output.path, (settings, summary, data_record(config, forget, retain)))
        if config.push_to_hub:
            push_to_hub(output.path, config.hub_model_id, config.hub_token)
        logger.info("exported the erased %s to %s", config.export, output.path)
    finish(accelerator)
    return summary


def load_concept_sets(pipe, config: EraseConfig, device) -> tuple[ConceptImageSet, ConceptImageSet]:
    """The forget and retain latents of ``config``'s folders (encoded with the pipeline's VAE if needed).

    Raises:
        ValueError: unreadable folders, or forget and retain latents of different shapes.
    """
    forget_dir, retain_dir = config.data_dirs()
    pipe.vae.to(device)
    forget = ConceptImageSet.load(forget_dir, pipe.vae, config.resolution, config.forget_prompt, is_xl(pipe))
    retain = ConceptImageSet.load(retain_dir, pipe.vae, config.resolution, config.retain_prompt, is_xl(pipe))
    pipe.vae.to("cpu")
    if forget.latents.shape[1:] != retain.latents.shape[1:]:
        raise ValueError(f"forget latents {tuple(forget.latents.shape[1:])} and retain latents "
                         f"{tuple(retain.latents.shape[1:])} differ: generate both sets at one resolution")
    return forget, retain


def data_record(config: EraseConfig, forget: ConceptImageSet, retain: ConceptImageSet) -> dict:
    """What the card and erase_config.json say about the data."""
    forget_dir, retain_dir = config.data_dirs()
    return {"forget_dir": str(forget_dir), "retain_dir": str(retain_dir), "forget_images": len(forget),
            "retain_images": len(retain), "forget_prompts": sorted(set(forget.prompts)),
            "retain_prompts": sorted(set(retain.prompts))}


def check_sharded_job(method, gradient_accumulation_steps: int, trainable: str) -> None:
    """What the erase job does not support when accelerate has sharded the UNet with FSDP2.

    Raises:
        ValueError: naming the option and what to use instead.
    """
    if gradient_accumulation_steps > 1 and getattr(method, "projects", False):
        raise ValueError(f"gradient_accumulation_steps={gradient_accumulation_steps} with FSDP2: Scissorhands keeps "
                         "g_f apart by swapping the sharded .grad, and FSDP2 accumulates unsynchronised micro-steps "
                         "on its unsharded parameters instead; use gradient_accumulation_steps 1 (more ranks or a "
                         "larger train_batch_size) or projection 'none'")
    if method.config.adversarial_prefix:
        raise ValueError(f"adversarial_prefix={method.config.adversarial_prefix} with FSDP2: the inner attack's "
                         "forwards run on the UNet outside the sharded training step, which this job does not support; "
                         "use data parallelism (accelerate launch --multi_gpu) or adversarial_prefix 0")
    if method.config.tamper_steps:
        raise ValueError(f"tamper_steps={method.config.tamper_steps} with FSDP2: the inner fine-tune steps the "
                         "unsharded weights outside the sharded training step, which this job does not support; use "
                         "data parallelism (accelerate launch --multi_gpu) or tamper_steps 0")
    if trainable == "lora":
        raise ValueError("trainable='lora' with FSDP2: the export rebuilds an unsharded UNet without the adapters; "
                         "train 'full' (or 'xattn' / 'noxattn') and extract an adapter with --export lora")


def train_unet(accelerator, pipe, forget: ConceptImageSet, retain: ConceptImageSet, config: EraseConfig,
               method_config: MethodConfig, output: OutputDir | None = None,
               callback: Callable[[int, dict], None] | None = None):
    """Erase from ``pipe.unet`` in place: the method's prepare (trimming), then the repair loop.

    The job and the Python API (`pipelines.api.erase`) both train through this function.

    Args:
        output: the job's folder (checkpoints, resume, trackers); None trains without them.
        callback: ``callback(step, logs)`` after each optimiser step.

    Returns:
        ``(unet, summary)``: the unwrapped, finite UNet in eval mode and the run's summary.

    Raises:
        ValueError: too few batches for the accumulation steps, or a diverged run.
    """
    warn_unused_substitute(config, method_config)
    # the groups of --retain_dro, read before the objective is built: a key the metadata lacks fails here
    groups = retain_groups(retain, config.retain_group_by) if method_config.retain_dro else None
    if groups is None and config.retain_group_by != "prompt":
        logger.warning("retain_group_by=%r names the groups of --retain_dro, which is off (0): it has no effect",
                       config.retain_group_by)
    objective, forget_labels, retain_labels = build_objective(pipe, config, forget, retain, accelerator.device,
                                                              method_config)
    if output is not None:
        output.prepare(accelerator)
    unet = pipe.unet
    if config.trainable == "lora":
        from peft import LoraConfig

        if get_method(method_config.method).reinitializes_weights:
            raise ValueError(f"method='{method_config.method}' re-initialises UNet weights, which an adapter cannot "
                             "hold: train it with --trainable full (then --export lora extracts an adapter)")
        unet.requires_grad_(False)
        unet.add_adapter(LoraConfig(r=config.lora_rank, lora_alpha=config.lora_rank, init_lora_weights="gaussian",
                                    target_modules=LORA_TARGETS))
    else:
        for name, param in unet.named_parameters():
            param.requires_grad_(SCOPES[config.trainable](name))
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    method = build_method(method_config, objective)
    device, world, rank = accelerator.device, accelerator.num_processes, accelerator.process_index
    batches = lambda s, labels, seed, idx=None: TensorBatches(
        s.latents, labels, torch.arange(len(labels)) if idx is None else idx, config.train_batch_size, True, seed,
        world, rank, device)
    forget_batches = batches(forget, forget_labels, config.seed + 1)
    retain_idx = subset(torch.arange(len(retain_labels)), method_config.retain_fraction, config.seed)
    retain_batches = batches(retain, retain_labels, config.seed + 2, retain_idx)
    if groups is not None:
        method.hold_retain_groups(groups[0], names=groups[1], indices=retain_idx)
    steps_per_epoch(method, forget_batches, retain_batches, config.gradient_accumulation_steps)  # fails before work

    started = time.perf_counter()
    # the frozen original (retain_loss="distill") is copied whole, before accelerate may shard the UNet, and
    # like ESD's frozen copy kept in the compute dtype (bf16: 1.7 GB instead of 3.4 for SD v1.4's UNet)
    method.frozen_dtype = compute_dtype(accelerator)
    method.snapshot(unet.to(accelerator.device))
    unet_ddp, optimizer = accelerator.prepare(unet, make_optimizer([p for p in unet.parameters() if p.requires_grad], config))
    resume_dir = resolve_resume(output.path, config.resume_from_checkpoint) if output is not None else None
    if has_shards(unet_ddp):  # accelerate launch --use_fsdp --fsdp_version 2
        check_sharded_job(method, config.gradient_accumulation_steps, config.trainable)
    summary, start_step = start_or_resume(accelerator, unet_ddp, method, forget_batches, retain_batches, resume_dir)
    if objective.substitute_choice is not None:
        saved = summary.get("substitute_choice")
        if saved is not None and saved["word"] != objective.substitute_choice["word"]:
            raise ValueError(f"resume_from_checkpoint={resume_dir}: the run chose substitute word {saved['word']!r} and "
                             f"this resume chose {objective.substitute_choice['word']!r} (other data or device); "
                             f"resume with --substitute_word {saved['word']} to keep training toward the same word")
        summary["substitute_choice"] = objective.substitute_choice
    if output is not None and accelerator.is_main_process and config.report_to:
        accelerator.init_trackers("scissorhands-erase",
                                  config=jobconfig.tracker_config(jobconfig.to_dict(config, method_config)))
    save = (checkpointer(accelerator, output.path, config.checkpointing_steps, config.checkpoints_total_limit,
                         method, summary) if output is not None else None)

    def on_step(step: int, logs: dict) -> None:
        if save is not None:
            save(step, logs)
        if callback is not None:
            callback(step, logs)

    last = unlearn(accelerator, unet_ddp, method, optimizer, forget_batches, retain_batches, config.num_train_epochs,
                   start_step, config.max_grad_norm, on_step, noise_hook(objective, config.seed, rank),
                   config.max_train_steps)
    summary["last_step_logs"] = {key: float(value) for key, value in last.items()}  # this rank's, as the progress bar
    if method.group_weight_table() is not None:  # the same on every rank
        summary["retain_group_weights"] = method.group_weight_table()
    if isinstance(objective.adversary, TokenPrefixes):  # what the repair trained against last, as text
        attacked = objective.adversary.attacked()
        special = set(pipe.tokenizer.all_special_ids)
        summary["adversarial_prompts"] = [pipe.tokenizer.decode([i for i in row.tolist() if i not in special])
                                          for row in objective.adversary.tokens(attacked)]
    accelerator.wait_for_everyone()
    summary["seconds"] = time.perf_counter() - started
    summary["replicas_after_training"] = check_replicas(unet_ddp, accelerator, "after training")
    unet = whole_module(accelerator.unwrap_model(unet_ddp)).eval()  # FSDP2: gathered into an unsharded copy
    unet.requires_grad_(False)
    if config.gradient_checkpointing:
        unet.disable_gradient_checkpointing()
    check_finite(unet)
    return unet, summary


if __name__ == "__main__":
    jobconfig.run_cli(main)
