"""One job per output folder: a live holder refuses the second job, a dead one is taken over."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from erasure.lock import LOCK_FILE, FolderLockedError, OutputLock, output_lock, pid_alive

REPO = Path(__file__).resolve().parents[2]
HOLD = """
import sys, time
from erasure.lock import OutputLock
OutputLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(60)
"""


def hold_in_subprocess(folder: Path) -> subprocess.Popen:
    """A second process that takes the lock of `folder` and sleeps (until it is killed)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_process_is_refused_with_pid_and_host(tmp_path):
    holder = hold_in_subprocess(tmp_path / "out")
    try:
        with pytest.raises(FolderLockedError) as err:
            OutputLock(tmp_path / "out").acquire()
        message = str(err.value)
        assert str(tmp_path / "out") in message and f"pid {holder.pid}" in message
        assert socket.gethostname() in message
    finally:
        holder.kill()
        holder.wait()


def test_killed_holder_is_taken_over_with_a_warning(tmp_path, caplog):
    holder = hold_in_subprocess(tmp_path / "out")
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert not pid_alive(holder.pid)
    lock = OutputLock(tmp_path / "out")
    with caplog.at_level("WARNING"):
        lock.acquire()
    assert "taking over" in caplog.text and str(holder.pid) in caplog.text
    assert json.loads((tmp_path / "out" / LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / "out" / LOCK_FILE).exists()


def test_lock_of_another_host_is_never_taken_over(tmp_path):
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "some-other-host"}))
    with pytest.raises(FolderLockedError, match="some-other-host"):
        OutputLock(tmp_path).acquire()


def test_release_leaves_a_lock_taken_over_by_someone_else(tmp_path):
    lock = OutputLock(tmp_path)
    lock.acquire()
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": 1, "host": socket.gethostname()}))
    lock.release()
    assert (tmp_path / LOCK_FILE).exists()


def test_two_processes_racing_for_one_folder_one_wins(tmp_path):
    """Both start at once; exactly one holds the lock, the other exits refused."""
    script = ("import sys, time\nfrom erasure.lock import OutputLock, FolderLockedError\n"
              "try:\n    OutputLock(sys.argv[1]).acquire()\nexcept FolderLockedError:\n    sys.exit(3)\n"
              "time.sleep(60)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "out")], env=env) for _ in range(2)]
    try:
        deadline = time.monotonic() + 60
        while all(proc.poll() is None for proc in procs) and time.monotonic() < deadline:
            time.sleep(0.05)
        codes = sorted(str(proc.poll()) for proc in procs)
        assert codes == ["3", "None"]  # one refused, one still holding the lock
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


class FakeState:
    is_main_process = True

    def wait_for_everyone(self):
        pass


def test_output_lock_releases_when_the_job_fails(tmp_path):
    with pytest.raises(RuntimeError):
        with output_lock(FakeState(), tmp_path / "out"):
            assert (tmp_path / "out" / LOCK_FILE).is_file()
            raise RuntimeError("job failed")
    assert not (tmp_path / "out" / LOCK_FILE).exists()
