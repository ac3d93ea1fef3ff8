"""The Python API: erase a concept from a loaded pipeline, in a notebook or in your own code, with
the same code path as the job (`eval.api.audit` audits the result).

    from diffusers import StableDiffusionPipeline
    from eval.api import audit
    from pipelines.api import erase

    pipe = StableDiffusionPipeline.from_pretrained("CompVis/stable-diffusion-v1-4")
    erased = erase(pipe, "nudity", "scissorhands", num_images=400)      # pipe itself is untouched
    report = audit(erased, "audit/erased", prompts="i2p:sexual", fail_above=50)
    print(report.exposed_total, report.passed)

`erase` draws the forget and retain images with the pipeline itself (as ``scissorhands
generate``), then trains through `pipelines.erase.train_unet`, the function the erase job
runs. Options are the jobs' typed fields (`EraseConfig`, `MethodConfig`, and the
generation options `GENERATION_OPTIONS`), from ``config`` (a dict or a YAML file) and keyword
overrides; an unknown name fails with the known ones. Multi-GPU runs and resume stay the
jobs' concern (``accelerate launch -m pipelines.erase``).
"""

from __future__ import annotations

import copy
import logging
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from erasure import jobconfig
from erasure.coerce import coerce_fields, field_types
from erasure.config import MethodConfig
from erasure.methods import validate_method
from prompts.base import Prompt, PromptSet

logger = logging.getLogger(__name__)

# generation options of `erase` (GenerateConfig fields) and what they default to here
GENERATION_OPTIONS = ("num_images", "num_inference_steps", "guidance_scale", "batch_size", "concept_forms",
                      "concept_phrasings", "scheduler")


# the job's own business (where it writes, what it loads, how it publishes): not API options
JOB_ONLY = ("pretrained_model_name_or_path", "revision", "data_dir", "forget_dir", "retain_dir", "output_dir",
            "overwrite_output_dir", "export", "no_safety_checker", "checkpointing_steps", "checkpoints_total_limit",
            "resume_from_checkpoint", "push_to_hub", "hub_model_id", "hub_token", "report_to", "concept")


def _options(config: Mapping[str, Any] | str | Path | None, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Typed options from a dict or YAML file, then keyword overrides (unknown names fail)."""
    from pipelines.erase import DOMAIN_DEFAULTS, EraseConfig
    from pipelines.generate import GenerateConfig

    known = {**{k: v for k, v in field_types(EraseConfig, MethodConfig).items() if k not in JOB_ONLY},
             **{k: v for k, v in field_types(GenerateConfig).items() if k in GENERATION_OPTIONS}}
    from_file = jobconfig.load_yaml(config) if isinstance(config, (str, Path)) else dict(config or {})
    return {**DOMAIN_DEFAULTS,
            **coerce_fields(from_file, known, lambda key: f"config: {key}"),
            **coerce_fields(overrides, known, lambda key: f"erase(..., {key}=)")}


def _prompt_sets(concept: str | None, forget_prompts: Sequence[str] | None, retain_prompts: Sequence[str] | None,
                 options: Mapping[str, Any]) -> tuple[PromptSet, PromptSet]:
    from pipelines.generate import CONCEPT_FORMS, concept_sets

    if (concept is None) == (forget_prompts is None and retain_prompts is None):
        raise ValueError(f"give a concept ({CONCEPT_FORMS}) or forget_prompts= and retain_prompts=, not both")
    if concept is None:
        if not forget_prompts or not retain_prompts:
            raise ValueError("forget_prompts= and retain_prompts= must both be non-empty lists of prompts")
        as_set = lambda name, texts: PromptSet(name, [Prompt(t) for t in texts], source="erase(...) arguments")
        return as_set("forget", forget_prompts), as_set("retain", retain_prompts)
    return concept_sets(concept, tuple(options.get("concept_forms", ("word",))),
                        tuple(options.get("concept_phrasings", ("erase",))))


def _draw_data(pipe: Any, sets: tuple[PromptSet, PromptSet], options: Mapping[str, Any], folder: Path,
               label: str) -> Path:
    """The forget/ and retain/ image folders of ``sets``, drawn by ``pipe`` (pipelines.generate's code)."""
    from accelerate import PartialState

    from pipelines.generate import GenerateConfig, generate_set, protocol_of
    from pipelines.sampling import set_scheduler

    generation = {k: v for k, v in options.items() if k in GENERATION_OPTIONS and k != "scheduler"}
    precision = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(pipe.unet.dtype, "no")
    # the prompt sets are given (not read from files): "-" only satisfies the job's flag check
    config = GenerateConfig(pretrained_model_name_or_path=label, output_dir=str(folder), concept=None,
                            forget_prompts="-", retain_prompts="-", seed=options.get("seed", 0),
                            mixed_precision=precision, **generation)
    drawing = pipe
    if options.get("scheduler"):
        drawing = type(pipe)(**pipe.components)
        set_scheduler(drawing, options["scheduler"])
    state = PartialState(cpu=not torch.cuda.is_available())
    for role, prompt_set in zip(("forget", "retain"), sets):
        generate_set(drawing, state, config, role, prompt_set, protocol_of(config, drawing, prompt_set))
    return folder


def _with_unet(pipe: Any, unet: torch.nn.Module) -> Any:
    """A pipeline of ``pipe``'s class and options (SDXL's ``force_zeros_for_empty_prompt``, SD's
    ``requires_safety_checker``) sharing its components, with ``unet``."""
    options = {k: v for k, v in pipe.config.items() if not k.startswith("_") and k not in pipe.components}
    if hasattr(pipe, "watermark"):  # SDXL keeps add_watermarker out of its config
        options["add_watermarker"] = pipe.watermark is not None
    return type(pipe)(**{**pipe.components, **options, "unet": unet})


def erase(pipe: Any, concept: str | Sequence[str] | None = None, method: str = "scissorhands", *,
          forget_prompts: Sequence[str] | None = None, retain_prompts: Sequence[str] | None = None,
          data: str | Path | None = None, config: Mapping[str, Any] | str | Path | None = None,
          inplace: bool = False, callback: Callable[[int, dict], None] | None = None,
          work_dir: str | Path | None = None, **overrides: Any) -> Any:
    """Erase ``concept`` from ``pipe``'s UNet and return the pipeline.

    Args:
        pipe: a loaded ``StableDiffusionPipeline`` (any SD 1.x / 2.x, or the offline default) or
            ``StableDiffusionXLPipeline``.
        concept: ``nudity``, ``imagenette:<class>``, ``digits:<d>``, ``color:<c>``, several (a
            list, or joined by ","; the forget side is their union, the retain side excludes all
            of them); or None with ``forget_prompts`` and ``retain_prompts`` (lists of prompts).
        method: a registered method (``scissorhands``, ``salun``, ``esd``, ...).
        data: a prepared ``pipelines.generate`` folder (``forget/`` and ``retain/``); None draws
            the images with ``pipe`` (``num_images`` per set, ``num_inference_steps``, ...).
        config: options as a dict or a YAML file (the jobs' typed fields); ``overrides`` win.
        inplace: train ``pipe.unet`` itself; by default a copy is trained and ``pipe`` is untouched.
        callback: ``callback(step, logs)`` after each optimiser step (losses, projection stats).
        work_dir: where drawn images are kept (reused by a second call); None: a temporary folder.

    Returns:
        A pipeline with the erased UNet, on the device and in the dtype of ``pipe.unet``; it
        shares every other component with ``pipe``.

    Raises:
        ValueError / FileNotFoundError: an unknown concept, method or option (listing the known
            ones), bad option values, or unreadable data.
    """
    from accelerate.utils import set_seed

    from erasure.launch import make_accelerator
    from pipelines.erase import EraseConfig, load_concept_sets, train_unet

    if isinstance(concept, (list, tuple)):
        concept = ",".join(concept)  # several concepts in one run
    options = _options(config, {**overrides, "method": method})
    method_config = jobconfig.build(MethodConfig, options)
    validate_method(method_config)
    sets = None if data is not None else _prompt_sets(concept, forget_prompts, retain_prompts, options)
    unet = pipe.unet
    device, dtype = unet.device, unet.dtype
    placed = {name: module.device for name, module in pipe.components.items() if isinstance(module, torch.nn.Module)}
    trainee = unet if inplace else copy.deepcopy(unet)
    with tempfile.TemporaryDirectory(prefix="scissorhands-erase-") as scratch:
        data_dir = Path(data) if data is not None else _draw_data(
            pipe, sets, options, Path(work_dir or scratch) / "data", getattr(pipe, "name_or_path", "") or "pipe")
        erase_config = jobconfig.build(EraseConfig, {**options, "data_dir": str(data_dir), "output_dir": scratch,
                                                     "concept": concept})
        accelerator = make_accelerator(gradient_accumulation_steps=erase_config.gradient_accumulation_steps,
                                       mixed_precision=erase_config.mixed_precision)
        set_seed(erase_config.seed)  # as the job does
        training = _with_unet(pipe, trainee.to(accelerator.device, torch.float32))
        forget, retain = load_concept_sets(training, erase_config, accelerator.device)
        erased, summary = train_unet(accelerator, training, forget, retain, erase_config, method_config,
                                     callback=callback)
    erased = erased.to(device, dtype)
    for name, where in placed.items():  # training moved the shared VAE / text encoder; put them back
        if name != "unet":
            pipe.components[name].to(where)
    logger.info("erased %s with %s in %.1f s", concept or "the forget prompts", method, summary["seconds"])
    if inplace:
        pipe.unet = erased
        return pipe
    result = _with_unet(pipe, erased)
    result.erase_summary = summary  # what trimming and the loop did (trimmed_fraction, seconds, ...)
    return result
