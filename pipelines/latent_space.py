"""The VAE's latent space as the pipelines use it: what the UNet sees is the VAE's latent times
``scaling_factor``; SDXL's pipelines also normalise by ``latents_mean``/``latents_std`` where the
VAE's config has them, and run an fp16 VAE with ``force_upcast`` in float32 (SDXL's overflows).
Encoding image folders (`pipelines.data`) and decoding generations (`pipelines.sampling`) both go
through here, so the two directions cannot drift apart.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import Tensor

__all__ = ["from_vae", "normalises", "to_vae", "working_dtype"]


def normalises(vae: Any, sdxl: bool) -> bool:
    """Whether this pipeline's latents are normalised by the VAE's latents_mean/latents_std."""
    return sdxl and vae.config.get("latents_mean") is not None and vae.config.get("latents_std") is not None


def _stats(vae: Any, like: Tensor) -> tuple[Tensor, Tensor]:
    shape = (1, len(vae.config.latents_mean), 1, 1)
    return (torch.tensor(vae.config.latents_mean).view(shape).to(like),
            torch.tensor(vae.config.latents_std).view(shape).to(like))


def from_vae(z: Tensor, vae: Any, sdxl: bool) -> Tensor:
    """A VAE latent (``latent_dist.mean``) in the UNet's space (SDXL img2img: (z - mean) * sf / std)."""
    if not normalises(vae, sdxl):
        return z * vae.config.scaling_factor
    mean, std = _stats(vae, z)
    return (z - mean) * vae.config.scaling_factor / std


def to_vae(latents: Tensor, vae: Any, sdxl: bool, dtype: torch.dtype) -> Tensor:
    """The UNet's latents in ``dtype`` as the VAE decodes them (cast first, as the pipelines do)."""
    latents = latents.to(dtype)
    if not normalises(vae, sdxl):
        return latents / vae.config.scaling_factor
    mean, std = _stats(vae, latents)
    return latents * std / vae.config.scaling_factor + mean


@contextmanager
def working_dtype(vae: Any, sdxl: bool) -> Iterator[torch.dtype]:
    """The dtype the VAE runs in: float32 for an SDXL fp16 VAE with ``force_upcast`` (cast for the
    block, then back), else its own."""
    stored = next(vae.parameters()).dtype
    upcast = sdxl and stored == torch.float16 and vae.config.get("force_upcast", False)
    if not upcast:
        yield stored
        return
    vae.to(torch.float32)
    try:
        yield torch.float32
    finally:
        vae.to(stored)
