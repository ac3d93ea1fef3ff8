"""Where a training step of the default model's UNet goes, and what the foreach updates save.

    python -m benchmarks.build_step --steps 60 --num_threads 2

Issue 13 asks for a build of the offline default model in <= 5 minutes on 2 cores; the UNet's
2000 steps are most of it. This times one step of the default config's UNet (batch 32, 8x8
latents, the build's data shapes) split into its parts, measured side by side in one run and
interleaved so that a noisy machine moves both arms alike:

- ``forward_backward``: the min-SNR loss, forward and backward (what no update change touches);
- ``update_loop``: Adam, gradient clipping and the EMA as torch runs them on CPU by default (a
  Python loop over the 286 parameter tensors);
- ``update_foreach``: the same three with the multi-tensor kernels the build uses
  (``pipelines._tiny_training``), which give bitwise the same weights.

Prints medians and the ratio, and the projected seconds over the build's UNet steps.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch

from pipelines import _tiny_components as components
from pipelines._tiny_training import min_snr_weights
from pipelines.default_model import DefaultModelConfig


def _timed(function: Callable[[], Any]) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def measure(steps: int, seed: int = 0) -> dict[str, Any]:
    """Median seconds of each part of a UNet training step of the default config over ``steps`` steps."""
    config = DefaultModelConfig()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    latent_size = config.image_size // 2 ** (len(config.vae_block_out_channels) - 1)
    unet = components.build_unet(latent_size, config.unet_block_out_channels, config.text_hidden_size,
                                 cross_attention=config.unet_cross_attention).train()
    scheduler, _ = components.build_schedulers(beta_schedule=config.beta_schedule, beta_start=config.beta_start,
                                               beta_end=config.beta_end)
    weights = min_snr_weights(scheduler, config.unet_snr_gamma)
    arms = {}
    for name, foreach in (("loop", False), ("foreach", True)):
        model = copy.deepcopy(unet)
        arms[name] = {"model": model, "ema": copy.deepcopy(model).requires_grad_(False), "foreach": foreach,
                      "optimizer": torch.optim.Adam(model.parameters(), lr=config.unet_learning_rate, foreach=foreach)}
    batch = config.unet_batch_size
    prompts = torch.randn(batch, config.model_max_length, config.text_hidden_size, generator=generator)
    times: dict[str, list[float]] = {"forward_backward": [], "update_loop": [], "update_foreach": []}

    def update(arm: dict[str, Any]) -> None:
        params = list(arm["model"].parameters())
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=arm["foreach"])
        arm["optimizer"].step()
        with torch.no_grad():
            if arm["foreach"]:
                torch._foreach_lerp_(list(arm["ema"].parameters()), params, 1.0 - config.unet_ema_decay)
            else:
                for ema_param, param in zip(arm["ema"].parameters(), params):
                    ema_param.lerp_(param, 1.0 - config.unet_ema_decay)

    for step in range(steps + 3):  # the first three steps warm the allocator and are dropped
        for name, arm in arms.items():
            latents = torch.randn(batch, 4, latent_size, latent_size, generator=generator)
            timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=generator)
            noise = torch.randn(latents.shape, generator=generator)

            def forward_backward() -> None:
                prediction = arm["model"](scheduler.add_noise(latents, noise, timesteps), timesteps,
                                          encoder_hidden_states=prompts).sample
                loss = ((prediction - noise).square().mean(dim=(1, 2, 3)) * weights[timesteps]).mean()
                arm["optimizer"].zero_grad()
                loss.backward()

            spent = _timed(forward_backward)
            spent_update = _timed(lambda: update(arm))
            if step >= 3:
                times["forward_backward"].append(spent)
                times[f"update_{name}"].append(spent_update)
    medians = {name: statistics.median(values) for name, values in times.items()}
    step_loop = medians["forward_backward"] + medians["update_loop"]
    step_foreach = medians["forward_backward"] + medians["update_foreach"]
    return {
        "steps": steps, "threads": torch.get_num_threads(), "parameter_tensors": len(list(unet.parameters())),
        "median_seconds": {k: round(v, 5) for k, v in medians.items()},
        "update_ratio_foreach_to_loop": round(medians["update_foreach"] / medians["update_loop"], 3),
        "step_ratio_foreach_to_loop": round(step_foreach / step_loop, 3),
        "projected_unet_seconds": {"loop": round(step_loop * config.unet_steps, 1),
                                   "foreach": round(step_foreach * config.unet_steps, 1)},
        "unet_steps": config.unet_steps,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60, help="measured steps per arm (after 3 warm-up steps)")
    parser.add_argument("--num_threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    if args.num_threads is not None:
        if args.num_threads < 1:
            raise ValueError(f"--num_threads must be >= 1, got {args.num_threads}")
        torch.set_num_threads(args.num_threads)
    result = measure(args.steps)
    ms = {k: f"{v * 1000:.1f} ms" for k, v in result["median_seconds"].items()}
    print(f"default UNet step ({result['threads']} threads, {result['parameter_tensors']} parameter tensors, "
          f"medians of {result['steps']}): {ms}")
    print(f"update foreach / loop: {result['update_ratio_foreach_to_loop']}x; whole step: "
          f"{result['step_ratio_foreach_to_loop']}x; over {result['unet_steps']} steps: "
          f"{result['projected_unet_seconds']['loop']} s -> {result['projected_unet_seconds']['foreach']} s")
    if args.out:
        from erasure.output import write_text_atomic

        write_text_atomic(Path(args.out), json.dumps(result, indent=2) + "\n")  # a kill leaves no half a file
    return result


if __name__ == "__main__":
    main()
