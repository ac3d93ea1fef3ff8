"""Accelerator construction shared by the jobs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def make_accelerator(output_dir: str | None = None, **kwargs: Any):
    """An ``accelerate.Accelerator`` that also runs data-parallel on machines without a GPU.

    ``accelerate launch --multi_gpu --num_processes 2`` on a CPU-only machine starts two
    processes, but Accelerate only joins them (gloo, MULTI_CPU) when told to use the CPU;
    otherwise each process would train alone on half the data.

    Args:
        output_dir: the job's folder; trackers (``--report_to``) write under ``<output_dir>/logs``
            as in the diffusers examples, which a Hub push leaves out.
    """
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    if output_dir is not None:
        kwargs["project_config"] = ProjectConfiguration(project_dir=str(output_dir),
                                                        logging_dir=str(Path(output_dir) / "logs"))
    has_accelerator = torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())
    return Accelerator(cpu=not has_accelerator, **kwargs)


def compute_dtype(accelerator: Any) -> torch.dtype:
    """The dtype the job computes in: bfloat16 / float16 under ``mixed_precision`` bf16 / fp16, else
    float32. Frozen copies that only ever run forward (ESD's, the distill original) are kept in it."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(str(getattr(accelerator, "mixed_precision", "no")),
                                                              torch.float32)


def finish(accelerator: Any) -> None:
    """End a job on every process together: wait for the main process's export, end the trackers,
    and take down the process group. A rank that exits while another still works leaves its gloo
    threads running, and the process aborts at exit ("terminate called without an active
    exception", seen on a loaded 2-core machine)."""
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
