"""Bound checks for numeric options, shared by every job's config ``__post_init__``.

The typed coercer (`erasure.coerce`) refuses NaN/inf from YAML and flags; these validators
refuse values of the right type but outside what a job can do, before any work or file:
a step count of 0, a negative seed, a guidance scale of NaN set from Python, or an image
request that would not fit in memory or on disk. Each error names the option, the value and
what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

__all__ = ["MAX_IMAGES", "MAX_IMAGE_BYTES", "MAX_IMAGE_SIDE", "MAX_SEED", "check_finite_fields", "check_image_budget",
           "check_image_side", "check_mixed_precision", "check_positive", "check_range", "check_seed"]

# Stable Diffusion runs at 512-1024 px; 4096 px is already a 16x larger latent than SD-XL's.
MAX_IMAGE_SIDE = 4096
# One image folder: a million images, and at most 1 TiB of raw RGB pixels (PNG rarely compresses
# a generated image below half of that).
MAX_IMAGES = 1_000_000
MAX_IMAGE_BYTES = 1 << 40
MAX_SEED = 2**32 - 1  # numpy's (and accelerate.set_seed's) seed range


def check_range(name: str, value: float | int | None, low: float | None = None, high: float | None = None,
                low_open: bool = False) -> None:
    """Refuse ``value`` outside ``[low, high]`` (``(low, high]`` with ``low_open``); None passes.

    Raises:
        ValueError: naming ``name``, the value and the allowed range.
    """
    if value is None:
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name}={value} must be a finite number")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and value > high
    if too_low or too_high:
        left = "(" if low_open else "["
        allowed = f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}]"
        raise ValueError(f"{name}={value} is out of range; allowed: {allowed}")


def check_positive(name: str, value: float | int | None, high: float | None = None) -> None:
    """Refuse ``value <= 0`` (or above ``high``); None passes."""
    check_range(name, value, 0, high, low_open=True)


def check_seed(name: str, value: int) -> None:
    """A seed in ``[0, MAX_SEED]``."""
    check_range(name, value, 0, MAX_SEED)


def check_image_side(name: str, value: int | None, multiple: int = 1) -> None:
    """An image side in ``[multiple, MAX_IMAGE_SIDE]`` pixels, a multiple of ``multiple``; None passes."""
    check_range(name, value, multiple, MAX_IMAGE_SIDE)
    if value is not None and value % multiple:
        raise ValueError(f"{name}={value} must be a multiple of {multiple} pixels")


def check_finite_fields(config: Any) -> None:
    """Refuse NaN/inf in any float field of a dataclass (a config built from Python skips the coercer).

    Raises:
        ValueError: naming the first such field.
    """
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{field.name}={value} must be a finite number (NaN and infinity are not allowed)")


def check_image_budget(num_images: int, height: int, width: int, name: str = "num_images") -> None:
    """Refuse an image request larger than `MAX_IMAGES` images or `MAX_IMAGE_BYTES` of raw pixels.

    Args:
        num_images: images the job would write.
        height, width: their size in pixels (each at most `MAX_IMAGE_SIDE`).
        name: the option that sets ``num_images``, for the message.

    Raises:
        ValueError: naming the request and how much it would need.
    """
    check_image_side("height", height)
    check_image_side("width", width)
    check_range(name, num_images, 1, MAX_IMAGES)
    needed = num_images * height * width * 3
    if needed > MAX_IMAGE_BYTES:
        raise ValueError(f"{name}={num_images} images of {height}x{width} would need {needed / 2**30:.0f} GiB of "
                         f"pixels; at most {MAX_IMAGE_BYTES / 2**30:.0f} GiB per folder")


def check_mixed_precision(name: str, value: str | None, allowed: tuple[str, ...] = ("no", "fp16", "bf16")) -> None:
    """A known precision; fp16 only where CUDA is available (CPU kernels lack half precision).

    Raises:
        ValueError: an unknown value, or fp16 without a GPU.
    """
    if value is None:
        return
    if value not in allowed:
        raise ValueError(f"{name}={value!r} must be one of {list(allowed)}")
    if value == "fp16":
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"{name}='fp16' needs a CUDA GPU and torch sees none; use 'bf16' or 'no' on CPU")


def check_training(config: Any) -> None:
    """The loop options the training jobs share (each checked if the config has it).

    ``max_train_steps`` >= 1 (0 would export an untrained model), ``max_grad_norm`` >= 0 (0: no clipping),
    ``checkpointing_steps`` >= 1, ``checkpoints_total_limit`` >= 0 (0: keep every checkpoint),
    ``seed`` in ``[0, MAX_SEED]``, ``mixed_precision`` known and fp16 only with CUDA.

    Raises:
        ValueError: naming the first option out of bounds.
    """
    check_finite_fields(config)
    for name in ("max_train_steps", "checkpointing_steps"):
        check_range(name, getattr(config, name, None), 1)
    check_range("max_grad_norm", getattr(config, "max_grad_norm", None), 0)
    check_range("checkpoints_total_limit", getattr(config, "checkpoints_total_limit", None), 0)
    if hasattr(config, "seed"):
        check_seed("seed", config.seed)
    check_mixed_precision("mixed_precision", getattr(config, "mixed_precision", None))
