"""SDXL UNets (issue 11 §4): the training conditioning is the pipeline's own, and generate -> erase
-> export -> audit runs on a tiny SDXL pipeline whose export plain diffusers loads; SD 2.x
v-prediction keeps working beside it."""

import json

import pytest
import torch

from pipelines import erase
from pipelines.generate import main as generate_main
from pipelines.tiny import build_tiny_xl_pipeline

TRAIN = ["--train_batch_size", "4", "--learning_rate", "1e-4", "--num_train_epochs", "2", "--kept_fraction", "0.99"]


@pytest.fixture(scope="module")
def xl_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-sdxl") / "pipeline"
    build_tiny_xl_pipeline(seed=0).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def xl_data(xl_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("xl-data") / "digits7"
    generate_main(["--pretrained_model_name_or_path", str(xl_dir), "--concept", "digits:7", "--output_dir", str(out),
                   "--num_images", "8", "--num_inference_steps", "2", "--batch_size", "4"])
    return out


def record_calls(unet) -> list:
    """Record the text conditioning of every call of ``unet`` (positional or keyword)."""
    calls = []

    def hook(module, args, kwargs):
        hidden = args[2] if len(args) > 2 else kwargs["encoder_hidden_states"]
        added = kwargs.get("added_cond_kwargs") or {}
        calls.append((hidden.detach().clone(), {k: v.detach().clone() for k, v in added.items()}))

    unet.register_forward_pre_hook(hook, with_kwargs=True)
    return calls


def test_training_feeds_the_unet_what_the_sdxl_pipeline_feeds_it():
    """The objective's hidden states, pooled embedding and time ids for a prompt (and the empty
    prompt: SDXL's zeroed unconditional branch) equal those the pipeline passes while sampling."""
    from diffusers import DDPMScheduler

    from pipelines.conditioning import encode_prompt_table, time_ids
    from pipelines.objective import DiffusionObjective

    pipe = build_tiny_xl_pipeline(seed=0)
    calls = record_calls(pipe.unet)
    pipe.set_progress_bar_config(disable=True)
    pipe("a handwritten digit seven", num_inference_steps=1, guidance_scale=7.5, output_type="latent",
         generator=torch.Generator().manual_seed(0))
    (hidden_cfg, added_cfg), = calls  # one step of the pipeline's own: [unconditional, conditional]

    table = encode_prompt_table(pipe, ["", "a handwritten digit seven"], "cpu")
    objective = DiffusionObjective(DDPMScheduler.from_config(pipe.scheduler.config), table.hidden,
                                   torch.tensor([0, 1]), uncond_id=0, pooled=table.pooled, time_ids=time_ids(32, 32))
    calls.clear()
    batch = {"x": torch.randn(2, 4, 16, 16), "y": torch.tensor([0, 1]), "index": torch.arange(2)}
    losses = objective.loss(pipe.unet, batch)
    (hidden, added), = calls
    assert losses.shape == (2,) and torch.isfinite(losses).all()
    torch.testing.assert_close(hidden, hidden_cfg)
    torch.testing.assert_close(added["text_embeds"], added_cfg["text_embeds"])
    torch.testing.assert_close(added["time_ids"], added_cfg["time_ids"])
    assert hidden[0].abs().sum() == 0 and added["text_embeds"][0].abs().sum() == 0  # force_zeros_for_empty_prompt
    # the added conditioning reaches the loss: other time ids, another loss
    moved = DiffusionObjective(objective.scheduler, table.hidden, torch.tensor([0, 1]), uncond_id=0,
                               pooled=table.pooled, time_ids=time_ids(64, 64))
    assert not torch.allclose(moved.loss(pipe.unet, batch), objective.loss(pipe.unet, batch))


def test_objective_needs_pooled_embeddings_and_time_ids_together():
    from diffusers import DDPMScheduler

    from pipelines.objective import DiffusionObjective

    with pytest.raises(ValueError, match="both pooled embeddings and time ids"):
        DiffusionObjective(DDPMScheduler(), torch.zeros(2, 4, 8), torch.tensor([0, 1]), 0, pooled=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="pooled embeddings for 3 prompts"):
        DiffusionObjective(DDPMScheduler(), torch.zeros(2, 4, 8), torch.tensor([0, 1]), 0, pooled=torch.zeros(3, 3),
                           time_ids=torch.zeros(6))


@pytest.mark.parametrize("method", ["scissorhands", "esd"])
def test_erase_exports_an_sdxl_pipeline_plain_diffusers_loads(xl_dir, xl_data, tmp_path, method):
    from diffusers import StableDiffusionXLPipeline
    from safetensors.torch import load_file

    out = tmp_path / method
    summary = erase.main(["--pretrained_model_name_or_path", str(xl_dir), "--data_dir", str(xl_data),
                          "--output_dir", str(out), "--concept", "digit seven", "--method", method, *TRAIN])
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == "StableDiffusionXLPipeline"
    pipe = StableDiffusionXLPipeline.from_pretrained(out)
    image = pipe("a handwritten digit seven", num_inference_steps=2, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.shape == (32, 32, 3)
    base = load_file(xl_dir / "unet" / "diffusion_pytorch_model.safetensors")
    new = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    assert any(not torch.equal(base[k], new[k]) for k in base)
    card = (out / "README.md").read_text()
    assert "StableDiffusionXLPipeline.from_pretrained" in card and "stable-diffusion-xl" in card
    if method == "scissorhands":
        assert summary["trimmed_fraction"] == pytest.approx(0.01, abs=1e-4)


def test_lora_export_of_an_sdxl_erasure_loads_into_the_base(xl_dir, xl_data, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    out = tmp_path / "lora"
    erase.main(["--pretrained_model_name_or_path", str(xl_dir), "--data_dir", str(xl_data), "--output_dir", str(out),
                "--concept", "digit seven", "--method", "esd", "--export", "lora", *TRAIN])
    pipe = StableDiffusionXLPipeline.from_pretrained(xl_dir)
    pipe.set_progress_bar_config(disable=True)
    draw = lambda: pipe("a handwritten digit seven", num_inference_steps=2, output_type="latent",
                        generator=torch.Generator().manual_seed(0)).images
    before = draw()
    pipe.load_lora_weights(out)
    assert not torch.allclose(draw(), before)  # the adapter reaches the UNet
    assert "StableDiffusionXLPipeline" in (out / "README.md").read_text()


def test_audit_runs_on_an_sdxl_model(xl_dir, tmp_path):
    from eval.audit import main as audit

    report = audit(["--model", str(xl_dir), "--prompts", "nudity", "--out", str(tmp_path / "audit"),
                    "--num_inference_steps", "2", "--batch_size", "4", "--fixed_guidance", "7.5"])
    assert report["num_images"] == 4 and report["protocol"]["scheduler"] == "EulerDiscreteScheduler"


def test_attacks_refuse_sdxl_before_loading_or_writing(xl_dir, tmp_path, monkeypatch):
    import pipelines.sampling
    from eval.attack import main as attack

    def never(*args, **kwargs):
        raise AssertionError("the SDXL pipelines were loaded before the refusal")

    monkeypatch.setattr(pipelines.sampling, "load_pipeline", never)
    out = tmp_path / "attack"
    with pytest.raises(ValueError, match="SDXL pipeline"):
        attack(["--model", str(xl_dir), "--base_model", str(xl_dir), "--concept", "nudity", "--prompts", "nudity",
                "--attack", "none", "--out", str(out)])
    assert not out.exists()


def test_folder_check_names_an_sdxl_unet_that_does_not_fit(xl_dir, tmp_path):
    import shutil

    from pipelines.sampling import load_pipeline

    bad = tmp_path / "bad"
    shutil.copytree(xl_dir, bad)
    config = json.loads((bad / "unet" / "config.json").read_text())
    (bad / "unet" / "config.json").write_text(json.dumps({**config, "projection_class_embeddings_input_dim": 81}))
    with pytest.raises(ValueError, match="projection_class_embeddings_input_dim=81 does not fit"):
        load_pipeline(bad)
    (bad / "unet" / "config.json").write_text(json.dumps({**config, "cross_attention_dim": 32}))
    with pytest.raises(ValueError, match="cross_attention_dim=32 does not fit"):
        load_pipeline(bad)


def test_a_pipeline_of_another_kind_is_refused_by_name(tmp_path):
    from pipelines.sampling import pipeline_class_name

    index = {"_class_name": "FluxPipeline", "transformer": ["diffusers", "FluxTransformer2DModel"],
             "text_encoder": ["transformers", "CLIPTextModel"]}
    with pytest.raises(ValueError, match="is a FluxPipeline pipeline without a UNet and CLIP text encoder.*scissorhands erases from StableDiffusionPipeline"):
        pipeline_class_name(index, "--model='flux'")
    assert pipeline_class_name({"unet": ["diffusers", "UNet2DConditionModel"],
                                "text_encoder": ["transformers", "CLIPTextModel"],
                                "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"]},
                               "x") == "StableDiffusionXLPipeline"


def test_python_api_erases_an_sdxl_pipeline_and_keeps_its_options(xl_dir, xl_data):
    from pipelines.api import erase as erase_api
    from pipelines.sampling import load_pipeline

    pipe = load_pipeline(xl_dir)
    pipe.register_to_config(force_zeros_for_empty_prompt=False)
    erased = erase_api(pipe, "digits:7", method="esd", data=xl_data, train_batch_size=4, num_train_epochs=1)
    assert type(erased).__name__ == "StableDiffusionXLPipeline" and erased.unet is not pipe.unet
    assert erased.config.force_zeros_for_empty_prompt is False
    changed = [not torch.equal(a, b) for a, b in zip(erased.unet.parameters(), pipe.unet.parameters())]
    assert any(changed)


def test_build_objective_sets_time_ids_from_the_training_images_size(monkeypatch):
    """(H, W, 0, 0, H, W) of the data, height first (non-square latents would show a swap), and the
    empty prompt zeroed only under force_zeros_for_empty_prompt."""
    import types

    from pipelines.erase import build_objective

    pipe = build_tiny_xl_pipeline(seed=0)
    data = lambda prompts: types.SimpleNamespace(prompts=prompts, latents=torch.zeros(len(prompts), 4, 16, 24))
    config = types.SimpleNamespace(substitute_prompt=None, substitute_word=None, substitute_ties="nearest",
                                   substitute_rewrite=False,
                                   relabel_target="prediction", negative_guidance=1.0, seed=0)
    forget, retain = data(["a handwritten digit seven"]), data(["a handwritten digit one"])
    objective, _, _ = build_objective(pipe, config, forget, retain, "cpu")
    assert objective.time_ids.tolist() == [32.0, 48.0, 0.0, 0.0, 32.0, 48.0]
    empty = objective.uncond_id
    assert objective.embeddings[empty].abs().sum() == 0 and objective.pooled[empty].abs().sum() == 0
    pipe.register_to_config(force_zeros_for_empty_prompt=False)
    objective, _, _ = build_objective(pipe, config, forget, retain, "cpu")
    assert objective.embeddings[empty].abs().sum() > 0 and objective.pooled[empty].abs().sum() > 0


@pytest.mark.parametrize("case", ["fp16-upcast", "latents-mean"])
def test_decoding_returns_what_the_sdxl_pipeline_returns(case):
    from pipelines.sampling import SampleItem, generate
    from prompts.base import Prompt

    pipe = build_tiny_xl_pipeline(seed=0)
    if case == "fp16-upcast":
        pipe.vae.to(torch.float16)  # force_upcast is on: SDXL decodes in float32
    else:
        pipe.vae.register_to_config(latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[0.5, 1.5, 1.0, 2.0])
    pipe.set_progress_bar_config(disable=True)
    item = SampleItem(0, Prompt("a handwritten digit seven"), seed=3, guidance_scale=7.5)
    (_, ours, _), = generate(pipe, [item], batch_size=1, num_inference_steps=2, output_type="np",
                             show_progress=False)
    theirs = pipe("a handwritten digit seven", num_inference_steps=2, guidance_scale=7.5, output_type="np",
                  generator=torch.Generator().manual_seed(3)).images[0]
    assert pipe.vae.dtype == (torch.float16 if case == "fp16-upcast" else torch.float32)  # put back
    assert ours.shape == theirs.shape and float(abs(ours - theirs).max()) < 1e-6


def test_image_folders_encode_as_sdxl_img2img_does(tmp_path):
    import numpy as np
    from PIL import Image

    from pipelines.data import ConceptImageSet

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    vae = build_tiny_xl_pipeline(seed=0).vae
    plain = ConceptImageSet.load(folder, vae, prompt="x", sdxl=True).latents
    vae.register_to_config(latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[0.5, 1.5, 1.0, 2.0])
    with pytest.raises(ValueError, match="encoded without the VAE's latents_mean/latents_std normalisation"):
        ConceptImageSet.load(folder, vae, prompt="x", sdxl=True)  # a cache of the plain encoding
    (folder / "latents.safetensors").unlink()
    normalised = ConceptImageSet.load(folder, vae, prompt="x", sdxl=True).latents
    mean, std = torch.tensor(vae.config.latents_mean).view(1, 4, 1, 1), torch.tensor(vae.config.latents_std).view(1, 4, 1, 1)
    torch.testing.assert_close(normalised, (plain / vae.config.scaling_factor - mean) * vae.config.scaling_factor / std)
    (folder / "latents.safetensors").unlink()
    half = vae.to(torch.float16)
    upcast = ConceptImageSet.load(folder, half, prompt="x", sdxl=True).latents
    assert half.dtype == torch.float16 and torch.isfinite(upcast).all()
    torch.testing.assert_close(upcast, normalised, atol=2e-2, rtol=0)  # float32 encode of fp16-rounded weights


def test_sd2_v_prediction_base_erases_and_exports_with_its_scheduler(tmp_path, monkeypatch):
    """SD 2.x (v-prediction) keeps working beside SDXL: the job trains on v targets (the loss of a
    v-model is computed against v, checked by hand in test_objective) and the export keeps the
    base's v-prediction scheduler, so plain diffusers samples it as the base."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from pipelines.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline(seed=0)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, prediction_type="v_prediction")
    base = tmp_path / "sd2-v"
    pipe.save_pretrained(base)
    data = tmp_path / "data"
    generate_main(["--pretrained_model_name_or_path", str(base), "--concept", "digits:7", "--output_dir", str(data),
                   "--num_images", "4", "--num_inference_steps", "2", "--batch_size", "4"])
    targets = []
    build = erase.build_objective

    def recording(*args, **kwargs):  # the job's own objective: it must train on v targets
        objective = build(*args, **kwargs)
        targets.append(objective[0].prediction_type)
        return objective

    monkeypatch.setattr(erase, "build_objective", recording)
    out = tmp_path / "erased"
    erase.main(["--pretrained_model_name_or_path", str(base), "--data_dir", str(data), "--output_dir", str(out),
                "--concept", "digit seven", *TRAIN])
    assert targets == ["v_prediction"]
    loaded = StableDiffusionPipeline.from_pretrained(out)
    assert loaded.scheduler.config.prediction_type == "v_prediction"
    assert loaded("a handwritten digit seven", num_inference_steps=2, output_type="np").images[0].shape == (32, 32, 3)
