"""Accelerator construction shared by the jobs."""

from __future__ import annotations

import logging
import time
import weakref
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)


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
    """End a job on every process together: wait for the main process's export, take down the process
    group (``end_process_group``; before ``end_training``, which destroys it too in recent
    accelerate), and end the trackers."""
    accelerator.wait_for_everyone()
    end_process_group()
    accelerator.end_training()


def drain_gloo(timeout: float = 10.0) -> bool:
    """Wait until the default group's gloo worker threads hold no work of this process's (call it on
    every rank: it is a collective). True once they hold none, or with no gloo group up; False when
    ``timeout`` seconds passed after the all-reduce first (the all-reduce itself is bounded by the
    group's own timeout).

    A gloo worker thread lets go of each finished collective's work after the caller has its result,
    and letting go takes the GIL (the work holds tensors Python owns and the caller's thread-local
    state). If the interpreter has begun to finalise by then, the thread is killed as it takes the
    GIL and the process aborts ("terminate called without an active exception", SIGABRT: core dump of
    the 2-rank FSDP2 test, about one run in ten); if the group's last reference goes on a thread that
    holds the GIL (a DDP reducer freed with the job's locals), its destructor joins that thread for
    ever. So one all-reduce runs through gloo on a tensor only its work holds, and this waits, the GIL
    released, until a worker has let go of it. Gloo lets go of a work under its queue's lock, which
    queueing the all-reduce takes, so the works that finished before it are gone by then too, unless
    a thread was preempted in the short window between finishing one and coming back to the queue.
    Other gloo groups (``new_group``, a 2-D device mesh) have threads of their own, not drained here.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return True
    if "gloo" not in str(torch.distributed.get_backend()):  # "gloo", or "cpu:gloo,cuda:nccl": CPU tensors go to gloo
        return True
    marker = torch.zeros(1)
    held = weakref.ref(marker)
    torch.distributed.all_reduce(marker)
    del marker
    deadline = time.monotonic() + timeout
    while held() is not None and time.monotonic() < deadline:
        time.sleep(0.001)
    return held() is None


def end_process_group(timeout: float = 10.0) -> None:
    """Take down the process groups after this rank's last collective, gloo's threads drained first
    (``drain_gloo``, whose wait ``timeout`` bounds); a no-op when none is up. Call it on every rank, on
    the way out of a job that succeeded: a rank that fails leaves without it (the others could not meet
    it there)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    if not drain_gloo(timeout):
        logger.warning("gloo still holds a collective's work after %.0f s: the process may abort at exit "
                       "('terminate called without an active exception')", timeout)
    torch.distributed.destroy_process_group()
