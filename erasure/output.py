"""Output folders of jobs: refuse to clobber, one job per folder, atomic files and exports."""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from erasure.checkpoints import checkpoints, latest_checkpoint, remove_stale, save_checkpoint, verify_checkpoint
from erasure.exports import publish_export, recover_export
from erasure.lock import OutputLock, refuse_if_locked
from erasure.tensor_files import read_tensors

__all__ = ["OutputDir", "check_finite", "check_output_dir", "checkpoints", "latest_checkpoint", "load_model_weights", "publish_export",
           "save_checkpoint", "save_model_atomic", "write_text_atomic"]

logger = logging.getLogger(__name__)

FINAL_MARKERS = ("results.json", "model.safetensors", "model_index.json", "erase_config.json")
# What a killed run leaves behind and the next run in the folder removes: the lock, export and
# checkpoint staging folders, pid-named temporary files. They do not make a folder "not empty".
LEFTOVER = re.compile(r"^\.(lock|export-(old-)?\d+|checkpoint-\d+\.(tmp|old)-\d+|.+\.\d+\.tmp)$")


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def check_output_dir(path: str | Path, name: str = "output_dir") -> None:
    """Refuse an output folder that cannot be created or written, before any work is done.

    The folder (or, if it does not exist yet, its nearest existing parent) gets a probe file
    that is removed at once, so a read-only folder or file system fails here, not after hours.

    Raises:
        NotADirectoryError: ``path`` or one of its parents is a file.
        PermissionError: the folder cannot be created or written (read-only, no permission).
    """
    path = Path(path)
    if path.is_file():
        raise NotADirectoryError(f"{name}={path} is a file, not a folder")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(f"{name}={path}: cannot create it, {existing} is a file, not a folder")
    try:
        handle, probe = tempfile.mkstemp(dir=existing, prefix=".write-probe-")
    except OSError as err:
        raise PermissionError(f"{name}={path}: cannot write in {existing} ({err.strerror or err}); "
                              "choose a writable folder") from None
    os.close(handle)
    os.remove(probe)


class OutputDir:
    """Validates an output folder before any work is done; ``prepare`` then locks and readies it.

    Use as a context manager (``with OutputDir(...) as output:``) so that the lock taken by
    ``prepare`` is released when the job ends, however it ends; a killed job's lock is taken over
    by the next job (see :mod:`erasure.lock`).

    Raises:
        NotADirectoryError / PermissionError: a folder that cannot be created or written
            (`check_output_dir`).
        ValueError: when the folder holds a finished run or checkpoints and neither
            ``--overwrite_output_dir`` nor ``--resume_from_checkpoint`` says what to do; when both
            are given and overwriting would delete the checkpoint to resume from; when the
            checkpoint to resume from is damaged; when another live job holds the folder.
        FileNotFoundError: when the checkpoint to resume from does not exist.
    """

    def __init__(self, path: str | Path, overwrite: bool = False, resume: str | None = None) -> None:
        self.path = Path(path)
        self.overwrite = overwrite
        self.lock = OutputLock(self.path)
        check_output_dir(self.path)
        if overwrite and resume is not None and (resume == "latest" or _inside(Path(resume), self.path)):
            raise ValueError(f"overwrite_output_dir=True with resume_from_checkpoint={resume}: overwriting deletes "
                             f"the checkpoints in {self.path}; pass only one of the two")
        if resume not in (None, "latest"):
            if not Path(resume).is_dir():
                raise FileNotFoundError(f"resume_from_checkpoint={resume}: no such checkpoint folder")
            verify_checkpoint(resume)
        elif resume == "latest" and latest_checkpoint(self.path) is None:
            raise FileNotFoundError(f"resume_from_checkpoint=latest: no complete checkpoint-N folder in {self.path}")
        refuse_if_locked(self.path)
        busy = self.path.is_dir() and any(not LEFTOVER.match(p.name) for p in self.path.iterdir())
        if busy and not overwrite and resume is None:
            raise ValueError(
                f"output_dir={self.path} is not empty; pass --overwrite_output_dir to replace it or "
                f"--resume_from_checkpoint latest to continue the run in it")

    def prepare(self, accelerator: Any) -> None:
        """On the main process: take the folder's lock, finish or remove what a killed run left,
        and (with overwrite) empty the folder. Every process waits for it.

        Raises:
            FolderLockedError: another live job holds the folder.
        """
        if accelerator.is_main_process:
            self.lock.acquire()
            recover_export(self.path)
            remove_stale(self.path)
            for entry in self.path.iterdir():
                if entry == self.lock.path or not (self.overwrite or LEFTOVER.match(entry.name)):
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        accelerator.wait_for_everyone()

    def close(self) -> None:
        """Release the lock (a no-op on processes that do not hold it)."""
        self.lock.release()

    def __enter__(self) -> "OutputDir":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def check_finite(model: nn.Module) -> None:
    """Refuse to export a model with NaN/inf parameters."""
    for name, param in model.named_parameters():
        if not torch.isfinite(param).all():
            raise FloatingPointError(f"parameter '{name}' holds NaN/inf after training; the model is not saved")


def save_model_atomic(model: nn.Module, path: Path) -> None:
    """Write a module's state dict as safetensors via a temporary file and a rename."""
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    handle, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(handle)
    try:
        save_file(state, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``path`` via a pid-named temporary file and a rename (concurrent writers never collide)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_model_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load safetensors weights (never pickle) into ``model``; names the file on error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model weights {path} not found")
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: only .safetensors weights are loaded (pickled checkpoints can run code)")
    try:
        missing, unexpected = model.load_state_dict(read_tensors(path, "model weights"), strict=False)
    except RuntimeError as err:  # a tensor of another shape
        raise ValueError(f"model weights {path} do not fit {type(model).__name__}: "
                         f"{' '.join(str(err).split())[:300]}") from None
    if missing or unexpected:
        raise ValueError(f"{path} does not fit {type(model).__name__}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model
