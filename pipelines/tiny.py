"""A tiny random-weight Stable Diffusion pipeline built from configs: the test and benchmark fixture.

`build_tiny_pipeline()` gives a `StableDiffusionPipeline` with the same component types as
SD v1.4 (CLIP text encoder and tokenizer, `UNet2DConditionModel`, `AutoencoderKL`, DDIM) at
a size that builds in a fraction of a second and samples a 32x32 image in milliseconds per
step on a CPU. Nothing is downloaded: the tokenizer's vocabulary is written by hand.

    pipe = build_tiny_pipeline(seed=0)
    pipe.save_pretrained("tiny-sd")      # a folder `load_pipeline` and the jobs accept

`build_tiny_xl_pipeline()` is the same for SDXL: a `StableDiffusionXLPipeline` with two text
encoders (the second with a pooled projection) and a UNet with SDXL's added "text_time"
conditioning, laid out like SDXL base (no attention in the first level, two transformer
layers in the second, linear projections, Euler sampler).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from transformers import CLIPTokenizer

__all__ = ["TINY_WORDS", "build_tiny_pipeline", "build_tiny_tokenizer", "build_tiny_xl_pipeline"]

# Whole words in the vocabulary (merge order splits a few, e.g. "zero"); other text falls back to
# single characters, so any prompt tokenizes.
TINY_WORDS = (
    "a", "an", "of", "photo", "image", "person", "wearing", "clothes", "nudity", "naked", "erotic",
    "sexual", "church", "handwritten", "digit", "zero", "one", "two", "three", "four", "five", "six",
    "seven", "eight", "nine",
)
MODEL_MAX_LENGTH = 16
VAE_SCALE_FACTOR = 2  # two VAE blocks: one 2x downsampling


def _byte_characters() -> list[str]:
    """The 256 printable stand-ins of CLIP's byte-level BPE (GPT-2's bytes_to_unicode)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(len(extra))]


def _word_merges(words: tuple[str, ...]) -> list[tuple[str, str]]:
    """Left-to-right merges that assemble each word into one `word</w>` token."""
    merges: list[tuple[str, str]] = []
    for word in words:
        pieces = [*word[:-1], word[-1] + "</w>"]
        left = pieces[0]
        for right in pieces[1:]:
            if (left, right) not in merges:
                merges.append((left, right))
            left += right
    return merges


def build_tiny_tokenizer(folder: str | Path | None = None) -> CLIPTokenizer:
    """A `CLIPTokenizer` over a hand-made vocabulary (bytes, bytes + `</w>`, `TINY_WORDS`).

    Args:
        folder: where vocab.json and merges.txt are written; None uses a temporary folder
            (the tokenizer keeps everything it needs in memory, `save_pretrained` works).

    Returns:
        The tokenizer, `model_max_length` 16, padding with `<|endoftext|>` like SD v1.4.
    """
    from transformers import CLIPTokenizer

    characters = _byte_characters()
    merges = _word_merges(TINY_WORDS)
    tokens = [*characters, *(c + "</w>" for c in characters)]
    tokens += [a + b for a, b in merges if a + b not in tokens]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    with tempfile.TemporaryDirectory() as scratch:
        target = Path(folder or scratch)
        target.mkdir(parents=True, exist_ok=True)
        (target / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
        lines = ["#version: 0.2", *(f"{a} {b}" for a, b in merges)]
        (target / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        # from_pretrained reads vocab.json + merges.txt under transformers 4.x and 5.x alike.
        return CLIPTokenizer.from_pretrained(target, model_max_length=MODEL_MAX_LENGTH, pad_token="<|endoftext|>")


def _text_config(tokenizer: CLIPTokenizer, **extra: int) -> dict:
    return dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=MODEL_MAX_LENGTH, layer_norm_eps=1e-5,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id, **extra)


def _tiny_vae(sample_size: int, **extra: float):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        sample_size=sample_size, in_channels=3, out_channels=3, latent_channels=4,
        block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=32,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), **extra,
    )


def _tiny_unet(sample_size: int, **layout):
    """A UNet with channels (32, 64), one layer per block, on `sample_size // 2` latents."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(sample_size=sample_size // VAE_SCALE_FACTOR, in_channels=4, out_channels=4,
                                block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=32, **layout)


def _check_size(sample_size: int) -> None:
    if sample_size <= 0 or sample_size % VAE_SCALE_FACTOR:
        raise ValueError(f"sample_size={sample_size}: expected a positive multiple of {VAE_SCALE_FACTOR}")


def build_tiny_pipeline(seed: int = 0, sample_size: int = 32) -> StableDiffusionPipeline:
    """A random-weight SD pipeline: UNet and VAE with channels (32, 64), a 2-layer CLIP encoder.

    Args:
        seed: seeds the weight initialisation (the global RNG is left as it was).
        sample_size: image side in pixels (even); latents are 4 x sample_size/2 x sample_size/2,
            so the UNet's own `sample_size` is `sample_size // 2`.

    Returns:
        A `StableDiffusionPipeline` on the CPU in float32 with a DDIM scheduler (SD v1.4's
        beta schedule) and no safety checker.

    Raises:
        ValueError: an odd or non-positive `sample_size`.
    """
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel

    _check_size(sample_size)
    tokenizer = build_tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = _tiny_unet(sample_size, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                          up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                          attention_head_dim=8)
        vae = _tiny_vae(sample_size)
        text_encoder = CLIPTextModel(CLIPTextConfig(**_text_config(tokenizer)))
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def build_tiny_xl_pipeline(seed: int = 0, sample_size: int = 32) -> StableDiffusionXLPipeline:
    """A random-weight SDXL pipeline: UNet and VAE with channels (32, 64), two 2-layer CLIP encoders.

    The UNet's cross-attention takes both encoders' hidden states side by side (32 + 32), and its
    added embedding the 8-dimensional embedding of each of the 6 time ids plus the second
    encoder's 32-dimensional pooled projection (80 inputs), as SDXL base's 6 x 256 + 1280.

    Args:
        seed: seeds the weight initialisation (the global RNG is left as it was).
        sample_size: image side in pixels (even).

    Returns:
        A `StableDiffusionXLPipeline` on the CPU in float32 with SDXL's Euler scheduler, no
        watermarker and ``force_zeros_for_empty_prompt`` (SDXL base's unconditional branch).

    Raises:
        ValueError: an odd or non-positive `sample_size`.
    """
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    _check_size(sample_size)
    tokenizer = build_tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = _tiny_unet(sample_size, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                          up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 2),
                          attention_head_dim=(2, 4), use_linear_projection=True, cross_attention_dim=64,
                          addition_embed_type="text_time", addition_time_embed_dim=8,
                          projection_class_embeddings_input_dim=6 * 8 + 32)
        vae = _tiny_vae(sample_size, scaling_factor=0.13025)  # SDXL's VAE scaling
        text_encoder = CLIPTextModel(CLIPTextConfig(**_text_config(tokenizer)))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**_text_config(tokenizer, projection_dim=32)))
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
        timestep_spacing="leading", interpolation_type="linear", use_karras_sigmas=False,
    )
    return StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer, unet=unet, scheduler=scheduler, force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
