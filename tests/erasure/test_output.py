"""OutputDir: resume and overwrite together refused, kill leftovers cleaned, concurrent atomic writes."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from erasure.checkpoints import COMPLETE_MARKER
from erasure.lock import LOCK_FILE, FolderLockedError
from erasure.output import OutputDir

REPO = Path(__file__).resolve().parents[2]
DEAD_PID = 2 ** 22 + 1  # above the default pid_max: never a running process


class MainProcess:
    is_main_process = True

    def wait_for_everyone(self):
        pass


def finished_run(folder: Path) -> Path:
    """A folder as a finished job leaves it: a complete checkpoint and an export."""
    (folder / "checkpoint-2").mkdir(parents=True)
    (folder / "checkpoint-2" / "random_states_0.pkl").write_bytes(b"rng")
    (folder / "checkpoint-2" / COMPLETE_MARKER).write_text(json.dumps({"step": 2, "files": {"random_states_0.pkl": 3}}))
    (folder / "model_index.json").write_text("{}")
    return folder


@pytest.mark.parametrize("resume", ["latest", "{out}/checkpoint-2"])
def test_resume_with_overwrite_is_refused_and_deletes_nothing(tmp_path, resume):
    out = finished_run(tmp_path / "run")
    with pytest.raises(ValueError) as err:
        output = OutputDir(out, overwrite=True, resume=resume.format(out=out))
        output.prepare(MainProcess())  # today's code gets here and deletes the checkpoints
    message = str(err.value)
    assert "overwrite_output_dir" in message and "resume_from_checkpoint" in message and "\n" not in message
    assert (out / "checkpoint-2" / COMPLETE_MARKER).is_file() and (out / "model_index.json").is_file()


def test_overwrite_with_a_checkpoint_from_elsewhere_is_allowed(tmp_path):
    source = finished_run(tmp_path / "old")
    OutputDir(finished_run(tmp_path / "run"), overwrite=True, resume=str(source / "checkpoint-2"))


def test_what_a_killed_run_left_does_not_block_and_is_removed(tmp_path):
    out = tmp_path / "run"
    (out / ".checkpoint-4.tmp-123").mkdir(parents=True)
    (out / ".checkpoint-4.tmp-123" / "optimizer.bin").write_bytes(b"half")
    (out / ".export-123" / "unet").mkdir(parents=True)
    (out / ".README.md.123.tmp").write_text("half a card")
    (out / LOCK_FILE).write_text(json.dumps({"pid": DEAD_PID, "host": socket.gethostname()}))
    output = OutputDir(out)  # not "not empty": only leftovers
    output.prepare(MainProcess())
    assert [p.name for p in out.iterdir()] == [LOCK_FILE]
    assert json.loads((out / LOCK_FILE).read_text())["pid"] == os.getpid()
    output.close()
    assert not any(out.iterdir())


def test_a_live_job_in_the_folder_refuses_early(tmp_path):
    out = finished_run(tmp_path / "run")
    (out / LOCK_FILE).write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))
    with pytest.raises(FolderLockedError, match=f"pid {os.getppid()}"):
        OutputDir(out, resume="latest")


def test_overwrite_empties_the_folder_but_keeps_its_own_lock(tmp_path):
    out = finished_run(tmp_path / "run")
    with OutputDir(out, overwrite=True) as output:
        output.prepare(MainProcess())
        assert [p.name for p in out.iterdir()] == [LOCK_FILE]
    assert not any(out.iterdir())


def hammer(script: str, path: Path, seconds: float = 1.5) -> list[subprocess.CompletedProcess]:
    """Two processes running `script` against one `path` at once for `seconds`."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(path), str(seconds), str(k)], env=env,
                              stderr=subprocess.PIPE, text=True) for k in range(2)]
    return [(proc.wait(timeout=120), proc.stderr.read()) for proc in procs]


def test_two_processes_writing_one_file_atomically_never_collide(tmp_path):
    script = ("import sys, time\nfrom pathlib import Path\nfrom erasure.output import write_text_atomic\n"
              "path, end = Path(sys.argv[1]), time.monotonic() + float(sys.argv[2])\n"
              "while time.monotonic() < end:\n    write_text_atomic(path, sys.argv[3] * 1000)\n")
    results = hammer(script, tmp_path / "results.json")
    assert [code for code, _ in results] == [0, 0], results[0][1][-1000:] + results[1][1][-1000:]
    assert (tmp_path / "results.json").read_text() in ("0" * 1000, "1" * 1000)
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_an_output_path_under_a_file_is_one_line_naming_it(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match=rf"output_dir={tmp_path}/file/run: cannot create it, "
                                                 rf"{tmp_path}/file is a file, not a folder"):
        OutputDir(tmp_path / "file" / "run")
    with pytest.raises(NotADirectoryError, match=rf"output_dir={tmp_path}/file is a file, not a folder"):
        OutputDir(tmp_path / "file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_an_unwritable_output_folder_is_refused_before_any_work(tmp_path, monkeypatch):
    from erasure.output import check_output_dir

    # /sys refuses new files even to root; elsewhere a read-only folder stands in (for non-root users)
    readonly = Path("/sys/scissorhands-out") if Path("/sys").is_dir() and os.geteuid() == 0 else tmp_path / "ro"
    if readonly.parent == tmp_path:
        readonly.mkdir()
        readonly.chmod(0o500)
    with pytest.raises(PermissionError, match=rf"output_dir={readonly}: cannot write in "):
        OutputDir(readonly)
    with pytest.raises(PermissionError, match="out=.*choose a writable folder"):
        check_output_dir(readonly / "deeper", "out")
    check_output_dir(tmp_path / "new" / "run")  # creatable: passes, leaves nothing behind
    assert not (tmp_path / "new").exists() and not list(tmp_path.glob(".write-probe-*"))
