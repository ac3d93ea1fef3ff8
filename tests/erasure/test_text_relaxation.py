"""UnlearnDiffAtk's pieces: simplex projection and straight-through token sampling (the prefix plumbing:
tests/pipelines/test_prompt_prefix.py)."""

import torch

from erasure.text_relaxation import _project_simplex_by_sorting, draw_rows, project_simplex, sample_one_hot, simplex_projection


def test_projection_onto_the_simplex_on_hand_made_points():
    torch.testing.assert_close(project_simplex(torch.tensor([[0.5, 0.5]])), torch.tensor([[0.5, 0.5]]))
    torch.testing.assert_close(project_simplex(torch.tensor([[2.0, 0.0]])), torch.tensor([[1.0, 0.0]]))
    torch.testing.assert_close(project_simplex(torch.tensor([[0.2, 0.1]])), torch.tensor([[0.55, 0.45]]))
    torch.testing.assert_close(project_simplex(torch.tensor([[-1.0, -1.0, -1.0]])), torch.full((1, 3), 1 / 3))


def test_projection_is_the_closest_point_of_the_simplex():
    gen = torch.Generator().manual_seed(0)
    values = torch.randn(20, 7, generator=gen) * 2
    projected = project_simplex(values)
    assert (projected >= 0).all()
    torch.testing.assert_close(projected.sum(-1), torch.ones(20))
    others = torch.distributions.Dirichlet(torch.ones(7)).sample((20, 500))  # random simplex points
    best = (values[:, None] - others).norm(dim=-1).min(dim=1).values
    assert ((values - projected).norm(dim=-1) <= best + 1e-6).all()


def test_michelot_projection_matches_the_sorting_projection_on_attack_sized_rows():
    gen = torch.Generator().manual_seed(1)
    vocabulary = 49408
    uniform = torch.full((5, vocabulary), 1.0 / vocabulary)
    after_a_step = uniform - 0.01 * torch.randn(5, vocabulary, generator=gen)  # what Adam hands the projection
    peaked = torch.softmax(torch.randn(5, vocabulary, generator=gen) * 8, dim=-1) + 0.05 * torch.randn(5, vocabulary,
                                                                                                       generator=gen)
    for values in (uniform, after_a_step, peaked, torch.randn(5, vocabulary, generator=gen)):
        torch.testing.assert_close(project_simplex(values), _project_simplex_by_sorting(values), atol=1e-6, rtol=0)
    few_rounds = after_a_step.double()
    torch.testing.assert_close(project_simplex(few_rounds, max_rounds=1), _project_simplex_by_sorting(few_rounds))


def test_a_warm_start_reaches_the_cold_projection_bit_for_bit():
    """Any start (near, far below, above every entry of a row) climbs to the cold start's fixed point."""
    gen = torch.Generator().manual_seed(2)
    vocabulary = 49408
    before, theta = simplex_projection(torch.full((6, vocabulary), 1.0 / vocabulary)
                                       - 0.01 * torch.randn(6, vocabulary, generator=gen))
    after = before - 0.01 * torch.randn(6, vocabulary, generator=gen)  # the next step's rows
    cold, cold_theta = simplex_projection(after)
    torch.testing.assert_close(cold, _project_simplex_by_sorting(after), atol=1e-6, rtol=0)
    starts = theta.clone()
    starts[1] = -10.0  # far below: every entry is above it
    starts[2] = 10.0  # above every entry: the row starts cold
    for start in (theta, starts, cold_theta):
        warm, warm_theta = simplex_projection(after, start)
        assert torch.equal(warm, cold) and torch.equal(warm_theta, cold_theta)
    sorted_, sorted_theta = simplex_projection(after, max_rounds=1)  # falls back to the sort: its theta too
    torch.testing.assert_close((after - sorted_theta).clamp(min=0), sorted_, atol=1e-7, rtol=0)
    torch.testing.assert_close(sorted_theta, cold_theta, atol=1e-7, rtol=0)


def test_rows_are_drawn_in_proportion_and_never_where_the_weight_is_zero():
    gen = torch.Generator().manual_seed(0)
    weights = torch.tensor([[0.0, 0.2, 0.0, 0.8], [0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    counts = torch.zeros_like(weights)
    for _ in range(4000):
        counts[torch.arange(3), draw_rows(weights, gen)] += 1
    assert (counts[weights == 0] == 0).all()
    torch.testing.assert_close(counts / 4000, weights, atol=0.03, rtol=0)


def test_straight_through_sampling_draws_one_hot_and_passes_the_gradient_clipped():
    distributions = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], requires_grad=True)
    one_hot = sample_one_hot(distributions, torch.Generator().manual_seed(0))
    assert torch.equal(one_hot, torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]))
    (one_hot * torch.tensor([[3.0, -0.5, 0.0], [0.0, 0.0, -7.0]])).sum().backward()
    torch.testing.assert_close(distributions.grad, torch.tensor([[1.0, -0.5, 0.0], [0.0, 0.0, -1.0]]))
