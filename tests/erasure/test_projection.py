import pytest
import torch

from erasure.projection import combine_projected_, dual_coefficient, inner, project


def test_closed_form_on_hand_example():
    # g_o = (1, 1), g_f = (1, 0): <g_o,g_f> = 1 > 0, v* = 1/1, g = (0, 1)
    go, gf = [torch.tensor([1.0, 1.0])], [torch.tensor([1.0, 0.0])]
    (g,) = project(go, gf)
    assert torch.equal(g, torch.tensor([0.0, 1.0]))
    assert inner([g], gf) == pytest.approx(0.0)


def test_unchanged_when_not_conflicting():
    go, gf = [torch.tensor([-1.0, 2.0])], [torch.tensor([1.0, 0.0])]
    assert dual_coefficient(inner(go, gf), inner(gf, gf)) == 0.0
    assert torch.equal(project(go, gf)[0], go[0])


@pytest.mark.parametrize("seed", range(5))
def test_projection_satisfies_constraint_and_is_closest(seed):
    gen = torch.Generator().manual_seed(seed)
    go = [torch.randn(3, 4, generator=gen), torch.randn(5, generator=gen)]
    gf = [g + 0.5 * torch.randn(g.shape, generator=gen) for g in go]  # strongly aligned
    g = project(go, gf)
    assert inner(g, gf) <= 1e-5
    # Eq. 4: among feasible directions g is the closest to g_o; moving along g_f's
    # orthogonal complement cannot do better, moving against g_f costs distance
    dist = sum(float(((a - b) ** 2).sum()) for a, b in zip(g, go))
    worse = [a - 0.1 * f for a, f in zip(g, gf)]
    assert sum(float(((a - b) ** 2).sum()) for a, b in zip(worse, go)) > dist


def test_combine_in_place_matches_reference_with_lambda():
    gen = torch.Generator().manual_seed(7)
    gr = [torch.randn(4, 3, generator=gen), torch.randn(2, generator=gen)]
    gf = [torch.randn(r.shape, generator=gen) + r for r in gr]
    lam = 0.3
    expected = project([r - lam * f for r, f in zip(gr, gf)], gf)
    stats = combine_projected_(gr, gf, lam)
    for a, b in zip(gr, expected):
        torch.testing.assert_close(a, b)
    assert stats["projected"] == 1.0 and stats["v"] > 0


def test_negative_lambda_rejected():
    with pytest.raises(ValueError, match="lam=-1"):
        combine_projected_([torch.ones(2)], [torch.ones(2)], -1.0)


def test_zero_forget_gradient_is_safe():
    gr = [torch.ones(3)]
    combine_projected_(gr, [torch.zeros(3)], 0.5)
    assert torch.equal(gr[0], torch.ones(3))


def test_inner_products_are_read_back_once_per_step(monkeypatch):
    """combine_projected_ syncs to the host once, however many tensors (issue 11: was one sync per
    tensor and inner product), and gives the v* of the per-tensor float64 sum."""
    gen = torch.Generator().manual_seed(3)
    gr = [torch.randn(5, 4, generator=gen) for _ in range(30)]
    gf = [torch.randn(r.shape, generator=gen) + r for r in gr]
    expected_gr_gf = sum(float(torch.vdot(r.flatten(), f.flatten())) for r, f in zip(gr, gf))
    expected_gf_gf = sum(float(torch.vdot(f.flatten(), f.flatten())) for f in gf)
    syncs = []
    original = torch.Tensor.cpu
    monkeypatch.setattr(torch.Tensor, "cpu", lambda self, *a, **k: syncs.append(self.shape) or original(self, *a, **k))
    stats = combine_projected_(gr, gf, 0.0)
    assert syncs == [torch.Size([2])]
    assert stats["v"] == pytest.approx(expected_gr_gf / expected_gf_gf, rel=1e-12)
