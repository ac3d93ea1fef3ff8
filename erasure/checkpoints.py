"""``checkpoint-N`` folders that are either complete or absent.

``save_checkpoint`` writes into ``.checkpoint-N.tmp-<pid>`` (``accelerator.save_state`` on every
rank, then the job's extra files), records every file's size in ``checkpoint_complete.json`` and
only then renames the folder to ``checkpoint-N``. A kill at any point leaves at worst a hidden
staging folder, removed by the next run (``remove_stale``). A ``checkpoint-N`` without the marker
(written by an older version, or copied half) is skipped by ``latest`` with a warning; a complete
one whose files no longer match the marker (truncated, replaced) is refused, naming the file:
accelerate's ``load_state`` would skip a broken RNG state silently.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable

logger = logging.getLogger(__name__)

COMPLETE_MARKER = "checkpoint_complete.json"
STAGING = re.compile(r"^\.checkpoint-\d+\.(tmp|old)-\d+$")


class IncompleteCheckpoint(ValueError):
    """A ``checkpoint-N`` folder without its completion marker."""


def checkpoints(output_dir: Path) -> list[Path]:
    """Every ``checkpoint-N`` folder of a run (complete or not), oldest first."""
    found = [p for p in Path(output_dir).glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """The ``checkpoint-N`` folders holding a completion marker, oldest first."""
    return [p for p in checkpoints(output_dir) if (p / COMPLETE_MARKER).is_file()]


def _file_sizes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


def verify_checkpoint(folder: str | Path, process_index: int = 0) -> Path:
    """Check that ``folder`` is a complete checkpoint whose files are as they were written.

    Args:
        folder: a ``checkpoint-N`` folder.
        process_index: the rank that will read it (its ``random_states_<rank>.pkl`` must exist).

    Returns:
        ``folder`` as a Path.

    Raises:
        IncompleteCheckpoint: no completion marker (the save was interrupted).
        ValueError: a recorded file is missing or changed size, naming the checkpoint and the file.
    """
    folder = Path(folder)
    marker = folder / COMPLETE_MARKER
    if not marker.is_file():
        raise IncompleteCheckpoint(f"checkpoint {folder} is incomplete (no {COMPLETE_MARKER}: its save was "
                                   "interrupted, or an older version wrote it); resume from another checkpoint")
    try:
        recorded = json.loads(marker.read_text())["files"]
    except (ValueError, KeyError) as err:
        raise ValueError(f"checkpoint {folder}: {COMPLETE_MARKER} is unreadable ({err})") from err
    rng = f"random_states_{process_index}.pkl"
    if rng not in recorded:
        raise ValueError(f"checkpoint {folder}: {rng} was never written (saved by fewer processes than now run)")
    for name, size in recorded.items():
        path = folder / name
        if not path.is_file():
            raise ValueError(f"checkpoint {folder}: file {name} is missing; resume from another checkpoint")
        if path.stat().st_size != size:
            raise ValueError(f"checkpoint {folder}: file {name} has {path.stat().st_size} bytes but {size} were "
                             "written (truncated or replaced); resume from another checkpoint")
    return folder


def latest_checkpoint(output_dir: Path, process_index: int = 0) -> Path | None:
    """The newest complete checkpoint; newer incomplete ones are skipped with a warning.

    Raises:
        ValueError: the newest complete checkpoint is damaged (see :func:`verify_checkpoint`).
    """
    for folder in reversed(checkpoints(output_dir)):
        try:
            return verify_checkpoint(folder, process_index)
        except IncompleteCheckpoint as err:
            logger.warning("skipping %s", err)
    return None


def _main_pid() -> int:
    """The main process's pid, the same on every rank (names the staging folder)."""
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([os.getpid()])[0]


def _remove(checkpoint: Path) -> None:
    """Delete a checkpoint by renaming it to a hidden name first: a kill mid-delete never leaves
    a ``checkpoint-N`` with a marker but missing files."""
    trash = checkpoint.with_name(f".{checkpoint.name}.old-{os.getpid()}")
    os.replace(checkpoint, trash)
    shutil.rmtree(trash)


def _move_into_place(staging: Path, target: Path) -> None:
    """Rename ``staging`` to ``target``; an existing ``target`` (same step saved again) is replaced."""
    trash = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, trash)
    os.replace(staging, target)
    shutil.rmtree(trash, ignore_errors=True)


def save_checkpoint(accelerator: Any, output_dir: Path, step: int, total_limit: int | None,
                    extra: Callable[[Path], Any] | None = None) -> Path:
    """``accelerator.save_state`` plus ``extra(folder)`` into ``checkpoint-<step>``, all or nothing.

    Every rank must call this (each writes its RNG state). The main process adds the extra files
    and the marker once all ranks are done, renames the folder into place, then keeps the newest
    ``total_limit`` complete checkpoints.

    Returns:
        The ``checkpoint-<step>`` folder.
    """
    output_dir = Path(output_dir)
    target = output_dir / f"checkpoint-{step}"
    staging = output_dir / f".{target.name}.tmp-{_main_pid()}"
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    accelerator.wait_for_everyone()  # every rank's random_states_<rank>.pkl is on disk
    if accelerator.is_main_process:
        if extra is not None:
            extra(staging)
        (staging / COMPLETE_MARKER).write_text(json.dumps({"step": step, "files": _file_sizes(staging)}, indent=1))
        _move_into_place(staging, target)
        if total_limit:
            for old in complete_checkpoints(output_dir)[:-total_limit]:
                _remove(old)
    accelerator.wait_for_everyone()
    return target


def remove_stale(output_dir: Path) -> None:
    """Delete staging folders left by killed saves (call while holding the folder's lock)."""
    for path in Path(output_dir).glob(".checkpoint-*"):
        if STAGING.match(path.name) and path.is_dir():
            logger.warning("removing %s, left by an interrupted checkpoint save", path)
            shutil.rmtree(path)
