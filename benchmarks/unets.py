"""The UNets, random stand-in data and sampling pipelines of the cost benchmark, built from configs.

Nothing is downloaded and every weight is random: the benchmark measures cost (time, memory),
which depends on the architecture and the tensor shapes, not on what the weights learned.

    unet = build_unet("sd14")                      # the SD v1.4 UNet architecture, 859.5M parameters
    objective, forget, retain = random_data(unet, batch_size=1, num_batches=1)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from erasure.scope import scope_parameters

TEXT_LENGTH = 77  # CLIP's context length: the text embeddings of SD v1.x are [B, 77, D]
PROMPTS_PER_SET = 8  # distinct random "prompts" in the forget set and in the retain set


def _unet_config(sample_size: int, channels: tuple[int, ...], layers: int, cross_attention_dim: int) -> dict[str, Any]:
    """A UNet2DConditionModel config with SD's block layout: cross-attention in all but the lowest level."""
    levels = len(channels)
    return {
        "sample_size": sample_size, "in_channels": 4, "out_channels": 4, "block_out_channels": channels,
        "layers_per_block": layers, "cross_attention_dim": cross_attention_dim, "attention_head_dim": 8,
        "norm_num_groups": 32,
        "down_block_types": ("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
        "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1),
    }


@dataclass(frozen=True)
class Size:
    """One benchmark size: the UNet config and the defaults that keep a CPU run short.

    ``vae`` names the sampling pipeline's VAE: ``"tiny"`` (2 levels, 2x downsampling, as in
    ``pipelines.tiny``) or ``"sd"`` (SD v1.4's 4-level VAE, 8x downsampling).
    """

    unet: dict[str, Any]
    batch_size: int
    sample_images: int
    sample_batch_size: int
    vae: str


SIZES: dict[str, Size] = {
    # pipelines.tiny's UNet (32x32 images, 16x16 latents)
    "tiny": Size(_unet_config(16, (32, 64), 1, 32), batch_size=4, sample_images=8, sample_batch_size=8, vae="tiny"),
    # a mid-size UNet (~35M parameters, 32x32 latents) for CPU ratios
    "mid": Size(_unet_config(32, (64, 128, 256, 256), 2, 256), batch_size=2, sample_images=4, sample_batch_size=4,
                vae="tiny"),
    # the exact SD v1.4 UNet architecture (CompVis/stable-diffusion-v1-4, unet/config.json)
    "sd14": Size(_unet_config(64, (320, 640, 1280, 1280), 2, 768), batch_size=16, sample_images=16,
                 sample_batch_size=16, vae="sd"),
}


def build_unet(size: str, seed: int = 0) -> nn.Module:
    """A random-weight ``UNet2DConditionModel`` of ``SIZES[size]`` (float32, CPU).

    Raises:
        ValueError: an unknown size (the message lists the known ones).
    """
    from diffusers import UNet2DConditionModel

    if size not in SIZES:
        raise ValueError(f"size='{size}' is unknown; choose one of {list(SIZES)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DConditionModel(**SIZES[size].unet)


def _meta_unet(size: str) -> nn.Module:
    """The UNet of ``size`` on the meta device: shapes only, no memory, no initialisation."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel(**SIZES[size].unet)


def parameter_count(size: str) -> int:
    """Number of parameters of the UNet of ``size`` (859,520,964 for ``sd14``, as SD v1.4's)."""
    return sum(p.numel() for p in _meta_unet(size).parameters())


def scored_shapes(size: str) -> list[torch.Size]:
    """Shapes of the parameters trimming scores (``erasure.scope``'s default scope)."""
    return [p.shape for p in scope_parameters(_meta_unet(size)).values()]


def random_data(unet: nn.Module, batch_size: int, num_batches: int, seed: int = 0,
                device: str | torch.device = "cpu") -> tuple[Any, list[dict], list[dict]]:
    """The diffusion objective over random text embeddings, and random latent batches standing in for data.

    The embedding table holds the empty prompt (id 0), ``PROMPTS_PER_SET`` forget prompts and as
    many retain prompts, each ``[77, D]`` N(0, 1); forget prompt i is relabeled to retain prompt i.
    Latents are N(0, 1) ``[B, 4, h, w]``. Batches carry no noise: the job's ``noise_hook`` adds it
    per step, and the one-off passes (trimming, saliency) draw it per sample, as in the erase job.

    Returns:
        ``(DiffusionObjective, forget_batches, retain_batches)``; batches are on ``device``.
    """
    from diffusers import DDPMScheduler

    from pipelines.objective import DiffusionObjective

    config = unet.config
    gen = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(1 + 2 * PROMPTS_PER_SET, TEXT_LENGTH, config.cross_attention_dim, generator=gen)
    forget_ids = torch.arange(1, 1 + PROMPTS_PER_SET)
    retain_ids = forget_ids + PROMPTS_PER_SET
    relabel = torch.arange(len(embeddings))
    relabel[forget_ids] = retain_ids
    # SD v1.4's training schedule (scheduler/scheduler_config.json)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear")
    objective = DiffusionObjective(scheduler, embeddings, relabel, uncond_id=0, seed=seed)
    shape = (batch_size, config.in_channels, config.sample_size, config.sample_size)

    def batches(ids: torch.Tensor, first_index: int) -> list[dict]:
        out = []
        for k in range(num_batches):
            index = torch.arange(batch_size) + first_index + k * batch_size
            out.append({"x": torch.randn(shape, generator=gen).to(device), "y": ids[index % len(ids)].to(device),
                        "index": index.to(device)})
        return out

    return objective, batches(forget_ids, 0), batches(retain_ids, 1_000_000)


def build_sampling_pipeline(size: str, seed: int = 0) -> Any:
    """A random-weight ``StableDiffusionPipeline`` around ``build_unet(size, seed)``.

    ``tiny`` is ``pipelines.tiny.build_tiny_pipeline`` itself. Larger sizes keep its tokenizer,
    swap in a CLIP text encoder whose width matches the UNet's cross-attention (CLIP ViT-L/14's
    text tower for ``sd14``) and, for ``sd14``, SD v1.4's VAE architecture (512x512 images).
    """
    from diffusers import AutoencoderKL, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel

    from pipelines.tiny import build_tiny_pipeline

    spec = SIZES[size]
    if size == "tiny":  # same config and seed as build_unet("tiny"): the very same UNet
        return build_tiny_pipeline(seed=seed)
    factor = 8 if spec.vae == "sd" else 2
    tiny = build_tiny_pipeline(seed=seed, sample_size=spec.unet["sample_size"] * 2)
    tokenizer = tiny.tokenizer
    width = spec.unet["cross_attention_dim"]
    large = spec.vae == "sd"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if large:
            tokenizer.model_max_length = TEXT_LENGTH
            vae = AutoencoderKL(sample_size=spec.unet["sample_size"] * factor, block_out_channels=(128, 256, 512, 512),
                                layers_per_block=2, latent_channels=4,
                                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
        else:
            vae = tiny.vae
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=width, intermediate_size=4 * width,
            num_hidden_layers=12 if large else 2, num_attention_heads=12 if large else 4,
            max_position_embeddings=tokenizer.model_max_length, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        ))
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=build_unet(size, seed), scheduler=tiny.scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
