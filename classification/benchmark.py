"""Paper-style benchmark on scikit-learn's digits: every method, two scenarios, several seeds.

    python -m classification.benchmark --out results.json          # ~minutes on 2 CPU cores
    python -m classification.benchmark --quick --out quick.json     # smoke run
    python -m classification.benchmark --tune --out tuning.json     # hyperparameter search

Hyperparameters come from ``configs/benchmark_digits.yaml``; ``--tune`` chooses them on
validation runs (other seeds, and a validation split of the *training* data in place of
the test set), never on the reported numbers. Output JSON:
``{scenario: {method: {metric: {"mean": x, "std": y}}}}`` plus a ``meta`` entry.
"""

from __future__ import annotations

import argparse
import copy
import functools
import itertools
import json
import logging
import platform
import statistics
import time
from pathlib import Path

from typing import Any, Mapping

import torch
import yaml

from erasure import jobconfig
from erasure.batches import TensorBatches
from classification.data import DatasetSplits, load_dataset, split_forget
from classification.engine import fit, make_optimizer
from erasure.loop import unlearn
from classification.metrics import unlearning_metrics
from classification.models import build_model
from classification.objective import ClassificationObjective
from classification.report import compare, eval_batches, markdown_table
from erasure.coerce import coerce, coerce_fields, field_types
from erasure.config import MethodConfig
from erasure.launch import make_accelerator
from erasure.methods import build_method, validate_method

logger = logging.getLogger("classification.benchmark")
CONFIG = Path(__file__).resolve().parent.parent / "configs" / "benchmark_digits.yaml"
METRICS = ("ua", "ra", "ta", "mia", "avg_gap", "tow", "rte")
SCENARIOS = {"random": {"forget": "random", "forget_fraction": 0.1}, "class": {"forget": "class", "forget_classes": [3]}}
# Shape of the config file: `defaults`, one section per scenario (entry name -> settings), `grid`.
DEFAULTS_TYPES = {"pretrain_epochs": int, "pretrain_lr": float}
TRAIN_TYPES = {"learning_rate": float, "num_train_epochs": int, "optimizer": str, "batch_size": int}
PLUGINS = ("loreun",)  # entry names are `<method>` or `<method>+<plugin>`


def entry_types() -> dict[str, Any]:
    """Keys of a method entry: training settings and the MethodConfig fields an entry may set."""
    method_fields = {k: v for k, v in field_types(MethodConfig).items() if k not in ("method", "loreun", "seed")}
    return {**TRAIN_TYPES, **method_fields}


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
    return value


def _entry(name: str, settings: Any, where: str) -> dict[str, Any]:
    """One method entry, typed, with "method" and "loreun" from its name; checked by MethodConfig."""
    typed = coerce_fields(_mapping(settings, where), entry_types(), lambda key: f"{where}.{key}")
    missing = [key for key in ("learning_rate", "num_train_epochs") if key not in typed]
    if missing:
        raise ValueError(f"{where}: missing {missing} (every entry needs learning_rate and num_train_epochs)")
    method, _, plugin = name.partition("+")
    if plugin and plugin not in PLUGINS:
        raise ValueError(f"{where}: unknown plugin '+{plugin}'; known: {['+' + p for p in PLUGINS]}")
    entry = {"method": method, "loreun": plugin == "loreun", **typed}
    try:
        validate_method(MethodConfig(**{k: v for k, v in entry.items() if k not in TRAIN_TYPES}))
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    return entry


def _grid(section: Any, where: str) -> dict[str, dict[str, list]]:
    """method -> {key: [values]}, each value typed like the entry key it searches."""
    types_by_name = entry_types()
    grid = {}
    for method, axes in _mapping(section, where).items():
        axes = _mapping(axes, f"{where}.{method}")
        unknown = sorted(set(axes) - set(types_by_name))
        if unknown:
            raise ValueError(f"{where}.{method}.{unknown[0]} is not an option; valid options: {sorted(types_by_name)}")
        grid[method] = {key: coerce(values, list[types_by_name[key]], f"{where}.{method}.{key}")
                        for key, values in axes.items()}
        empty = [key for key, values in grid[method].items() if not values]
        if empty:
            raise ValueError(f"{where}.{method}.{empty[0]}: empty list of values to search")
    return grid


def load_config(path: str | Path) -> dict[str, Any]:
    """The benchmark's YAML (see `configs/benchmark_digits.yaml`), every value typed and checked.

    Raises:
        FileNotFoundError: no such file.
        ValueError: one line naming the file, the section, entry and key, and what is expected.
    """
    data = _mapping(jobconfig.read_yaml(path), str(path))
    sections = ("defaults", *SCENARIOS, "grid")
    unknown, missing = sorted(set(data) - set(sections)), [s for s in sections[:-1] if s not in data]
    if unknown or missing:
        raise ValueError(f"{path}: sections {sorted(data)}; expected {list(sections)} (grid optional)")
    defaults = coerce_fields(_mapping(data["defaults"], f"{path}: defaults"), DEFAULTS_TYPES,
                             lambda key: f"{path}: defaults.{key}")
    if set(defaults) != set(DEFAULTS_TYPES):
        raise ValueError(f"{path}: defaults needs {sorted(DEFAULTS_TYPES)}, got {sorted(defaults)}")
    config: dict[str, Any] = {"defaults": defaults, "grid": _grid(data.get("grid") or {}, f"{path}: grid")}
    for scenario in SCENARIOS:
        section = _mapping(data[scenario], f"{path}: {scenario}")
        config[scenario] = {str(name): _entry(str(name), settings, f"{path}: {scenario}.{name}")
                            for name, settings in section.items()}
    return config


def validation_splits(splits: DatasetSplits, seed: int) -> DatasetSplits:
    """Hold out 20% of the training set as the 'test' set of tuning runs."""
    perm = torch.randperm(len(splits.train_y), generator=torch.Generator().manual_seed(10_000 + seed))
    cut = int(0.8 * len(perm))
    train, val = perm[:cut], perm[cut:]
    return DatasetSplits(splits.train_x[train], splits.train_y[train], splits.train_x[val], splits.train_y[val],
                         splits.num_classes, splits.in_channels, splits.name + "-val")


def run_method(entry: dict, splits: DatasetSplits, original: torch.nn.Module, forget_idx, retain_idx,
               seed: int, accelerator) -> tuple[torch.nn.Module, float]:
    """Unlearn with one method entry ({"method", lr, epochs, ...}); returns (model, seconds)."""
    entry = dict(entry)
    train = {k: entry.pop(k) for k in ("learning_rate", "num_train_epochs", "optimizer", "batch_size") if k in entry}
    config = MethodConfig(seed=seed, **entry)
    model = copy.deepcopy(original).train()
    batches = lambda idx, s: TensorBatches(splits.train_x, splits.train_y, idx, train.get("batch_size", 64), True, s)
    forget, retain = batches(forget_idx, seed + 1), batches(retain_idx, seed + 2)
    started = time.perf_counter()
    method = build_method(config, ClassificationObjective(splits.num_classes, seed))
    if config.retain_dro:  # retain_dro's groups: the classes the retain batches hold
        method.hold_retain_groups(splits.train_y, indices=retain_idx)
    method.snapshot(model)
    method.prepare(model, forget, retain)
    optimizer = make_optimizer(model.parameters(), train.get("optimizer", "sgd"), train["learning_rate"], 0.9, 5e-4)
    unlearn(accelerator, model, method, optimizer, forget, retain, train["num_train_epochs"])
    return model.eval(), time.perf_counter() - started


@functools.lru_cache(maxsize=8)
def seed_context(scenario: str, seed: int, pretrain_epochs: int, pretrain_lr: float, validation: bool) -> tuple:
    """Data, forget split, original model, retrained reference and its metrics (cached)."""
    splits = load_dataset("digits", seed=seed)
    if validation:
        splits = validation_splits(splits, seed)
    spec = SCENARIOS[scenario]
    forget_idx, retain_idx = split_forget(splits.train_y, spec["forget"], spec.get("forget_fraction", 0.1),
                                          spec.get("forget_classes", ()), seed)
    torch.manual_seed(seed)
    train = lambda idx: fit(build_model("digits_cnn", splits.num_classes, 1),
                            TensorBatches(splits.train_x, splits.train_y, idx, 64, True, seed),
                            pretrain_epochs, pretrain_lr, show_progress=False)
    original = train(torch.arange(len(splits.train_y)))
    started = time.perf_counter()
    torch.manual_seed(seed + 1)
    retrained = train(retain_idx)
    retrain_seconds = time.perf_counter() - started
    loaders = eval_batches(splits, forget_idx, retain_idx)
    reference = unlearning_metrics(retrained, *loaders, seed=seed)
    return splits, forget_idx, retain_idx, original, loaders, reference, retrain_seconds


def run_seed(scenario: str, seed: int, entries: dict[str, dict], defaults: dict, validation: bool, accelerator) -> dict:
    """Every method entry for one scenario and seed, against the retrained reference."""
    splits, forget_idx, retain_idx, original, loaders, reference, retrain_seconds = seed_context(
        scenario, seed, defaults["pretrain_epochs"], defaults["pretrain_lr"], validation)
    rows = {"retrain": {**reference, **compare(reference, reference, retrain_seconds, retrain_seconds)}}
    for name, entry in entries.items():
        torch.manual_seed(seed)
        model, seconds = run_method(entry, splits, original, forget_idx, retain_idx, seed, accelerator)
        metrics = unlearning_metrics(model, *loaders, seed=seed)
        rows[name] = {**metrics, **compare(metrics, reference, seconds, retrain_seconds)}
        logger.info("%s seed %d %-22s avg_gap %.2f", scenario, seed, name, rows[name]["avg_gap"])
    return rows


def aggregate(per_seed: list[dict]) -> dict:
    """{method: {metric: {"mean", "std"}}} over seeds (std = sample std, 0 for one seed)."""
    out = {}
    for name in per_seed[0]:
        out[name] = {}
        for metric in METRICS:
            values = [rows[name][metric] for rows in per_seed]
            out[name][metric] = {"mean": statistics.fmean(values),
                                 "std": statistics.stdev(values) if len(values) > 1 else 0.0}
    return out


def method_entries(config: dict, scenario: str, only: list[str] | None) -> dict[str, dict]:
    """The entries of one scenario of a `load_config` config, or those named in `only`.

    Raises:
        ValueError: a name in `only` that the scenario has no entry for.
    """
    entries = config[scenario]
    unknown = sorted(set(only or ()) - set(entries))
    if unknown:
        raise ValueError(f"--methods {unknown} not in the {scenario} section of the config; known: {sorted(entries)}")
    return {k: v for k, v in entries.items() if not only or k in only}


def tune(config: dict, seeds: list[int], accelerator, only: list[str] | None = None) -> dict:
    """Grid search per method on validation runs; returns the chosen entries per scenario."""
    chosen = {}
    for scenario in SCENARIOS:
        chosen[scenario] = {}
        for name, base in method_entries(config, scenario, only).items():
            grid = config.get("grid", {}).get(base["method"], {})
            keys = sorted(grid)
            best = None
            for values in itertools.product(*(grid[k] for k in keys)) if keys else [()]:
                entry = {**base, **dict(zip(keys, values))}
                gaps = [run_seed(scenario, s, {name: entry}, config["defaults"], True, accelerator)[name]["avg_gap"]
                        for s in seeds]
                score = statistics.fmean(gaps)
                if best is None or score < best[0]:
                    best = (score, entry)
            chosen[scenario][name] = {k: v for k, v in best[1].items() if k not in ("method", "loreun")}
            logger.info("tuned %s/%s: %s (validation avg_gap %.2f)", scenario, name, chosen[scenario][name], best[0])
    return chosen


def check_results_file(out: str) -> None:
    """Refuse a ``--out`` that cannot be written before minutes of training: a folder, a file under
    a file, a read-only folder.

    Raises:
        IsADirectoryError / NotADirectoryError / PermissionError: naming ``--out``.
    """
    from erasure.output import check_output_dir

    path = Path(out)
    if path.is_dir():
        raise IsADirectoryError(f"--out={out} is a folder; give a .json file path")
    check_output_dir(path.parent if str(path.parent) else ".", "--out's folder")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="results.json")
    parser.add_argument("--config", default=str(CONFIG))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=None, help="subset of the config's method entries")
    parser.add_argument("--quick", action="store_true", help="one seed, fewer epochs: a smoke run")
    parser.add_argument("--tune", action="store_true", help="grid-search on validation runs and print the YAML")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (tiny models run fastest on one)")
    args = parser.parse_args(argv)
    check_results_file(args.out)
    if args.threads < 1 or not args.seeds or min(args.seeds) < 0:
        raise ValueError(f"threads={args.threads} must be >= 1 and seeds={args.seeds} non-empty and >= 0")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    config = load_config(args.config)
    if args.methods:
        for scenario in SCENARIOS:
            method_entries(config, scenario, args.methods)
    accelerator = make_accelerator()
    if args.tune:
        chosen = tune(config, [100, 101], accelerator, args.methods)
        Path(args.out).write_text(json.dumps(chosen, indent=2))
        print(yaml.safe_dump(chosen, sort_keys=True))
        return chosen
    seeds = args.seeds[:1] if args.quick else args.seeds
    if args.quick:
        config["defaults"]["pretrain_epochs"] = max(5, config["defaults"]["pretrain_epochs"] // 3)
    started = time.perf_counter()
    results: dict = {}
    for scenario in SCENARIOS:
        entries = method_entries(config, scenario, args.methods)
        per_seed = [run_seed(scenario, seed, entries, config["defaults"], False, accelerator) for seed in seeds]
        results[scenario] = aggregate(per_seed)
        print(f"\n## {scenario} forgetting (digits, seeds {seeds})\n")
        print(markdown_table(results[scenario]))
    results["meta"] = {"seeds": seeds, "seconds": time.perf_counter() - started, "quick": args.quick,
                       "machine": f"{platform.machine()} {platform.processor()} {torch.get_num_threads()} threads",
                       "torch": torch.__version__, "config": args.config}
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"total {results['meta']['seconds']:.0f}s -> {args.out}")
    return results


if __name__ == "__main__":
    jobconfig.run_cli(main)
