"""Evaluate an unlearned classifier against the original and retrained models; write results."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch

from erasure.batches import TensorBatches
from classification.data import DatasetSplits
from classification.engine import relearn_epochs
from classification.metrics import avg_gap, run_time_efficiency, tug_of_war, unlearning_metrics
from classification.models import build_model
from classification.references import load_original, train_cached
from erasure.output import load_model_weights, write_text_atomic

COLUMNS = (("ua", "UA"), ("ra", "RA"), ("ta", "TA"), ("mia", "MIA"), ("avg_gap", "Avg. Gap"), ("tow", "ToW"), ("rte", "RTE"))


def eval_batches(splits: DatasetSplits, forget_idx: torch.Tensor, retain_idx: torch.Tensor,
                 batch_size: int = 512) -> tuple[TensorBatches, TensorBatches, TensorBatches]:
    """Unshuffled single-process batches over D_f, D_r and D_t."""
    make = lambda x, y, idx: TensorBatches(x, y, idx, batch_size, shuffle=False)
    return (make(splits.train_x, splits.train_y, forget_idx), make(splits.train_x, splits.train_y, retain_idx),
            make(splits.test_x, splits.test_y, torch.arange(len(splits.test_y))))


def compare(metrics: dict[str, float], retrain: dict[str, float], seconds: float, retrain_seconds: float) -> dict[str, float]:
    """Avg. Gap, ToW and RTE of one model against the retrained reference."""
    return {"avg_gap": avg_gap(metrics, retrain), "tow": tug_of_war(metrics, retrain),
            "rte": run_time_efficiency(seconds, retrain_seconds)}


def evaluate(job: Any, method_config: Any, splits: DatasetSplits, forget_idx: torch.Tensor, retain_idx: torch.Tensor,
             model: torch.nn.Module, seconds: float, summary: dict) -> dict[str, Any]:
    """All metrics of the job's result (run on the main process, on the CPU copy of the data)."""
    model = model.cpu()
    forget, retain, test = eval_batches(splits, forget_idx, retain_idx)
    results: dict[str, Any] = {"method": method_config.method, "loreun": method_config.loreun, "seconds": seconds,
                               "prepare": summary, "forget_size": len(forget_idx), "retain_size": len(retain_idx)}
    results["metrics"] = unlearning_metrics(model, forget, retain, test, seed=job.seed)
    results["original"] = unlearning_metrics(load_original(job, splits).eval(), forget, retain, test, seed=job.seed)
    if job.compare_to_retrain:
        path, retrain_seconds = train_cached(splits, job.model, retain_idx, job.pretrain_epochs, job.pretrain_lr,
                                             job.seed, job.cache_dir, "retrain")
        retrained = load_model_weights(build_model(job.model, splits.num_classes, splits.in_channels), path).eval()
        results["retrain"] = {**unlearning_metrics(retrained, forget, retain, test, seed=job.seed), "seconds": retrain_seconds}
        results["metrics"].update(compare(results["metrics"], results["retrain"], seconds, retrain_seconds))
    if job.relearn_max_epochs > 0:
        forget_train = TensorBatches(splits.train_x, splits.train_y, forget_idx, job.train_batch_size, True, job.seed)
        results["relearn_epochs"] = relearn_epochs(copy.deepcopy(model), forget_train, results["original"]["acc_forget"],
                                                   job.learning_rate, job.relearn_max_epochs)
    return results


def markdown_table(rows: dict[str, dict[str, Any]]) -> str:
    """Rows of ``{name: {metric: value or {"mean", "std"}}}`` as a paper-style markdown table."""
    header = "| Method | " + " | ".join(label for _, label in COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(COLUMNS) + 1)]
    for name, metrics in rows.items():
        cells = []
        for key, _ in COLUMNS:
            value = metrics.get(key)
            if isinstance(value, dict):
                cells.append(f"{value['mean']:.2f} ± {value['std']:.2f}" if key not in ("tow", "rte")
                             else f"{value['mean']:.3f} ± {value['std']:.3f}")
            elif value is None:
                cells.append("–")
            else:
                cells.append(f"{value:.3f}" if key in ("tow", "rte") else f"{value:.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_results(output_dir: Path, config: dict, results: dict) -> None:
    """``results.json`` (config + results) and ``results.md``, each written atomically."""
    rows = {"Original": results["original"]}
    if "retrain" in results:
        rows["Retrain"] = results["retrain"]
    rows[results["method"] + ("+loreun" if results["loreun"] else "")] = results["metrics"]
    text = markdown_table(rows)
    if results.get("relearn_epochs", "absent") != "absent":
        text += f"\nRelearn time: {results['relearn_epochs']} epoch(s) of fine-tuning on D_f to regain the original D_f accuracy.\n"
    write_text_atomic(Path(output_dir) / "results.md", text)
    write_text_atomic(Path(output_dir) / "results.json", json.dumps({"config": config, **results}, indent=2, default=str))
