"""One job per output folder: ``<folder>/.lock`` records the pid and host of the job writing it.

A second job on the same folder is refused with the holder's pid and host; a lock whose pid
is no longer alive on this host (the job was killed) is taken over with a warning. Checking and
writing the lock happen under an ``flock`` of the folder itself, so two jobs starting at the same
moment cannot both take it (POSIX only).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any, Iterator

logger = logging.getLogger(__name__)

LOCK_FILE = ".lock"


class FolderLockedError(ValueError):
    """The output folder is being written by another live job."""


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs on this host (a zombie, killed but not yet reaped, counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


@contextlib.contextmanager
def _folder_guard(folder: Path) -> Iterator[None]:
    """Serialise lock checks of concurrent jobs with an exclusive flock on the folder."""
    import fcntl

    handle = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)  # closing drops the flock


def read_holder(folder: str | Path) -> dict[str, Any] | None:
    """The ``{"pid", "host"}`` recorded in ``folder/.lock``, or None when there is no lock."""
    path = Path(folder) / LOCK_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):  # a torn lock file: its writer died mid-write
        return {"pid": None, "host": socket.gethostname()}


def holder_alive(holder: dict[str, Any]) -> bool:
    """Whether a lock holder still runs; holders on other hosts cannot be checked and count as alive."""
    if holder.get("host") != socket.gethostname():
        return True
    return isinstance(holder.get("pid"), int) and pid_alive(holder["pid"])


def refuse_if_locked(folder: str | Path) -> None:
    """Raise early (before any work) when a live job holds ``folder``; nothing is written.

    Raises:
        FolderLockedError: naming the folder and the holder's pid and host.
    """
    holder = read_holder(folder)
    if holder is not None and holder_alive(holder):
        raise FolderLockedError(
            f"output_dir={folder} is in use by pid {holder.get('pid')} on host {holder.get('host')} "
            f"(lock file {Path(folder) / LOCK_FILE}); wait for that job, or choose another --output_dir; "
            "delete the lock file only if that job is surely gone")


class OutputLock:
    """The lock of one output folder; ``acquire`` creates the folder if needed.

    Args:
        folder: the output folder.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.held = False

    def acquire(self) -> None:
        """Take the lock, or take over a stale one with a warning.

        Raises:
            FolderLockedError: a live job (or one on another host) holds the folder.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        with _folder_guard(self.folder):
            refuse_if_locked(self.folder)
            holder = read_holder(self.folder)
            if holder is not None:
                logger.warning("%s: taking over the lock of pid %s on %s, which no longer runs (killed job)",
                               self.folder, holder.get("pid"), holder.get("host"))
            tmp = self.folder / f"{LOCK_FILE}.{os.getpid()}.tmp"
            tmp.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
            os.replace(tmp, self.path)
        self.held = True

    def release(self) -> None:
        """Remove the lock if this process holds it (a no-op otherwise)."""
        if not self.held:
            return
        with _folder_guard(self.folder):
            holder = read_holder(self.folder) or {}
            if holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
                self.path.unlink()
        self.held = False

    def __enter__(self) -> "OutputLock":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


@contextlib.contextmanager
def output_lock(state: Any, folder: str | Path) -> Iterator[OutputLock]:
    """Hold ``folder``'s lock for a multi-process job: the main process takes it, all ranks wait.

    Args:
        state: an accelerate ``PartialState`` or ``Accelerator``.
        folder: the output folder (created by the main process if missing).
    """
    lock = OutputLock(folder)
    if state.is_main_process:
        lock.acquire()
    state.wait_for_everyone()
    try:
        yield lock
    finally:
        lock.release()
