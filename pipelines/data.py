"""Training data of the erase job: the latents, prompts and metadata of one image folder.

A folder from `pipelines.generate` already holds `latents.safetensors` (image file name ->
final latents [C, h, w], scaled by the VAE's scaling factor), so nothing is re-encoded. A
user's own folder (png/jpg files, optionally `metadata.jsonl` rows with "file_name" (or the older
"file") and "prompt"; names must stay inside the folder, see `pipelines.image_folder.resolve_inside`)
is encoded once with the VAE (`latent_dist.mean * scaling_factor`) and cached the same way.
A retain row may carry `"extra": {"neutral": "<prompt>"}`: the wording on neither side of the
erasure that should draw what this retain prompt draws (the testbed's colour-free prompt beside a
colour prompt; `pipelines.erase.neutral_prompts`, the method config's `neutral_weight`).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

from erasure.tensor_files import read_tensor_metadata, read_tensors

from .images import open_rgb
from .latent_space import from_vae, normalises, working_dtype
from .image_folder import FILE_KEY, LATENTS_FILE, METADATA_FILE, read_metadata, replace_atomic, resolve_inside

__all__ = ["IMAGE_SUFFIXES", "ConceptImageSet", "concept_pair"]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
ENCODE_BATCH_SIZE = 8


@dataclass
class ConceptImageSet:
    """Latents [N, C, h, w] with their prompts, image file names and metadata rows (same order)."""

    latents: torch.Tensor
    prompts: list[str]
    files: list[str]
    metadata: list[dict[str, Any]]

    def __post_init__(self) -> None:
        sizes = {len(self.latents), len(self.prompts), len(self.files), len(self.metadata)}
        if len(sizes) != 1:
            raise ValueError(f"latents ({len(self.latents)}), prompts ({len(self.prompts)}), files "
                             f"({len(self.files)}) and metadata ({len(self.metadata)}) differ in length")

    def __len__(self) -> int:
        return len(self.files)

    @classmethod
    def load(cls, folder: str | Path, vae: Any = None, resolution: int | None = None,
             prompt: str | None = None, sdxl: bool = False) -> ConceptImageSet:
        """Read a folder's latents, or encode its images with `vae` and cache them.

        Args:
            folder: an image folder (`pipelines.generate` output or png/jpg files).
            vae: an `AutoencoderKL`; needed only when the folder has no latents.safetensors.
            resolution: resize (shorter side) and center-crop images to this size before encoding;
                None requires all images to share one size.
            prompt: the prompt of images whose metadata row has none (or of all, without metadata).
            sdxl: encode as SDXL's pipelines do: an fp16 VAE with ``force_upcast`` in float32, and
                latents normalised by the VAE's ``latents_mean``/``latents_std`` where it has them.

        Raises:
            FileNotFoundError: no such folder.
            ValueError: naming the file: an empty folder, unreadable or mismatched images, metadata
                rows without an image or a prompt, an unfinished generation run, latents that do not
                match the metadata, or no latents and no `vae`.
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such image folder")
        rows = _rows(folder, prompt)
        files = [row[FILE_KEY] for row in rows]
        if (folder / LATENTS_FILE).is_file():
            _, header = read_tensor_metadata(folder / LATENTS_FILE, "cached latents")  # read once, checked below
            latents = _stored_latents(folder / LATENTS_FILE, header, files, resolution)
            if vae is not None:
                check_scaling_factor(folder, header, vae.config.scaling_factor)
                _check_normalisation(folder, header, vae, sdxl)
        else:
            latents = _encode_folder(folder, files, vae, resolution, sdxl)
        return cls(latents, [row["prompt"] for row in rows], files, rows)


def concept_pair(data_dir: str | Path, vae: Any = None,
                 resolution: int | None = None) -> tuple[ConceptImageSet, ConceptImageSet]:
    """The (forget, retain) sets of a `pipelines.generate` output folder (`forget/`, `retain/`)."""
    forget = ConceptImageSet.load(Path(data_dir) / "forget", vae, resolution)
    return forget, ConceptImageSet.load(Path(data_dir) / "retain", vae, resolution)


def _rows(folder: Path, prompt: str | None) -> list[dict[str, Any]]:
    """Metadata rows (file, prompt, ...): metadata.jsonl, else one row per image file."""
    metadata = folder / METADATA_FILE
    unfinished = sorted(p.name for p in folder.glob("metadata-*.jsonl"))
    if unfinished:
        raise ValueError(f"{folder}: unfinished generation run ({unfinished[0]} not merged yet); "
                         "rerun pipelines.generate with the same settings to finish it")
    if metadata.is_file():
        rows = read_metadata(metadata)
    else:
        images = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        rows = [{FILE_KEY: resolve_inside(folder, name, str(folder / name)).name} for name in images]
    if not rows:
        raise ValueError(f"{folder}: empty image folder (no rows in {METADATA_FILE} and no {IMAGE_SUFFIXES} files)")
    for number, row in enumerate(rows, start=1):
        where = f"{metadata}:{number}" if metadata.is_file() else str(folder / row[FILE_KEY])
        row.setdefault("prompt", prompt)
        if not isinstance(row["prompt"], str) or not row["prompt"].strip():
            raise ValueError(f"{where}: no prompt for {row[FILE_KEY]} (add a 'prompt' to {METADATA_FILE} "
                             "or pass prompt=...)")
    duplicates = sorted(name for name, count in Counter(row[FILE_KEY] for row in rows).items() if count > 1)
    if duplicates:
        raise ValueError(f"{metadata}: files listed more than once: {duplicates[:5]}")
    return rows


def recorded_scaling_factor(folder: Path, header: dict[str, str]) -> float | None:
    """The VAE scaling factor a folder's cached latents were scaled by: the latents file's
    ``header`` (images encoded here), else ``info.json`` (``pipelines.generate``); None if neither says."""
    if header.get("scaling_factor") is not None:
        return float(header["scaling_factor"])
    info = folder / "info.json"
    if info.is_file():
        try:
            recorded = json.loads(info.read_text(encoding="utf-8")).get("latents", {}).get("scaling_factor")
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            raise ValueError(f"{info}: not the JSON object pipelines.generate writes") from None
        return None if recorded is None else float(recorded)
    return None


def check_scaling_factor(folder: Path, header: dict[str, str], scaling_factor: float) -> None:
    """Refuse cached latents scaled by another VAE's factor: the UNet would train on latents of
    the wrong scale (SD v1's 0.18215 against SD 2's or a tiny VAE's) without any error.

    Raises:
        ValueError: naming the folder and both factors.
    """
    recorded = recorded_scaling_factor(folder, header)
    if recorded is not None and abs(recorded - float(scaling_factor)) > 1e-6 * max(1.0, abs(recorded)):
        raise ValueError(f"{folder / LATENTS_FILE}: latents scaled by {recorded:g}, but this model's VAE scales by "
                         f"{float(scaling_factor):g}: the folder was made with another VAE; generate it with this "
                         f"model, or delete {LATENTS_FILE} to re-encode its images")


def _check_normalisation(folder: Path, header: dict[str, str], vae: Any, sdxl: bool) -> None:
    """Refuse latents encoded here with or without SDXL's latents_mean/std normalisation when this
    pipeline would do the other (generated folders hold the pipeline's own latents: no check).

    Raises:
        ValueError: naming the file and what to do.
    """
    if header.get("scaling_factor") is None:
        return  # not encoded here
    cached, wanted = "normalised" in header, normalises(vae, sdxl)
    if cached != wanted:
        raise ValueError(f"{folder / LATENTS_FILE}: encoded {'with' if cached else 'without'} the VAE's latents_mean/"
                         f"latents_std normalisation, but this pipeline's VAE {'uses' if wanted else 'does not use'} "
                         f"it; delete {LATENTS_FILE} to re-encode the images")


def _stored_latents(path: Path, header: dict[str, str], files: list[str], resolution: int | None) -> torch.Tensor:
    """The cached latents of `files` (the file's ``header`` read by the caller), stacked in their order."""
    cached_at = header.get("resolution")
    # resolution=None takes the cache as it is; a given one must match what it was encoded at.
    if resolution is not None and cached_at is not None and cached_at != str(resolution):
        raise ValueError(f"{path}: encoded at resolution {cached_at}, asked for {resolution}; delete it to re-encode")
    stored = read_tensors(path, "cached latents")
    missing = [f for f in files if f not in stored]
    if missing or len(stored) != len(files):
        raise ValueError(f"{path}: holds latents of {len(stored)} images but the metadata lists {len(files)} "
                         f"(without latents: {missing[:5]}); regenerate the folder, or delete {path.name} to "
                         "re-encode the images with a VAE")
    shapes = {tuple(stored[f].shape) for f in files}
    if len(shapes) != 1:
        raise ValueError(f"{path}: latents of different shapes {sorted(shapes)}")
    return torch.stack([stored[f] for f in files])


def _load_image(path: Path, resolution: int | None) -> torch.Tensor:
    """An RGB image as [3, H, W] in [-1, 1], resized (shorter side) and center-cropped if asked."""
    if not path.is_file():
        raise ValueError(f"{path}: listed in {METADATA_FILE} but missing")
    image = open_rgb(path)
    if resolution is not None:
        scale = resolution / min(image.size)
        width, height = (max(resolution, round(s * scale)) for s in image.size)
        image = image.resize((width, height), Image.Resampling.BILINEAR)
        left, top = (width - resolution) // 2, (height - resolution) // 2
        image = image.crop((left, top, left + resolution, top + resolution))
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0)
    return pixels.permute(2, 0, 1)


def _encode_folder(folder: Path, files: list[str], vae: Any, resolution: int | None, sdxl: bool = False) -> torch.Tensor:
    """Encode the images once with `vae` and cache the latents as latents.safetensors."""
    if vae is None:
        raise ValueError(f"{folder}: no {LATENTS_FILE}; pass vae= to encode its {len(files)} images")
    images = []
    for name in files:
        image = _load_image(folder / name, resolution)
        if images and image.shape != images[0].shape:
            raise ValueError(f"{folder / name}: size {tuple(image.shape[1:])} differs from {files[0]}'s "
                             f"{tuple(images[0].shape[1:])}; pass resolution= to resize and crop")
        images.append(image)
    latents = []
    device = next(vae.parameters()).device
    with working_dtype(vae, sdxl) as dtype, torch.no_grad():
        for start in range(0, len(images), ENCODE_BATCH_SIZE):
            batch = torch.stack(images[start:start + ENCODE_BATCH_SIZE]).to(device, dtype)
            latents.append(from_vae(vae.encode(batch).latent_dist.mean.float().cpu(), vae, sdxl))
    latents = torch.cat(latents)
    stored = {name: latent.contiguous() for name, latent in zip(files, latents)}
    header = {"resolution": str(resolution or "native"), "scaling_factor": str(vae.config.scaling_factor),
              **({"normalised": "latents_mean/latents_std"} if normalises(vae, sdxl) else {})}
    replace_atomic(folder / LATENTS_FILE, lambda tmp: save_file(stored, str(tmp), metadata=header))
    logger.info("%s: encoded %d images, cached in %s", folder, len(files), LATENTS_FILE)
    return latents
