"""The cost benchmark's targets (met / missed / unmeasured) and its markdown table."""

from __future__ import annotations

from typing import Any

STEP_RATIO_MAX = 1.15  # scissorhands step <= 1.15x SalUn's
PROJECTION_SHARE_MAX = 0.03  # the projection <= 3% of a scissorhands step
TOPK_EXTRA_MAX_BYTES = 2 * 1024**3  # top-k selection over all UNet scores: <= ~2 GB beyond the scores
SD14_GPU_BYTES = 24 * 1024**3  # an sd14 step (batch 16, 64x64 latents, bf16, checkpointing) fits a 24 GB GPU
SAMPLING_RATIO_MIN = 3.0  # batched sampling >= 3x one-by-one (on a GPU)


def _target(goal: str, value: Any, status: str, note: str = "") -> dict[str, Any]:
    return {"target": goal, "value": value, "status": status, **({"note": note} if note else {})}


def _at_most(value: float | None, limit: float) -> str:
    return "unmeasured" if value is None else ("met" if value <= limit else "missed")


def _sd14_memory(results: dict[str, Any]) -> dict[str, Any]:
    goal = "sd14 step, batch 16, 64x64 latents, bf16 + gradient checkpointing, AdamW: peak <= 24 GiB of GPU memory"
    settings = results["settings"]
    step = results["step"].get("scissorhands", {})
    exact = (results["size"] == "sd14" and results["device"] == "cuda" and settings["batch_size"] == 16
             and settings["mixed_precision"] == "bf16" and settings["gradient_checkpointing"]
             and settings["optimizer"] == "adamw")
    if results["device"] != "cuda":
        return _target(goal, None, "unmeasured", "needs a GPU; the CPU run records an sd14 memory check instead")
    if not exact or "peak_mem_bytes" not in step:
        return _target(goal, None, "unmeasured", "run --size sd14 --device cuda --batch_size 16 --mixed_precision bf16 "
                       "--gradient_checkpointing with scissorhands")
    others = {m: s["peak_mem_bytes"] for m, s in results["step"].items() if "peak_mem_bytes" in s}
    return _target(goal, step["peak_mem_bytes"], _at_most(step["peak_mem_bytes"], SD14_GPU_BYTES),
                   f"scissorhands; all methods: {others}")


def targets(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The issue's targets against the measured figures of one run."""
    where = f"{results['size']} on {results['device']}"
    ratio = results["scissorhands_vs_salun"]
    topk = results["topk"] or {}
    sampling = results["sampling"]
    sampling_ratio = sampling.get("ratio")
    if results["device"] == "cuda":
        sampling_target = _target(f"batched sampling >= {SAMPLING_RATIO_MIN}x one-by-one (GPU)", sampling_ratio,
                                  "unmeasured" if sampling_ratio is None else
                                  ("met" if sampling_ratio >= SAMPLING_RATIO_MIN else "missed"), where)
    else:
        sampling_target = _target(f"batched sampling >= {SAMPLING_RATIO_MIN}x one-by-one (GPU)", sampling_ratio,
                                  "unmeasured", "a GPU target; value is the CPU ratio, reported as such"
                                  if sampling_ratio is not None else sampling.get("reason", ""))
    return {
        "scissorhands_step_vs_salun": _target(f"scissorhands step <= {STEP_RATIO_MAX}x salun step", ratio,
                                              _at_most(ratio, STEP_RATIO_MAX), where),
        "projection_share": _target(f"projection <= {PROJECTION_SHARE_MAX:.0%} of a scissorhands step",
                                    results["projection_share"],
                                    _at_most(results["projection_share"], PROJECTION_SHARE_MAX), where),
        "topk_extra_memory": _target("top-k selection over all UNet scores: <= ~2 GB beyond the scores",
                                     topk.get("extra_mem_bytes"), _at_most(topk.get("extra_mem_bytes"), TOPK_EXTRA_MAX_BYTES),
                                     f"{topk.get('scores')} scores ({where})" if topk else "top-k not run"),
        "sd14_step_fits_24gb": _sd14_memory(results),
        "batched_sampling_speedup": sampling_target,
    }


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:,.1f}"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def markdown(results: dict[str, Any]) -> str:
    """A short markdown report: settings, the per-method table, the other figures and the targets."""
    machine, settings = results["machine"], results["settings"]
    lines = [
        f"# Erasure cost: {results['size']} on {results['device']}", "",
        f"{machine['device_name']}, {machine['cpu_cores']} cores, torch {machine['torch']}, "
        f"{machine['torch_threads']} thread(s); {results['unet_params']:,} UNet parameters; batch "
        f"{settings['batch_size']}, {settings['repeats']} timed steps after {settings['warmup']} warm-up per child, "
        f"{settings['rounds']} round(s) of children; "
        f"mixed precision {settings['mixed_precision']}, gradient checkpointing {settings['gradient_checkpointing']}, "
        f"optimizer {settings['optimizer']}. Data: {settings['data']}", "",
        f"Memory: {results['memory_measure']}.", "",
        "| method | median step (s) | compute / finalize / optimizer (s) | peak memory (MiB) | prepare (s) | prepare peak (MiB) |",
        "|---|---|---|---|---|---|",
    ]
    for name, step in results["step"].items():
        if "median_s" not in step:
            lines.append(f"| {name} | skipped: {step.get('skipped', step.get('error'))} | | | | |")
            continue
        phases = " / ".join(_seconds(step["phases_median_s"][k]) for k in ("compute_s", "finalize_s", "optimizer_s"))
        lines.append(f"| {name} | {_seconds(step['median_s'])} | {phases} | {_mib(step['peak_mem_bytes'])} | "
                     f"{_seconds(step['prepare_s'])} | {_mib(step['prepare_peak_mem_bytes'])} |")
    estimates = {m: s["peak_mem_with_adamw_estimate_bytes"] for m, s in results["step"].items()
                 if "peak_mem_with_adamw_estimate_bytes" in s}
    if estimates:
        lines += ["", "No optimiser step was taken (--optimizer none); peak plus AdamW's state (8 bytes per parameter, "
                  "by arithmetic): " + ", ".join(f"{m} {_mib(v)} MiB" for m, v in estimates.items())]
    topk, sampling = results["topk"] or {}, results["sampling"]
    lines += [
        "", f"- scissorhands / salun step: {_seconds(results['scissorhands_vs_salun'])}",
        f"- trimming {_seconds(results['trim_s'])} s vs one repair epoch {_seconds(results['repair_epoch_s'])} s "
        f"({settings['repeats']} batches)",
        f"- projection share of a scissorhands step: {_seconds(results['projection_share'])} "
        f"(flattened gradient copy: {results['projection']['flattened_gradient_copy']})",
        f"- top-k over {topk.get('scores', '-')} scores: {_seconds(topk.get('seconds'))} s, "
        f"{_mib(topk.get('extra_mem_bytes'))} MiB extra",
        f"- sampling: {_seconds(sampling.get('batched_ips'))} img/s batched vs {_seconds(sampling.get('single_ips'))} "
        f"img/s one by one{' (' + sampling['reason'] + ')' if sampling.get('reason') else ''}",
        "", "| target | value | status | note |", "|---|---|---|---|",
    ]
    for target in results["targets"].values():
        value = target["value"]
        shown = _mib(value) + " MiB" if isinstance(value, int) else _seconds(value)
        lines.append(f"| {target['target']} | {shown} | {target['status']} | {target.get('note', '')} |")
    return "\n".join(lines) + "\n"
