"""Online group DRO on the retain term (erasure/group_dro.py, UnlearningMethod.reduce_retain)."""

import math

import pytest
import torch

from erasure.config import MethodConfig
from erasure.group_dro import GroupWeights
from erasure.methods import build_method, validate_method
from erasure.objective import Objective


def test_one_step_by_hand():
    """Losses 1 and 3 (mean 2) in groups 0 and 1 of three: log q moves by step * [0.5, 1.5, 0], then renormalises."""
    weights = GroupWeights(3, step_size=0.5)
    assert torch.allclose(weights.weights, torch.full((3,), 1 / 3, dtype=torch.float64))
    weights.update(torch.tensor([1.0, 3.0]), torch.tensor([0, 1]))
    raw = torch.tensor([math.exp(0.25), math.exp(0.75), 1.0], dtype=torch.float64)
    assert torch.allclose(weights.weights, raw / raw.sum())


def test_a_group_mean_is_over_its_samples_and_absent_groups_fall_behind():
    weights = GroupWeights(3, step_size=1.0)
    # group 0: losses 1 and 3 (mean ratio 1.0 over the batch mean 2), group 1: 2 (ratio 1.0); group 2 absent
    weights.update(torch.tensor([1.0, 3.0, 2.0]), torch.tensor([0, 0, 1]))
    q = weights.weights
    assert q[0] == pytest.approx(q[1]) and q[2] < q[0]
    assert float(q.sum()) == pytest.approx(1.0)


def test_the_group_that_stays_high_gains_weight_and_zero_step_stays_uniform():
    moving, still = GroupWeights(2, step_size=0.1), GroupWeights(2, step_size=0.0)
    for _ in range(20):
        for weights in (moving, still):
            weights.update(torch.tensor([1.0, 1.0, 4.0]), torch.tensor([0, 0, 1]))
    assert moving.weights[1] > 0.9
    assert torch.allclose(still.weights, torch.full((2,), 0.5, dtype=torch.float64))


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="num_groups=0"):
        GroupWeights(0, 0.1)
    with pytest.raises(ValueError, match="step_size=-1"):
        GroupWeights(2, -1)
    with pytest.raises(ValueError, match=r"group ids must be in \[0, 2\)"):
        GroupWeights(2, 0.1).update(torch.tensor([1.0]), torch.tensor([2]))
    with pytest.raises(ValueError, match="one group per loss"):
        GroupWeights(2, 0.1).update(torch.tensor([1.0, 2.0]), torch.tensor([0]))


def test_state_round_trip_and_a_checkpoint_of_other_groups_is_refused():
    weights = GroupWeights(3, step_size=0.5)
    weights.update(torch.tensor([1.0, 5.0]), torch.tensor([0, 2]))
    restored = GroupWeights(3, step_size=0.5)
    restored.load_state_dict(weights.state_dict())
    assert torch.equal(restored.log_weights, weights.log_weights)
    with pytest.raises(ValueError, match="cover 3 groups; this run has 4"):
        GroupWeights(4, 0.5).load_state_dict(weights.state_dict())


class _Squared(Objective):
    def loss(self, model, batch):
        return (model(batch["x"]).squeeze(1) - batch["y"].float()) ** 2


def _method(**overrides):
    config = MethodConfig(method="finetune", **overrides)
    return build_method(config, _Squared())


def _batch():
    gen = torch.Generator().manual_seed(0)
    return {"x": torch.randn(6, 3, generator=gen), "y": torch.tensor([0, 1, 2, 0, 1, 2]),
            "index": torch.tensor([4, 0, 5, 2, 1, 3])}


def test_reduce_retain_weights_each_sample_by_its_groups_q_after_one_step():
    method = _method(retain_dro=0.5)
    groups = torch.tensor([0, 0, 1, 1, 2, 2])  # by sample index
    method.hold_retain_groups(groups, names=["a", "b", "c"])
    batch, losses = _batch(), torch.tensor([1.0, 2.0, 3.0, 1.0, 4.0, 1.0])
    reduced = method.reduce_retain(losses, batch)
    sample_groups = groups[batch["index"]]
    ratios = losses.double() / losses.double().mean()
    logits = torch.tensor([math.log(1 / 3)] * 3, dtype=torch.float64)
    for g in range(3):
        logits[g] += 0.5 * ratios[sample_groups == g].mean()
    q = torch.softmax(logits, 0)
    expected = (q[sample_groups] * losses.double()).sum() / q[sample_groups].sum()
    assert float(reduced) == pytest.approx(float(expected))
    table = method.group_weight_table()
    assert list(table) == ["a", "b", "c"] and sum(table.values()) == pytest.approx(1.0)
    assert method.finalize_gradients(None)["retain_dro_max"] == pytest.approx(3 * float(q.max()))


def test_off_it_is_the_plain_mean_and_on_without_groups_it_says_what_is_missing():
    losses = torch.tensor([1.0, 2.0, 3.0, 1.0, 4.0, 1.0])
    assert _method().reduce_retain(losses, _batch()) == losses.mean()
    assert "retain_dro_max" not in _method().finalize_gradients(None)
    with pytest.raises(RuntimeError, match=r"retain_dro=0.5 needs the retain samples' groups"):
        _method(retain_dro=0.5).reduce_retain(losses, _batch())


def test_the_weights_resume_with_the_method_state():
    method = _method(retain_dro=0.5)
    method.hold_retain_groups(torch.tensor([0, 0, 1, 1, 2, 2]))
    method.reduce_retain(torch.tensor([1.0, 2.0, 3.0, 1.0, 4.0, 1.0]), _batch())
    resumed = _method(retain_dro=0.5)
    resumed.hold_retain_groups(torch.tensor([0, 0, 1, 1, 2, 2]))
    resumed.load_state_dict(method.state_dict())
    assert torch.equal(resumed.group_weights.log_weights, method.group_weights.log_weights)


def test_config_and_method_refusals_name_the_field():
    with pytest.raises(ValueError, match="retain_dro=-0.1 must be a finite number >= 0"):
        MethodConfig(retain_dro=-0.1)
    with pytest.raises(ValueError, match="retain_dro=0.1 does not apply to method 'grad_ascent'.*works with:"):
        validate_method(MethodConfig(method="grad_ascent", retain_dro=0.1))
    with pytest.raises(ValueError, match="non-empty 1-D tensor"):
        _method(retain_dro=0.1).hold_retain_groups(torch.tensor([], dtype=torch.long))
    with pytest.raises(ValueError, match="2 group names for 3 groups"):
        _method(retain_dro=0.1).hold_retain_groups(torch.tensor([0, 1, 2]), names=["a", "b"])


def _update_on_rank(rank, world, init_file, results):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    weights = GroupWeights(3, step_size=0.5)
    # each rank its own shard: rank 0 sees groups 0 and 1, rank 1 sees group 2 only
    losses, groups = ((torch.tensor([1.0, 3.0]), torch.tensor([0, 1])) if rank == 0
                      else (torch.tensor([2.0, 2.0, 2.0]), torch.tensor([2, 2, 2])))
    weights.update(losses, groups)
    results[rank] = weights.log_weights.tolist()
    dist.destroy_process_group()


def test_every_rank_takes_the_same_step_from_every_ranks_groups(tmp_path):
    """Under data parallelism q must stay one distribution: each rank's group sums and counts are
    added before the step (a rank stepping on its own shard would weight its retain term differently)."""
    import torch.multiprocessing as mp

    results = mp.Manager().dict()
    mp.spawn(_update_on_rank, args=(2, str(tmp_path / "init"), results), nprocs=2, join=True)
    assert results[0] == results[1]
    # rank 0's ratios 0.5 / 1.5 (its mean 2), rank 1's 1.0: log q + 0.5 * [0.5, 1.5, 1.0]
    raw = torch.tensor([math.exp(0.25), math.exp(0.75), math.exp(0.5)], dtype=torch.float64)
    assert torch.allclose(torch.tensor(results[0], dtype=torch.float64).exp(), raw / raw.sum())
