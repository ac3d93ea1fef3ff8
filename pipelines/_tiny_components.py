"""Tiny Stable Diffusion components built from config: tokenizer, text encoder, VAE, UNet.

Everything here is made locally (no Hub access): CLIP's own BPE vocabulary from a vendored
file, a random frozen CLIP text encoder, and untrained ``AutoencoderKL`` / ``UNet2DConditionModel``
sized for 32x32 images with 8x8 latents. ``pipelines/_tiny_training.py`` trains the last two.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import torch

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"
# OpenAI CLIP's BPE merges (MIT), vendored: see pipelines/assets/README.md.
CLIP_BPE_FILE = Path(__file__).resolve().parent / "assets" / "bpe_simple_vocab_16e6.txt.gz"
CLIP_NUM_MERGES = 49152 - 256 - 2


def byte_level_alphabet() -> list[str]:
    """The 256 printable stand-ins for bytes used by GPT-2/CLIP byte-level BPE, in CLIP's order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes, extra = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            codes.append(256 + extra)
            extra += 1
    return [chr(code) for code in codes]


def clip_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """OpenAI CLIP's byte-level BPE (the vocabulary of SD v1.x's tokenizer), from the vendored file.

    Same construction as CLIP's ``SimpleTokenizer``: the 256 byte characters, the same with
    ``</w>``, one token per merge (the first 48,894 merges of ``bpe_simple_vocab_16e6``), then
    ``<|startoftext|>`` and ``<|endoftext|>``: 49,408 tokens.

    Returns:
        ``(vocab, merges)``: token -> id, and merge lines ``"left right"`` in rank order.
    """
    with gzip.open(CLIP_BPE_FILE, "rt", encoding="utf-8") as handle:
        merges = handle.read().split("\n")[1 : CLIP_NUM_MERGES + 1]
    alphabet = byte_level_alphabet()
    tokens = [*alphabet, *(char + END_OF_WORD for char in alphabet), *("".join(m.split()) for m in merges)]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    return {token: index for index, token in enumerate(tokens)}, merges


def build_tokenizer(folder: str | Path, words: tuple[str, ...] = (), model_max_length: int = 20):
    """Write CLIP's ``vocab.json`` + ``merges.txt`` into ``folder`` and load a ``CLIPTokenizer``.

    Pads with ``<|endoftext|>`` like SD v1.4's tokenizer. ``folder`` is also where
    ``save_pretrained`` may go.

    Raises:
        RuntimeError: if a word of ``words`` does not come out as a single token.
    """
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_vocab_and_merges()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    tokenizer = CLIPTokenizer(
        vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"),
        model_max_length=model_max_length, pad_token=EOS_TOKEN,
    )
    for word in words:
        ids = tokenizer(word, add_special_tokens=False).input_ids
        if ids != [vocab[word + END_OF_WORD]]:
            raise RuntimeError(f"word {word!r} tokenised to {tokenizer.convert_ids_to_tokens(ids)}, not one token")
    return tokenizer


def build_text_encoder(tokenizer, hidden_size: int, num_layers: int, num_heads: int, token_embedding_std: float):
    """A randomly initialised, frozen ``CLIPTextModel`` sized for ``tokenizer``.

    CLIP initialises token and position embeddings alike (std 0.02), so in a random 2-layer
    encoder prompts that differ by one word come out nearly parallel (cosine ~0.99 for
    "zero"/"six"). Drawing token embeddings with ``token_embedding_std`` (1.0 by default)
    lets the word dominate its position, which the UNet's cross-attention can then read.
    """
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        projection_dim=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    text_encoder = CLIPTextModel(config)
    with torch.no_grad():
        text_encoder.get_input_embeddings().weight.normal_(0.0, token_embedding_std)
    return text_encoder.requires_grad_(False).eval()


def build_vae(image_size: int, block_out_channels: tuple[int, ...], latent_channels: int = 4):
    """An untrained ``AutoencoderKL`` on RGB images; it downsamples by ``2 ** (len(blocks) - 1)``."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(block_out_channels),
        up_block_types=("UpDecoderBlock2D",) * len(block_out_channels),
        block_out_channels=tuple(block_out_channels),
        latent_channels=latent_channels,
        layers_per_block=1,
        norm_num_groups=min(block_out_channels),
        sample_size=image_size,
    )


def build_unet(
    latent_size: int, block_out_channels: tuple[int, int], cross_attention_dim: int, latent_channels: int = 4,
    cross_attention: tuple[bool, bool] = (True, True),
):
    """An untrained two-level ``UNet2DConditionModel``; ``cross_attention`` says which levels (the
    latent resolution, then half of it) read the prompt, besides the mid block, which always does.
    SD v1.x reads it at three of its four levels; here both levels do (see ``DefaultModelConfig``)."""
    from diffusers import UNet2DConditionModel

    down = tuple("CrossAttnDownBlock2D" if on else "DownBlock2D" for on in cross_attention)
    up = tuple("CrossAttnUpBlock2D" if on else "UpBlock2D" for on in reversed(cross_attention))
    return UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=latent_channels,
        out_channels=latent_channels,
        layers_per_block=1,
        block_out_channels=tuple(block_out_channels),
        down_block_types=down,
        up_block_types=up,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=8,
    )


def build_schedulers(num_train_timesteps: int = 1000, beta_schedule: str = "scaled_linear",
                     beta_start: float = 0.00085, beta_end: float = 0.012):
    """The DDPM training scheduler and the DDIM one the saved pipeline samples with (SD-style
    "leading" spacing, no clipping). The default betas are SD v1.x's own (``scaled_linear``,
    0.00085 to 0.012): DDPM's linear 1e-4 to 0.02 left every step past ~600 at an SNR under 0.01
    on 8x8 latents, where nothing of the digit survives (see ``DefaultModelConfig``)."""
    from diffusers import DDIMScheduler, DDPMScheduler

    train_scheduler = DDPMScheduler(
        num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule, beta_start=beta_start,
        beta_end=beta_end, clip_sample=False,
    )
    sample_scheduler = DDIMScheduler.from_config(
        train_scheduler.config, clip_sample=False, set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading"
    )
    return train_scheduler, sample_scheduler
