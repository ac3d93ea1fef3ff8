"""Generate the forget and retain image sets of a concept (paper 000, §4.3 / §8.1.2).

    accelerate launch -m pipelines.generate --pretrained_model_name_or_path CompVis/stable-diffusion-v1-4 \\
        --concept nudity --output_dir data/nudity --num_images 400

Concepts: `nudity` (forget: 'nudity', 'naked', 'erotic', 'sexual'; retain: 'a person wearing
clothes'), `imagenette:<class>` (forget: that class's prompt; retain: the other nine), the
offline testbed's `digits:<word or digit>` (an object: that digit in every colour vs the other
nine) and `color:<name>` (an attribute: every digit in that colour vs the other colours), whose
prompts come from the grammar of `prompts/colored_digits.py` (`--concept_forms word` and
`--concept_phrasings erase` by default: numerals and paraphrases stay unseen for evaluation),
or `--forget_prompts FILE --retain_prompts FILE` (.txt/.csv/.jsonl). Several concepts at once:
`--concept digits:two,digits:five,color:red` or `--concept @concepts.txt` (one per line): the
forget set is their union, the retain set excludes every prompt any of them forgets.

Layout: `output_dir/forget/` and `output_dir/retain/`, each an image folder (see
`pipelines.image_folder`): `{index:06d}.png`, `metadata.jsonl`, `latents.safetensors` (image file
name -> the pipeline's final latents [C, h, w], float32, already scaled by the VAE's scaling
factor: what the UNet is trained on) and `info.json` (model, concept, prompt-set hash, counts,
protocol). `num_images` images per set go round-robin over the set's prompts; image i has seed
`seed + i` (a prompt's own seed wins), in both sets alike. Reruns skip finished images; a rerun
with a different protocol (model, scheduler, steps, guidance, seed, size, dtype, prompts) fails.
Processes split the images (`shard`); the main process merges their metadata and latents.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from erasure import jobconfig
from erasure.output import check_output_dir
from erasure.bounds import MAX_IMAGES, check_finite_fields, check_image_budget, check_mixed_precision, check_range, check_seed
from prompts.base import Prompt, PromptSet
from prompts.colored_digits import FORMS, GROUPS, concept_prompts, grammar_prompts
from prompts.sets import imagenette_prompts, load_concept, load_prompt_file

from .image_folder import LATENTS_FILE, ImageFolderWriter, refuse_changed_protocol, replace_atomic
from .sampling import SCHEDULERS, generate, load_pipeline, plan_samples, shard

logger = logging.getLogger(__name__)

INFO_FILE = "info.json"
PRECISIONS: dict[str, torch.dtype] = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _nudity(arg: str | None, **_: Any) -> tuple[PromptSet, PromptSet]:
    if arg:
        raise ValueError(f"'nudity' takes no ':' argument, got 'nudity:{arg}'")
    return load_concept("nudity")


def _one_vs_rest(build: Callable[..., PromptSet], what: str) -> Callable[..., tuple[PromptSet, PromptSet]]:
    def resolve(arg: str | None, **_: Any) -> tuple[PromptSet, PromptSet]:
        if not arg:
            raise ValueError(f"expected '{what}:<class>'")
        return build(classes=[arg]), build(exclude=[arg])

    return resolve


def _testbed(kind: str) -> Callable[..., tuple[PromptSet, PromptSet]]:
    def resolve(arg: str | None, forms: tuple[str, ...] = ("word",), phrasings: tuple[str, ...] = ("erase",),
                ) -> tuple[PromptSet, PromptSet]:
        return concept_prompts(f"{kind}:{arg or ''}", forms=forms, groups=phrasings)

    return resolve


CONCEPTS: dict[str, Callable[..., tuple[PromptSet, PromptSet]]] = {
    "nudity": _nudity,
    "imagenette": _one_vs_rest(imagenette_prompts, "imagenette"),
    "digits": _testbed("digits"),
    "color": _testbed("color"),
}
CONCEPT_FORMS = "nudity, imagenette:<class>, digits:<word or digit>, color:<name>"


def split_concepts(concept: str) -> list[str]:
    """The concepts of a ``--concept`` value: one name, several joined by ",", or ``@FILE`` (one per line).

    Raises:
        FileNotFoundError / ValueError: a missing file, or no concept.
    """
    if concept.startswith("@"):
        path = Path(concept[1:])
        if not path.is_file():
            raise FileNotFoundError(f"concept={concept!r}: no such file {path}")
        names = [line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines()]
    else:
        names = [name.strip() for name in concept.split(",")]
    names = list(dict.fromkeys(name for name in names if name))
    if not names:
        raise ValueError(f"concept={concept!r} names no concept; choose from {CONCEPT_FORMS}")
    return names


def concept_sets(concept: str, forms: tuple[str, ...] = ("word",), phrasings: tuple[str, ...] = ("erase",),
                 ) -> tuple[PromptSet, PromptSet]:
    """The (forget, retain) prompts of one concept or several (``"digits:two,color:red"``).

    Several concepts: the forget side is the union of theirs (each prompt's ``extra["concept"]``
    says whose), the retain side the union of theirs without any prompt that one of them forgets
    (erasing digits:two and color:red retains neither "a red digit one" nor "a blue digit two") or
    leaves on neither side: a colour-free testbed prompt may draw the colour, so under a colour
    concept it is not retained, as in that concept's single run. (Retained, "a handwritten digit
    four" became the substitute of "a red handwritten digit four", and a joint run of two, five and
    red left red prompts red 23-37% of the time where red alone leaves 0%.)

    Raises:
        ValueError: an unknown concept or selection, or nothing left to retain.
    """
    names = split_concepts(concept)
    forgets, retains, neither = [], [], set()
    for name in names:
        base, _, arg = name.partition(":")
        if base not in CONCEPTS:
            raise ValueError(f"concept={name!r} is not known; choose one of {CONCEPT_FORMS}")
        try:
            forget, retain = CONCEPTS[base](arg or None, forms=forms, phrasings=phrasings)
        except ValueError as err:
            raise ValueError(f"concept={name!r}: {err}") from err
        forgets.append((name, forget))
        retains.append(retain)
        if base in ("digits", "color"):  # the testbed grammar: its prompts this concept puts on neither side
            sides = {p.text for p in forget} | {p.text for p in retain}
            neither |= {p.text for p in grammar_prompts(forms=forms, groups=phrasings)} - sides
    if len(names) == 1:
        return forgets[0][1], retains[0]
    per_concept, seen = [], set()
    for name, forget in forgets:
        mine = []
        for prompt in forget:
            if prompt.text not in seen:
                seen.add(prompt.text)
                mine.append(dataclasses.replace(prompt, extra={**prompt.extra, "concept": name}))
        per_concept.append(mine)
    # interleaved, so that the first N images (num_images < the prompts) cover every concept alike
    tagged = [p for row in itertools.zip_longest(*per_concept) for p in row if p is not None]
    held: dict[str, Prompt] = {}
    for prompt in (p for retain in retains for p in retain if p.text not in seen | neither):
        # a prompt two concepts retain keeps what either says of it (a colour concept's "neutral")
        extra = {**held[prompt.text].extra, **prompt.extra} if prompt.text in held else prompt.extra
        held[prompt.text] = dataclasses.replace(prompt, extra=extra)
    kept = list(held.values())
    if not kept:
        raise ValueError(f"concept={concept!r}: every retain prompt is forgotten by one of {names}; nothing to retain")
    joined = "+".join(names)
    return PromptSet(joined, tagged, source="+".join(f.source for _, f in forgets)), \
        PromptSet(f"{joined}-retain", kept, source="+".join(r.source for r in retains))


@dataclass
class GenerateConfig:
    """Options of the generation job; each field is a `--flag` of the same name."""

    pretrained_model_name_or_path: str = ""
    output_dir: str = ""
    concept: str | None = None
    forget_prompts: str | None = None
    retain_prompts: str | None = None
    concept_forms: tuple[str, ...] = ("word",)  # testbed concepts: how prompts name the digit
    concept_phrasings: tuple[str, ...] = ("erase",)  # testbed concepts: which phrasing groups
    num_images: int = 400
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    batch_size: int = 8
    seed: int = 0
    scheduler: str | None = None
    mixed_precision: str | None = None  # None: what `accelerate launch --mixed_precision` set, else "no"

    def __post_init__(self) -> None:
        check_finite_fields(self)
        check_range("num_images", self.num_images, 1, MAX_IMAGES)
        check_range("num_inference_steps", self.num_inference_steps, 1, 1000)  # the schedulers' train timesteps
        check_seed("seed", self.seed)
        for name in ("pretrained_model_name_or_path", "output_dir"):
            if not getattr(self, name):
                raise ValueError(f"{name} is required (--{name} ...)")
        check_output_dir(self.output_dir)
        for name in ("num_images", "num_inference_steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.guidance_scale < 0:
            raise ValueError(f"guidance_scale={self.guidance_scale} must be >= 0 (<= 1 turns guidance off)")
        files = self.forget_prompts is not None or self.retain_prompts is not None
        if self.concept is not None and files:
            raise ValueError(f"concept={self.concept!r} excludes --forget_prompts/--retain_prompts; give one or the other")
        if self.concept is None and (self.forget_prompts is None or self.retain_prompts is None):
            raise ValueError(f"concept is required ({CONCEPT_FORMS}), or both --forget_prompts and --retain_prompts; "
                             f"got forget_prompts={self.forget_prompts!r}, retain_prompts={self.retain_prompts!r}")
        if self.concept is not None and not self.concept.startswith("@"):
            unknown = [c for c in split_concepts(self.concept) if c.partition(":")[0] not in CONCEPTS]
            if unknown:
                raise ValueError(f"concept={unknown[0]!r} is not known; choose one of {CONCEPT_FORMS}")
        for name, allowed in (("concept_forms", FORMS), ("concept_phrasings", GROUPS)):
            values = tuple(getattr(self, name))
            if not values or any(v not in allowed for v in values):
                raise ValueError(f"{name}={list(values)} must be a non-empty choice of {list(allowed)}")
        if self.scheduler is not None and self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler={self.scheduler!r} is not known; choose one of {sorted(SCHEDULERS)}")
        if self.mixed_precision is None:
            self.mixed_precision = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
        check_mixed_precision("mixed_precision", self.mixed_precision, tuple(PRECISIONS))


def resolve_prompts(config: GenerateConfig) -> tuple[PromptSet, PromptSet]:
    """The (forget, retain) prompt sets of a config.

    Raises:
        ValueError / FileNotFoundError: naming the field (unknown class, missing or empty file).
    """
    if config.concept is not None:
        return concept_sets(config.concept, tuple(config.concept_forms), tuple(config.concept_phrasings))
    sets = []
    for name in ("forget_prompts", "retain_prompts"):
        path = getattr(config, name)
        try:
            sets.append(load_prompt_file(path))
        except (ValueError, FileNotFoundError) as err:
            # the base class, not type(err): subclasses such as UnicodeDecodeError take other arguments
            kind = FileNotFoundError if isinstance(err, FileNotFoundError) else ValueError
            raise kind(f"{name}={path!r}: {err}") from err
    return sets[0], sets[1]


def protocol_of(config: GenerateConfig, pipe: Any, prompt_set: PromptSet) -> dict[str, Any]:
    """What determines a set's images; a resumed run must match it exactly."""
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    return {
        "model": config.pretrained_model_name_or_path, "scheduler": type(pipe.scheduler).__name__,
        "num_inference_steps": config.num_inference_steps, "guidance_scale": config.guidance_scale,
        "seed": config.seed, "height": size, "width": size, "mixed_precision": config.mixed_precision,
        "prompt_set_sha256": prompt_set.sha256(),
    }


def check_resumable(folder: Path, protocol: dict[str, Any]) -> None:
    """Refuse to add images to a folder made under another protocol.

    Raises:
        ValueError: naming the fields that differ.
    """
    info_path = folder / INFO_FILE
    if not info_path.is_file():
        return
    refuse_changed_protocol(folder, json.loads(info_path.read_text(encoding="utf-8")).get("protocol", {}), protocol)


def write_info(folder: Path, info: dict[str, Any]) -> None:
    """Write `folder/info.json` atomically."""
    replace_atomic(folder / INFO_FILE, lambda tmp: tmp.write_text(json.dumps(info, indent=2), encoding="utf-8"))


def generate_set(pipe: Any, state: Any, config: GenerateConfig, role: str, prompt_set: PromptSet,
                 protocol: dict[str, Any]) -> dict[str, Any]:
    """Generate (or complete) one image folder; returns its info.json content."""
    folder = Path(config.output_dir) / role
    items = plan_samples(prompt_set, math.ceil(config.num_images / len(prompt_set)), config.seed,
                         config.guidance_scale)[:config.num_images]
    info = {
        "role": role, "concept": config.concept, "model": config.pretrained_model_name_or_path,
        "prompt_set": {"name": prompt_set.name, "version": prompt_set.version, "source": prompt_set.source,
                       "sha256": prompt_set.sha256(), "num_prompts": len(prompt_set)},
        "protocol": protocol, "num_images": config.num_images, "complete": False,
        "latents": {"file": LATENTS_FILE, "layout": "image file name -> final latents [C, h, w], float32",
                    "scaling_factor": pipe.vae.config.scaling_factor, "scaled": True},
    }
    if state.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        write_info(folder, info)
    state.wait_for_everyone()
    run_info = {"model": protocol["model"], "scheduler": protocol["scheduler"],
                "num_inference_steps": config.num_inference_steps}
    writer = ImageFolderWriter(folder, state.process_index, run_info, with_latents=True)
    done = writer.done()
    todo = [item for item in shard(items, state.num_processes, state.process_index) if item.index not in done]
    logger.info("%s: %d of %d images to draw on process %d (%d already done)",
                folder, len(todo), len(items), state.process_index, len(done))
    for item, image, latents in generate(pipe, todo, config.batch_size, config.num_inference_steps,
                                         return_latents=True, show_progress=state.is_local_main_process):
        writer.write(item, image, latents)
    state.wait_for_everyone()
    if state.is_main_process:
        rows = writer.finalize()
        if len(rows) > len(items):
            logger.warning("%s holds %d images, more than num_images=%d (from an earlier run); all are kept",
                           folder, len(rows), len(items))
        info.update(num_written=len(rows), complete={i.index for i in items} <= {r["index"] for r in rows})
        write_info(folder, info)
    state.wait_for_everyone()
    return info


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Parse flags, validate everything, then generate the forget and retain folders.

    Returns:
        {"forget": info, "retain": info} (the info.json contents).
    """
    from accelerate import PartialState

    from erasure.lock import output_lock

    (config,) = jobconfig.parse((GenerateConfig,), argv, __doc__)
    sets = dict(zip(("forget", "retain"), resolve_prompts(config)))
    state = PartialState(cpu=not torch.cuda.is_available())
    logging.basicConfig(level=logging.INFO if state.is_main_process else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    pipe = load_pipeline(config.pretrained_model_name_or_path, PRECISIONS[config.mixed_precision],
                         state.device, config.scheduler)
    protocols = {role: protocol_of(config, pipe, prompt_set) for role, prompt_set in sets.items()}
    size = protocols["forget"]["height"]
    check_image_budget(config.num_images, size, size)  # per folder: forget/ and retain/ each
    for role, protocol in protocols.items():
        check_resumable(Path(config.output_dir) / role, protocol)
    with output_lock(state, config.output_dir):  # one job per folder; a killed job's lock is taken over
        return {role: generate_set(pipe, state, config, role, sets[role], protocols[role]) for role in sets}


if __name__ == "__main__":
    jobconfig.run_cli(main)
