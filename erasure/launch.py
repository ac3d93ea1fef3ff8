"""Accelerator construction shared by the jobs."""

from __future__ import annotations

from typing import Any

import torch


def make_accelerator(**kwargs: Any):
    """An ``accelerate.Accelerator`` that also runs data-parallel on machines without a GPU.

    ``accelerate launch --multi_gpu --num_processes 2`` on a CPU-only machine starts two
    processes, but Accelerate only joins them (gloo, MULTI_CPU) when told to use the CPU;
    otherwise each process would train alone on half the data.
    """
    from accelerate import Accelerator

    has_accelerator = torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())
    return Accelerator(cpu=not has_accelerator, **kwargs)
