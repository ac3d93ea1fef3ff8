"""The original model and the retrained reference, trained once and cached as safetensors."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch

from erasure.batches import TensorBatches
from classification.data import DatasetSplits
from classification.engine import fit
from classification.models import build_model
from erasure.output import load_model_weights, save_model_atomic, write_text_atomic

logger = logging.getLogger(__name__)


def cache_root(cache_dir: str | None) -> Path:
    root = cache_dir or os.environ.get("SCISSORHANDS_CACHE") or Path.home() / ".cache" / "scissorhands"
    path = Path(root) / "classification"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _key(**fields: Any) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:12]


def train_cached(splits: DatasetSplits, model_name: str, indices: torch.Tensor, epochs: int, lr: float,
                 seed: int, cache_dir: str | None, tag: str) -> tuple[Path, float]:
    """Train ``model_name`` on ``indices`` of the training set (or reuse the cache).

    Returns:
        (weights path, training seconds as first measured).
    """
    key = _key(dataset=splits.name, model=model_name, n=len(splits.train_y), epochs=epochs, lr=lr, seed=seed,
               indices=hashlib.sha256(indices.numpy().tobytes()).hexdigest())
    path = cache_root(cache_dir) / f"{tag}-{splits.name}-{model_name}-{key}.safetensors"
    meta = path.with_suffix(".json")
    if path.is_file() and meta.is_file():
        return path, json.loads(meta.read_text())["seconds"]
    torch.manual_seed(seed)
    model = build_model(model_name, splits.num_classes, splits.in_channels)
    batches = TensorBatches(splits.train_x, splits.train_y, indices, 64, True, seed)
    started = time.perf_counter()
    fit(model, batches, epochs, lr, desc=f"{tag} ({len(indices)} samples)")
    seconds = time.perf_counter() - started
    save_model_atomic(model, path)
    write_text_atomic(meta, json.dumps({"seconds": seconds, "epochs": epochs, "lr": lr, "seed": seed}))
    logger.info("trained %s model in %.1fs -> %s", tag, seconds, path)
    return path, seconds


def original_path(job: Any, splits: DatasetSplits) -> Path:
    """The original model's weights: ``--original_model``, else trained on the whole training
    set (or read from the cache)."""
    if job.original_model:
        return Path(job.original_model)
    everything = torch.arange(len(splits.train_y))
    return train_cached(splits, job.model, everything, job.pretrain_epochs, job.pretrain_lr, job.seed,
                        job.cache_dir, "original")[0]


def load_original(job: Any, splits: DatasetSplits) -> torch.nn.Module:
    """The original model, built and loaded from safetensors."""
    model = build_model(job.model, splits.num_classes, splits.in_channels)
    return load_model_weights(model, original_path(job, splits))
