"""Erasure cost: Scissorhands against SalUn, ESD and plain fine-tuning on the same UNet and data.

    python -m benchmarks.erasure_cost --size tiny                     # seconds, CPU
    python -m benchmarks.erasure_cost --size mid --num_threads 1      # minutes, CPU ratios
    python -m benchmarks.erasure_cost --size sd14 --device cuda --batch_size 16 \\
        --mixed_precision bf16 --gradient_checkpointing               # the 24 GB target

One run measures, per method, the median optimisation step (``compute_gradients`` +
``finalize_gradients`` + ``AdamW.step``) and its peak memory, each method in a fresh child
process on the same random-weight UNet (same config and seed) and the same random batches;
then trimming against one repair epoch, the projection's share of a step, the global top-k
over all UNet scores and sampling throughput. It writes ``benchmarks/results/<size>-<device>.json``
and ``.md``; ``benchmarks/README.md`` explains every figure.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks import report
from benchmarks.measure import PeakMemory, available_memory_bytes, machine_info, run_isolated
from benchmarks.unets import SIZES, TEXT_LENGTH, parameter_count
from benchmarks.workers import SD_METHOD_SETTINGS, method_cost, sampling_cost, topk_cost
from erasure import jobconfig
from erasure.bounds import check_finite_fields, check_positive, check_range, check_seed
from erasure.output import check_output_dir, write_text_atomic
from erasure.methods import METHODS

logger = logging.getLogger("benchmarks.erasure_cost")

RESULTS_DIR = Path(__file__).parent / "results"
METHOD_NAMES = ("scissorhands", "scissorhands_minmax", "salun", "esd", "finetune")
# fp32 copies of the weights a method holds during prepare or a step, before optimiser state:
# weights + gradients, plus g_f buffers or trimming's score sums (+ bool masks), theta for the
# min-max restore and its ascent gradients, SalUn's saliency sums + masks, ESD's frozen UNet.
WEIGHT_COPIES = {"finetune": 2.0, "scissorhands": 3.25, "scissorhands_minmax": 4.0, "salun": 3.25, "esd": 3.0}
DATA = ("random stand-ins: latents N(0,1) [B,4,h,w] and text embeddings N(0,1) [B,77,D] from a table of "
        "1 empty + 8 forget + 8 retain prompts; the same seeded batches for every method")


@dataclass
class CostConfig:
    """Options of the cost benchmark (``None``: the size's default, see ``benchmarks.unets.SIZES``)."""

    size: str = "tiny"
    device: str = "cpu"
    batch_size: int | None = None
    repeats: int = 3  # timed steps = one repair epoch over `repeats` batches; trimming scores as many
    rounds: int = 1  # children per method, the methods interleaved (medians over all rounds' steps)
    warmup: int = 1  # untimed steps after prepare (and a throwaway UNet step before it); 0 skips both
    methods: tuple[str, ...] = METHOD_NAMES
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    optimizer: str = "adamw"  # "none": no optimiser step (AdamW's 8 bytes/parameter are added in the JSON)
    num_threads: int = 2
    kept_fraction: float = SD_METHOD_SETTINGS["kept_fraction"]
    forget_grad_dtype: str = "float32"  # Scissorhands' g_f buffer: float32 or bfloat16 (issue 11)
    skip_topk: bool = False
    skip_sampling: bool = False
    sample_images: int | None = None
    sample_batch_size: int | None = None
    num_inference_steps: int = 10
    max_cpu_mem_gb: float = 12.0  # CPU only: skip a method whose estimated weight copies exceed this
    timeout_s: float = 1800.0  # per child process
    seed: int = 0
    out: str | None = None

    def __post_init__(self) -> None:
        self.methods = tuple(self.methods)
        check_finite_fields(self)
        check_positive("timeout_s", self.timeout_s)
        check_positive("max_cpu_mem_gb", self.max_cpu_mem_gb)
        check_range("kept_fraction", self.kept_fraction, 0, 1, low_open=True)
        check_seed("seed", self.seed)
        if self.size not in SIZES:
            raise ValueError(f"size='{self.size}' is unknown; choose one of {list(SIZES)}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device='{self.device}' must be cpu or cuda")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device='cuda' but torch sees no GPU; use --device cpu")
        unknown = sorted(set(self.methods) - set(METHODS))
        if unknown:
            raise ValueError(f"methods {unknown} are unknown; known methods: {sorted(METHODS)}")
        if self.mixed_precision not in ("no", "bf16"):
            raise ValueError(f"mixed_precision='{self.mixed_precision}' must be no or bf16")
        if self.forget_grad_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"forget_grad_dtype='{self.forget_grad_dtype}' must be float32 or bfloat16")
        if self.optimizer not in ("adamw", "none"):
            raise ValueError(f"optimizer='{self.optimizer}' must be adamw or none")
        for name in ("repeats", "rounds", "num_threads", "num_inference_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        for name in ("batch_size", "sample_images", "sample_batch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1 (or unset for the size's default)")
        if self.warmup < 0:
            raise ValueError(f"warmup={self.warmup} must be >= 0")
        spec = SIZES[self.size]
        self.batch_size = self.batch_size or spec.batch_size
        self.sample_images = self.sample_images or spec.sample_images
        self.sample_batch_size = self.sample_batch_size or spec.sample_batch_size
        self.out = self.out or str(RESULTS_DIR / f"{self.size}-{self.device}.json")
        if not self.out.endswith(".json"):
            raise ValueError(f"out={self.out!r} must end in .json (the report goes next to it as .md)")
        check_output_dir(Path(self.out).parent, "out")


def _cpu_memory_guard(config: CostConfig, method: str, params: int) -> str | None:
    """Why ``method`` is skipped on a shared CPU machine (None: run it)."""
    if config.device != "cpu":
        return None
    copies = WEIGHT_COPIES.get(method, 4.0) + (2.0 if config.optimizer == "adamw" else 0.0)
    needed = copies * 4 * params
    if needed > config.max_cpu_mem_gb * 1e9:
        return (f"estimated {needed / 1e9:.1f} GB ({copies:g} fp32 copies of the weights, activations not counted) "
                f"> --max_cpu_mem_gb {config.max_cpu_mem_gb:g}")
    available = available_memory_bytes()
    if available is not None and needed + 2e9 > available:
        return f"estimated {needed / 1e9:.1f} GB + 2 GB margin > {available / 1e9:.1f} GB available now"
    return None


def merge_rounds(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One method's figures from its children (one per round): medians over every timed step,
    the largest peaks, the median prepare time and one repair epoch (median over rounds)."""
    steps = [step for run in runs for step in run["steps"]]
    merged = {
        "median_s": statistics.median(s["step_s"] for s in steps),
        "repeats_s": [s["step_s"] for s in steps],
        "repeats_s_by_round": [[s["step_s"] for s in run["steps"]] for run in runs],
        "phases_median_s": {k: statistics.median(s[k] for s in steps) for k in ("compute_s", "finalize_s", "optimizer_s")},
        "peak_mem_bytes": max(run["peak_mem_bytes"] for run in runs),
        "prepare_s": statistics.median(run["prepare_s"] for run in runs),
        "prepare_s_by_round": [run["prepare_s"] for run in runs],
        "prepare_peak_mem_bytes": max(run["prepare_peak_mem_bytes"] for run in runs),
        "epoch_s": statistics.median(sum(s["step_s"] for s in run["steps"]) for run in runs),
        "finalize_extra_mem_bytes": max(run["finalize_extra_mem_bytes"] for run in runs),
        "prepare_summary": runs[0]["prepare_summary"], "trainable_params": runs[0]["trainable_params"],
    }
    if "child_ru_maxrss_bytes" in runs[0]:
        merged["child_ru_maxrss_bytes"] = max(run["child_ru_maxrss_bytes"] for run in runs)
    return merged


def measure_steps(config: CostConfig, params: int) -> dict[str, dict[str, Any]]:
    """Per method: its figures over ``rounds`` children, or why it was skipped / failed.

    Rounds interleave the methods (the order reverses every other round), so a change in the
    load of a shared machine spreads over all methods instead of landing on one.
    """
    runs: dict[str, list[dict[str, Any]]] = {}
    failed: dict[str, dict[str, str]] = {}
    for method in config.methods:
        reason = _cpu_memory_guard(config, method, params)
        if reason is not None:
            logger.warning("skipping %s: %s", method, reason)
            failed[method] = {"skipped": reason}
    for round_index in range(config.rounds):
        order = config.methods if round_index % 2 == 0 else config.methods[::-1]
        for method in (m for m in order if m not in failed):
            logger.info("round %d: measuring %s (%s, batch %d)", round_index + 1, method, config.size, config.batch_size)
            try:
                run = run_isolated(
                    method_cost, config.timeout_s, size=config.size, method=method, batch_size=config.batch_size,
                    num_batches=config.repeats, warmup=config.warmup, device=config.device,
                    mixed_precision=config.mixed_precision, gradient_checkpointing=config.gradient_checkpointing,
                    optimizer=config.optimizer, num_threads=config.num_threads, seed=config.seed,
                    forget_grad_dtype=config.forget_grad_dtype)
            except RuntimeError as err:
                logger.error("%s failed: %s", method, err)
                failed[method] = {"error": str(err)}
                continue
            runs.setdefault(method, []).append(run)
            logger.info("%s: median step %.4g s, peak %.1f MiB", method,
                        statistics.median(s["step_s"] for s in run["steps"]), run["peak_mem_bytes"] / 2**20)
    steps = {}
    for method in config.methods:
        if method in failed:
            steps[method] = failed[method]
            continue
        steps[method] = merge_rounds(runs[method])
        if config.optimizer == "none":
            adamw_bytes = 8 * steps[method]["trainable_params"]  # exp_avg + exp_avg_sq, fp32
            steps[method]["adamw_state_bytes"] = adamw_bytes
            steps[method]["peak_mem_with_adamw_estimate_bytes"] = steps[method]["peak_mem_bytes"] + adamw_bytes
    return steps


def measure_sampling(config: CostConfig) -> dict[str, Any]:
    """Batched vs one-by-one sampling, or null figures with the reason."""
    skipped = {"batched_ips": None, "single_ips": None, "ratio": None}
    if config.skip_sampling:
        return {**skipped, "reason": "skipped (--skip_sampling)"}
    if config.size == "sd14" and config.device == "cpu":
        return {**skipped, "reason": "not measured on CPU: too slow"}
    logger.info("measuring sampling throughput")
    try:
        return run_isolated(sampling_cost, config.timeout_s, size=config.size, images=config.sample_images,
                            batch_size=config.sample_batch_size, num_inference_steps=config.num_inference_steps,
                            device=config.device, num_threads=config.num_threads, seed=config.seed)
    except RuntimeError as err:
        return {**skipped, "reason": f"failed: {err}"}


def _ratio(steps: dict[str, dict[str, Any]], a: str, b: str) -> float | None:
    if "median_s" in steps.get(a, {}) and "median_s" in steps.get(b, {}):
        return steps[a]["median_s"] / steps[b]["median_s"]
    return None


def summarize(config: CostConfig, params: int, steps: dict, topk: dict | None, sampling: dict) -> dict[str, Any]:
    """The result document: raw figures, derived ones (ratios, shares) and the targets."""
    scissorhands = steps.get("scissorhands", {})
    measured = "median_s" in scissorhands
    settings = {**asdict(config), "data": DATA, "text_length": TEXT_LENGTH, "method_settings": SD_METHOD_SETTINGS,
                "same_unet": "every child builds the UNet from the same config and seed: identical weights",
                "timed_step": "compute_gradients + finalize_gradients + optimizer.step (+ zero_grad); "
                              "no gradient clipping"}
    results = {
        "benchmark": "erasure_cost", "size": config.size, "device": config.device,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(torch.device(config.device), config.num_threads),
        "settings": settings, "unet_config": {k: list(v) if isinstance(v, tuple) else v
                                              for k, v in SIZES[config.size].unet.items()},
        "unet_params": params, "memory_measure": PeakMemory(torch.device(config.device)).measure,
        "step": steps,
        "scissorhands_vs_salun": _ratio(steps, "scissorhands", "salun"),
        "ratios": {f"scissorhands_vs_{m}": _ratio(steps, "scissorhands", m) for m in METHOD_NAMES[1:]},
        # trimming = scissorhands.prepare: sensitivity over `repeats` forget batches + top-k + re-init;
        # the repair epoch = scissorhands' `repeats` timed steps over as many batches (medians over rounds)
        "trim_s": scissorhands.get("prepare_s"),
        "repair_epoch_s": scissorhands.get("epoch_s"),
        "projection_share": (scissorhands["phases_median_s"]["finalize_s"] / scissorhands["median_s"]
                             if measured else None),
        "projection": {
            "finalize_median_s": scissorhands["phases_median_s"]["finalize_s"] if measured else None,
            "finalize_extra_mem_bytes": scissorhands.get("finalize_extra_mem_bytes"),
            "what_is_timed": "Scissorhands.finalize_gradients: combine_projected_ (two per-tensor inner products "
                             "and one _foreach_add_) plus zeroing the g_f buffers; an upper bound on the projection",
            "flattened_gradient_copy": False,
            "why": "by construction: erasure.projection.inner sums per-tensor torch.vdot in float64 and "
                   "combine_projected_ updates the gradients in place with torch._foreach_add_; "
                   "finalize_extra_mem_bytes is the measured memory above what was in use before it",
        },
        "topk": topk,
        "sampling": sampling,
    }
    if results["trim_s"] is not None and results["repair_epoch_s"]:
        results["trim_vs_repair_epoch"] = results["trim_s"] / results["repair_epoch_s"]
    results["targets"] = report.targets(results)
    return results


def refuse_failures(steps: dict[str, dict[str, Any]], topk: dict | None, sampling: dict[str, Any]) -> None:
    """Fail the run (before any results file is written) if a child failed, died or timed out.

    Methods skipped by the CPU memory guard are not failures: the results say why they were skipped.

    Raises:
        ChildProcessError: naming every measurement that failed and why.
    """
    failed = [f"{method}: {step['error']}" for method, step in steps.items() if "error" in step]
    if topk is not None and "error" in topk:
        failed.append(f"topk: {topk['error']}")
    if str(sampling.get("reason", "")).startswith("failed"):
        failed.append(f"sampling: {sampling['reason']}")
    if failed:
        raise ChildProcessError(f"{len(failed)} measurement(s) failed, no results written: " + "; ".join(failed))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse the flags, measure, write ``<out>.json`` and ``<out>.md``; returns the results."""
    (config,) = jobconfig.parse([CostConfig], argv, description=__doc__.split("\n")[0])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    params = parameter_count(config.size)
    steps = measure_steps(config, params)
    topk = None
    if not config.skip_topk:
        logger.info("measuring the global top-k over the UNet's scores")
        try:
            topk = run_isolated(topk_cost, config.timeout_s, size=config.size, kept_fraction=config.kept_fraction,
                                device=config.device, num_threads=config.num_threads, seed=config.seed)
        except RuntimeError as err:
            topk = {"error": str(err)}
    sampling = measure_sampling(config)
    refuse_failures(steps, topk, sampling)
    results = summarize(config, params, steps, topk, sampling)
    out = Path(config.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, json.dumps(results, indent=2) + "\n")  # a kill leaves no half a file
    write_text_atomic(out.with_suffix(".md"), report.markdown(results))
    logger.info("wrote %s and %s", out, out.with_suffix(".md"))
    return results


if __name__ == "__main__":
    jobconfig.run_cli(main)
