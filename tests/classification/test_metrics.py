import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from classification.data import IndexedTensorDataset
from classification.metrics import (
    accuracy,
    avg_gap,
    mia_efficacy,
    mia_from_confidences,
    predict_proba,
    run_time_efficiency,
    tug_of_war,
    unlearning_metrics,
)


class LogitsAreInputs(nn.Module):
    """A 'classifier' whose logits are its inputs, so a test can dictate every confidence."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def loader_of(logits: torch.Tensor, labels: torch.Tensor, batch_size: int = 7) -> DataLoader:
    return DataLoader(IndexedTensorDataset(logits, labels), batch_size=batch_size)


def two_class_loader(true_class_confidences: np.ndarray) -> DataLoader:
    """Samples of class 0 whose softmax confidence in class 0 is exactly the given value."""
    conf = torch.as_tensor(true_class_confidences, dtype=torch.float32)
    logits = torch.stack([conf.log(), (1 - conf).log()], dim=1)
    return loader_of(logits, torch.zeros(len(conf), dtype=torch.long))


def test_accuracy_hand_computed_and_mode_restored():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0], [0.0, 5.0]])
    labels = torch.tensor([0, 1, 1, 1])  # the third sample is wrong
    model = LogitsAreInputs().train()
    assert accuracy(model, loader_of(logits, labels, batch_size=3)) == pytest.approx(0.75)
    assert model.training
    assert accuracy(model.eval(), loader_of(logits, labels)) == pytest.approx(0.75)
    assert not model.training


def test_predict_proba_runs_in_eval_mode_without_grad():
    model = nn.Sequential(nn.Linear(2, 3), nn.Dropout(p=0.9))
    x = torch.randn(20, 2)
    probs, labels = predict_proba(model, loader_of(x, torch.arange(20) % 3))
    assert probs.shape == (20, 3) and not probs.requires_grad
    assert torch.allclose(probs, torch.softmax(model[0](x), dim=1).detach())  # dropout was off
    assert torch.equal(labels, torch.arange(20) % 3)


def test_predict_proba_rejects_empty_loader():
    with pytest.raises(ValueError, match="empty"):
        predict_proba(LogitsAreInputs(), [])


RNG = np.random.default_rng(0)
MEMBER_CONF = RNG.uniform(0.9, 1.0, 200)  # trained-on samples: confident
NON_MEMBER_CONF = RNG.uniform(0.2, 0.6, 150)  # unseen samples: unsure


def test_mia_high_when_forget_looks_like_test():
    forget = two_class_loader(RNG.uniform(0.25, 0.55, 50))
    retain, test = two_class_loader(MEMBER_CONF), two_class_loader(NON_MEMBER_CONF)
    assert mia_efficacy(LogitsAreInputs(), retain, test, forget) > 0.95


def test_mia_low_when_forget_looks_like_retain():
    forget = two_class_loader(RNG.uniform(0.92, 1.0, 50))
    retain, test = two_class_loader(MEMBER_CONF), two_class_loader(NON_MEMBER_CONF)
    assert mia_efficacy(LogitsAreInputs(), retain, test, forget) < 0.05


def test_mia_from_confidences_balances_members_and_non_members():
    # 1000 members spread over [0, 1] against 50 non-members in [0, 0.5]: fitted on all of
    # them the SVC calls everything a member; balanced (50 vs 50), low confidences are
    # mostly non-members and high ones members.
    members = np.linspace(0.0, 1.0, 1000)
    non_members = np.linspace(0.0, 0.5, 50)
    forget = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
    assert mia_from_confidences(members, non_members, forget, seed=1) == pytest.approx(3 / 5)
    with pytest.raises(ValueError, match="non-empty"):
        mia_from_confidences(members, non_members, np.array([]))


def test_unlearning_metrics_units_and_consistency():
    model = LogitsAreInputs()
    forget = loader_of(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([1, 1]))  # Acc(D_f) = 0.5
    retain = two_class_loader(MEMBER_CONF)  # all correct
    test = two_class_loader(np.array([0.7] * 100 + [0.3] * 25))  # 100 of 125 correct
    metrics = unlearning_metrics(model, forget, retain, test, seed=0)
    assert metrics["acc_forget"] == pytest.approx(0.5) and metrics["ua"] == pytest.approx(50.0)
    assert metrics["acc_retain"] == pytest.approx(1.0) and metrics["ra"] == pytest.approx(100.0)
    assert metrics["acc_test"] == pytest.approx(0.8) and metrics["ta"] == pytest.approx(80.0)
    assert metrics["mia"] == pytest.approx(100.0 * mia_efficacy(model, retain, test, forget, seed=0))


def test_avg_gap_hand_computed():
    unlearned = {"ua": 10.0, "ra": 90.0, "ta": 80.0, "mia": 20.0, "extra": 1.0}
    retrained = {"ua": 14.0, "ra": 92.0, "ta": 79.0, "mia": 30.0}
    assert avg_gap(unlearned, retrained) == pytest.approx((4 + 2 + 1 + 10) / 4)
    assert avg_gap(unlearned, retrained, keys=("ua", "mia")) == pytest.approx(7.0)
    with pytest.raises(ValueError, match=r"\['extra'\]"):
        avg_gap(unlearned, retrained, keys=("ua", "extra"))
    with pytest.raises(ValueError, match="at least one"):
        avg_gap(unlearned, retrained, keys=())


def test_tug_of_war_hand_computed():
    unlearned = {"acc_forget": 0.9, "acc_retain": 0.95, "acc_test": 0.8}
    retrained = {"acc_forget": 0.8, "acc_retain": 1.0, "acc_test": 0.85}
    assert tug_of_war(unlearned, retrained) == pytest.approx(0.9 * 0.95 * 0.95)
    assert tug_of_war(retrained, retrained) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="not percent"):
        tug_of_war({**unlearned, "acc_test": 80.0}, retrained)
    with pytest.raises(ValueError, match="lacks 'acc_forget'"):
        tug_of_war({"acc_retain": 0.9, "acc_test": 0.9}, retrained)


def test_run_time_efficiency():
    assert run_time_efficiency(30.0, 120.0) == pytest.approx(0.25)
    assert math.isclose(run_time_efficiency(0.0, 1.0), 0.0)
    with pytest.raises(ValueError, match="retrain_seconds=0"):
        run_time_efficiency(5.0, 0)
    with pytest.raises(ValueError, match="seconds=-1"):
        run_time_efficiency(-1.0, 10.0)
