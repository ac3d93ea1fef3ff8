"""Bad input to the classification job: one clear line naming the argument, exit 1, no output."""

import os
import subprocess
import sys

import pytest


def run(tmp_path, *args):
    out = tmp_path / "out"
    env = {**os.environ, "SCISSORHANDS_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "classification.unlearn", "--output_dir", str(out), *args],
                          capture_output=True, text=True, env=env, timeout=300)
    return proc, out


@pytest.mark.parametrize("args,message", [
    (["--method", "nope"], "method='nope' is unknown; known methods: esd, finetune"),
    (["--dataset", "mnist"], "dataset='mnist'"),
    (["--kept_fraction", "1.5"], "kept_fraction=1.5 must be in (0, 1)"),
    (["--lam", "-1"], "lam=-1.0 must be a finite number >= 0"),
    (["--forget", "class", "--forget_classes", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9"], "whole training set"),
    (["--forget", "random", "--forget_fraction", "0.0001"], "selects no sample to forget"),
    (["--dataset", "cifar10", "--data_dir", "/nonexistent"], "cifar-10-batches-bin"),
    (["--original_model", "/nonexistent/model.safetensors"], "/nonexistent/model.safetensors"),
    (["--dataset", "svhn", "--data_dir", "{garbage_svhn}"], "train_32x32.mat: not SVHN's train_32x32.mat"),
    (["--gradient_accumulation_steps", "1000"], "gradient_accumulation_steps=1000 needs at least 1000 batches"),
])
def test_bad_input_fails_clearly_and_writes_nothing(tmp_path, monkeypatch, args, message):
    """In process, through ``run_cli`` (what ``python -m classification.unlearn`` runs): its
    ``SystemExit("error: ...")`` is the one stderr line and exit status 1, checked in a real
    subprocess below."""
    from classification.unlearn import main
    from erasure.jobconfig import run_cli

    if "{garbage_svhn}" in args:  # .mat files that are no MATLAB files
        for split in ("train", "test"):
            (tmp_path / f"{split}_32x32.mat").write_bytes(b"garbage")
        args = [str(tmp_path) if a == "{garbage_svhn}" else a for a in args]
    monkeypatch.setenv("SCISSORHANDS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, ["--output_dir", str(out), *args])
    error = exit_info.value.code
    assert isinstance(error, str) and error.startswith("error: ") and "\n" not in error, error
    assert message in error
    assert not out.exists()


def test_the_command_line_exits_1_with_one_error_line(tmp_path):
    proc, out = run(tmp_path, "--method", "nope")
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stderr.startswith("error: method='nope' is unknown") and len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()
