"""Loading a damaged local pipeline folder: one line naming the folder and the file, nothing loaded."""

import json
import shutil

import pytest

from pipelines.sampling import load_pipeline


def _rewrite_json(folder, name, change):
    path = folder / name
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


CORRUPTIONS = {
    "model_index_not_json": (lambda f: (f / "model_index.json").write_text("{not json"),
                             ValueError, r"model_index.json is not valid JSON"),
    "model_index_a_list": (lambda f: (f / "model_index.json").write_text("[1, 2]"),
                           ValueError, r"model_index.json must hold a JSON object, got list"),
    "unknown_class": (lambda f: _rewrite_json(f, "model_index.json", lambda d: {**d, "unet": ["diffusers", "UNetNope"]}),
                      ValueError, r"model_index.json: unet=\['diffusers', 'UNetNope'\]: diffusers has no class 'UNetNope'"),
    "unknown_library": (lambda f: _rewrite_json(f, "model_index.json", lambda d: {**d, "vae": ["evil", "AutoencoderKL"]}),
                        ValueError, r"vae=\['evil', 'AutoencoderKL'\]: the library must be one of"),
    "not_a_pair": (lambda f: _rewrite_json(f, "model_index.json", lambda d: {**d, "vae": ["diffusers", "A", "B"]}),
                   ValueError, r"vae=\['diffusers', 'A', 'B'\] must be a \[library, class\] pair"),
    "missing_component": (lambda f: shutil.rmtree(f / "vae"),
                          FileNotFoundError, r"names vae \(AutoencoderKL\) but there is no folder vae/"),
    "garbage_unet_config": (lambda f: (f / "unet" / "config.json").write_bytes(b"\x00\xffgarbage"),
                            ValueError, r"unet/config.json is not valid JSON"),
    "truncated_weights": (lambda f: _truncate(f / "unet" / "diffusion_pytorch_model.safetensors"),
                          ValueError, r"unet/diffusion_pytorch_model.safetensors: not a readable safetensors file"),
    "empty_weights": (lambda f: (f / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b""),
                      ValueError, r"vae/diffusion_pytorch_model.safetensors: not a readable safetensors file"),
    "pickle_only": (lambda f: (f / "unet" / "diffusion_pytorch_model.safetensors").rename(
                        f / "unet" / "diffusion_pytorch_model.bin"),
                    ValueError, r"unet/ has only pickled weights \['diffusion_pytorch_model.bin'\] \(never loaded"),
    "unet_from_another_model": (lambda f: _rewrite_json(f, "unet/config.json", lambda d: {**d, "cross_attention_dim": 77}),
                                ValueError, r"unet/config.json cross_attention_dim=77 does not fit the pipeline "
                                            r"\(text_encoder/config.json hidden_size is \d+\)"),
}


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_a_damaged_folder_fails_with_one_line_naming_it(name, tiny_pipeline_dir, tmp_path, monkeypatch):
    folder = tmp_path / "model"
    shutil.copytree(tiny_pipeline_dir, folder)
    corrupt, error, message = CORRUPTIONS[name]
    corrupt(folder)
    import diffusers

    def never(*args, **kwargs):
        raise AssertionError("diffusers was asked to load a folder the check should have refused")

    monkeypatch.setattr(diffusers.StableDiffusionPipeline, "from_pretrained", never)
    with pytest.raises(error, match=message) as info:
        load_pipeline(folder)
    assert str(folder) in str(info.value) and "\n" not in str(info.value)


def test_a_hub_id_goes_to_diffusers_with_its_revision(tiny_pipeline_dir, monkeypatch):
    import diffusers

    assert load_pipeline(tiny_pipeline_dir).unet.config.in_channels == 4  # a sound folder passes the check

    calls = []

    def offline(name, **kwargs):
        calls.append((name, kwargs))
        raise OSError("offline")

    monkeypatch.setattr(diffusers.DiffusionPipeline, "load_config", offline)
    with pytest.raises(ValueError, match="someone/some-model' is neither a local folder nor a Hub id.*revision 'v1.0'"):
        load_pipeline("someone/some-model", revision="v1.0")
    assert calls == [("someone/some-model", {"revision": "v1.0"})]  # the class comes from its model_index.json

    sd_index = {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
                "text_encoder": ["transformers", "CLIPTextModel"]}
    monkeypatch.setattr(diffusers.DiffusionPipeline, "load_config", lambda name, **kwargs: sd_index)
    monkeypatch.setattr(diffusers.StableDiffusionPipeline, "from_pretrained", offline)
    with pytest.raises(ValueError, match="someone/some-model' is neither a local folder nor a Hub id.*revision 'v1.0'"):
        load_pipeline("someone/some-model", revision="v1.0")
    assert calls[1][0] == "someone/some-model"
    assert calls[1][1]["revision"] == "v1.0" and calls[1][1]["use_safetensors"] is True
    assert calls[1][1]["safety_checker"] is None
