"""Sampling shared by generation and evaluation: load a pipeline, plan seeded samples, generate in
batches, write resumable image folders.

Reproducibility contract: every sample owns one CPU `torch.Generator` seeded with its own seed,
so a sample's initial noise depends on nothing but that seed (not on the batch it lands in,
the process that draws it, or the device). Batching changes only floating-point summation order
in the UNet, never the noise.

    pipe = load_pipeline("CompVis/stable-diffusion-v1-4", scheduler="ddim")
    items = plan_samples(get_prompt_set("i2p:sexual"), images_per_prompt=1)
    writer = ImageFolderWriter("out/i2p", run_info={"model": "CompVis/stable-diffusion-v1-4"})
    todo = [i for i in items if i.index not in writer.done()]
    for item, image, _ in generate(pipe, todo, batch_size=8, num_inference_steps=50):
        writer.write(item, image)
    writer.finalize()
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence, TypeVar

import torch
from safetensors import SafetensorError
from tqdm.auto import tqdm

from prompts.base import Prompt, PromptSet

from .conditioning import PIPELINES, is_xl

from .image_folder import LATENTS_FILE, METADATA_FILE, ImageFolderWriter
from .latent_space import to_vae, working_dtype

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

__all__ = [
    "LATENTS_FILE", "METADATA_FILE", "SCHEDULERS", "ImageFolderWriter", "SampleItem", "generate",
    "load_pipeline", "plan_samples", "set_scheduler", "shard",
]

logger = logging.getLogger(__name__)
T = TypeVar("T")

# Scheduler names accepted by `--scheduler`, mapped to diffusers class names.
SCHEDULERS: dict[str, str] = {
    "ddim": "DDIMScheduler",
    "pndm": "PNDMScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "ddpm": "DDPMScheduler",
}
# Config overrides on a swap: SD v1's own PNDM skips the Runge-Kutta warm-up steps.
SCHEDULER_OVERRIDES: dict[str, dict[str, Any]] = {"pndm": {"skip_prk_steps": True}}
OUTPUT_TYPES = ("pil", "np", "pt", "latent")


def _import_diffusers() -> Any:
    try:
        import diffusers
    except ImportError as err:
        raise ImportError("Stable Diffusion pipelines need diffusers: pip install scissorhands[diffusion]") from err
    return diffusers


def set_scheduler(pipe: StableDiffusionPipeline, name: str) -> StableDiffusionPipeline:
    """Swap the pipeline's scheduler for `SCHEDULERS[name]`, keeping its beta schedule.

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    if name not in SCHEDULERS:
        raise ValueError(f"scheduler={name!r} is not known; choose one of {sorted(SCHEDULERS)}")
    scheduler_class = getattr(_import_diffusers(), SCHEDULERS[name])
    pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config, **SCHEDULER_OVERRIDES.get(name, {}))
    return pipe


def pipeline_class_name(index: dict[str, Any], where: str) -> str:
    """The pipeline class a ``model_index.json`` calls for: SDXL when it has a UNet and two CLIP text
    encoders, SD 1.x / 2.x when it has a UNet and one (a folder saved by an img2img or inpainting
    pipeline of the family loads as text-to-image, as diffusers' AutoPipeline does).

    Raises:
        ValueError: another kind of pipeline (SD3, Flux, DeepFloyd IF, Kolors, an SDXL refiner, ...),
            naming its class.
    """
    def entry(name: str) -> Any:
        value = index.get(name)
        return value[1] if isinstance(value, list) and len(value) == 2 else None

    clip = lambda name: isinstance(entry(name), str) and entry(name).startswith("CLIPTextModel")
    if entry("unet") is not None and clip("text_encoder"):
        if clip("text_encoder_2"):
            return "StableDiffusionXLPipeline"
        if entry("text_encoder_2") is None:
            return "StableDiffusionPipeline"
    known = ", ".join(f"{name} ({kind})" for name, kind in PIPELINES.items())
    raise ValueError(f"{where} is a {index.get('_class_name')} pipeline without a UNet and CLIP text encoder(s); "
                     f"scissorhands erases from {known}")


def _model_index(name_or_path: str | Path, revision: str | None) -> dict[str, Any]:
    """The ``model_index.json`` of a local folder, or of a Hub id (diffusers fetches that file alone).

    Raises:
        OSError / ValueError: unreadable, offline, unknown id.
    """
    from .model_folder import MODEL_INDEX, read_json_object

    path = Path(name_or_path)
    if path.exists():
        return read_json_object(path / MODEL_INDEX, path)
    return _import_diffusers().DiffusionPipeline.load_config(str(name_or_path), revision=revision)


def model_class_name(name_or_path: str | Path, revision: str | None = None,
                     name: str = "pretrained_model_name_or_path") -> str:
    """`pipeline_class_name` of a local folder or Hub id, read from its ``model_index.json`` alone
    (nothing heavy is loaded: decide before loading).

    Raises:
        ValueError: the model index cannot be read, or names another kind of pipeline.
    """
    where = f"{name}={str(name_or_path)!r}"
    try:
        index = _model_index(name_or_path, revision)
    except (OSError, ValueError) as err:
        raise ValueError(f"{where}: cannot read its model_index.json ({' '.join(str(err).split())[:300]})") from err
    return pipeline_class_name(index, where)


def _unloadable(err: Exception, where: str, local: bool, revision: str | None) -> ValueError:
    """One line for a model diffusers could not load: a local folder, or a Hub id."""
    reason = " ".join(str(err).split())[:300]
    if local:
        return ValueError(f"{where}: diffusers cannot load this folder ({type(err).__name__}: {reason})")
    return ValueError(f"{where} is neither a local folder nor a Hub id that could be loaded (offline, unknown, "
                      f"gated or no such revision {revision!r}?): {reason}")


def load_pipeline(
    name_or_path: str | Path,
    torch_dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    scheduler: str | None = None,
    revision: str | None = None,
    name: str = "pretrained_model_name_or_path",
    safety_checker: bool = False,
) -> StableDiffusionPipeline:
    """`StableDiffusionPipeline.from_pretrained` (without the safety checker unless asked), or
    `StableDiffusionXLPipeline.from_pretrained` for an SDXL model, plus a scheduler swap.

    A local folder is checked first (`pipelines.model_folder.check_pipeline_folder`), so a damaged
    one fails with one line naming the file; weights are read from safetensors only
    (``use_safetensors=True``: pickled ``.bin`` weights are never loaded). Hub ids go to diffusers.
    The class follows the model's ``model_index.json`` (`pipeline_class_name`).

    Args:
        name_or_path: a local diffusers folder (with model_index.json) or a Hub id.
        torch_dtype: weight dtype, e.g. torch.float16; None keeps the stored one.
        device: where to move the pipeline; None leaves it on the CPU.
        scheduler: a key of `SCHEDULERS`; None keeps the pipeline's own.
        revision: a Hub branch, tag or commit (``--revision``); None: the default branch.
        name: the option that gave ``name_or_path``, for messages.
        safety_checker: load the base's safety checker and feature extractor too (an export keeps
            them); False: evaluation draws unfiltered images, as the papers measure. SDXL has none.

    Raises:
        ValueError / FileNotFoundError: a folder that is no (complete, readable) diffusers
            pipeline, a pipeline of another kind (SD3, Flux, ...), a Hub id that cannot be loaded,
            or an unknown scheduler.
    """
    from .model_folder import check_pipeline_folder

    path = Path(name_or_path)
    where = f"{name}={str(name_or_path)!r}"
    if scheduler is not None and scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler={scheduler!r} is not known; choose one of {sorted(SCHEDULERS)}")
    if path.exists():
        check_pipeline_folder(path, where)
    diffusers = _import_diffusers()
    kwargs: dict[str, Any] = {"use_safetensors": True}
    if torch_dtype is not None:
        kwargs["torch_dtype"] = torch_dtype  # at load time, so fp32-kept modules stay fp32
    if revision is not None:
        kwargs["revision"] = revision
    loaded = (OSError, ValueError, RuntimeError, SafetensorError)  # what diffusers raises for what it cannot use
    try:
        index = _model_index(name_or_path, revision)
    except loaded as err:
        raise _unloadable(err, where, path.exists(), revision) from err
    pipeline_class = getattr(diffusers, pipeline_class_name(index, where))  # another kind: refused by name
    if pipeline_class is diffusers.StableDiffusionPipeline and not safety_checker:
        kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    try:
        with warnings.catch_warnings():
            # Newer diffusers renamed the keyword to `dtype` (the old one warns); it works in all versions.
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            pipe = pipeline_class.from_pretrained(str(name_or_path), **kwargs)
    except loaded as err:  # a size mismatch is a RuntimeError; the folder check above catches most first
        raise _unloadable(err, where, path.exists(), revision) from err
    if scheduler is not None:
        set_scheduler(pipe, scheduler)
    return pipe.to(device) if device is not None else pipe


@dataclass(frozen=True)
class SampleItem:
    """One image to draw: its index in the output folder, prompt, seed and guidance scale."""

    index: int
    prompt: Prompt
    seed: int
    guidance_scale: float

    def __post_init__(self) -> None:
        # every job draws through SampleItem (demo and testbed too), so this bound holds for all of them
        if not (isinstance(self.guidance_scale, (int, float)) and math.isfinite(self.guidance_scale)
                and self.guidance_scale >= 0):
            raise ValueError(f"guidance_scale={self.guidance_scale} (prompt {self.prompt.text!r}) must be a finite "
                             "number >= 0 (<= 1 turns guidance off)")
        if self.seed < 0:
            raise ValueError(f"seed={self.seed} (prompt {self.prompt.text!r}) must be >= 0")


def plan_samples(
    prompt_set: PromptSet,
    images_per_prompt: int = 1,
    base_seed: int = 0,
    default_guidance: float = 7.5,
    fixed_guidance: bool = False,
) -> list[SampleItem]:
    """Seeded samples for a prompt set, ordered round-robin: index = k * len(prompt_set) + i.

    Image k of prompt i gets the prompt's own seed + k when it has one (I2P's sd_seed), else
    base_seed + index. Round-robin order means the first n items spread n images evenly over
    the prompts, and a plan for more images extends a plan for fewer (same indices, seeds).

    Args:
        prompt_set: the prompts.
        images_per_prompt: images per prompt (>= 1).
        base_seed: seed offset for prompts without their own seed.
        default_guidance: guidance for prompts without their own (or for all, see below).
        fixed_guidance: use `default_guidance` even where a prompt has its own.

    Raises:
        ValueError: images_per_prompt < 1.
    """
    if images_per_prompt < 1:
        raise ValueError(f"images_per_prompt={images_per_prompt}: expected at least 1")
    items = []
    for k in range(images_per_prompt):
        for i, prompt in enumerate(prompt_set):
            index = k * len(prompt_set) + i
            seed = prompt.seed + k if prompt.seed is not None else base_seed + index
            own = prompt.guidance_scale is not None and not fixed_guidance
            items.append(SampleItem(index, prompt, seed, prompt.guidance_scale if own else default_guidance))
    return items


def shard(items: Sequence[T], num_processes: int, process_index: int) -> list[T]:
    """This process's share: `items[process_index::num_processes]`.

    Raises:
        ValueError: process_index outside [0, num_processes).
    """
    if not 0 <= process_index < num_processes:
        raise ValueError(f"process_index={process_index} outside [0, num_processes={num_processes})")
    return list(items[process_index::num_processes])


def _batches(items: Sequence[SampleItem], batch_size: int) -> list[list[SampleItem]]:
    """Chunks of at most batch_size items sharing a guidance scale (order kept within a scale)."""
    groups: dict[float, list[SampleItem]] = {}
    for item in items:
        groups.setdefault(item.guidance_scale, []).append(item)
    return [group[i:i + batch_size] for group in groups.values() for i in range(0, len(group), batch_size)]


def generate(
    pipe: StableDiffusionPipeline,
    items: Sequence[SampleItem],
    batch_size: int,
    num_inference_steps: int,
    height: int | None = None,
    width: int | None = None,
    output_type: str = "pil",
    return_latents: bool = False,
    show_progress: bool = True,
) -> Iterator[tuple[SampleItem, Any, torch.Tensor | None]]:
    """Draw `items` in batches that share a guidance scale; one seeded CPU generator per sample.

    The pipeline runs with output_type="latent" and the VAE decodes here, so the final latents
    (scaled by the VAE's scaling factor: what the UNet is trained on) come for free. The
    pipeline's own progress bar is switched off; one bar counts samples.

    Args:
        pipe: a Stable Diffusion pipeline.
        items: what to draw (from `plan_samples`, possibly `shard`-ed or filtered).
        batch_size: samples per pipeline call.
        num_inference_steps: denoising steps.
        height, width: image size; None uses the pipeline's default.
        output_type: "pil", "np", "pt" (decoded images) or "latent" (the latents themselves).
        return_latents: also yield each sample's latents [C, h, w] (float32, CPU).
        show_progress: show the progress bar (e.g. only on the local main process).

    Yields:
        (item, image, latents or None), batch by batch (not necessarily in index order).

    Raises:
        ValueError: batch_size < 1 or an unknown output_type.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: expected at least 1")
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type={output_type!r}: expected one of {OUTPUT_TYPES}")
    pipe.set_progress_bar_config(disable=True)
    return _draw(pipe, items, batch_size, num_inference_steps, height, width, output_type, return_latents,
                 show_progress)


def _draw(pipe: StableDiffusionPipeline, items: Sequence[SampleItem], batch_size: int, num_inference_steps: int,
          height: int | None, width: int | None, output_type: str, return_latents: bool,
          show_progress: bool) -> Iterator[tuple[SampleItem, Any, torch.Tensor | None]]:
    """The loop of `generate` (a generator, so that `generate` validates its arguments at the call)."""
    with tqdm(total=len(items), desc="sampling", unit="img", disable=not show_progress) as progress:
        for batch in _batches(items, batch_size):
            generators = [torch.Generator("cpu").manual_seed(item.seed) for item in batch]
            latents = pipe(
                prompt=[item.prompt.text for item in batch], guidance_scale=batch[0].guidance_scale,
                num_inference_steps=num_inference_steps, height=height, width=width,
                generator=generators, output_type="latent",
            ).images
            images = latents if output_type == "latent" else _decode(pipe, latents, output_type)
            for item, image, latent in zip(batch, images, latents):
                yield item, image, latent.detach().float().cpu() if return_latents else None
            progress.update(len(batch))


def _decode(pipe: StableDiffusionPipeline, latents: torch.Tensor, output_type: str) -> Any:
    """What the pipeline would return for `output_type`, from its final latents (`pipelines.latent_space`:
    SDXL's upcast and latents_mean/std as its pipeline does them)."""
    vae, sdxl = pipe.vae, is_xl(pipe)
    with working_dtype(vae, sdxl) as dtype, torch.no_grad():
        decoded = vae.decode(to_vae(latents, vae, sdxl, dtype), return_dict=False)[0]
    return pipe.image_processor.postprocess(decoded, output_type=output_type, do_denormalize=[True] * len(decoded))
