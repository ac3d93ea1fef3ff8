"""LoReUn: loss-based reweighting for unlearning, paper 004 Eq. 4-6 and Algorithm 1.

Forget samples whose loss has risen least above the original model's (small excess loss:
still memorised) get more weight, w'_f = exp(-eta_f d); retain samples whose loss has risen
most get more weight, w'_r = exp(eta_r d). Weights are normalised to sum to one per batch.
d = l - l0 for classification and d = l / l0(t) for diffusion, where l0(t) is an exponential
curve fitted to the original model's losses at a few timesteps (§4, Step 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

MEASURES = ("difference", "ratio")


def excess_loss(losses: Tensor, reference: Tensor | float, measure: str) -> Tensor:
    """d(l, l0): ``l - l0`` ("difference") or ``l / l0`` ("ratio")."""
    if measure == "difference":
        return losses - reference
    if measure == "ratio":
        return losses / reference
    raise ValueError(f"measure='{measure}' is unknown; choose one of {list(MEASURES)}")


def loreun_weights(losses: Tensor, reference: Tensor | float, eta: float, forget: bool,
                   measure: str = "difference") -> Tensor:
    """Normalised per-sample weights (Eq. 4 for the forget set, Eq. 5 for the retain set).

    Args:
        losses: per-sample losses of the current model (detached inside).
        reference: the original model's reference loss, scalar or per sample.
        eta: eta_f or eta_r (>= 0; 0 gives uniform weights).
        forget: True for the forget set (exponential decay), False for retain (growth).
        measure: "difference" or "ratio".

    Returns:
        Weights with the shape of ``losses`` summing to one (a softmax, so overflow-safe).
    """
    if eta < 0:
        raise ValueError(f"eta={eta} must be >= 0")
    d = excess_loss(losses.detach().float(), reference, measure)
    logits = -eta * d if forget else eta * d
    return torch.softmax(logits.reshape(-1), dim=0).reshape(losses.shape)


def weighted_sum(losses: Tensor, weights: Tensor) -> Tensor:
    """Eq. 6: sum_i w_i l_i (equals the mean when the weights are uniform)."""
    return (weights.to(losses.dtype) * losses).sum()


@dataclass(frozen=True)
class ExponentialCurve:
    """l0(t) = a * exp(b * t), the fitted reference loss of diffusion timesteps."""

    a: float
    b: float

    def __call__(self, timesteps: Tensor) -> Tensor:
        return self.a * torch.exp(self.b * timesteps.float())


def fit_exponential(timesteps: Sequence[float] | Tensor, losses: Sequence[float] | Tensor) -> ExponentialCurve:
    """Least-squares fit of ``log l = log a + b t`` (paper 004 §4, Step 1).

    Raises:
        ValueError: fewer than two points or a non-positive loss.
    """
    t = torch.as_tensor(timesteps, dtype=torch.float64).reshape(-1)
    y = torch.as_tensor(losses, dtype=torch.float64).reshape(-1)
    if t.numel() < 2 or t.numel() != y.numel():
        raise ValueError(f"need >= 2 (timestep, loss) pairs of equal count, got {t.numel()} and {y.numel()}")
    if (y <= 0).any() or not torch.isfinite(y).all():
        raise ValueError(f"reference losses must be positive and finite to fit an exponential, got {y.tolist()}")
    design = torch.stack([torch.ones_like(t), t], dim=1)
    coef = torch.linalg.lstsq(design, torch.log(y).unsqueeze(1)).solution.squeeze(1)
    return ExponentialCurve(a=float(torch.exp(coef[0])), b=float(coef[1]))
