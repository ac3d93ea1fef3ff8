"""Truncated-SVD factors of a weight change (the LoRA export's math)."""

import pytest
import torch

from erasure.lowrank import low_rank_factors


def test_full_rank_reproduces_the_delta_and_a_low_rank_delta_exactly():
    gen = torch.Generator().manual_seed(0)
    delta = torch.randn(6, 4, generator=gen)
    b, a, captured = low_rank_factors(delta, 4)
    torch.testing.assert_close(b @ a, delta, atol=1e-5, rtol=1e-5)
    assert captured == pytest.approx(1.0)
    rank2 = torch.randn(6, 2, generator=gen) @ torch.randn(2, 4, generator=gen)
    b, a, captured = low_rank_factors(rank2, 2)
    torch.testing.assert_close(b @ a, rank2, atol=1e-5, rtol=1e-5)
    assert b.shape == (6, 2) and a.shape == (2, 4) and captured == pytest.approx(1.0, abs=1e-6)


def test_truncation_is_the_eckart_young_optimum_and_reports_the_energy_kept():
    gen = torch.Generator().manual_seed(1)
    delta = torch.randn(8, 5, generator=gen)
    s = torch.linalg.svdvals(delta)
    b, a, captured = low_rank_factors(delta, 2)
    error = torch.linalg.matrix_norm(delta - b @ a) ** 2
    assert float(error) == pytest.approx(float((s[2:] ** 2).sum()), rel=1e-4)
    assert captured == pytest.approx(float((s[:2] ** 2).sum() / (s ** 2).sum()), rel=1e-5)


def test_convolution_deltas_flatten_and_keep_their_kernel_shape():
    delta = torch.randn(4, 3, 3, 3)
    b, a, _ = low_rank_factors(delta, 27)
    assert a.shape == (4, 3, 3, 3) and b.shape == (4, 4)  # rank capped by the smaller side
    torch.testing.assert_close((b @ a.flatten(1)).reshape(delta.shape), delta, atol=1e-5, rtol=1e-5)


def test_bad_input():
    with pytest.raises(ValueError, match="rank=0 must be >= 1"):
        low_rank_factors(torch.randn(3, 3), 0)
    with pytest.raises(ValueError, match="no low-rank form"):
        low_rank_factors(torch.randn(3), 2)
    assert low_rank_factors(torch.zeros(3, 3), 2)[2] == 1.0
