"""What a UNet is conditioned on, per prompt, for every pipeline this toolkit erases from.

- SD 1.x / 2.x (``StableDiffusionPipeline``): the text encoder's last hidden states [L, D].
- SDXL (``StableDiffusionXLPipeline``): both text encoders' penultimate hidden states side by
  side [L, D1 + D2], plus the UNet's *added* conditioning: ``text_embeds``, the second
  encoder's pooled projection [D2'], and ``time_ids``, six numbers (original size, crop
  top-left, target size) that the pipeline sets to (H, W, 0, 0, H, W) for an H x W image.
  The empty prompt is all zeros when the pipeline's ``force_zeros_for_empty_prompt`` is set
  (SDXL base's default): that is the unconditional branch the pipeline guides against, so
  ESD's unconditional prediction uses the same.

Training encodes every prompt once (`encode_prompt_table`) through the pipeline's own
``encode_prompt``, so the table holds exactly what sampling feeds the UNet.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

__all__ = ["PIPELINES", "PromptTable", "encode_prompt_table", "is_xl", "time_ids"]

# pipeline classes the jobs load, and what they are
PIPELINES = {"StableDiffusionPipeline": "SD 1.x / 2.x", "StableDiffusionXLPipeline": "SDXL"}
ENCODE_BATCH = 64  # prompts per SDXL text-encoder call


def is_xl(pipe: Any) -> bool:
    """Whether ``pipe`` conditions its UNet the SDXL way (two text encoders, added conditioning)."""
    return getattr(pipe, "text_encoder_2", None) is not None


def time_ids(height: int, width: int) -> Tensor:
    """SDXL's added time ids of an uncropped ``height`` x ``width`` image: (H, W, 0, 0, H, W)."""
    return torch.tensor([height, width, 0, 0, height, width], dtype=torch.float32)


@dataclass(frozen=True)
class PromptTable:
    """Per-prompt conditioning: ``hidden`` [P, L, D]; SDXL's ``pooled`` [P, D2'] (else None)."""

    hidden: Tensor
    pooled: Tensor | None = None


def _encoders(pipe: Any) -> list[torch.nn.Module]:
    return [e for e in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if e is not None]


@torch.no_grad()
def _encode(pipe: Any, prompts: list[str], device: torch.device) -> tuple[Tensor, Tensor | None]:
    if is_xl(pipe):
        hidden, _, pooled, _ = pipe.encode_prompt(prompts, device=device, num_images_per_prompt=1,
                                                  do_classifier_free_guidance=False)
        return hidden, pooled
    tokens = pipe.tokenizer(prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                            truncation=True, return_tensors="pt").input_ids
    return pipe.text_encoder(tokens.to(device))[0], None


def encode_prompt_table(pipe: Any, prompts: Sequence[str], device: torch.device | str) -> PromptTable:
    """Every prompt's conditioning, float32 on the CPU, from the frozen text encoder(s).

    The encoders visit ``device`` for the call and go back where they were: the table is all
    training needs (SD v1.4's encoder is ~0.5 GB, SDXL's two ~1.6 GB in fp32).
    """
    encoders = _encoders(pipe)
    homes = [e.device for e in encoders]
    for encoder in encoders:
        encoder.to(device)
    # SD: one call, as before SDXL support (a GPU may pick other kernels for other row counts)
    batch = ENCODE_BATCH if is_xl(pipe) else max(len(prompts), 1)
    try:
        parts = [_encode(pipe, list(prompts[i:i + batch]), torch.device(device))
                 for i in range(0, len(prompts), batch)]
    finally:
        for encoder, home in zip(encoders, homes):
            encoder.to(home)
    hidden = torch.cat([h for h, _ in parts]).float().cpu()
    pooled = torch.cat([p for _, p in parts]).float().cpu() if is_xl(pipe) else None
    if is_xl(pipe) and pipe.config.get("force_zeros_for_empty_prompt", False):
        empty = torch.tensor([p == "" for p in prompts])
        hidden[empty] = 0.0
        pooled[empty] = 0.0
    return PromptTable(hidden, pooled)
