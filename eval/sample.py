"""Sample a model on a prompt set for evaluation: a resumable image folder plus `protocol.json`.

    accelerate launch -m eval.sample --model CompVis/stable-diffusion-v1-4 --prompts i2p.csv \\
        --categories sexual --fixed_guidance 7.5 --scheduler ddim --output_dir eval/sd14-i2p-sexual

Prompts: a set name (`nudity`, `i2p:sexual`, `imagenette`, `digits:seven`, ...) or a .txt/.csv/
.jsonl file (an I2P CSV export works); `--categories` keeps the rows having any of them.
Seeds: image k of a prompt with its own seed (I2P's `sd_seed`) uses that seed + k, other images
`--seed` + their index. Guidance: each prompt's own (I2P's `sd_guidance_scale`, else
`--guidance_scale`) unless `--fixed_guidance` is given; the public Scissorhands evaluation uses
a fixed 7.5. Images go round-robin over the prompts (`pipelines.sampling.plan_samples`).

Layout of `--output_dir` (see `pipelines.image_folder`): `{index:06d}.png`, `metadata.jsonl`
(one row per image) and `protocol.json` (model, prompt set name/version/sha256, categories, seed
and guidance rules, scheduler, steps, image size, dtype, counts). Reruns skip finished images;
a rerun under another protocol fails. Processes split the images; the main process merges.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from erasure import jobconfig
from erasure.output import check_output_dir
from erasure.bounds import (MAX_IMAGES, check_finite_fields, check_image_budget, check_image_side,
                            check_mixed_precision, check_range, check_seed)
from erasure.lock import output_lock
from pipelines.generate import PRECISIONS
from pipelines.image_folder import ImageFolderWriter, refuse_changed_protocol, replace_atomic
from pipelines.push import folder_fingerprint
from pipelines.sampling import SCHEDULERS, SampleItem, generate, load_pipeline, plan_samples, shard
from prompts.base import PromptSet
from prompts.sets import filter_min_percentage, get_prompt_set

logger = logging.getLogger(__name__)

PROTOCOL_FILE = "protocol.json"
# protocol.json keys that may change between runs into one folder (more images extend a plan).
GROWING_KEYS = ("images_per_prompt", "num_images", "num_written", "complete")
MAX_INFERENCE_STEPS = 1000  # the schedulers' num_train_timesteps: more steps than that repeat timesteps


@dataclass
class SamplingOptions:
    """How images are drawn; shared by `eval.sample` and `eval.audit` (one `--flag` per field)."""

    images_per_prompt: int = 1
    fixed_guidance: float | None = None
    guidance_scale: float = 7.5  # for prompts without their own, when fixed_guidance is None
    categories: tuple[str, ...] = ()  # keep prompts of any of these (I2P: sexual, violence, ...)
    min_nudity_percentage: float | None = None  # keep I2P-style rows with nudity_percentage >= this
    scheduler: str | None = None
    num_inference_steps: int = 50
    batch_size: int = 8
    seed: int = 0
    height: int | None = None
    width: int | None = None
    mixed_precision: str | None = None  # None: what `accelerate launch --mixed_precision` set, else "no"

    def __post_init__(self) -> None:
        check_finite_fields(self)
        self.categories = tuple(c.strip() for text in self.categories for c in str(text).split(",") if c.strip())
        for name in ("images_per_prompt", "num_inference_steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        check_range("images_per_prompt", self.images_per_prompt, 1, MAX_IMAGES)
        check_range("num_inference_steps", self.num_inference_steps, 1, MAX_INFERENCE_STEPS)
        for name in ("fixed_guidance", "guidance_scale"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0 (<= 1 turns guidance off)")
        for name in ("height", "width"):
            check_image_side(name, getattr(self, name))
        if self.min_nudity_percentage is not None and not 0 <= self.min_nudity_percentage <= 100:
            raise ValueError(f"min_nudity_percentage={self.min_nudity_percentage} must be in [0, 100]")
        check_seed("seed", self.seed)
        if self.scheduler is not None and self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler={self.scheduler!r} is not known; choose one of {sorted(SCHEDULERS)}")
        if self.mixed_precision is None:
            self.mixed_precision = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
        check_mixed_precision("mixed_precision", self.mixed_precision, tuple(PRECISIONS))


@dataclass
class SampleConfig(SamplingOptions):
    """Options of `eval.sample`: the model, the prompts and where the images go."""

    model: str = ""
    prompts: str = ""
    output_dir: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("model", "prompts", "output_dir"):
            if not getattr(self, name):
                raise ValueError(f"{name} is required (--{name} ...)")
        check_output_dir(self.output_dir)
        check_model_path(self.model, "model")


def check_model_path(model: str, name: str) -> None:
    """Fail early on a local folder that is not a diffusers pipeline (Hub ids pass).

    Raises:
        ValueError: naming the flag and the folder.
    """
    path = Path(model)
    if path.exists() and not (path / "model_index.json").is_file():
        raise ValueError(f"{name}={model!r} is not a diffusers pipeline folder (no model_index.json)")
    if not path.exists() and looks_like_path(model):
        raise FileNotFoundError(f"{name}={model!r}: no such folder (a Hub id is 'owner/name')")


def looks_like_path(name: str) -> bool:
    """Whether ``name`` can only be a local path, never a Hub id ('owner/name' or 'name')."""
    return (name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1
            or Path(name).suffix in (".json", ".safetensors", ".ckpt"))


def filter_categories(prompt_set: PromptSet, categories: Sequence[str]) -> PromptSet:
    """The prompts having any of `categories` (e.g. I2P's "sexual"), named `<set>:<categories>`.

    Raises:
        ValueError: a category no prompt has (the message lists those present).
    """
    present = sorted({c for prompt in prompt_set for c in prompt.categories})
    unknown = [c for c in categories if c not in present]
    if unknown:
        raise ValueError(f"categories={unknown} not found in prompt set {prompt_set.name!r}; present: {present}")
    kept = [prompt for prompt in prompt_set if set(prompt.categories) & set(categories)]
    return PromptSet(f"{prompt_set.name}:{','.join(categories)}", kept, prompt_set.version, prompt_set.source)


def resolve_prompt_set(prompts: str, categories: Sequence[str] = (),
                       min_nudity_percentage: float | None = None) -> PromptSet:
    """`get_prompt_set(prompts)`, filtered by `categories` and `min_nudity_percentage` when given.

    Raises:
        ValueError / FileNotFoundError / ImportError: naming `prompts` (unknown set, missing or
            empty file, unknown category, I2P from the Hub without `datasets`).
    """
    try:
        prompt_set = get_prompt_set(prompts)
        prompt_set = filter_categories(prompt_set, categories) if categories else prompt_set
        if min_nudity_percentage is not None:
            prompt_set = filter_min_percentage(prompt_set, "nudity_percentage", min_nudity_percentage)
        return prompt_set
    except (FileNotFoundError, ImportError, ValueError) as err:
        # the base class, not type(err): subclasses such as UnicodeDecodeError take other arguments
        kind = next(k for k in (FileNotFoundError, ImportError, ValueError) if isinstance(err, k))
        raise kind(f"prompts={prompts!r}: {err}") from err


def prompt_set_record(prompt_set: PromptSet) -> dict[str, Any]:
    """Name, version, source, sha256 and size of a prompt set, as protocols record it."""
    return {"name": prompt_set.name, "version": prompt_set.version, "source": prompt_set.source,
            "sha256": prompt_set.sha256(), "num_prompts": len(prompt_set)}


def sampling_protocol(options: SamplingOptions, model: str, pipe: Any, prompt_set: PromptSet) -> dict[str, Any]:
    """What determines a folder's images, with the seed and guidance rules in words.

    Raises:
        ValueError: height or width not divisible by the pipeline's VAE scale factor.
    """
    default_size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    size = [options.height or default_size, options.width or default_size]
    if any(side % pipe.vae_scale_factor for side in size):
        raise ValueError(f"height/width={size} must be multiples of the VAE scale factor {pipe.vae_scale_factor}")
    if options.fixed_guidance is not None:
        guidance = f"fixed {options.fixed_guidance} for every prompt"
    else:
        guidance = f"each prompt's own (I2P sd_guidance_scale), else {options.guidance_scale}"
    return {
        "model": model, "model_fingerprint": folder_fingerprint(model) if Path(model).is_dir() else None,
        "prompt_set": prompt_set_record(prompt_set), "categories": list(options.categories) or None,
        "images_per_prompt": options.images_per_prompt, "num_images": options.images_per_prompt * len(prompt_set),
        "seeds": f"image k of a prompt: its own seed (I2P sd_seed) + k, else {options.seed} + image index",
        "seed": options.seed, "guidance": guidance, "fixed_guidance": options.fixed_guidance,
        "guidance_scale": options.guidance_scale, "scheduler": type(pipe.scheduler).__name__,
        "num_inference_steps": options.num_inference_steps, "image_size": size,
        "dtype": str(PRECISIONS[options.mixed_precision]).removeprefix("torch."),
    }


def check_resumable(folder: Path, protocol: dict[str, Any]) -> None:
    """Refuse to add images to a folder sampled under another protocol.

    Raises:
        ValueError: naming the fields that differ.
    """
    path = folder / PROTOCOL_FILE
    if not path.is_file():
        return
    previous = json.loads(path.read_text(encoding="utf-8"))
    # folders sampled before fingerprints were recorded are compared on the rest
    skipped = {*GROWING_KEYS, "prompt_set", *(() if "model_fingerprint" in previous else ("model_fingerprint",))}
    comparable = lambda p: {**{k: v for k, v in p.items() if k not in skipped},
                            "prompt_set.sha256": (p.get("prompt_set") or {}).get("sha256")}
    refuse_changed_protocol(folder, comparable(previous), comparable(protocol))


def write_protocol(folder: Path, protocol: dict[str, Any]) -> None:
    """Write `folder/protocol.json` atomically."""
    text = json.dumps(protocol, indent=2, ensure_ascii=False)
    replace_atomic(folder / PROTOCOL_FILE, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def partial_state() -> Any:
    """accelerate's `PartialState`; on CPU-only machines with cpu=True so launched ranks join (gloo)."""
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def plan(options: SamplingOptions, prompt_set: PromptSet) -> list[SampleItem]:
    """The samples to draw under `options` (see the module docstring for the rules)."""
    fixed = options.fixed_guidance is not None
    guidance = options.fixed_guidance if fixed else options.guidance_scale
    return plan_samples(prompt_set, options.images_per_prompt, options.seed, guidance, fixed_guidance=fixed)


def sample(config: SampleConfig, state: Any | None = None) -> dict[str, Any]:
    """Draw (or complete) `config.output_dir`; every process calls this, each draws its share.

    Args:
        config: the validated options.
        state: an accelerate `PartialState`; None makes one (see `partial_state`).

    Returns:
        The protocol (protocol.json's content; `num_written` and `complete` on the main process).

    Raises:
        ValueError / FileNotFoundError: bad prompts, model or folder, before anything is written;
            `erasure.lock.FolderLockedError` (a ValueError) when another live job writes the folder.
    """
    prompt_set = resolve_prompt_set(config.prompts, config.categories, config.min_nudity_percentage)
    state = state or partial_state()
    pipe = load_pipeline(config.model, PRECISIONS[config.mixed_precision], state.device, config.scheduler,
                         name="model")
    protocol = sampling_protocol(config, config.model, pipe, prompt_set)
    check_image_budget(protocol["num_images"], *protocol["image_size"], name="images_per_prompt x prompts")
    folder = Path(config.output_dir)
    check_resumable(folder, protocol)
    with output_lock(state, folder):  # every rank has checked before the main process writes
        return _draw(config, state, pipe, prompt_set, protocol, folder)


def _draw(config: SampleConfig, state: Any, pipe: Any, prompt_set: PromptSet, protocol: dict[str, Any],
          folder: Path) -> dict[str, Any]:
    """The writing part of `sample`, run while the folder's lock is held."""
    if state.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        write_protocol(folder, {**protocol, "complete": False})
    state.wait_for_everyone()
    items = plan(config, prompt_set)
    run_info = {"model": config.model, "scheduler": protocol["scheduler"],
                "num_inference_steps": config.num_inference_steps}
    writer = ImageFolderWriter(folder, state.process_index, run_info)
    done = writer.done()
    todo = [item for item in shard(items, state.num_processes, state.process_index) if item.index not in done]
    logger.info("%s: %d of %d images to draw on process %d (%d already done)",
                folder, len(todo), len(items), state.process_index, len(done))
    for item, image, _ in generate(pipe, todo, config.batch_size, config.num_inference_steps, config.height,
                                   config.width, show_progress=state.is_local_main_process):
        writer.write(item, image)
    state.wait_for_everyone()
    if state.is_main_process:
        rows = writer.finalize()
        protocol.update(num_written=len(rows), complete={i.index for i in items} <= {r["index"] for r in rows})
        write_protocol(folder, protocol)
    state.wait_for_everyone()
    return protocol


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse flags, validate, sample. Returns the protocol."""
    (config,) = jobconfig.parse((SampleConfig,), argv, __doc__)
    state = partial_state()
    logging.basicConfig(level=logging.INFO if state.is_main_process else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return sample(config, state)


if __name__ == "__main__":
    jobconfig.run_cli(main)
