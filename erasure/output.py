"""Output folders of jobs: refuse to clobber, checkpoint-N rotation, atomic exports."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file
from torch import nn

logger = logging.getLogger(__name__)

FINAL_MARKERS = ("results.json", "model.safetensors", "model_index.json", "erase_config.json")


def checkpoints(output_dir: Path) -> list[Path]:
    """``checkpoint-N`` folders of a run, oldest first."""
    found = [p for p in Path(output_dir).glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def latest_checkpoint(output_dir: Path) -> Path | None:
    found = checkpoints(output_dir)
    return found[-1] if found else None


class OutputDir:
    """Validates an output folder before any work is done (nothing is written here).

    Raises:
        ValueError: when the folder holds a finished run or checkpoints and neither
            ``--overwrite_output_dir`` nor ``--resume_from_checkpoint`` says what to do.
        FileNotFoundError: when the checkpoint to resume from does not exist.
    """

    def __init__(self, path: str | Path, overwrite: bool = False, resume: str | None = None) -> None:
        self.path = Path(path)
        self.overwrite = overwrite
        if resume not in (None, "latest"):
            if not Path(resume).is_dir():
                raise FileNotFoundError(f"resume_from_checkpoint={resume}: no such checkpoint folder")
        elif resume == "latest" and latest_checkpoint(self.path) is None:
            raise FileNotFoundError(f"resume_from_checkpoint=latest: no checkpoint-N folder in {self.path}")
        if self.path.is_file():
            raise ValueError(f"output_dir={self.path} is a file, not a folder")
        busy = self.path.is_dir() and any(self.path.iterdir())
        if busy and not overwrite and resume is None:
            raise ValueError(
                f"output_dir={self.path} is not empty; pass --overwrite_output_dir to replace it or "
                f"--resume_from_checkpoint latest to continue the run in it")

    def prepare(self, accelerator: Any) -> None:
        """Create (or, with overwrite, empty) the folder on the main process."""
        if accelerator.is_main_process:
            if self.overwrite and self.path.is_dir():
                shutil.rmtree(self.path)
            self.path.mkdir(parents=True, exist_ok=True)
        accelerator.wait_for_everyone()


def save_checkpoint(accelerator: Any, output_dir: Path, step: int, total_limit: int | None,
                    extra: Callable[[Path], Any] | None = None) -> Path:
    """``accelerator.save_state`` into ``checkpoint-<step>`` plus extra files, keeping the
    newest ``total_limit`` checkpoints."""
    target = Path(output_dir) / f"checkpoint-{step}"
    accelerator.save_state(str(target))
    if accelerator.is_main_process:
        if extra is not None:
            extra(target)
        if total_limit:
            for old in checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return target


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
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def load_model_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load safetensors weights (never pickle) into ``model``; names the file on error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model weights {path} not found")
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: only .safetensors weights are loaded (pickled checkpoints can run code)")
    missing, unexpected = model.load_state_dict(load_file(str(path)), strict=False)
    if missing or unexpected:
        raise ValueError(f"{path} does not fit {type(model).__name__}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model
