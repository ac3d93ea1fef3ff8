"""One seeded generation from token ids, shared by the attacks of `eval.attack` and `eval.relearn`
(an adversarial prompt is a list of token ids: it need not survive decoding to text)."""

from __future__ import annotations

from typing import Any

import torch


def prompt_ids(pipe: Any, text: str) -> torch.Tensor:
    """[1, model_max_length] token ids of ``text`` with the pipeline's tokenizer (padded, truncated)."""
    return pipe.tokenizer([text], padding="max_length", max_length=pipe.tokenizer.model_max_length,
                          truncation=True, return_tensors="pt").input_ids


@torch.no_grad()
def draw(pipe: Any, ids: torch.Tensor, seed: int, guidance: float, steps: int, latents: bool = False) -> torch.Tensor:
    """One generation from token ids (not text: an adversarial prompt need not survive decoding)."""
    device = pipe.unet.device
    embeds = pipe.text_encoder(ids.to(device))[0]
    negative = pipe.text_encoder(prompt_ids(pipe, "").to(device))[0]
    out = pipe(prompt_embeds=embeds, negative_prompt_embeds=negative, guidance_scale=guidance,
               num_inference_steps=steps, generator=torch.Generator().manual_seed(seed),
               output_type="latent" if latents else "pt")
    return out.images[0].float().cpu()
