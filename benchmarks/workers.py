"""What one child process of the cost benchmark measures: a method's steps, the top-k selection,
or sampling throughput. Each function builds everything it needs from its arguments (same
size and seed: the same UNet weights and the same batches in every child) and returns plain
numbers, so :func:`benchmarks.measure.run_isolated` can run it in a fresh process.
"""

from __future__ import annotations

import contextlib
import gc
import resource
from typing import Any

import torch

from benchmarks.measure import PeakMemory, synchronize, timed
from benchmarks.unets import SIZES, build_sampling_pipeline, build_unet, random_data, scored_shapes
from erasure.config import MethodConfig
from erasure.methods import build_method
from erasure.methods.base import trainable
from erasure.topk import global_threshold
from pipelines.erase import noise_hook
from pipelines.sampling import generate, plan_samples
from prompts.base import Prompt, PromptSet

# The papers' Stable Diffusion settings (pipelines.erase.DOMAIN_DEFAULTS); the rest are MethodConfig's.
SD_METHOD_SETTINGS = {"kept_fraction": 0.995, "lam": 0.1}


def _autocast(device: torch.device, mixed_precision: str) -> contextlib.AbstractContextManager:
    if mixed_precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _step(method, unet, optimizer, forget_batch, retain_batch, device, mixed_precision, memory=None) -> dict:
    """One optimisation step as the erase loop takes it, timed by phase (seconds).

    With ``memory``, the extra memory of ``finalize_gradients`` (the projection, for
    scissorhands) above what was in use just before it is recorded too.
    """
    with _autocast(device, mixed_precision):
        _, compute_s = timed(device, lambda: method.compute_gradients(unet, forget_batch, retain_batch))
    before = memory.split() if memory is not None else 0
    _, finalize_s = timed(device, lambda: method.finalize_gradients(unet))
    finalize_extra = memory.since_split() - before if memory is not None else None

    def update() -> None:
        if optimizer is not None:
            optimizer.step()
        unet.zero_grad(set_to_none=True)

    _, optimizer_s = timed(device, update)
    return {"compute_s": compute_s, "finalize_s": finalize_s, "optimizer_s": optimizer_s,
            "step_s": compute_s + finalize_s + optimizer_s, "finalize_extra_mem_bytes": finalize_extra}


def _train_unet(size: str, seed: int, device: torch.device, gradient_checkpointing: bool) -> torch.nn.Module:
    unet = build_unet(size, seed).to(device).train()
    if gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    return unet


def _warm_up(size: str, batch_size: int, device: torch.device, mixed_precision: str, gradient_checkpointing: bool,
             seed: int) -> None:
    """One forward/backward and AdamW step on a throwaway UNet of the same shapes.

    First calls page in kernel code, create thread pools and kernel caches: this keeps them out
    of the measured memory (on the CPU, RSS counts touched library pages) and out of the
    trimming time. The throwaway UNet is freed before the baseline is taken.
    """
    unet = _train_unet(size, seed, device, gradient_checkpointing)
    objective, _, retain = random_data(unet, batch_size, 1, seed, device)
    with _autocast(device, mixed_precision):
        objective.loss(unet, retain[0]).mean().backward()
    torch.optim.AdamW(unet.parameters(), lr=1e-5).step()
    del unet, objective, retain
    gc.collect()


def method_cost(size: str, method: str, batch_size: int, num_batches: int, warmup: int, device: str,
                mixed_precision: str, gradient_checkpointing: bool, optimizer: str, num_threads: int,
                seed: int, forget_grad_dtype: str = "float32") -> dict[str, Any]:
    """Prepare ``method`` on a fresh UNet, then time ``warmup + num_batches`` steps (one repair epoch).

    Returns:
        ``steps``: the phase times of the ``num_batches`` timed steps (``compute_s``, ``finalize_s``,
        ``optimizer_s``, ``step_s``), ``prepare_s`` (trimming / saliency / frozen copy) and the peak
        memory of the prepare phase and of the steps (warm-up included: AdamW allocates its state there).
    """
    torch.set_num_threads(num_threads)
    dev = torch.device(device)
    if warmup:
        _warm_up(size, batch_size, dev, mixed_precision, gradient_checkpointing, seed)
    memory = PeakMemory(dev)
    memory.reset()
    base = memory.current()
    unet = _train_unet(size, seed, dev, gradient_checkpointing)
    objective, forget, retain = random_data(unet, batch_size, num_batches, seed, dev)
    runner = build_method(MethodConfig(method=method, seed=seed, forget_grad_dtype=forget_grad_dtype,
                                       **SD_METHOD_SETTINGS), objective)
    memory.reset()
    with _autocast(dev, mixed_precision):
        summary, prepare_s = timed(dev, lambda: runner.prepare(unet, forget, retain))
    prepare_peak = memory.peak() - base
    params = trainable(unet)
    adamw = torch.optim.AdamW(params, lr=1e-5) if optimizer == "adamw" else None
    runner.on_train_begin(warmup + num_batches)
    hook = noise_hook(objective, seed, rank=0)
    memory.reset()
    steps = []
    for step in range(warmup + num_batches):
        forget_batch, retain_batch = hook(step, forget[step % num_batches], retain[step % num_batches])
        steps.append(_step(runner, unet, adamw, forget_batch, retain_batch, dev, mixed_precision,
                           memory if step == 0 else None))
    step_peak = memory.peak() - base
    result = {
        "steps": [{k: v for k, v in s.items() if k.endswith("_s")} for s in steps[warmup:]],
        "peak_mem_bytes": step_peak, "prepare_s": prepare_s, "prepare_peak_mem_bytes": prepare_peak,
        "finalize_extra_mem_bytes": steps[0]["finalize_extra_mem_bytes"],
        "prepare_summary": {k: v for k, v in summary.items() if isinstance(v, (int, float))},
        "trainable_params": sum(p.numel() for p in params),
    }
    if dev.type == "cpu":
        result["child_ru_maxrss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return result


def topk_cost(size: str, kept_fraction: float, device: str, num_threads: int, seed: int) -> dict[str, Any]:
    """Time and extra memory of ``erasure.topk.global_threshold`` over random scores shaped like
    the UNet's scored parameters (half-normal values: non-negative with a tail, like |theta * g|)."""
    torch.set_num_threads(num_threads)
    dev = torch.device(device)
    memory = PeakMemory(dev)
    gen = torch.Generator(device=dev).manual_seed(seed)
    scores = [torch.randn(shape, generator=gen, device=dev).abs_() for shape in scored_shapes(size)]
    # page in the kernels of every code path (histogram refinement included) before the baseline
    global_threshold([torch.rand(4096, generator=gen, device=dev)], kept_fraction, max_candidates=64)
    memory.reset()
    base = memory.current()
    threshold, seconds = timed(dev, lambda: global_threshold(scores, kept_fraction))
    return {"seconds": seconds, "extra_mem_bytes": memory.peak() - base, "scores": threshold.n_total,
            "scores_bytes": sum(s.numel() * s.element_size() for s in scores), "n_select": threshold.n_select,
            "kept_fraction": kept_fraction, "measure": memory.measure}


PROMPT_TEXTS = ("a photo of a church", "an image of a person wearing clothes", "a handwritten digit seven",
                "a photo of a person")


def sampling_cost(size: str, images: int, batch_size: int, num_inference_steps: int, device: str,
                  num_threads: int, seed: int) -> dict[str, Any]:
    """Images per second through ``pipelines.sampling.generate``: ``batch_size`` per call vs one by one
    (classifier-free guidance 7.5, DDIM, decoded to arrays; float16 on CUDA, float32 on the CPU)."""
    torch.set_num_threads(num_threads)
    dev = torch.device(device)
    dtype = torch.float16 if dev.type == "cuda" else torch.float32
    pipe = build_sampling_pipeline(size, seed).to(dev, dtype)
    prompts = PromptSet("benchmark", [Prompt(text) for text in PROMPT_TEXTS])
    items = plan_samples(prompts, images_per_prompt=-(-images // len(prompts)), base_seed=seed)[:images]

    def draw(batch: int, todo: list) -> None:
        for _ in generate(pipe, todo, batch, num_inference_steps, output_type="np", show_progress=False):
            pass

    draw(1, items[:1])  # warm-up
    _, single_s = timed(dev, lambda: draw(1, items))
    _, batched_s = timed(dev, lambda: draw(batch_size, items))
    synchronize(dev)
    return {"batched_ips": images / batched_s, "single_ips": images / single_s, "ratio": single_s / batched_s,
            "images": images, "batch_size": batch_size, "num_inference_steps": num_inference_steps,
            "guidance_scale": 7.5, "dtype": str(dtype).replace("torch.", ""),
            "image_size": SIZES[size].unet["sample_size"] * pipe.vae_scale_factor}
