"""The classification job end to end, through ``accelerate launch`` (a few CPU seconds each)."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from tests.launch import main_process_port

FAST = ["--dataset", "digits", "--model", "digits_cnn", "--pretrain_epochs", "3", "--num_train_epochs", "2",
        "--train_batch_size", "128", "--relearn_max_epochs", "0", "--kept_fraction", "0.9"]


def launch(args, cache, *launch_flags, check=True):
    env = {**os.environ, "SCISSORHANDS_CACHE": str(cache), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    flags = list(launch_flags) or ["--cpu", "--num_processes", "1"]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *flags, "--num_machines", "1", *main_process_port(),
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "classification.unlearn", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(proc.stderr[-3000:])
    return proc


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, cache):
    out = tmp_path_factory.mktemp("runs") / "full"
    launch([*FAST, "--output_dir", str(out), "--checkpointing_steps", "5", "--checkpoints_total_limit", "10"], cache)
    return out


def test_writes_model_results_and_checkpoints(full_run):
    assert (full_run / "model.safetensors").is_file()
    results = json.loads((full_run / "results.json").read_text())
    for key in ("ua", "ra", "ta", "mia", "avg_gap", "tow", "rte"):
        assert key in results["metrics"]
    assert results["prepare"]["trimmed_fraction"] == pytest.approx(0.1, abs=1e-4)
    assert "| scissorhands |" in (full_run / "results.md").read_text()
    assert [p.name for p in sorted(full_run.glob("checkpoint-*"))] == ["checkpoint-10", "checkpoint-15", "checkpoint-20", "checkpoint-5"]  # 10 steps x 2 epochs
    assert not list(full_run.glob("*.tmp"))


def test_same_seed_same_weights(full_run, cache, tmp_path):
    again = tmp_path / "again"
    launch([*FAST, "--output_dir", str(again), "--checkpointing_steps", "5", "--checkpoints_total_limit", "10"], cache)
    a, b = load_file(full_run / "model.safetensors"), load_file(again / "model.safetensors")
    assert all((a[k] == b[k]).all() for k in a)


def test_resume_from_checkpoint_matches_uninterrupted_run(full_run, cache, tmp_path):
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(full_run / "checkpoint-5", resumed / "checkpoint-5")
    launch([*FAST, "--output_dir", str(resumed), "--resume_from_checkpoint", "latest"], cache)
    a, b = load_file(full_run / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all((a[k] == b[k]).all() for k in a)


def test_refuses_non_empty_output_dir(full_run, cache):
    proc = launch([*FAST, "--output_dir", str(full_run)], cache, check=False)
    assert proc.returncode != 0
    assert "overwrite_output_dir" in proc.stderr


def test_two_process_ddp_replicas_stay_identical(cache, tmp_path):
    out = tmp_path / "ddp"
    launch([*FAST, "--output_dir", str(out), "--method", "scissorhands", "--checkpointing_steps", "5"], cache,
           "--multi_gpu", "--num_processes", "2")
    # both ranks' RNG states are in the checkpoint: the main process renamed it after both saved
    markers = [json.loads(p.read_text()) for p in out.glob("checkpoint-*/checkpoint_complete.json")]
    assert len(markers) == 2  # checkpoints_total_limit
    for marker in markers:
        assert {"random_states_0.pkl", "random_states_1.pkl", "method_state.json"} <= set(marker["files"])
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [".export.json"]
    results = json.loads((out / "results.json").read_text())
    prepared, trained = results["prepare"]["replicas_after_prepare"], results["replicas_after_training"]
    assert len(prepared) == 2 and prepared[0] == prepared[1]  # same mask, same re-initialisation
    assert len(trained) == 2 and trained[0] == trained[1]


def in_process(args, cache, monkeypatch):
    from classification.unlearn import main

    monkeypatch.setenv("SCISSORHANDS_CACHE", str(cache))
    return main([*FAST, *args])


def test_resume_with_overwrite_is_refused_and_keeps_the_run(full_run, cache, tmp_path, monkeypatch):
    out = tmp_path / "run"
    shutil.copytree(full_run, out)
    before = sorted(p.name for p in out.rglob("*"))
    with pytest.raises(ValueError, match="overwrite_output_dir=True with resume_from_checkpoint=latest"):
        in_process(["--output_dir", str(out), "--resume_from_checkpoint", "latest", "--overwrite_output_dir", "true"],
                   cache, monkeypatch)
    assert sorted(p.name for p in out.rglob("*")) == before


def test_partial_newest_checkpoint_is_skipped_with_a_warning(full_run, cache, tmp_path):
    """checkpoint-10 as a kill mid-save leaves it (no marker, half a weights file): latest is checkpoint-5."""
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(full_run / "checkpoint-5", resumed / "checkpoint-5")
    partial = resumed / "checkpoint-10"
    shutil.copytree(full_run / "checkpoint-10", partial)
    (partial / "checkpoint_complete.json").unlink(missing_ok=True)
    (partial / "model.safetensors").write_bytes((partial / "model.safetensors").read_bytes()[:100])
    proc = launch([*FAST, "--output_dir", str(resumed), "--resume_from_checkpoint", "latest"], cache)
    assert "checkpoint-10" in proc.stderr and "incomplete" in proc.stderr
    a, b = load_file(full_run / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all((a[k] == b[k]).all() for k in a)


@pytest.mark.parametrize("name", ["random_states_0.pkl", "method_state.json"])
def test_truncated_state_file_is_refused_naming_checkpoint_and_file(full_run, cache, tmp_path, monkeypatch, name):
    """accelerate's load_state skips a broken RNG state silently; the job refuses it instead."""
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(full_run / "checkpoint-5", resumed / "checkpoint-5")
    path = resumed / "checkpoint-5" / name
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError) as err:
        in_process(["--output_dir", str(resumed), "--resume_from_checkpoint", "latest"], cache, monkeypatch)
    assert "checkpoint-5" in str(err.value) and name in str(err.value) and "\n" not in str(err.value)
    assert not (resumed / "model.safetensors").exists()


def test_retain_dro_weights_the_classes_and_reports_them(cache, tmp_path, monkeypatch):
    results = in_process(["--output_dir", str(tmp_path / "dro"), "--method", "finetune", "--retain_dro", "0.5"],
                         cache, monkeypatch)
    weights = results["retain_group_weights"]
    assert sorted(weights, key=int) == [str(c) for c in range(10)]
    assert sum(weights.values()) == pytest.approx(1.0, abs=1e-4) and len(set(weights.values())) > 1
    assert json.loads((tmp_path / "dro" / "results.json").read_text())["retain_group_weights"] == weights
