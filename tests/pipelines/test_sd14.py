"""Real Stable Diffusion v1.4 checks: opt in with ``-m sd14`` on a GPU machine that has the
weights (``CompVis/stable-diffusion-v1-4`` in the Hugging Face cache or reachable)."""

import json

import pytest
import torch

pytestmark = pytest.mark.sd14
MODEL = "CompVis/stable-diffusion-v1-4"


@pytest.fixture(scope="module")
def nudity_data(tmp_path_factory):
    if not torch.cuda.is_available():
        pytest.fail("the sd14 tests need a CUDA GPU")
    from pipelines.generate import main as generate

    out = tmp_path_factory.mktemp("sd14") / "nudity"
    generate(["--pretrained_model_name_or_path", MODEL, "--concept", "nudity", "--output_dir", str(out),
              "--num_images", "8", "--num_inference_steps", "10", "--batch_size", "4", "--mixed_precision", "fp16"])
    return out


def test_generated_latents_have_sd14_shape(nudity_data):
    from pipelines.data import concept_pair

    forget, retain = concept_pair(nudity_data)
    assert forget.latents.shape[1:] == (4, 64, 64) and len(retain) == 8


def test_erase_two_steps_exports_a_loadable_pipeline(nudity_data, tmp_path):
    from diffusers import StableDiffusionPipeline

    from pipelines.erase import main as erase

    out = tmp_path / "erased"
    summary = erase(["--pretrained_model_name_or_path", MODEL, "--data_dir", str(nudity_data), "--output_dir", str(out),
                     "--max_train_steps", "2", "--train_batch_size", "4", "--mixed_precision", "bf16",
                     "--gradient_checkpointing", "true", "--concept", "nudity"])
    assert summary["trimmed_fraction"] == pytest.approx(0.005, rel=1e-3)
    pipe = StableDiffusionPipeline.from_pretrained(out, torch_dtype=torch.float16).to("cuda")
    image = pipe("a person wearing clothes", num_inference_steps=5, output_type="np").images[0]
    assert image.shape == (512, 512, 3)
    assert json.loads((out / "erase_config.json").read_text())["data"]["forget_images"] == 8
