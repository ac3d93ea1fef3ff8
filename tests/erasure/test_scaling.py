"""fp16 loss scaling (``erasure.scaling``) on the CPU with torch's own GradScaler: every gradient read
before the optimiser step is unscaled, and an overflow is backed off instead of reaching the top-k."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from erasure.config import MethodConfig
from erasure.methods import build_method
from erasure.sensitivity import connection_sensitivity
from tests.erasure.test_methods import Regression, _batches, _model


class Large(Regression):
    """Gradients of order 1e3: at a loss scale of 2**127 they overflow float32."""

    def loss(self, model, batch):
        return 1e3 * super().loss(model, batch)


def _scaler(scale: float) -> torch.amp.GradScaler:
    return torch.amp.GradScaler("cpu", init_scale=scale)


def _scaled_backward(scaler):
    return lambda loss: scaler.scale(loss).backward()  # what accelerator.backward does under fp16


@pytest.mark.parametrize("scale", [1024.0, 2.0**127])  # 2**127 overflows these float32 gradients
def test_sensitivity_scores_are_of_unscaled_gradients_and_survive_an_overflow(scale, caplog):
    model, batches = _model(), _batches(1)
    params = dict(model.named_parameters())
    reference = connection_sensitivity(model, Large().loss, batches, params)
    scaler = _scaler(scale)
    with caplog.at_level("WARNING", logger="erasure.scaling"):
        scores = connection_sensitivity(model, Large().loss, batches, params, _scaled_backward(scaler),
                                        scaler=scaler)
    assert ("overflow" in caplog.text) == (scale > 1e30)  # backed off exactly when it had to
    for name in params:
        assert torch.isfinite(scores[name]).all()
        torch.testing.assert_close(scores[name], reference[name], rtol=1e-5, atol=0)
    assert scaler.get_scale() == scale  # the pass backs off a scale of its own, not the job's scaler


def test_sensitivity_without_the_scaler_would_overflow():
    """The failure the backoff prevents: the same pass at 2**127 without telling it the scale."""
    model, batches = _model(), _batches(1)
    scaler = _scaler(2.0**127)
    scores = connection_sensitivity(model, Large().loss, batches, dict(model.named_parameters()),
                                    _scaled_backward(scaler))
    assert not all(torch.isfinite(s).all() for s in scores.values())


def test_l1_sparse_penalty_is_scaled_with_the_gradients():
    """Unscaling the step after finalize gives the unscaled run's step: the penalty was scaled too."""
    objective, batch = Regression(), _batches(1)[0]
    steps = []
    for scale in (1.0, 4096.0):
        model = _model()
        method = build_method(MethodConfig(method="l1_sparse", l1_gamma=0.3), objective)
        scaler = _scaler(scale) if scale != 1.0 else None
        method.loss_scaler = scaler
        backward = _scaled_backward(scaler) if scaler else torch.Tensor.backward
        method.compute_gradients(model, batch, batch, backward=backward)
        method.finalize_gradients(model)
        steps.append([p.grad / scale for p in model.parameters()])
    for unscaled, scaled in zip(*steps):
        torch.testing.assert_close(scaled, unscaled, rtol=1e-5, atol=1e-7)


class Small(Regression):
    """A loss whose gradients are ~1e-9 to 1e-8."""

    def loss(self, model, batch):
        return 1e-8 * super().loss(model, batch)


class HalfCompute(nn.Module):
    """float32 weights, float16 compute (as under fp16 autocast): gradients cross the fp16 output,
    where anything below ~6e-8 is flushed to zero unless the loss was scaled."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 1)

    def forward(self, x):
        h = torch.tanh(F.linear(x.half(), self.a.weight.half(), self.a.bias.half()))
        return F.linear(h, self.b.weight.half(), self.b.bias.half()).float()


@pytest.mark.parametrize("scale", [65536.0, 2.0**60])  # 2**60 overflows fp16: backed off ~20 times
def test_minmax_ascent_takes_the_scaled_gradient_and_unscales_it(scale):
    objective, batch = Small(), _batches(1)[0]
    reference = HalfCompute().float()
    params = list(reference.parameters())
    loss = objective.loss(nn.Sequential(reference.a, nn.Tanh(), reference.b), batch).mean()
    exact = torch.autograd.grad(loss, params)  # float32 compute throughout
    moved = {}
    for name, scaler in (("unscaled", None), ("scaled", _scaler(scale))):
        model = HalfCompute()
        # ascent_lr 1e6: steps of ~1e-3, not lost to float32 rounding of weights ~0.3
        method = build_method(MethodConfig(method="scissorhands_minmax", ascent_lr=1e6), objective)
        method.loss_scaler = scaler
        if scaler is not None:
            scaler.scale(torch.ones(()))  # accelerate's backward has run once: the scale exists
        before = [p.detach().clone() for p in model.parameters()]
        method.ascend(model, batch)
        moved[name] = [(p.detach() - b) / 1e6 for p, b in zip(model.parameters(), before)]
    # unscaled, fp16 flushes these gradients to zero: the ascent does not move (what the scale prevents)
    assert all(m.abs().max() == 0 for m in moved["unscaled"])
    for step, want in zip(moved["scaled"], exact):
        torch.testing.assert_close(step, want, rtol=2e-2, atol=1e-11)


@pytest.mark.parametrize("scale", [65536.0, 2.0**60])
def test_tamper_steps_move_the_weights_under_fp16_compute(scale):
    """The tamper step's signed gradient is taken at the job's loss scale (``grad_at_job_scale``, the
    ascent's helper): unscaled, fp16 flushes these gradients to zero and no weight would move."""
    batch = _batches(1)[0]
    for scaler, moves in ((None, False), (_scaler(scale), True)):
        model = HalfCompute()
        method = build_method(MethodConfig(method="scissorhands", forget_loss="substitute", tamper_steps=1,
                                           tamper_step_size=1e-3), Small())
        method.loss_scaler = scaler
        if scaler is not None:
            scaler.scale(torch.ones(()))
        params, seen = list(model.parameters()), []
        relearned = lambda model, batch, reference=None: seen.append(  # noqa: E731 - the weights at the term
            [p.detach().clone() for p in params]) or model(batch[0]).squeeze(-1) * 0
        method.objective.relabeled_loss, method.original = relearned, None
        before = [p.detach().clone() for p in params]
        method._backward_tampered(model, batch, params, lambda loss: None, torch.zeros(len(batch[0])))
        steps = [(at - b).abs() for at, b in zip(seen[0], before)]
        if moves:  # every weight one signed step away
            assert all(torch.allclose(s, torch.full_like(s, 1e-3), rtol=1e-3) for s in steps)
        else:
            assert all(s.max() == 0 for s in steps)
        assert all(torch.equal(p, b) for p, b in zip(params, before))  # put back
