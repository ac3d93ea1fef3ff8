"""Metrics of classifier unlearning (paper 000 §4 "Metrics", paper 004 §5.1 "Evaluation Metrics").

Conventions, all reported in percent except where noted:

- ``ua``: unlearning accuracy, ``100 * (1 - Acc(D_f))``, as in SalUn's tables (higher
  means more forgotten). Paper 000 reports ``Acc(D_f)`` itself; the gap to the retrained
  model is the same either way, so ``avg_gap`` is unaffected.
- ``ra``: retain accuracy, ``100 * Acc(D_r)``.
- ``ta``: test accuracy, ``100 * Acc(D_t)``.
- ``mia``: ``100 * MIA-efficacy``, the share of forget samples that an SVC membership
  attack calls non-members (paper 000 §4 (ii): MIA = P(y = 0 | x_f)).
- ``acc_forget`` / ``acc_retain`` / ``acc_test``: the raw accuracies as fractions in [0, 1]
  (the inputs of ``tug_of_war``).

Loaders are any iterables of dict batches ``{"x", "y", ...}``: a ``DataLoader`` over
``classification.data.IndexedTensorDataset`` or ``erasure.batches.TensorBatches``.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

Batches = Iterable[Mapping[str, torch.Tensor]]


@torch.no_grad()
def predict_proba(model: nn.Module, loader: Batches) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities of ``model`` over a loader, in eval mode.

    The model's previous train/eval mode is restored afterwards.

    Args:
        model: A classifier returning logits (N, K).
        loader: Dict batches with ``"x"`` and ``"y"``.

    Returns:
        ``(probs, labels)``: float (N, K) probabilities and int64 (N,) labels, on CPU.
    """
    was_training = model.training
    device = next(model.parameters(), torch.empty(0)).device
    model.eval()
    try:
        probs, labels = [], []
        for batch in loader:
            logits = model(batch["x"].to(device))
            probs.append(torch.softmax(logits.float(), dim=-1).cpu())
            labels.append(batch["y"].cpu())
    finally:
        model.train(was_training)
    if not probs:
        raise ValueError("loader yielded no batch; cannot evaluate an empty set")
    return torch.cat(probs), torch.cat(labels).long()


def accuracy_from_proba(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of samples whose arg-max class is the label, in [0, 1]."""
    return (probs.argmax(dim=-1) == labels).float().mean().item()


def accuracy(model: nn.Module, loader: Batches) -> float:
    """Top-1 accuracy of ``model`` over a loader, in [0, 1].

    Args:
        model: A classifier returning logits.
        loader: Dict batches with ``"x"`` and ``"y"``.

    Returns:
        The fraction of correctly classified samples.
    """
    return accuracy_from_proba(*predict_proba(model, loader))


def true_class_confidence(probs: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """Softmax probability of each sample's true class: the MIA feature of SalUn's SVC attack."""
    return probs.gather(1, labels.view(-1, 1)).squeeze(1).double().numpy()


def mia_from_confidences(
    retain_conf: np.ndarray, test_conf: np.ndarray, forget_conf: np.ndarray, seed: int = 0
) -> float:
    """MIA-efficacy from true-class confidences (paper 000 §4 (ii), SalUn's SVC attack).

    An RBF SVC is fitted on retain samples (members, label 1) against test samples
    (non-members, label 0), the larger group subsampled to the size of the smaller, and
    then applied to the forget samples.

    Args:
        retain_conf: Confidences of retain samples, shape (N_r,).
        test_conf: Confidences of test samples, shape (N_t,).
        forget_conf: Confidences of forget samples, shape (N_f,).
        seed: Seed of the balancing subsample.

    Returns:
        The fraction of forget samples predicted non-member, in [0, 1].
    """
    from sklearn.svm import SVC

    if min(len(retain_conf), len(test_conf), len(forget_conf)) == 0:
        raise ValueError(
            f"retain, test and forget confidences must be non-empty; got lengths "
            f"{len(retain_conf)}, {len(test_conf)}, {len(forget_conf)}"
        )
    rng = np.random.default_rng(seed)
    size = min(len(retain_conf), len(test_conf))
    members = rng.permutation(retain_conf)[:size]
    non_members = rng.permutation(test_conf)[:size]
    features = np.concatenate([members, non_members]).reshape(-1, 1)
    targets = np.concatenate([np.ones(size), np.zeros(size)])
    attack = SVC(C=3, gamma="auto", kernel="rbf").fit(features, targets)
    return float((attack.predict(np.asarray(forget_conf).reshape(-1, 1)) == 0).mean())


def mia_efficacy(
    model: nn.Module, retain_loader: Batches, test_loader: Batches, forget_loader: Batches, seed: int = 0
) -> float:
    """MIA-efficacy of ``model`` on the forget set (papers 000 and 004).

    Args:
        model: The (unlearned) classifier.
        retain_loader: Batches of D_r, the attack's members.
        test_loader: Batches of D_t, the attack's non-members.
        forget_loader: Batches of D_f, the attack's targets.
        seed: Seed of the balancing subsample.

    Returns:
        The fraction of forget samples predicted non-member, in [0, 1].
    """
    confidences = [true_class_confidence(*predict_proba(model, loader))
                   for loader in (retain_loader, test_loader, forget_loader)]
    return mia_from_confidences(*confidences, seed=seed)


def unlearning_metrics(
    model: nn.Module, forget_loader: Batches, retain_loader: Batches, test_loader: Batches, seed: int = 0
) -> dict[str, float]:
    """All accuracy and MIA metrics of one model, from one pass over each loader.

    Args:
        model: The classifier to evaluate.
        forget_loader: Batches of D_f.
        retain_loader: Batches of D_r.
        test_loader: Batches of D_t.
        seed: Seed of the MIA's balancing subsample.

    Returns:
        ``{"ua", "ra", "ta", "mia"}`` in percent and ``{"acc_forget", "acc_retain",
        "acc_test"}`` as fractions (see the module docstring).
    """
    outputs = {name: predict_proba(model, loader) for name, loader in
               (("forget", forget_loader), ("retain", retain_loader), ("test", test_loader))}
    acc = {f"acc_{name}": accuracy_from_proba(*out) for name, out in outputs.items()}
    confidences = [true_class_confidence(*outputs[name]) for name in ("retain", "test", "forget")]
    mia = mia_from_confidences(*confidences, seed=seed)
    return {
        "ua": 100.0 * (1.0 - acc["acc_forget"]),
        "ra": 100.0 * acc["acc_retain"],
        "ta": 100.0 * acc["acc_test"],
        "mia": 100.0 * mia,
        **acc,
    }


def avg_gap(
    metrics: Mapping[str, float],
    reference: Mapping[str, float],
    keys: Sequence[str] = ("ua", "ra", "ta", "mia"),
) -> float:
    """Avg. Gap to the retrained model (paper 000 §4 (iii)): mean of |m - m*| over ``keys``.

    Args:
        metrics: The unlearned model's metrics.
        reference: The retrained model's metrics (same units).
        keys: Metrics to average over.

    Returns:
        The mean absolute gap, in the unit of the metrics (percent by default).

    Raises:
        ValueError: If ``keys`` is empty or a key is missing from either dict.
    """
    if not keys:
        raise ValueError("keys must name at least one metric")
    missing = [k for k in keys if k not in metrics or k not in reference]
    if missing:
        raise ValueError(
            f"keys {missing} are missing from metrics {sorted(metrics)} or reference {sorted(reference)}"
        )
    return sum(abs(metrics[k] - reference[k]) for k in keys) / len(keys)


def tug_of_war(acc: Mapping[str, float], reference: Mapping[str, float]) -> float:
    """Tug-of-war (paper 004 §5.1): prod over D in {D_f, D_r, D_t} of (1 - |Acc_u - Acc_r|).

    Args:
        acc: The unlearned model's ``acc_forget``, ``acc_retain``, ``acc_test`` (fractions).
        reference: The retrained model's values for the same keys.

    Returns:
        ToW in [0, 1]; 1 means the accuracies match the retrained model exactly.

    Raises:
        ValueError: If a key is missing or an accuracy lies outside [0, 1] (e.g. percent).
    """
    keys = ("acc_forget", "acc_retain", "acc_test")
    for name, values in (("acc", acc), ("reference", reference)):
        for key in keys:
            if key not in values:
                raise ValueError(f"{name} lacks {key!r}; it needs {list(keys)} as fractions")
            if not 0.0 <= values[key] <= 1.0:
                raise ValueError(f"{name}[{key!r}]={values[key]} must be a fraction in [0, 1], not percent")
    return math.prod(1.0 - abs(acc[k] - reference[k]) for k in keys)


def run_time_efficiency(seconds: float, retrain_seconds: float) -> float:
    """Run-time efficiency RTE = T / T_r (paper 000 §4 (iv)).

    Args:
        seconds: Time the unlearning method took.
        retrain_seconds: Time retraining from scratch on D_r took.

    Returns:
        The ratio; below 1 means faster than retraining.

    Raises:
        ValueError: If ``retrain_seconds`` is not positive or ``seconds`` is negative.
    """
    if retrain_seconds <= 0:
        raise ValueError(f"retrain_seconds={retrain_seconds} must be positive")
    if seconds < 0:
        raise ValueError(f"seconds={seconds} must be non-negative")
    return seconds / retrain_seconds
