"""The relearning attack of `eval.attack` (``--attack relearn``): how many fine-tuning steps on a
few images of the concept give it back. An erasure that returns after a handful of steps only hid
the concept; the count is reported against a cap.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from prompts.base import PromptSet

from .prompt_draw import draw, prompt_ids


def relearn(models: dict[str, Any], judge: Any, prompts: PromptSet, config: Any) -> dict[str, Any]:
    """Fine-tune a copy of the erased UNet on ``relearn_images`` base-model images of the concept
    (plain diffusion loss); the steps until ``relearn_threshold`` of the checked generations of
    the concept's prompts show the concept, or None within ``relearn_max_steps``."""
    erased, base = models["erased"], models["base"]
    items = [(p, p.seed if p.seed is not None else config.seed + i,
              p.guidance_scale if p.guidance_scale is not None else config.guidance_scale)
             for i, p in enumerate(prompts.prompts)]
    chosen = [items[i % len(items)] for i in range(config.relearn_images)]
    latents = torch.stack([draw(base, prompt_ids(base, p.text), seed + 7919 * (i // len(items)), g,
                                config.num_inference_steps, latents=True) for i, (p, seed, g) in enumerate(chosen)])
    with torch.no_grad():
        hidden = torch.cat([erased.text_encoder(prompt_ids(erased, p.text).to(erased.unet.device))[0]
                            for p, _, _ in chosen])
    pipe = type(erased)(**{**erased.components, "unet": copy.deepcopy(erased.unet).requires_grad_(True)})
    pipe.set_progress_bar_config(disable=True)
    optimizer = torch.optim.AdamW(pipe.unet.parameters(), lr=config.relearn_learning_rate)
    scheduler, generator = pipe.scheduler, torch.Generator().manual_seed(config.seed)
    checked = items[: max(config.relearn_images, 1)]

    def shown() -> float:
        images = torch.stack([draw(pipe, prompt_ids(pipe, p.text), seed, g, config.num_inference_steps)
                              for p, seed, g in checked])
        return sum(judge(images)) / len(images)

    curve = [(0, shown())]
    for step in range(1, config.relearn_max_steps + 1):
        if curve[-1][1] >= config.relearn_threshold:
            break
        pick = torch.randint(len(latents), (config.relearn_batch_size,), generator=generator)
        noise = torch.randn(latents[pick].shape, generator=generator)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(pick),), generator=generator)
        x0 = latents[pick].to(pipe.unet.device)
        noisy = scheduler.add_noise(x0, noise.to(x0), t.to(x0.device))
        goal = noise.to(x0) if scheduler.config.get("prediction_type", "epsilon") == "epsilon" else \
            scheduler.get_velocity(x0, noise.to(x0), t.to(x0.device))
        loss = torch.nn.functional.mse_loss(pipe.unet(noisy, t.to(x0.device), hidden[pick]).sample, goal)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % config.relearn_every == 0:
            curve.append((step, shown()))
    relearned = curve[-1][1] >= config.relearn_threshold
    return {"role": "relearn", "index": 0, "relearn_steps": curve[-1][0] if relearned else None,
            "cap": config.relearn_max_steps, "curve": curve, "images": config.relearn_images}
