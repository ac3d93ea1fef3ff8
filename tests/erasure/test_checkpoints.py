"""checkpoint-N folders are complete or absent: staged saves, real kills, damaged files refused."""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from erasure.output import OutputDir, checkpoints, latest_checkpoint, save_checkpoint

REPO = Path(__file__).resolve().parents[2]
# A job that saves checkpoint-1, then is SIGKILLed while checkpoint-2 is half written.
KILLED_SAVE = """
import sys, time
from pathlib import Path
import torch
from accelerate import Accelerator
from erasure.output import save_checkpoint

out = Path(sys.argv[1])
accelerator = Accelerator(cpu=True)
model = torch.nn.Linear(3, 2)
model, optimizer = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
save_checkpoint(accelerator, out, 1, None)

def slow_save(folder, **kwargs):
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / "model.safetensors").write_bytes(b"half a file")
    print("saving", flush=True)
    time.sleep(60)

accelerator.save_state = slow_save
save_checkpoint(accelerator, out, 2, None)
"""


class MainProcess:
    """The part of an Accelerator that OutputDir.prepare uses."""

    is_main_process = True

    def wait_for_everyone(self):
        pass


@pytest.fixture
def accelerator():
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    model = nn.Linear(3, 2)
    accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
    return accelerator


def saved_run(accelerator, out: Path, steps=(1, 2), limit=None) -> Path:
    for step in steps:
        save_checkpoint(accelerator, out, step, limit, lambda folder: (folder / "extra.json").write_text("{}"))
    return out


def test_kill_while_saving_leaves_no_checkpoint_and_the_next_run_cleans_up(accelerator, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_SAVE, str(out)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert proc.stdout.readline().strip() == "saving"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert [p.name for p in checkpoints(out)] == ["checkpoint-1"]
    assert latest_checkpoint(out).name == "checkpoint-1"
    assert [p.name for p in out.glob(".checkpoint-2.tmp-*")]  # the half-written save, hidden
    output = OutputDir(out, resume="latest")
    output.prepare(MainProcess())
    output.close()
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-1"]
    accelerator.load_state(str(latest_checkpoint(out)))  # loads without complaint


def test_complete_checkpoint_holds_a_marker_with_every_file(accelerator, tmp_path):
    out = saved_run(accelerator, tmp_path / "run")
    marker = json.loads((out / "checkpoint-2" / "checkpoint_complete.json").read_text())
    assert marker["step"] == 2
    assert {"model.safetensors", "optimizer.bin", "random_states_0.pkl", "extra.json"} <= set(marker["files"])
    assert marker["files"]["extra.json"] == 2
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_latest_skips_a_partial_checkpoint_with_a_warning(accelerator, tmp_path, caplog):
    """A checkpoint-N as an older version leaves it when killed: files missing, no marker."""
    out = saved_run(accelerator, tmp_path / "run")
    partial = out / "checkpoint-3"
    shutil.copytree(out / "checkpoint-2", partial)
    (partial / "checkpoint_complete.json").unlink(missing_ok=True)
    (partial / "optimizer.bin").unlink()
    with caplog.at_level(logging.WARNING):
        assert latest_checkpoint(out) == out / "checkpoint-2"
    assert "checkpoint-3" in caplog.text and "incomplete" in caplog.text


@pytest.mark.parametrize("name", ["random_states_0.pkl", "model.safetensors", "extra.json"])
def test_truncated_file_in_the_newest_checkpoint_is_refused_naming_it(accelerator, tmp_path, name):
    out = saved_run(accelerator, tmp_path / "run")
    path = out / "checkpoint-2" / name
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(ValueError) as err:
        latest_checkpoint(out)
    assert "checkpoint-2" in str(err.value) and name in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ValueError, match=name):
        OutputDir(out, resume=str(out / "checkpoint-2"))


def test_rotation_counts_only_complete_checkpoints(accelerator, tmp_path):
    out = saved_run(accelerator, tmp_path / "run")
    (out / "checkpoint-9").mkdir()  # a partial one (no marker), newer than all
    save_checkpoint(accelerator, out, 3, 2)
    assert [p.name for p in checkpoints(out)] == ["checkpoint-2", "checkpoint-3", "checkpoint-9"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # deleted via a hidden rename


def test_saving_a_step_again_replaces_it_completely(accelerator, tmp_path):
    out = saved_run(accelerator, tmp_path / "run")
    save_checkpoint(accelerator, out, 2, None)  # no extra file this time
    assert not (out / "checkpoint-2" / "extra.json").exists()
    assert latest_checkpoint(out) == out / "checkpoint-2"
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-1", "checkpoint-2"]
