"""The offline default model: tokenizer, cached atomic build, judge. One few-step build is shared."""

from __future__ import annotations

import copy
import hashlib
import json
import os

import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import StableDiffusionPipeline  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import CLIPTokenizer  # noqa: E402

from eval.digits_classifier import load_digits_judge  # noqa: E402
from pipelines import default_model  # noqa: E402
from pipelines._tiny_components import END_OF_WORD, build_tokenizer  # noqa: E402
from pipelines._tiny_training import epoch_batches, latent_scaling_factor, min_snr_weights  # noqa: E402
from pipelines.default_model import (  # noqa: E402
    BUILD_MARKER,
    DefaultModelConfig,
    build_default_model,
    default_judge_path,
    default_model_path,
    digit_prompt,
    is_complete_build,
    phrasing_sampler,
    render_training_set,
)
from prompts.colored_digits import COLOR_NAMES, DIGIT_WORDS, grammar, grammar_prompts  # noqa: E402

UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and a busy 2-core CI box loses a lot to them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def fast_build(tmp_path_factory, one_thread):
    return build_default_model(tmp_path_factory.mktemp("fast") / "model", seed=0, config=DefaultModelConfig.fast())


def test_digit_prompt():
    assert digit_prompt(7) == "a handwritten digit seven"
    assert [digit_prompt(d).split()[-1] for d in range(10)] == list(DIGIT_WORDS)
    with pytest.raises(ValueError, match="0..9"):
        digit_prompt(10)


def test_tokenizer_is_clip_and_every_grammar_word_is_one_token(tmp_path):
    words = tuple(grammar().vocabulary())
    tokenizer = build_tokenizer(tmp_path / "vocab", words, model_max_length=20)
    vocab = tokenizer.get_vocab()
    assert len(vocab) == 49408  # CLIP's, as in SD v1.x
    for word in words:
        assert tokenizer(word, add_special_tokens=False).input_ids == [vocab[word + END_OF_WORD]], word
    # SD v1.4's tokenizer gives these ids (openai/clip-vit-large-patch14)
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    ids = tokenizer("the number 2", padding="max_length", max_length=20).input_ids
    assert ids[:5] == [49406, 518, 2842, 273, 49407] and ids[5:] == [49407] * 15
    longest = max(len(tokenizer(p).input_ids) for p in grammar_prompts().texts)
    assert longest + 5 <= 20  # room for an attack's 5-token prefix
    tokenizer.save_pretrained(tmp_path / "saved")
    reloaded = CLIPTokenizer.from_pretrained(tmp_path / "saved")
    assert reloaded.model_max_length == 20
    assert reloaded("a red handwritten digit two").input_ids == tokenizer("a red handwritten digit two").input_ids


def test_training_set_is_seeded_and_colours_are_uniform():
    config = DefaultModelConfig(renders_per_digit=1)
    images, digits, colors = render_training_set(0, config)
    again, _, again_colors = render_training_set(0, config)
    assert torch.equal(images, again) and torch.equal(colors, again_colors)
    assert images.shape == (len(digits), 3, 32, 32) and -1.0 <= images.min() and images.max() <= 1.0
    counts = torch.bincount(colors, minlength=len(COLOR_NAMES)).float()
    assert counts.min() / counts.max() > 0.8


def test_phrasing_sampler_names_the_right_digit_and_colour():
    digits, colors = torch.arange(60) % 10, torch.arange(60) % len(COLOR_NAMES)
    sample = phrasing_sampler(digits, colors)
    prompts = grammar_prompts().prompts
    generator = torch.Generator().manual_seed(0)
    named = 0
    for _ in range(20):
        batch = torch.randperm(60, generator=generator)[:16]
        for i, index in zip(batch.tolist(), sample(batch, generator).tolist()):
            extra = prompts[index].extra
            assert extra["label"] == digits[i]
            assert extra["color"] in (None, COLOR_NAMES[colors[i]])
            named += extra["color"] is not None
    assert abs(named / 320 - grammar().colored_fraction) < 0.1
    # both names and both phrasing groups are trained on (the base model must know them all)
    seen = {(prompts[i].extra["form"], prompts[i].extra["group"])
            for i in sample(torch.arange(60).repeat(20), generator).tolist()}
    assert seen == {("word", "erase"), ("numeral", "erase"), ("word", "paraphrase"), ("numeral", "paraphrase")}


def test_config_validation_and_hash():
    with pytest.raises(ValueError, match="unet_steps"):
        DefaultModelConfig(unet_steps=0)
    with pytest.raises(ValueError, match="text_heads"):
        DefaultModelConfig(text_hidden_size=30, text_heads=4)
    with pytest.raises(ValueError, match="image_size"):
        DefaultModelConfig(image_size=36)
    with pytest.raises(ValueError, match="beta_schedule='cosine' is unknown"):
        DefaultModelConfig(beta_schedule="cosine")
    with pytest.raises(ValueError, match="beta_start < beta_end"):
        DefaultModelConfig(beta_start=0.02, beta_end=0.01)
    with pytest.raises(ValueError, match="unet_cross_attention must have 2 entries"):
        DefaultModelConfig(unet_cross_attention=(True,))
    assert DefaultModelConfig().config_hash(0) == DefaultModelConfig().config_hash(0)
    assert DefaultModelConfig().config_hash(0) != DefaultModelConfig().config_hash(1)
    assert DefaultModelConfig().config_hash(0) != DefaultModelConfig.fast().config_hash(0)


def test_default_paths(monkeypatch, tmp_path):
    monkeypatch.setenv("SCISSORHANDS_CACHE", str(tmp_path))
    assert default_model_path(seed=3) == tmp_path / "default-v5-seed3"
    assert default_model_path(seed=3, config=DefaultModelConfig.fast()).name.startswith("default-v5-seed3-")
    assert default_judge_path(seed=3) == tmp_path / "default-v5-seed3" / "judge"


def test_epoch_batches_and_scaling_factor():
    batches = list(epoch_batches(10, 4, 5, torch.Generator().manual_seed(0)))
    assert len(batches) == 5 and all(len(b) == 4 for b in batches)
    assert sorted(torch.cat(batches[:2]).tolist()) == sorted(set(torch.cat(batches[:2]).tolist()))
    assert latent_scaling_factor(torch.tensor([1.0, -1.0, 1.0, -1.0])) == pytest.approx(1 / 1.1547, rel=1e-3)
    with pytest.raises(RuntimeError, match="collapsed"):
        latent_scaling_factor(torch.zeros(4))


def test_fast_build_loads_and_generates_32px(fast_build):
    assert is_complete_build(fast_build, DefaultModelConfig.fast().config_hash(0))
    pipeline = StableDiffusionPipeline.from_pretrained(fast_build)
    pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    out = pipeline([digit_prompt(1), digit_prompt(2)], num_inference_steps=2, generator=generator, output_type="pt")
    assert out.images.shape == (2, 3, 32, 32)
    assert 0.0 <= out.images.min() and out.images.max() <= 1.0
    pil = pipeline(digit_prompt(5), num_inference_steps=2, generator=generator).images[0]
    assert pil.size == (32, 32)
    assert (fast_build / "tokenizer" / "vocab.json").is_file() and (fast_build / "tokenizer" / "merges.txt").is_file()


def test_fast_build_has_sd_schedule_and_reads_the_prompt_at_both_levels(fast_build):
    """v5: SD v1.x's own betas in the saved scheduler, and cross-attention in both UNet levels."""
    from diffusers import DDIMScheduler, UNet2DConditionModel

    scheduler = DDIMScheduler.from_pretrained(fast_build, subfolder="scheduler")
    assert (scheduler.config.beta_schedule, scheduler.config.beta_start, scheduler.config.beta_end) == (
        "scaled_linear", 0.00085, 0.012)
    unet = UNet2DConditionModel.from_pretrained(fast_build, subfolder="unet")
    assert unet.config.down_block_types == ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"]
    assert unet.config.up_block_types == ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]


def test_cache_is_reused_without_rebuilding(fast_build, monkeypatch):
    marker_mtime = os.stat(fast_build / BUILD_MARKER).st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("a complete build was rebuilt")

    monkeypatch.setattr(default_model, "_build_into", fail)
    assert build_default_model(fast_build, seed=0, config=DefaultModelConfig.fast()) == fast_build
    assert os.stat(fast_build / BUILD_MARKER).st_mtime_ns == marker_mtime


def test_incomplete_or_foreign_folder_is_never_reused(fast_build, tmp_path):
    half_written = tmp_path / "model"
    half_written.mkdir()
    (half_written / "model_index.json").write_text("{}")  # what a crash before the marker leaves
    assert not is_complete_build(half_written, DefaultModelConfig.fast().config_hash(0))
    with pytest.raises(FileExistsError, match="force=True"):
        build_default_model(half_written, seed=0, config=DefaultModelConfig.fast())
    # A complete build of another config (seed 1 here) is not taken either.
    with pytest.raises(FileExistsError, match="found"):
        build_default_model(fast_build, seed=1, config=DefaultModelConfig.fast())


def test_interrupted_build_leaves_nothing_behind(tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(default_model, "_train_pipeline", crash)
    with pytest.raises(KeyboardInterrupt):
        build_default_model(tmp_path / "model", seed=0, config=DefaultModelConfig.fast())
    assert list(tmp_path.iterdir()) == []


def test_force_rebuild_is_reproducible(fast_build, tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "stale.txt").write_text("left by someone else")
    build_default_model(target, seed=0, force=True, config=DefaultModelConfig.fast())
    assert not (target / "stale.txt").exists()
    first, second = load_file(fast_build / UNET_WEIGHTS), load_file(target / UNET_WEIGHTS)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)
    record = json.loads((target / BUILD_MARKER).read_text())
    assert record["config_hash"] == DefaultModelConfig.fast().config_hash(0)
    # the record names the bytes it built: the same for both builds, and those of the files
    assert record["weights_sha256"] == json.loads((fast_build / BUILD_MARKER).read_text())["weights_sha256"]
    assert set(record["weights_sha256"]) == {"judge/model.safetensors", UNET_WEIGHTS, "text_encoder/model.safetensors",
                                             "vae/diffusion_pytorch_model.safetensors"}
    assert record["weights_sha256"][UNET_WEIGHTS] == hashlib.sha256((target / UNET_WEIGHTS).read_bytes()).hexdigest()


def test_min_snr_weights_by_hand():
    from pipelines._tiny_components import build_schedulers

    scheduler = build_schedulers()[0]
    weights = min_snr_weights(scheduler, gamma=5.0)
    abar = scheduler.alphas_cumprod.double()
    snr = abar / (1 - abar)
    for t in (0, 10, 100, 500, 999):
        assert weights[t].item() == pytest.approx(min(snr[t].item(), 5.0) / snr[t].item(), rel=1e-6)
    assert weights[0] < 0.01 and weights[999] == pytest.approx(1.0)  # nearly clean steps weigh little
    assert bool((weights[1:] >= weights[:-1]).all())  # SNR falls with t: weights never fall
    with pytest.raises(ValueError, match="unet_snr_gamma must be > 0"):
        DefaultModelConfig(unet_snr_gamma=0.0)


def test_foreach_updates_give_the_loops_weights_bitwise():
    """The build's Adam, clipping and EMA run as multi-tensor kernels; the weights must be the
    per-parameter loops' bit for bit, or every figure measured on the cached build would be stale."""
    from pipelines._tiny_training import adam, update_ema

    def train(foreach: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.SiLU(), torch.nn.Linear(16, 4))
        ema = copy.deepcopy(model).requires_grad_(False)
        optimizer = adam(model.parameters(), 1e-2) if foreach else torch.optim.Adam(model.parameters(), lr=1e-2,
                                                                                       foreach=False)
        generator = torch.Generator().manual_seed(1)
        for step in range(6):
            x = torch.randn(32, 8, generator=generator)
            loss = (model(x) - x[:, :4]).square().mean() * 100.0  # large grads: clipping acts
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=foreach)
            optimizer.step()
            if foreach:
                update_ema(ema, model, 0.9)
            else:
                with torch.no_grad():
                    for ema_param, param in zip(ema.parameters(), model.parameters()):
                        ema_param.lerp_(param, 0.1)
        return [p.detach().clone() for p in [*model.parameters(), *ema.parameters()]]

    assert adam(torch.nn.Linear(2, 2).parameters(), 1e-3).defaults["foreach"] is True
    for looped, multi in zip(train(False), train(True)):
        assert torch.equal(looped, multi)


def test_judge_shapes_inputs_and_round_trip(fast_build):
    judge = load_digits_judge(default_judge_path(fast_build))
    rgb = torch.rand(5, 3, 32, 32)
    assert judge.predict(rgb).shape == (5,) and judge.predict(rgb).dtype == torch.long
    assert judge.features(rgb).shape == (5, judge.config.channels[-1])
    assert judge.probabilities(rgb).sum(dim=1).allclose(torch.ones(5))
    # Grey input is read as white strokes; larger and PIL inputs reach the same 32x32 view.
    grey = rgb[:, :1]
    assert torch.allclose(judge.features(grey), judge.features(grey.expand(-1, 3, -1, -1)), atol=1e-5)
    assert judge.predict(torch.rand(2, 3, 64, 64)).shape == (2,)
    from PIL import Image

    pil = [Image.fromarray((torch.rand(32, 32, 3) * 255).byte().numpy()) for _ in range(3)]
    assert judge.features(pil).shape == (3, judge.config.channels[-1])
    with pytest.raises(ValueError, match="images must be"):
        judge.predict(torch.rand(2, 2, 32, 32))
    with pytest.raises(FileNotFoundError, match="build_digits_judge"):
        load_digits_judge(fast_build / "unet")
    record = json.loads((default_judge_path(fast_build) / "config.json").read_text())
    assert len(record["test_accuracy_per_class"]) == 10 and record["color_rule_accuracy"] >= 0.99


@pytest.mark.slow
def test_full_default_model_meets_the_testbed_targets():
    """Issue 13's base-model targets, on evaluation seeds: every digit >= 90% (worst digit) for word
    and numeral prompts, named colour >= 95%, colour-free entropy within 10% of the training data's."""
    from eval.testbed import evaluate_testbed

    folder = build_default_model(seed=0)
    record = json.loads((folder / BUILD_MARKER).read_text())
    assert record["judge_test_accuracy"] >= 0.95
    pipeline = StableDiffusionPipeline.from_pretrained(folder)
    judge = load_digits_judge(default_judge_path(folder))
    report = evaluate_testbed(pipeline, judge, images_per_prompt=8)  # entropy is per prompt across seeds
    for group in ("word", "numeral"):
        figures = report["groups"][group]
        assert figures["recognition_worst"] >= 0.9, (group, figures["recognition_per_digit"])
        assert figures["color_accuracy"] >= 0.95, (group, figures["color_accuracy_per_color"])
        assert figures["color_entropy"] >= 0.9 * figures["color_entropy_reference"], group
