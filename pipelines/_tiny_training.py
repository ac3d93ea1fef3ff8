"""Training loops for the tiny default model: the VAE (reconstruction + KL) and the UNet (DDPM).

Both are plain single-process loops over tensors held in memory (a few thousand
32x32 renders); ``pipelines/default_model.py`` wires them into a cached build.
"""

from __future__ import annotations

import copy
import math

import torch
from tqdm.auto import tqdm


def epoch_batches(num_items: int, batch_size: int, num_steps: int, generator: torch.Generator):
    """Yield ``num_steps`` index batches from successive seeded permutations (deterministic order)."""
    steps_done = 0
    while True:
        for batch in torch.randperm(num_items, generator=generator).split(batch_size):
            if steps_done == num_steps:
                return
            if len(batch) < batch_size:  # keep every step the same size; the tail joins the next epoch
                break
            yield batch
            steps_done += 1


def adam(parameters, learning_rate: float) -> torch.optim.Adam:
    """Adam with the multi-tensor ("foreach") update. On CPU torch defaults to a Python loop over
    the parameters; the foreach kernels do the same arithmetic in the same order (the build's
    weights are bitwise those of the loop, checked) in about 3/4 of the time, 286 tensors a UNet step."""
    return torch.optim.Adam(parameters, lr=learning_rate, foreach=True)


def warmup_lambda(warmup_steps: int):
    """Linear warm-up to the base learning rate, then constant."""
    return lambda step: min(1.0, (step + 1) / max(1, warmup_steps))


def train_vae(
    vae, images: torch.Tensor, steps: int, batch_size: int, learning_rate: float, kl_weight: float, generator
):
    """Fit ``vae`` to ``images`` in [-1, 1]: MSE reconstruction + ``kl_weight`` * KL (LDM, Sec. 3).

    Returns:
        ``vae`` in eval mode.
    """
    vae.train()
    optimizer = adam(vae.parameters(), learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_lambda(steps // 10))
    progress = tqdm(epoch_batches(len(images), batch_size, steps, generator), total=steps, desc="tiny VAE")
    for batch in progress:
        posterior = vae.encode(images[batch]).latent_dist
        reconstruction = vae.decode(posterior.sample(generator=generator)).sample
        mse = torch.nn.functional.mse_loss(reconstruction, images[batch])
        loss = mse + kl_weight * posterior.kl().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        progress.set_postfix(mse=f"{mse.item():.4f}", refresh=False)
    return vae.eval()


@torch.no_grad()
def encode_latents(vae, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Posterior means of ``images`` (unscaled): the cached UNet training latents."""
    return torch.cat([vae.encode(chunk).latent_dist.mode() for chunk in images.split(batch_size)])


@torch.no_grad()
def encode_prompts(tokenizer, text_encoder, prompts: list[str]) -> torch.Tensor:
    """Last hidden states ``[len(prompts), max_length, hidden]`` exactly as the SD pipeline computes them."""
    input_ids = tokenizer(
        prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    return text_encoder(input_ids)[0]


@torch.no_grad()
def update_ema(ema_model: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * model``, in one foreach call (bitwise the per-parameter lerp)."""
    torch._foreach_lerp_(list(ema_model.parameters()), list(model.parameters()), 1.0 - decay)


def min_snr_weights(scheduler, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights per timestep for epsilon prediction, ``min(SNR_t, gamma) / SNR_t``
    (Hang et al. 2023, Eq. 8 with the epsilon target): the nearly clean timesteps, where the MSE
    is dominated by fine detail, stop outweighing the noisy ones that decide the digit and colour."""
    alphas_cumprod = scheduler.alphas_cumprod.double()
    snr = alphas_cumprod / (1.0 - alphas_cumprod)
    return (snr.clamp(max=gamma) / snr).float()


def train_unet(unet, scheduler, latents, sample_conditions, prompt_embeds, config, generator):
    """Epsilon-prediction DDPM training (Ho et al. 2020, Eq. 14) with classifier-free dropout.

    Args:
        unet: the ``UNet2DConditionModel`` to train.
        scheduler: a ``DDPMScheduler`` providing ``add_noise`` and ``num_train_timesteps``.
        latents: scaled latents ``[N, C, h, w]``.
        sample_conditions: ``(batch indices [B], generator) -> prompt indices [B]`` into
            ``prompt_embeds``: draws a phrasing for each image at every step.
        prompt_embeds: ``[P + 1, L, D]``; the last row is the empty prompt, used for a
            ``config.unet_uncond_probability`` share of samples (Ho & Salimans 2022, Sec. 3.2).
        config: a ``DefaultModelConfig`` (``unet_*`` fields; ``unet_snr_gamma`` weights the loss
            by ``min_snr_weights`` when set).
        generator: the ``torch.Generator`` for batches, phrasings, timesteps, noise and dropout.

    Returns:
        The exponential moving average of the weights (decay ``config.unet_ema_decay``), in eval mode.
    """
    unet.train()
    ema_unet = copy.deepcopy(unet).requires_grad_(False)
    optimizer = adam(unet.parameters(), config.unet_learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_lambda(config.unet_warmup_steps))
    empty_prompt = prompt_embeds.shape[0] - 1
    num_timesteps = scheduler.config.num_train_timesteps
    weights = min_snr_weights(scheduler, config.unet_snr_gamma) if config.unet_snr_gamma else None
    batches = epoch_batches(len(latents), config.unet_batch_size, config.unet_steps, generator)
    progress = tqdm(batches, total=config.unet_steps, desc="tiny UNet")
    for step, batch in enumerate(progress):
        clean, conditions = latents[batch], sample_conditions(batch, generator)
        dropped = torch.rand(len(batch), generator=generator) < config.unet_uncond_probability
        conditions[dropped] = empty_prompt
        noise = torch.randn(clean.shape, generator=generator)
        timesteps = torch.randint(0, num_timesteps, (len(batch),), generator=generator)
        noisy = scheduler.add_noise(clean, noise, timesteps)
        prediction = unet(noisy, timesteps, encoder_hidden_states=prompt_embeds[conditions]).sample
        per_sample = (prediction - noise).square().mean(dim=(1, 2, 3))
        loss = (per_sample * weights[timesteps]).mean() if weights is not None else per_sample.mean()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0, foreach=True)  # CPU default: a loop
        optimizer.step()
        schedule.step()
        # EMA warm-up as in diffusers' EMAModel: early averages do not drag in the random init.
        update_ema(ema_unet, unet, min(config.unet_ema_decay, (1 + step) / (10 + step)))
        progress.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    return ema_unet.eval()


def latent_scaling_factor(latents: torch.Tensor) -> float:
    """``1 / std`` of the latents, so the diffusion sees unit-variance data (LDM, Sec. 4.3.2)."""
    std = latents.float().std().item()
    if not math.isfinite(std) or std <= 0:
        raise RuntimeError(f"latent std is {std}: the VAE collapsed; train it longer or lower the KL weight")
    return 1.0 / std


def pretrain_text_encoder(text_encoder, tokenizer, prompts: list[str], labels: torch.Tensor, num_classes: list[int],
                          steps: int, batch_size: int, learning_rate: float, generator, pooling: str = "mean"):
    """Teach a random ``CLIPTextModel`` what the grammar's prompts mean: a linear probe per label
    (here the digit, and the colour or "none") on the pooled last hidden state, trained jointly.

    SD's CLIP text encoder arrives pretrained: "two", "2" and every phrasing of a digit land near
    each other, and the UNet reads the concept from any position. A random encoder gives each
    phrasing its own unrelated hidden states (the padding positions mix every word at random),
    and the UNet then needs several times the steps to learn the digit (see
    ``DefaultModelConfig``). The probe heads are dropped; the encoder is frozen afterwards.

    Args:
        prompts: texts; ``labels`` ``[len(prompts), len(num_classes)]`` their class per label.
        num_classes: classes of each label column.
        pooling: ``"mean"`` over every position (padding included, as the UNet attends to all of
            them) or ``"eos"`` (CLIP's pooled end-of-text state).

    Returns:
        ``text_encoder`` frozen and in eval mode.
    """
    if pooling not in ("mean", "eos"):
        raise ValueError(f"pooling={pooling!r} is unknown; choose 'mean' or 'eos'")
    if labels.shape != (len(prompts), len(num_classes)):
        raise ValueError(f"labels must be [{len(prompts)}, {len(num_classes)}], got {tuple(labels.shape)}")
    input_ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                          return_tensors="pt").input_ids
    text_encoder.requires_grad_(True).train()
    heads = torch.nn.ModuleList(torch.nn.Linear(text_encoder.config.hidden_size, n) for n in num_classes)
    optimizer = adam([*text_encoder.parameters(), *heads.parameters()], learning_rate)
    progress = tqdm(range(steps), desc="tiny text encoder")
    for _ in progress:
        batch = torch.randint(len(prompts), (batch_size,), generator=generator)
        output = text_encoder(input_ids[batch])
        pooled = output.last_hidden_state.mean(1) if pooling == "mean" else output.pooler_output
        loss = sum(torch.nn.functional.cross_entropy(head(pooled), labels[batch, k]) for k, head in enumerate(heads))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        progress.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    return text_encoder.requires_grad_(False).eval()
