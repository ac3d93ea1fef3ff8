"""LoRA export: save -> load onto the base reproduces a full-rank weight change; unload restores
the base bit for bit; truncation and what a LoRA cannot carry are reported."""

import copy

import pytest
import torch

from pipelines.lora import LORA_INFO, LORA_WEIGHTS, lora_from_delta, save_lora
from pipelines.sampling import load_pipeline

pytest.importorskip("peft")


def predict(pipe, seed=0):
    gen = torch.Generator().manual_seed(seed)
    latents = torch.randn(1, 4, 16, 16, generator=gen)
    embeds = torch.randn(1, 16, pipe.unet.config.cross_attention_dim, generator=gen)
    with torch.no_grad():
        return pipe.unet(latents, torch.tensor([500]), embeds).sample


def changed_weights(unet, scale=0.05, seed=1):
    """A copy whose attention projections and a convolution changed by low-rank amounts."""
    gen = torch.Generator().manual_seed(seed)
    changed = copy.deepcopy(unet)
    with torch.no_grad():
        for name, module in changed.named_modules():
            if name.endswith(("attn2.to_k", "attn1.to_q")) or name == "conv_in":
                w = module.weight
                flat = w.reshape(w.shape[0], -1)
                u = torch.randn(flat.shape[0], 2, generator=gen)
                v = torch.randn(2, flat.shape[1], generator=gen)
                w.add_((scale * u @ v).reshape(w.shape))
    return changed


def test_full_rank_adapter_on_the_base_is_the_erased_unet_and_unloads_bit_for_bit(tiny_pipeline_dir, tmp_path):
    base = load_pipeline(tiny_pipeline_dir)
    erased_unet = changed_weights(base.unet)
    before = {k: v.clone() for k, v in base.unet.state_dict().items()}
    report = save_lora(erased_unet, base.unet, tmp_path / "lora", rank=4)
    assert (tmp_path / "lora" / LORA_WEIGHTS).is_file() and (tmp_path / "lora" / LORA_INFO).is_file()
    assert report["captured"] == pytest.approx(1.0, abs=1e-6) and report["dropped"] == pytest.approx(0.0, abs=1e-9)
    expected = predict(type(base)(**{**base.components, "unet": erased_unet}))
    plain = predict(base)
    base.load_lora_weights(tmp_path / "lora")
    torch.testing.assert_close(predict(base), expected, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(plain, expected, atol=1e-4)
    base.unload_lora_weights()
    after = base.unet.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    torch.testing.assert_close(predict(base), plain, atol=0, rtol=0)


def test_low_rank_truncates_and_bias_changes_are_reported_as_dropped(tiny_pipeline_dir):
    base = load_pipeline(tiny_pipeline_dir)
    erased = changed_weights(base.unet)
    with torch.no_grad():
        erased.conv_in.bias.add_(1.0)  # no LoRA carries a bias
    state, metadata, report = lora_from_delta(erased, base.unet, rank=1)
    assert report["captured"] < 0.99 and report["dropped"] > 0
    assert metadata["r"] == metadata["lora_alpha"] == 1
    name = next(n for n in metadata["target_modules"] if n.endswith("attn2.to_k"))
    assert state[f"{name}.lora_A.weight"].shape[0] == 1
    assert state["conv_in.lora_B.weight"].dim() == 4  # a 1x1 convolution


def test_bad_input(tiny_pipeline_dir):
    base = load_pipeline(tiny_pipeline_dir)
    with pytest.raises(ValueError, match="nothing to export"):
        lora_from_delta(base.unet, base.unet, 4)
    with pytest.raises(ValueError, match="rank=0 must be >= 1"):
        lora_from_delta(changed_weights(base.unet), base.unet, 0)


def test_erase_job_exports_a_lora_that_loads_onto_the_base_and_pushes(tiny_pipeline_dir, tmp_path):
    from huggingface_hub import ModelCard

    from pipelines import erase
    from pipelines.generate import main as generate_main
    from pipelines.push import main as push_main

    data = tmp_path / "data"
    generate_main(["--pretrained_model_name_or_path", str(tiny_pipeline_dir), "--concept", "digits:7",
                   "--output_dir", str(data), "--num_images", "4", "--num_inference_steps", "2"])
    out = tmp_path / "lora-export"
    erase.main(["--pretrained_model_name_or_path", str(tiny_pipeline_dir), "--data_dir", str(data), "--output_dir",
                str(out), "--method", "esd", "--trainable", "xattn", "--max_train_steps", "2", "--learning_rate",
                "1e-3", "--train_batch_size", "4", "--export", "lora", "--lora_rank", "64"])
    assert (out / LORA_WEIGHTS).is_file() and not (out / "unet").exists()
    card = ModelCard.load(out / "README.md")
    assert "lora" in card.data.tags and "load_lora_weights" in card.text
    config = __import__("json").loads((out / "erase_config.json").read_text())
    lora = config["prepare"]["lora"]
    assert lora["rank"] == 64 and lora["captured"] > 0.999  # rank 64 holds these small matrices whole
    assert 0 < lora["dropped"] < 0.05  # attn2.to_out.0.bias changed too: no LoRA carries it
    base = load_pipeline(tiny_pipeline_dir)
    plain = predict(base)
    base.load_lora_weights(out)
    assert not torch.allclose(predict(base), plain, atol=1e-6)
    result = push_main([str(out), "--repo_id", "me/lora", "--dry_run"])
    assert result["export"] == "lora" and LORA_WEIGHTS in result["files"]


def test_a_lora_of_another_base_is_refused(tiny_pipeline_dir, tmp_path):
    from pipelines.lora import load_lora
    from pipelines.tiny import build_tiny_pipeline

    base = load_pipeline(tiny_pipeline_dir)
    save_lora(changed_weights(base.unet), base.unet, tmp_path / "lora", rank=2)
    other = build_tiny_pipeline(seed=1)  # same architecture, other weights
    with pytest.raises(ValueError, match="made against another base UNet"):
        load_lora(other, tmp_path / "lora")
    load_lora(other, tmp_path / "lora", force=True)  # the user insists
    load_lora(base, tmp_path / "lora")  # its own base: fine
    with pytest.raises(FileNotFoundError, match="no pytorch_lora_weights.safetensors"):
        load_lora(base, tmp_path)
    with pytest.raises(ValueError, match="rank=0 must be >= 1"):
        save_lora(changed_weights(base.unet), base.unet, tmp_path / "zero", rank=0)


def test_peft_lora_training_exports_the_trained_adapter(tiny_pipeline_dir, tmp_path):
    from pipelines import erase
    from pipelines.generate import main as generate_main
    from pipelines.lora import load_lora

    data = tmp_path / "data"
    generate_main(["--pretrained_model_name_or_path", str(tiny_pipeline_dir), "--concept", "digits:7",
                   "--output_dir", str(data), "--num_images", "4", "--num_inference_steps", "2"])
    args = ["--pretrained_model_name_or_path", str(tiny_pipeline_dir), "--data_dir", str(data), "--max_train_steps",
            "2", "--learning_rate", "1e-2", "--train_batch_size", "4"]
    out = tmp_path / "trained"
    erase.main([*args, "--output_dir", str(out), "--method", "esd", "--trainable", "lora", "--export", "lora",
                "--lora_rank", "4"])
    info = __import__("json").loads((out / LORA_INFO).read_text())
    assert info["trained"] and info["rank"] == 4 and info["layers"] > 0
    base = load_pipeline(tiny_pipeline_dir)
    plain = predict(base)
    load_lora(base, out)
    assert not torch.allclose(predict(base), plain, atol=1e-6)  # the trained adapter changes the base
    base.unload_lora_weights()
    torch.testing.assert_close(predict(base), plain, atol=0, rtol=0)
    with pytest.raises(ValueError, match="re-initialises UNet weights"):
        erase.main([*args, "--output_dir", str(tmp_path / "sh"), "--method", "scissorhands", "--trainable", "lora",
                    "--export", "lora"])
    with pytest.raises(ValueError, match="needs --export lora"):
        erase.main([*args, "--output_dir", str(tmp_path / "pl"), "--method", "esd", "--trainable", "lora"])
