"""The erase job on a tiny pipeline: export, resume, DDP, Hub push and bad input."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pipelines import erase
from pipelines.generate import main as generate_main
from tests.launch import main_process_port

TRAIN = ["--train_batch_size", "4", "--learning_rate", "1e-4", "--num_train_epochs", "2", "--kept_fraction", "0.99"]


@pytest.fixture(scope="module")
def concept_data(tiny_pipeline_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "digits7"
    generate_main(["--pretrained_model_name_or_path", str(tiny_pipeline_dir), "--concept", "digits:7",
                   "--output_dir", str(out), "--num_images", "8", "--num_inference_steps", "2", "--batch_size", "4"])
    return out


def run(tiny_pipeline_dir, concept_data, out, *extra):
    return erase.main(["--pretrained_model_name_or_path", str(tiny_pipeline_dir), "--data_dir", str(concept_data),
                       "--output_dir", str(out), "--concept", "digit seven", *TRAIN, *extra])


def launch(args, *launch_flags, check=True):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    flags = list(launch_flags) or ["--cpu", "--num_processes", "1"]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *flags, "--num_machines", "1", *main_process_port(),
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "pipelines.erase", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(proc.stderr[-3000:])
    return proc


@pytest.fixture(scope="module")
def erased(tiny_pipeline_dir, concept_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("erase") / "run"
    summary = run(tiny_pipeline_dir, concept_data, out, "--checkpointing_steps", "2", "--checkpoints_total_limit", "5")
    return out, summary


def test_export_loads_with_plain_diffusers_and_generates(erased, tiny_pipeline_dir):
    from diffusers import StableDiffusionPipeline

    out, summary = erased
    pipe = StableDiffusionPipeline.from_pretrained(out)
    image = pipe("a handwritten digit seven", num_inference_steps=2, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.shape == (32, 32, 3)
    base = load_file(tiny_pipeline_dir / "unet" / "diffusion_pytorch_model.safetensors")
    new = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    assert any(not torch.equal(base[k], new[k]) for k in base)
    assert not list(out.glob(".export-*"))


def test_card_and_config_record_the_run(erased):
    out, summary = erased
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "scissorhands" in card
    # a local base is no Hub id: no base_model metadata, and no license it does not state
    assert "base_model:" not in card and "license: other" in card and "License: unknown" in card
    assert "digit seven" in card
    config = json.loads((out / "erase_config.json").read_text())
    assert config["config"]["kept_fraction"] == 0.99
    assert config["prepare"]["trimmed_fraction"] == pytest.approx(0.01, abs=1e-4)
    assert config["data"]["forget_images"] == 8
    assert summary["trimmed_fraction"] == pytest.approx(0.01, abs=1e-4)


def test_resume_matches_the_uninterrupted_run(erased, tiny_pipeline_dir, concept_data, tmp_path):
    out, _ = erased
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(out / "checkpoint-2", resumed / "checkpoint-2")
    launch(["--pretrained_model_name_or_path", str(tiny_pipeline_dir), "--data_dir", str(concept_data),
            "--output_dir", str(resumed), "--concept", "digit seven", *TRAIN, "--resume_from_checkpoint", "latest"])
    a = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    b = load_file(resumed / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


# paper 000's repair, and the testbed's config file itself (the job's flags override its lr and epochs): four UNet
# forwards (forget, empty prompt, substitute, retain) before the two backwards of a step
# bf16-accumulate: g_f kept in bf16 over 2 accumulated micro-steps must be all-reduced whole on the sync step
# (a buffer that held the first micro-step outside .grad left it unsynchronised and the replicas drifted)
@pytest.mark.parametrize("repair", [[], ["--config", str(Path(__file__).resolve().parents[2] / "configs" /
                                                      "erase_digits_scissorhands.yaml")],
                                    ["--forget_grad_dtype", "bfloat16", "--gradient_accumulation_steps", "2"],
                                    ["--forget_loss", "substitute", "--retain_loss", "distill", "--adversarial_prefix",
                                     "2", "--adversarial_steps", "1"],
                                    ["--forget_loss", "substitute", "--retain_loss", "distill", "--adversarial_prefix",
                                     "2", "--adversarial_steps", "1", "--adversarial_space", "tokens"],
                                    ["--forget_loss", "substitute", "--retain_loss", "distill", "--tamper_steps", "2",
                                     "--gradient_accumulation_steps", "2"]],
                         ids=["paper", "testbed", "bf16-accumulate", "adversarial", "adversarial-tokens", "tamper"])
def test_two_process_ddp_keeps_replicas_identical(tiny_pipeline_dir, concept_data, tmp_path, repair):
    out = tmp_path / "ddp"
    launch(["--pretrained_model_name_or_path", str(tiny_pipeline_dir), "--data_dir", str(concept_data),
            "--output_dir", str(out), *TRAIN, "--train_batch_size", "2", *repair], "--multi_gpu", "--num_processes", "2")
    saved = json.loads((out / "erase_config.json").read_text())
    if "--config" in repair:  # the testbed's scope and guard came from the file
        assert (saved["config"]["trainable"], saved["config"]["projection"]) == ("xattn", "conditional")
    if "tokens" in repair:  # the token prefixes the repair trained under last, one prompt each forget prompt
        assert saved["prepare"]["adversarial_prompts"] and all(
            "seven" in p and len(p.split()) > 2 for p in saved["prepare"]["adversarial_prompts"])
    if "--tamper_steps" in repair:  # the job ran the term on both ranks (the replicas are compared below)
        assert saved["config"]["tamper_steps"] == 2 and saved["prepare"]["last_step_logs"]["loss_tampered"] > 0
    prepare = saved["prepare"]
    for key in ("replicas_after_prepare", "replicas_after_training"):
        assert len(prepare[key]) == 2 and prepare[key][0] == prepare[key][1]


@pytest.mark.parametrize("method", ["scissorhands_minmax", "salun", "esd", "random_label", "grad_ascent"])
def test_baselines_run_in_the_same_harness(tiny_pipeline_dir, concept_data, tmp_path, method):
    extra = ["--trainable", "noxattn"] if method == "esd" else []
    run(tiny_pipeline_dir, concept_data, tmp_path / method, "--method", method, "--max_train_steps", "1", *extra)
    assert (tmp_path / method / "model_index.json").is_file()


@pytest.mark.parametrize("method", [["--method", "esd"], ["--forget_loss", "substitute", "--retain_loss", "distill",
                                                      "--projection", "conditional"]], ids=["esd", "distill"])
def test_bf16_job_runs_with_frozen_copies_in_bf16(tiny_pipeline_dir, concept_data, tmp_path, method):
    """--mixed_precision bf16: ESD's frozen copy and the distill original run in bf16 (fed bf16 inputs)
    beside the float32 trained UNet; the export is float32 and finite."""
    from accelerate.state import AcceleratorState

    out = tmp_path / "bf16"
    AcceleratorState._reset_state(reset_partial_state=True)  # in-process runs before set mixed precision 'no'
    try:
        run(tiny_pipeline_dir, concept_data, out, "--mixed_precision", "bf16", *method)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)  # later in-process runs start clean too
    weights = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.float32}
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_loreun_and_substitute_forget_loss(tiny_pipeline_dir, concept_data, tmp_path):
    summary = run(tiny_pipeline_dir, concept_data, tmp_path / "sub", "--forget_loss", "substitute",
                  "--relabel_target", "prediction", "--loreun", "true", "--projection", "conditional",
                  "--max_train_steps", "1")
    assert summary["trimmed"] > 0


@pytest.mark.parametrize("space", ["embedding", "tokens"])
def test_adversarial_repair_resumes_with_its_prefixes(tiny_pipeline_dir, concept_data, tmp_path, space):
    """AdvUnlearn-style repair: the prefixes (for the token space also their Adam moments) are part of
    the checkpoint, so a resumed run ends on the uninterrupted run's weights (a resume that restarted
    the prefixes would not)."""
    adversarial = ["--forget_loss", "substitute", "--retain_loss", "distill", "--projection", "conditional",
                   "--trainable", "xattn", "--adversarial_prefix", "2", "--adversarial_steps", "2",
                   "--adversarial_space", space]
    out = tmp_path / "adv"
    run(tiny_pipeline_dir, concept_data, out, *adversarial, "--checkpointing_steps", "2")
    state = load_file(out / "checkpoint-2" / "method_state.safetensors")
    assert state["adversarial_prefixes"].shape[1] == 2
    if space == "tokens":  # one distribution over the vocabulary a prefix token, moved off uniform
        assert state["adversarial_prefixes"].shape[2] > 2 and state["adversarial_counts"].max() > 0
        assert not torch.allclose(state["adversarial_prefixes"], state["adversarial_prefixes"].mean(-1, keepdim=True))
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(out / "checkpoint-2", resumed / "checkpoint-2")
    launch(["--pretrained_model_name_or_path", str(tiny_pipeline_dir), "--data_dir", str(concept_data),
            "--output_dir", str(resumed), "--concept", "digit seven", *TRAIN, *adversarial,
            "--resume_from_checkpoint", "latest"])
    a = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    b = load_file(resumed / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_unet_only_export(tiny_pipeline_dir, concept_data, tmp_path):
    run(tiny_pipeline_dir, concept_data, tmp_path / "u", "--export", "unet", "--max_train_steps", "1")
    assert (tmp_path / "u" / "unet" / "config.json").is_file()
    assert not (tmp_path / "u" / "model_index.json").exists()


def test_push_to_hub_uploads_without_token_in_files(tiny_pipeline_dir, concept_data, tmp_path, monkeypatch):
    calls = {}
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, repo_id, **kw: calls.setdefault("repo", repo_id))
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder",
                        lambda self, **kw: calls.setdefault("upload", kw) and "https://hub/commit")
    out = tmp_path / "hub"
    run(tiny_pipeline_dir, concept_data, out, "--max_train_steps", "1", "--push_to_hub", "true",
        "--hub_model_id", "me/erased", "--hub_token", "hf_SECRET123")
    assert calls["repo"] == "me/erased"
    assert calls["upload"]["folder_path"] == str(out) and "checkpoint-*" in calls["upload"]["ignore_patterns"]
    for path in out.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".md", ".txt"):
            assert "hf_SECRET123" not in path.read_text(errors="ignore"), path


def _fail(args, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "pipelines.erase", "--output_dir", str(out), *args],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert not out.exists() or not any(out.iterdir())
    return proc.stderr


def _fail_in_process(args, tmp_path):
    """``_fail`` without a new interpreter: what ``python -m pipelines.erase`` runs (``run_cli``), whose
    ``SystemExit("error: ...")`` is the one stderr line and exit status 1 (``_fail`` checks that in a
    real subprocess)."""
    from erasure.jobconfig import run_cli

    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        run_cli(erase.main, ["--output_dir", str(out), *args])
    message = exit_info.value.code
    assert isinstance(message, str) and message.startswith("error: ") and "\n" not in message, message
    assert not out.exists() or not any(out.iterdir())
    return message


def test_bad_inputs_fail_clearly(tiny_pipeline_dir, concept_data, tmp_path):
    base = ["--pretrained_model_name_or_path", str(tiny_pipeline_dir), "--data_dir", str(concept_data)]
    assert "lam=-1.0" in _fail([*base, "--lam", "-1"], tmp_path)  # the real command line, exit status 1
    assert "method='nope'" in _fail_in_process([*base, "--method", "nope"], tmp_path)
    assert "not a diffusers pipeline" in _fail_in_process(["--pretrained_model_name_or_path", str(concept_data),
                                                           "--data_dir", str(concept_data)], tmp_path)
    assert "data_dir=/nonexistent" in _fail_in_process(["--data_dir", "/nonexistent"], tmp_path)
    empty = tmp_path / "empty"
    (empty / "forget").mkdir(parents=True)
    shutil.copytree(concept_data / "retain", empty / "retain")
    assert str(empty / "forget") in _fail_in_process([*base[:2], "--data_dir", str(empty)], tmp_path)
    # 8 retain images at batch 4 are 2 batches: 3 accumulation steps would average an empty batch
    assert "gradient_accumulation_steps=3 needs at least 3 batches per epoch, but the retain set gives 2" in \
        _fail_in_process([*base, "--train_batch_size", "4", "--gradient_accumulation_steps", "3"], tmp_path)


def test_nan_during_repair_stops_without_export(tiny_pipeline_dir, concept_data, tmp_path):
    stderr = _fail(["--pretrained_model_name_or_path", str(tiny_pipeline_dir), "--data_dir", str(concept_data),
                    *TRAIN, "--learning_rate", "1e30", "--max_grad_norm", "0", "--lam", "10"], tmp_path)
    assert "diverged" in stderr or "NaN" in stderr


def test_resume_with_overwrite_is_refused_and_keeps_the_run(erased, tiny_pipeline_dir, concept_data, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(erased[0], out)
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(ValueError, match="overwrite_output_dir=True with resume_from_checkpoint=latest"):
        run(tiny_pipeline_dir, concept_data, out, "--resume_from_checkpoint", "latest", "--overwrite_output_dir", "true")
    assert sorted(p.name for p in out.iterdir()) == before


SLOW_CARD = """
import sys, time
import pipelines.erase as erase

def slow_card(*args, **kwargs):
    print("writing the card", flush=True)
    time.sleep(120)

erase.write_card = slow_card
erase.main(sys.argv[1:])
"""


def test_kill_during_a_re_export_keeps_the_old_export_whole(erased, tiny_pipeline_dir, concept_data, tmp_path):
    """Killed while the card of a re-export is written: the folder still holds the old export,
    weights, card and config together; the next run replaces it and removes the staging folder."""
    out = tmp_path / "run"
    shutil.copytree(erased[0], out)
    files = ["unet/diffusion_pytorch_model.safetensors", "README.md", "erase_config.json", "model_index.json"]
    old = {name: (out / name).read_bytes() for name in files}
    args = ["--pretrained_model_name_or_path", str(tiny_pipeline_dir), "--data_dir", str(concept_data), "--output_dir",
            str(out), "--concept", "digit seven", *TRAIN, "--num_train_epochs", "3", "--resume_from_checkpoint", "latest"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, "-c", SLOW_CARD, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        assert any("writing the card" in line for line in iter(proc.stdout.readline, ""))  # "" once it ends
    finally:
        proc.kill()
        proc.wait()
    assert {name: (out / name).read_bytes() for name in files} == old

    erase.main(args)
    assert not list(out.glob(".export-[0-9]*")) and not (out / ".lock").exists()
    assert json.loads((out / "erase_config.json").read_text())["config"]["num_train_epochs"] == 3
    assert (out / files[0]).read_bytes() != old[files[0]]


def test_report_to_tensorboard_logs_hparams_and_losses(tiny_pipeline_dir, concept_data, tmp_path):
    """List-valued options (trim_include) are flattened before init_trackers: TensorBoard raises
    on lists; the token never reaches the event files."""
    out = tmp_path / "tb"
    run(tiny_pipeline_dir, concept_data, out, "--max_train_steps", "2", "--report_to", "tensorboard",
        "--trim_include", "*attn*", "*conv*", "--hub_token", "hf_SECRET123")
    events = list((out / "logs").rglob("events.out.tfevents.*"))
    assert events, "TensorBoard wrote no event file"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars = set()
    for path in events:
        accumulator = EventAccumulator(str(path))
        accumulator.Reload()
        scalars |= set(accumulator.Tags()["scalars"])
        assert b"hf_SECRET123" not in path.read_bytes()
    assert any("loss" in tag for tag in scalars), scalars
    assert any(b"*attn*,*conv*" in path.read_bytes() for path in events)


def test_fsdp2_job_refuses_what_it_cannot_do():
    """Checked where accelerate has sharded the UNet (not reachable on a CPU, so called directly)."""
    from erasure.config import MethodConfig
    from erasure.methods import build_method
    from pipelines.erase import check_sharded_job

    scissorhands = build_method(MethodConfig(method="scissorhands"), None)
    with pytest.raises(ValueError, match="gradient_accumulation_steps=2 with FSDP2"):
        check_sharded_job(scissorhands, 2, "full")
    check_sharded_job(build_method(MethodConfig(method="scissorhands", projection="none"), None), 2, "full")
    with pytest.raises(ValueError, match="trainable='lora' with FSDP2"):
        check_sharded_job(scissorhands, 1, "lora")
    check_sharded_job(build_method(MethodConfig(method="salun"), None), 1, "full")  # resumes: whole masks saved
    adversarial = build_method(MethodConfig(forget_loss="substitute", adversarial_prefix=5), None)
    with pytest.raises(ValueError, match="adversarial_prefix=5 with FSDP2"):
        check_sharded_job(adversarial, 1, "full")
    tampered = build_method(MethodConfig(forget_loss="substitute", tamper_steps=1), None)
    with pytest.raises(ValueError, match="tamper_steps=1 with FSDP2"):
        check_sharded_job(tampered, 1, "full")


def test_a_resume_that_would_choose_another_substitute_word_is_refused(tiny_pipeline_dir, concept_data, tmp_path,
                                                                       monkeypatch):
    """The chosen word is part of the run: a resume whose own choice differs (other data or device) would train the
    rest toward another target without a word said."""
    substitute = ["--forget_loss", "substitute", "--retain_loss", "distill", "--checkpointing_steps", "2"]
    out = tmp_path / "run"
    run(tiny_pipeline_dir, concept_data, out, *substitute)
    chosen = json.loads((out / "checkpoint-2" / "prepare_summary.json").read_text())["substitute_choice"]
    assert chosen["rule"] == "nearest" and chosen["word"] == min(chosen["prediction_gaps"],
                                                                 key=chosen["prediction_gaps"].get)
    other = sorted(chosen["prediction_gaps"], key=chosen["prediction_gaps"].get)[1]
    real = erase.choose_replacement
    monkeypatch.setattr(erase, "choose_replacement", lambda *a, **k: (other, real(*a, **k)[1]))
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(out / "checkpoint-2", resumed / "checkpoint-2")
    with pytest.raises(ValueError, match=f"chose substitute word '{chosen['word']}' and this resume chose '{other}'"):
        run(tiny_pipeline_dir, concept_data, resumed, *substitute, "--resume_from_checkpoint", "latest")


def test_group_dro_weights_the_kept_digits_and_resumes_them(tiny_pipeline_dir, concept_data, tmp_path):
    """--retain_dro with the testbed's digit labels as groups: the summary and erase_config.json name every kept
    digit's weight (a distribution the losses moved), the weights are in the checkpoint, and a run resumed from it
    ends on the uninterrupted run's UNet and weights (one resumed with uniform weights would not)."""
    dro = ["--retain_loss", "distill", "--retain_dro", "0.5", "--retain_group_by", "label"]
    out = tmp_path / "dro"
    summary = run(tiny_pipeline_dir, concept_data, out, *dro, "--checkpointing_steps", "2")
    retain_rows = [json.loads(line) for line in (concept_data / "retain" / "metadata.jsonl").read_text().splitlines()]
    kept = sorted({str(row["extra"]["label"]) for row in retain_rows})
    weights = summary["retain_group_weights"]
    assert sorted(weights) == kept and "7" not in weights
    assert sum(weights.values()) == pytest.approx(1.0, abs=1e-4)
    assert len(set(weights.values())) > 1
    assert json.loads((out / "erase_config.json").read_text())["prepare"]["retain_group_weights"] == weights
    state = load_file(out / "checkpoint-2" / "method_state.safetensors")
    assert state["retain_group_log_weights"].shape == (len(kept),)
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(out / "checkpoint-2", resumed / "checkpoint-2")
    launch(["--pretrained_model_name_or_path", str(tiny_pipeline_dir), "--data_dir", str(concept_data),
            "--output_dir", str(resumed), "--concept", "digit seven", *TRAIN, *dro, "--resume_from_checkpoint", "latest"])
    assert json.loads((resumed / "erase_config.json").read_text())["prepare"]["retain_group_weights"] == weights
    a = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    b = load_file(resumed / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_retain_group_key_the_metadata_lacks_is_refused(tiny_pipeline_dir, concept_data, tmp_path):
    message = _fail_in_process(["--pretrained_model_name_or_path", str(tiny_pipeline_dir), "--data_dir",
                                str(concept_data), *TRAIN, "--retain_loss", "distill", "--retain_dro", "0.5",
                                "--retain_group_by", "pose"], tmp_path)
    assert "retain_group_by='pose'" in message and "'label'" in message
