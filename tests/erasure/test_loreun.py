import math

import pytest
import torch

from erasure.loreun import excess_loss, fit_exponential, loreun_weights, weighted_sum


def test_forget_weights_favour_small_excess_loss():
    losses = torch.tensor([0.5, 1.0, 3.0])
    w = loreun_weights(losses, 1.0, eta=0.5, forget=True)
    assert w.sum().item() == pytest.approx(1.0)
    assert w[0] > w[1] > w[2]
    # hand-computed Eq. 4 + normalisation
    raw = torch.exp(-0.5 * (losses - 1.0))
    torch.testing.assert_close(w, raw / raw.sum())


def test_retain_weights_favour_large_excess_loss():
    w = loreun_weights(torch.tensor([0.5, 1.0, 3.0]), 1.0, eta=0.5, forget=False)
    assert w[2] > w[1] > w[0]
    assert w.sum().item() == pytest.approx(1.0)


def test_zero_eta_is_uniform_and_weighted_sum_is_mean():
    losses = torch.tensor([1.0, 2.0, 6.0], requires_grad=True)
    w = loreun_weights(losses, 0.0, eta=0.0, forget=True)
    assert weighted_sum(losses, w).item() == pytest.approx(3.0)
    assert not w.requires_grad


def test_ratio_measure_per_sample_reference():
    d = excess_loss(torch.tensor([2.0, 2.0]), torch.tensor([1.0, 4.0]), "ratio")
    assert d.tolist() == [2.0, 0.5]
    with pytest.raises(ValueError, match="measure='bogus'"):
        excess_loss(torch.ones(1), 1.0, "bogus")


def test_exponential_fit_recovers_curve():
    t = torch.arange(0, 1000, 100).float()
    curve = fit_exponential(t, 0.8 * torch.exp(-0.003 * t))
    assert curve.a == pytest.approx(0.8, rel=1e-6)
    assert curve.b == pytest.approx(-0.003, rel=1e-6)
    assert curve(torch.tensor([500.0])).item() == pytest.approx(0.8 * math.exp(-1.5), rel=1e-6)


def test_exponential_fit_rejects_bad_losses():
    with pytest.raises(ValueError, match="positive"):
        fit_exponential([0, 100], [0.5, 0.0])


def _fit_on_rank(rank, world, init_file, results):
    import torch.distributed as dist

    from erasure.launch import end_process_group
    from erasure.objective import Objective

    class Squared(Objective):
        def loss(self, model, batch):
            return (model(batch[0]).squeeze(1) - batch[1]) ** 2

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    gen = torch.Generator().manual_seed(10 + rank)  # each rank its own shard, of its own size
    batches = [(torch.randn(4 + rank, 3, generator=gen), torch.randn(4 + rank, generator=gen)) for _ in range(2)]
    with torch.no_grad():
        results[rank] = (Squared().fit_reference(model, batches)["mean"],
                         float(torch.cat([Squared().loss(model, b) for b in batches]).sum()),
                         sum(len(b[1]) for b in batches))
    end_process_group()  # spawned ranks exit through the interpreter's end: gloo drained first


def test_the_reference_is_one_figure_over_every_ranks_batches(tmp_path):
    """Under data parallelism each rank sees its shard; the LoReUn reference must be the mean over
    all shards on every rank (before: each rank fitted its own and only rank 0's was saved)."""
    import torch.multiprocessing as mp

    results = mp.Manager().dict()
    mp.spawn(_fit_on_rank, args=(2, str(tmp_path / "init"), results), nprocs=2, join=True)
    pooled = (results[0][1] + results[1][1]) / (results[0][2] + results[1][2])
    assert results[0][0] == pytest.approx(pooled) and results[1][0] == pytest.approx(pooled)
    assert results[0][1] / results[0][2] != pytest.approx(pooled)  # the shards differ
