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
    return draw_many(pipe, ids, [seed], guidance, steps, latents=latents)[0]


@torch.no_grad()
def draw_many(pipe: Any, ids: torch.Tensor, seeds: list[int], guidance: float, steps: int,
              latents: bool = False) -> torch.Tensor:
    """``[B, ...]`` generations of ``ids`` ``[B, L]`` in one batched call, row ``b`` from a generator
    seeded ``seeds[b]``: the initial noise of each row is the one ``draw`` starts from with that seed,
    so a row equals its one-at-a-time draw up to the rounding of batched kernels (~1e-6)."""
    if ids.shape[0] != len(seeds):
        raise ValueError(f"ids has {ids.shape[0]} rows but {len(seeds)} seeds were given")
    device = pipe.unet.device
    embeds = pipe.text_encoder(ids.to(device))[0]
    negative = pipe.text_encoder(prompt_ids(pipe, "").to(device))[0].expand_as(embeds)
    generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
    out = pipe(prompt_embeds=embeds, negative_prompt_embeds=negative, guidance_scale=guidance,
               num_inference_steps=steps, generator=generators[0] if len(seeds) == 1 else generators,
               output_type="latent" if latents else "pt")
    return out.images.float().cpu()


def draw_by_guidance(pipe: Any, ids: torch.Tensor, seeds: list[int], guidances: list[float], steps: int,
                     latents: bool = False) -> torch.Tensor:
    """``draw_many`` for rows that may differ in guidance scale (prompt sets carry their own): one
    batched call per scale; the result is in the rows' order."""
    out: list[torch.Tensor | None] = [None] * len(seeds)
    for guidance in dict.fromkeys(guidances):
        rows = [r for r, g in enumerate(guidances) if g == guidance]
        for r, image in zip(rows, draw_many(pipe, ids[rows], [seeds[r] for r in rows], guidance, steps, latents)):
            out[r] = image
    return torch.stack(out)
