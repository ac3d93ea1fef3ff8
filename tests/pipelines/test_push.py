"""Publishing: erase -> audit -> push uploads the audited folder with model-index results; a
changed folder, a failed gate or an audit of plain images are refused; the card's license, base and
loading snippet; the export keeps the base's safety checker."""

import json
import shutil
import types

import pytest
import torch

from eval.audit import main as audit_main
from pipelines import erase
from pipelines.card import UNKNOWN_LICENSE, base_lineage, model_card
from pipelines.generate import main as generate_main
from pipelines.push import RELEASE_IGNORE, folder_fingerprint, main as push_main, release_files

TRAIN = ["--train_batch_size", "4", "--learning_rate", "1e-4", "--max_train_steps", "1", "--kept_fraction", "0.99"]


class FakeDetector:
    """Every image gets ``detections`` ((label, score) pairs)."""

    def __init__(self, detections=()):
        self.detections = list(detections)

    def detect(self, images):
        from eval.nudenet import Detection

        return [[Detection(label, score, (0, 0, 4, 4)) for label, score in self.detections] for _ in images]

    def protocol(self):
        return {"detector": "fake", "inference_resolution": 320}


class FakeApi:
    """Records what a push would send to the Hub."""

    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def create_branch(self, repo_id, **kwargs):
        self.calls.append(("create_branch", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        assert kwargs["ignore_patterns"] == RELEASE_IGNORE
        self.calls.append(("upload_folder", kwargs["repo_id"], {**kwargs, "files": release_files(kwargs["folder_path"])}))
        return types.SimpleNamespace(commit_url=f"https://huggingface.co/{kwargs['repo_id']}/commit/1")

    def uploads(self):
        return [c for c in self.calls if c[0] == "upload_folder"]


@pytest.fixture(scope="module")
def export(tiny_pipeline_dir, tmp_path_factory):
    data = tmp_path_factory.mktemp("data") / "digits7"
    generate_main(["--pretrained_model_name_or_path", str(tiny_pipeline_dir), "--concept", "digits:7",
                   "--output_dir", str(data), "--num_images", "4", "--num_inference_steps", "2", "--batch_size", "4"])
    out = tmp_path_factory.mktemp("erase") / "run"
    erase.main(["--pretrained_model_name_or_path", str(tiny_pipeline_dir), "--data_dir", str(data),
                "--output_dir", str(out), "--concept", "digit seven", "--checkpointing_steps", "1", *TRAIN])
    return out


@pytest.fixture()
def release(export, tmp_path):
    """A fresh copy of the export and an audit of it (gate passed)."""
    folder = tmp_path / "export"
    shutil.copytree(export, folder)
    audit = tmp_path / "audit"
    audit_main(["--model", str(folder), "--prompts", "nudity", "--out", str(audit), "--num_inference_steps", "2",
                "--batch_size", "4", "--fail-above", "0"], detector=FakeDetector())
    return folder, audit


def card_metadata(folder):
    from huggingface_hub import ModelCard

    return ModelCard.load(folder / "README.md").data.to_dict()


def test_push_uploads_the_audited_folder_with_model_index_results(release):
    folder, audit = release
    api = FakeApi()
    result = push_main([str(folder), "--repo_id", "me/erased", "--audit", str(audit / "report.json")], api=api)
    (upload,) = api.uploads()
    assert upload[2]["folder_path"] == str(folder) and result["url"].endswith("/commit/1")
    assert result["fingerprint"] == json.loads((audit / "report.json").read_text())["protocol"]["model_fingerprint"]
    files = upload[2]["files"]
    assert "unet/diffusion_pytorch_model.safetensors" in files and "audit/report.json" in files
    assert not any(f.startswith("checkpoint-") or f.startswith(".") for f in files)
    metadata = card_metadata(folder)
    (entry,) = metadata["model-index"]
    assert entry["name"] == "me/erased"
    metrics = {m["type"]: m["value"] for r in entry["results"] for m in r["metrics"]}
    assert metrics["nudenet_exposed_detections"] == 0 and metrics["nudenet_exposed_images"] == 0
    card = (folder / "README.md").read_text()
    assert "Not audited yet" not in card and "audit/report.md" in card

    again = push_main([str(folder), "--repo_id", "me/erased", "--audit", str(audit)], api=api)  # the --out folder
    assert again["fingerprint"] == result["fingerprint"]  # the card and audit/ are not fingerprinted
    assert (folder / "README.md").read_text().count("## Evaluation") == 1  # replaced, not appended


def test_a_changed_folder_is_refused_then_forced(release):
    folder, audit = release
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(
        {**json.loads((folder / "scheduler" / "scheduler_config.json").read_text()), "steps_offset": 0}))
    card_before = (folder / "README.md").read_text()
    api = FakeApi()
    with pytest.raises(ValueError, match="the audit is of other weights"):
        push_main([str(folder), "--repo_id", "me/erased", "--audit", str(audit / "report.json")], api=api)
    assert api.calls == [] and (folder / "README.md").read_text() == card_before and not (folder / "audit").exists()
    push_main([str(folder), "--repo_id", "me/erased", "--audit", str(audit / "report.json"), "--force"], api=api)
    assert len(api.uploads()) == 1
    assert "Published with --force despite:** the audit is of other weights" in (folder / "README.md").read_text()


def test_a_failed_gate_and_an_images_audit_are_refused(release, tmp_path):
    folder, audit = release
    failed = tmp_path / "failed"
    with pytest.raises(SystemExit) as exit_info:
        audit_main(["--model", str(folder), "--prompts", "nudity", "--out", str(failed), "--num_inference_steps", "2",
                    "--batch_size", "4", "--fail-above", "0"], detector=FakeDetector([("FEMALE_BREAST_EXPOSED", 0.9)]))
    assert exit_info.value.code == 3
    api = FakeApi()
    with pytest.raises(ValueError, match="gate failed: 4 exposed detections > fail_above 0"):
        push_main([str(folder), "--repo_id", "me/erased", "--audit", str(failed)], api=api)
    plain = tmp_path / "plain-images"  # images without the protocol.json that names their weights
    plain.mkdir()
    for image in (audit / "images").glob("*.png"):
        shutil.copyfile(image, plain / image.name)
    images_only = tmp_path / "images-audit"
    audit_main(["--images", str(plain), "--out", str(images_only)], detector=FakeDetector())
    with pytest.raises(ValueError, match="does not record which weights"):
        push_main([str(folder), "--repo_id", "me/erased", "--audit", str(images_only)], api=api)
    assert api.calls == []
    sampled = tmp_path / "sampled-audit"  # eval.sample's folder records the weights that drew it
    audit_main(["--images", str(audit / "images"), "--out", str(sampled)], detector=FakeDetector())
    push_main([str(folder), "--repo_id", "me/erased", "--audit", str(sampled)], api=api)
    assert len(api.uploads()) == 1


def test_dry_run_and_revision(release):
    folder, audit = release
    api = FakeApi()
    result = push_main([str(folder), "--repo_id", "me/erased", "--dry_run"], api=api)
    assert api.calls == [] and result["url"] is None and "model_index.json" in result["files"]
    assert "Published without an audit" in (folder / "README.md").read_text()
    push_main([str(folder), "--repo_id", "me/erased", "--revision", "v1"], api=api)
    assert api.calls[1] == ("create_branch", "me/erased", {"branch": "v1", "exist_ok": True})
    assert api.uploads()[0][2]["revision"] == "v1"


@pytest.mark.parametrize("args,message", [
    (["--repo_id", "no-owner"], "repo_id='no-owner' must be a Hub id 'owner/name'"),
    (["--repo_id", "me/x", "--audit", "/nonexistent/report.json"], "no such file"),
])
def test_bad_input_is_refused_before_anything_is_written(release, args, message):
    folder, _ = release
    card = (folder / "README.md").read_text()
    with pytest.raises((ValueError, FileNotFoundError), match=message.replace("(", r"\(").replace(")", r"\)")):
        push_main([str(folder), *args], api=FakeApi())
    assert (folder / "README.md").read_text() == card


def test_a_folder_that_is_no_export_or_is_being_written_is_refused(release, tmp_path):
    folder, _ = release
    with pytest.raises(ValueError, match="is no export"):
        push_main([str(tmp_path), "--repo_id", "me/x"], api=FakeApi())
    import os
    import socket

    (folder / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    with pytest.raises(ValueError, match="is in use by pid"):
        push_main([str(folder), "--repo_id", "me/x"], api=FakeApi())


def test_fingerprint_covers_weights_not_the_card(export, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(export, folder)
    before = folder_fingerprint(folder)
    (folder / "README.md").write_text("another card")
    assert folder_fingerprint(folder) == before
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    from safetensors.torch import load_file, save_file

    tensors = load_file(weights)
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1e-3
    save_file(tensors, weights)
    assert folder_fingerprint(folder) != before


def test_card_license_and_base_follow_the_base_model(tmp_path):
    config = {"pretrained_model_name_or_path": "CompVis/stable-diffusion-v1-4", "method": "scissorhands",
              "concept": "nudity", "output_dir": "runs/x"}
    assert base_lineage("CompVis/stable-diffusion-v1-4") == ("creativeml-openrail-m", "CompVis/stable-diffusion-v1-4")
    assert base_lineage("stabilityai/stable-diffusion-2-1") == ("openrail++", "stabilityai/stable-diffusion-2-1")
    local = tmp_path / "base"
    local.mkdir()
    (local / "README.md").write_text("---\nlicense: mit\nbase_model: someone/base\n---\n# base\n")
    assert base_lineage(str(local)) == ("mit", "someone/base")
    bare = tmp_path / "bare"
    bare.mkdir()
    assert base_lineage(str(bare)) == (UNKNOWN_LICENSE, None)
    card = model_card({**config, "pretrained_model_name_or_path": str(bare)}, {}, {})
    assert f"license: {UNKNOWN_LICENSE}" in card and "License: unknown" in card and "base_model" not in card
    card = model_card(config, {}, {})
    assert "base_model: CompVis/stable-diffusion-v1-4" in card and "license: creativeml-openrail-m" in card
    assert "https://github.com)" not in card  # no placeholder links
    assert "substitute_word" not in card  # unset: not a row of the table
    assert "| substitute_word | blue |" in model_card({**config, "substitute_word": "blue"}, {}, {})
    chosen = {"substitute_choice": {"rule": "nearest", "word": "green", "prediction_gaps": {"green": 0.1, "blue": 0.3}}}
    assert "| substitute_word | green (chosen: nearest prediction) |" in model_card(config, chosen, {})
    assert "substitute_rewrite" not in model_card(config, chosen, {})
    assert "| substitute_rewrite | True |" in model_card({**config, "substitute_rewrite": True}, chosen, {})


def test_unet_export_card_snippet_runs_as_written(tiny_pipeline_dir, tmp_path):
    from diffusers import UNet2DConditionModel

    folder = tmp_path / "unet-export"
    UNet2DConditionModel.from_pretrained(tiny_pipeline_dir, subfolder="unet").save_pretrained(folder / "unet")
    card = model_card({"pretrained_model_name_or_path": str(tiny_pipeline_dir), "method": "esd", "export": "unet",
                       "hub_model_id": str(folder)}, {}, {})
    code = card.split("```python\n", 1)[1].split("```", 1)[0]
    namespace = {}
    exec(code, namespace)  # noqa: S102 - the card's own snippet, on local folders
    pipe = namespace["pipe"]
    assert pipe.unet.config.sample_size == 16 and pipe.text_encoder is not None


def test_export_keeps_the_bases_safety_checker(tiny_pipeline_dir, tmp_path):
    from diffusers import StableDiffusionPipeline
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    base = StableDiffusionPipeline.from_pretrained(tiny_pipeline_dir)
    clip = CLIPConfig(text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                                   "num_attention_heads": 2},
                      vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                                     "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
                      projection_dim=8)
    torch.manual_seed(0)
    base.register_modules(safety_checker=StableDiffusionSafetyChecker(clip),
                          feature_extractor=CLIPImageProcessor(crop_size=32, size=32))
    base.register_to_config(requires_safety_checker=True)
    with_checker = tmp_path / "base-with-checker"
    base.save_pretrained(with_checker)
    data = tmp_path / "data"
    generate_main(["--pretrained_model_name_or_path", str(with_checker), "--concept", "digits:7", "--output_dir",
                   str(data), "--num_images", "4", "--num_inference_steps", "2", "--batch_size", "4"])
    for flag, kept in (([], True), (["--no_safety_checker", "true"], False)):
        out = tmp_path / f"out-{kept}"
        erase.main(["--pretrained_model_name_or_path", str(with_checker), "--data_dir", str(data),
                    "--output_dir", str(out), *TRAIN, *flag])
        index = json.loads((out / "model_index.json").read_text())
        assert (index["safety_checker"][1] == "StableDiffusionSafetyChecker") is kept
        assert (out / "safety_checker").is_dir() is kept and (out / "feature_extractor").is_dir() is kept
