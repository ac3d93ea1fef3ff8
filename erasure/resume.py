"""Start a run (method.prepare) or resume it from ``checkpoint-N``, the same in every job."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable

from torch import nn

from erasure.methods import UnlearningMethod
from erasure.checkpoints import latest_checkpoint, save_checkpoint, verify_checkpoint
from erasure.replicas import check_replicas
from erasure.state_io import load_state, save_state

logger = logging.getLogger(__name__)
SUMMARY_FILE = "prepare_summary.json"


def resolve_resume(output_dir: Path, resume_from_checkpoint: str | None) -> Path | None:
    """The checkpoint folder to resume from (``latest``: the newest complete one, or a path), or None."""
    if resume_from_checkpoint == "latest":
        return latest_checkpoint(output_dir)
    return Path(resume_from_checkpoint) if resume_from_checkpoint else None


def start_or_resume(accelerator: Any, model: nn.Module, method: UnlearningMethod, forget: Any, retain: Any,
                    resume_dir: Path | None) -> tuple[dict, int]:
    """Run ``method.prepare`` on a fresh start, or restore everything from ``resume_dir``.

    Call after ``accelerator.prepare(model, optimizer)``.

    Returns:
        (prepare summary, optimizer steps already taken).
    """
    summary: dict = {}
    method.snapshot(model)  # the model is still the original here, on a fresh start and on resume
    method.loss_scaler = getattr(accelerator, "scaler", None)  # fp16: what accelerator.backward scales by
    if resume_dir is not None:  # accelerate's load_state would skip a broken RNG state silently
        verify_checkpoint(resume_dir, accelerator.process_index)
    if resume_dir is None or method.prepare_on_resume:
        summary = method.prepare(model, forget, retain, backward=accelerator.backward)
        summary["replicas_after_prepare"] = check_replicas(model, accelerator, "after prepare")
    if resume_dir is None:
        return summary, 0
    accelerator.load_state(str(resume_dir))
    method.load_state_dict(load_state(resume_dir))
    summary = json.loads((Path(resume_dir) / SUMMARY_FILE).read_text())
    step = int(Path(resume_dir).name.split("-")[-1])
    logger.info("resumed from %s at step %d", resume_dir, step)
    return summary, step


def checkpointer(accelerator: Any, output_dir: Path, every: int | None, total_limit: int | None,
                 method: UnlearningMethod, summary: dict) -> Callable[[int, dict], None]:
    """An ``on_step`` callback: logs, and every ``every`` steps a full ``checkpoint-N``."""

    def on_step(step: int, logs: dict) -> None:
        accelerator.log(logs, step=step)
        if every and step % every == 0:
            state = method.state_dict()  # on every rank: SalUn gathers its FSDP2-sharded masks whole

            def write_extra(folder: Path) -> None:  # the main process writes it
                save_state(state, folder)
                (folder / SUMMARY_FILE).write_text(json.dumps(summary))

            save_checkpoint(accelerator, output_dir, step, total_limit, write_extra)

    return on_step
