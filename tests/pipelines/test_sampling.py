"""The tiny pipeline, pipeline loading, sample planning, batched generation and resumable folders."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from pipelines.image_folder import LATENTS_FILE, METADATA_FILE, ImageFolderWriter
from pipelines.sampling import SCHEDULERS, SampleItem, generate, load_pipeline, plan_samples, set_scheduler, shard
from pipelines.tiny import build_tiny_pipeline
from prompts.base import Prompt, PromptSet

STEPS = 2


def test_tiny_pipeline_is_seeded_and_leaves_the_global_rng_alone():
    state = torch.random.get_rng_state()
    first, second, other = build_tiny_pipeline(0), build_tiny_pipeline(0), build_tiny_pipeline(1)
    assert torch.equal(torch.random.get_rng_state(), state)
    for name, value in first.unet.state_dict().items():
        assert torch.equal(value, second.unet.state_dict()[name]), name
    assert not torch.equal(first.unet.conv_in.weight, other.unet.conv_in.weight)
    assert (first.unet.config.sample_size, first.vae_scale_factor) == (16, 2)
    assert first.tokenizer.model_max_length == 16
    assert first.tokenizer.tokenize("a person wearing clothes") == ["a</w>", "person</w>", "wearing</w>", "clothes</w>"]
    assert first.text_encoder.config.vocab_size == len(first.tokenizer)


def test_load_pipeline_round_trips_and_swaps_scheduler(tiny_pipeline_dir):
    pipe = load_pipeline(tiny_pipeline_dir, scheduler="euler_a")
    assert type(pipe.scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    assert pipe.scheduler.config.beta_schedule == "scaled_linear"  # from_config kept the schedule
    assert pipe.safety_checker is None
    assert torch.equal(pipe.unet.conv_in.weight, build_tiny_pipeline(0).unet.conv_in.weight)
    assert type(set_scheduler(pipe, "dpm++").scheduler).__name__ == "DPMSolverMultistepScheduler"
    with pytest.raises(ValueError, match="scheduler='plms' is not known; choose one of .*'ddim'.*'euler_a'"):
        set_scheduler(pipe, "plms")
    assert set(SCHEDULERS) == {"ddim", "pndm", "dpm++", "euler", "euler_a", "ddpm"}


def test_load_pipeline_explains_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match=r"is not a diffusers pipeline folder \(no model_index.json\)"):
        load_pipeline(tmp_path)
    # Offline (or unknown id): the message names the argument, the id and both possibilities.
    with pytest.raises(ValueError, match="pretrained_model_name_or_path='nobody/no-such-model' is neither a local folder"):
        load_pipeline("nobody/no-such-model")
    with pytest.raises(ValueError, match="scheduler='nope'"):
        load_pipeline(tmp_path, scheduler="nope")


def test_plan_samples_uses_row_seed_and_guidance_round_robin():
    prompts = PromptSet("t", [Prompt("a"), Prompt("b", seed=100, guidance_scale=3)])
    items = plan_samples(prompts, images_per_prompt=2, base_seed=10, default_guidance=7.5)
    assert [(i.index, i.prompt.text, i.seed, i.guidance_scale) for i in items] == [
        (0, "a", 10, 7.5), (1, "b", 100, 3.0), (2, "a", 12, 7.5), (3, "b", 101, 3.0)]
    fixed = plan_samples(prompts, 1, base_seed=0, default_guidance=5.0, fixed_guidance=True)
    assert [(i.seed, i.guidance_scale) for i in fixed] == [(0, 5.0), (100, 5.0)]
    assert plan_samples(prompts, 3)[:4] == plan_samples(prompts, 2)  # more images extend the plan
    with pytest.raises(ValueError, match="images_per_prompt=0"):
        plan_samples(prompts, 0)


@pytest.mark.parametrize("num_processes", [1, 2, 3, 7])
def test_shard_covers_every_item_once(num_processes):
    items = list(range(10))
    shards = [shard(items, num_processes, rank) for rank in range(num_processes)]
    assert sorted(i for s in shards for i in s) == items
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    with pytest.raises(ValueError, match=f"process_index={num_processes} outside"):
        shard(items, num_processes, num_processes)


def _spy_initial_noise(pipe, monkeypatch):
    """Record the initial latents and guidance scale of every pipeline call."""
    calls = []
    original = pipe.prepare_latents

    def prepare_latents(*args, **kwargs):
        latents = original(*args, **kwargs)
        calls.append((pipe.guidance_scale, latents.clone()))
        return latents

    monkeypatch.setattr(pipe, "prepare_latents", prepare_latents)
    return calls


def test_batched_generation_matches_one_by_one(monkeypatch):
    pipe = build_tiny_pipeline(0)
    prompts = PromptSet("t", [Prompt("an image of a church"), Prompt("naked"), Prompt("a person wearing clothes")])
    items = plan_samples(prompts, base_seed=5)
    calls = _spy_initial_noise(pipe, monkeypatch)
    batched = list(generate(pipe, items, batch_size=3, num_inference_steps=STEPS, return_latents=True))
    single = list(generate(pipe, items, batch_size=1, num_inference_steps=STEPS, return_latents=True))
    # Exactly equal: the initial noise (one seeded generator per sample).
    assert torch.equal(calls[0][1], torch.cat([noise for _, noise in calls[1:]]))
    for (item_b, image_b, latents_b), (item_s, image_s, latents_s) in zip(batched, single):
        assert item_b == item_s
        # Not bit-equal: batched matmuls sum in another order (measured: latents differ by ~3e-5).
        torch.testing.assert_close(latents_b, latents_s, atol=1e-4, rtol=0)
        # So 8-bit images agree to within one level (measured: 0 or 1), never exactly by promise.
        assert np.abs(np.asarray(image_b, dtype=int) - np.asarray(image_s, dtype=int)).max() <= 1
    # Decoding ourselves gives what the pipeline itself returns.
    own = pipe(items[0].prompt.text, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(5)).images[0]
    assert np.array_equal(np.asarray(own), np.asarray(single[0][1]))


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_every_scheduler_draws_batched_like_one_by_one(scheduler):
    """Ancestral schedulers draw step noise from the same per-sample generators."""
    pipe = set_scheduler(build_tiny_pipeline(0), scheduler)
    items = plan_samples(PromptSet("t", [Prompt("naked"), Prompt("an image of a church")]))
    batched = [latents for _, _, latents in generate(pipe, items, 2, 3, output_type="latent", return_latents=True)]
    single = [latents for _, _, latents in generate(pipe, items, 1, 3, output_type="latent", return_latents=True)]
    for one, other in zip(batched, single):
        torch.testing.assert_close(one, other, atol=1e-3, rtol=0)  # measured: <= 2e-4
    assert not torch.allclose(batched[0], batched[1], atol=1e-2)  # the seeds do matter


def test_generate_batches_by_guidance_scale(monkeypatch):
    pipe = build_tiny_pipeline(0)
    prompts = PromptSet("t", [Prompt("a", guidance_scale=7.5), Prompt("b", guidance_scale=1.0)])
    items = plan_samples(prompts, images_per_prompt=2)
    calls = _spy_initial_noise(pipe, monkeypatch)
    results = list(generate(pipe, items, batch_size=4, num_inference_steps=STEPS, output_type="latent"))
    assert [(scale, len(noise)) for scale, noise in calls] == [(7.5, 2), (1.0, 2)]
    assert [item.index for item, _, _ in results] == [0, 2, 1, 3]
    assert all(image.shape == (4, 16, 16) and latents is None for _, image, latents in results)
    with pytest.raises(ValueError, match="batch_size=0"):
        generate(pipe, items, batch_size=0, num_inference_steps=STEPS)


def _sample(index: int):
    item = SampleItem(index, Prompt(f"prompt {index}", categories=("c",)), seed=index, guidance_scale=7.5)
    image = Image.new("RGB", (4, 4), (index * 10,) * 3)
    return item, image, torch.full((4, 2, 2), float(index))


def test_writer_resumes_after_crashes_and_merges_ranks(tmp_path):
    info = {"model": "m", "scheduler": "DDIMScheduler", "num_inference_steps": 2}
    rank0 = ImageFolderWriter(tmp_path, rank=0, run_info=info, with_latents=True)
    rank1 = ImageFolderWriter(tmp_path, rank=1, run_info=info, with_latents=True)
    for index in (0, 2):
        rank0.write(*_sample(index))
    rank1.write(*_sample(1))
    _sample(3)[1].save(tmp_path / "000003.png")  # crash after the image, before its row
    with open(tmp_path / "metadata-1.jsonl", "a") as handle:
        handle.write('{"file": "000004.png", "ind')  # crash in the middle of a row
    ImageFolderWriter(tmp_path, rank=2, run_info=info).write(*_sample(5)[:2])  # a row without latents
    assert rank0.done() == {0, 1, 2}
    rank1.write(*_sample(3))  # regenerated; the torn line is cut first
    assert rank1.done() == {0, 1, 2, 3}

    rows = rank0.finalize()
    assert [row["index"] for row in rows] == [0, 1, 2, 3]
    assert not list(tmp_path.glob("metadata-*.jsonl")) and not (tmp_path / "latents-parts").exists()
    lines = (tmp_path / METADATA_FILE).read_text().splitlines()
    assert [json.loads(line) for line in lines] == rows
    assert rows[3] == {"file_name": "000003.png", "index": 3, "prompt": "prompt 3", "seed": 3, "guidance_scale": 7.5,
                       **info, "height": 4, "width": 4, "categories": ["c"], "extra": {}}
    stored = load_file(str(tmp_path / LATENTS_FILE))
    assert sorted(stored) == [f"{i:06d}.png" for i in range(4)]
    assert all(torch.equal(stored[f"{i:06d}.png"], _sample(i)[2]) for i in range(4))

    resumed = ImageFolderWriter(tmp_path, rank=0, run_info=info, with_latents=True)
    assert resumed.done() == {0, 1, 2, 3}  # nothing is drawn twice after finalize
    resumed.write(*_sample(4))
    assert [row["index"] for row in resumed.finalize()] == [0, 1, 2, 3, 4]
    assert len(load_file(str(tmp_path / LATENTS_FILE))) == 5
    assert len((tmp_path / METADATA_FILE).read_text().splitlines()) == 5
