"""Measuring tools of the benchmarks: peak memory (CUDA allocator or process RSS), isolated child
processes, and a description of the machine.

On the CPU, memory is the process's resident set: the child's peak RSS (``VmHWM``, whose
high-water mark Linux resets on ``echo 5 > /proc/self/clear_refs``) minus its RSS before the
measured work. Each measurement runs in a fresh child process, so nothing another measurement
allocated (or left in the allocator's free lists) is counted. Where the high-water mark cannot
be reset, ``ru_maxrss`` of the child is used (it then also covers the child's set-up).
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import platform
import resource
import time
from pathlib import Path
from typing import Any, Callable

import torch

# imported once by the fork server, so children start in milliseconds (diffusers loads lazily)
PRELOAD = ["benchmarks.workers", "diffusers.models.unets.unet_2d_condition", "diffusers.schedulers.scheduling_ddpm",
           "diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion"]

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} is missing from {_STATUS}")


def _can_reset_high_water_mark() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def _release_free_memory() -> None:
    """Hand free heap pages back to the OS (glibc), so a reset high-water mark starts from live data."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: RSS may then include freed memory, which only overstates the baseline


class PeakMemory:
    """Peak memory since the last :meth:`reset`, on ``device``.

    CUDA: ``torch.cuda.max_memory_allocated`` (tensors only, all of them: weights, gradients,
    optimiser state, activations). CPU: peak resident set size of this process.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.resettable = self.cuda or _can_reset_high_water_mark()
        self.carried = 0

    @property
    def measure(self) -> str:
        if self.cuda:
            return "torch.cuda.max_memory_allocated (all tensors on the GPU, absolute)"
        start = ("minus its RSS when the measurement started (method steps: before the UNet was built; "
                 "top-k: with the scores already in memory)")
        if self.resettable:
            return f"CPU peak RSS (VmHWM, reset via /proc/self/clear_refs) of a fresh child process per measurement, {start}"
        return f"CPU ru_maxrss of a fresh child process per measurement, {start}"

    def current(self) -> int:
        """Bytes in use now (allocated on CUDA, resident on the CPU)."""
        if self.cuda:
            torch.cuda.synchronize(self.device)
            return torch.cuda.memory_allocated(self.device)
        return _status_kib("VmRSS") * 1024

    def _high_water(self) -> int:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device)
        if self.resettable:
            return _status_kib("VmHWM") * 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux

    def _reset_high_water(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.resettable:
            _CLEAR_REFS.write_text("5")

    def reset(self) -> None:
        """Start a new measurement from the memory in use now."""
        if self.cuda:
            torch.cuda.empty_cache()
        else:
            _release_free_memory()
        self.carried = 0
        self._reset_high_water()

    def split(self) -> int:
        """Start a sub-measurement (see :meth:`since_split`) keeping the running peak; returns current()."""
        self.carried = self.peak()
        self._reset_high_water()
        return self.current()

    def since_split(self) -> int:
        """Peak bytes since the last :meth:`split` (or reset)."""
        return self._high_water()

    def peak(self) -> int:
        """Peak bytes since the last :meth:`reset`."""
        return max(self.carried, self._high_water())


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock times cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn: Callable[[], Any]) -> tuple[Any, float]:
    """``(fn(), seconds)`` with the device synchronised before and after."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return result, time.perf_counter() - start


def _child(conn: Any, fn: Callable[..., dict], kwargs: dict) -> None:
    try:
        conn.send(("ok", fn(**kwargs)))
    except BaseException as err:  # report any failure to the parent instead of dying silently
        conn.send(("error", f"{type(err).__name__}: {err}"))
    finally:
        conn.close()


def run_isolated(fn: Callable[..., dict], timeout_s: float, **kwargs: Any) -> dict:
    """Run ``fn(**kwargs)`` in a fresh child process and return its result.

    Children come from a fork server that has imported torch and diffusers once (start-up in
    milliseconds, no CUDA context inherited). A child killed by the OS (e.g. out of memory)
    or running past ``timeout_s`` is reported instead of hanging the benchmark.

    Raises:
        RuntimeError: the child failed, died or timed out (the message says which).
    """
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(sender, fn, kwargs), daemon=True)
    process.start()
    sender.close()
    deadline = time.monotonic() + timeout_s
    try:
        while not receiver.poll(1.0):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{fn.__name__}({kwargs}) ran past {timeout_s:.0f} s")
        try:
            status, payload = receiver.recv()
        except EOFError:  # the child closed the pipe without a word: it was killed
            process.join(5.0)
            raise RuntimeError(f"{fn.__name__}({kwargs}) died with exit code {process.exitcode} "
                               "(-9: killed, most likely out of memory)") from None
    finally:
        if process.is_alive():
            process.join(5.0)
        if process.is_alive():
            process.kill()  # only this child, started above
        process.join()
    if status != "ok":
        raise RuntimeError(f"{fn.__name__}({kwargs}) failed: {payload}")
    return payload


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device, num_threads: int) -> dict[str, Any]:
    """CPU model, cores, memory, load, library versions and the device's name."""
    import diffusers

    info: dict[str, Any] = {
        "cpu_model": _cpu_model(), "cpu_cores": os.cpu_count(), "torch_threads": num_threads,
        "memory_total_bytes": _meminfo_bytes("MemTotal"), "memory_available_bytes": _meminfo_bytes("MemAvailable"),
        "load_average_1m": os.getloadavg()[0], "python": platform.python_version(), "torch": torch.__version__,
        "diffusers": diffusers.__version__, "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_model(),
    }
    if device.type == "cuda":
        info["device_memory_bytes"] = torch.cuda.get_device_properties(device).total_memory
    return info


def _meminfo_bytes(field: str) -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def available_memory_bytes() -> int | None:
    """``MemAvailable`` of the machine now (None where /proc/meminfo is missing)."""
    return _meminfo_bytes("MemAvailable")
