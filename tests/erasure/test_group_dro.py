"""Online group DRO on the retain term (erasure/group_dro.py, UnlearningMethod.reduce_retain)."""

import math

import pytest
import torch

from erasure.config import MethodConfig
from erasure.group_dro import GroupWeights
from erasure.methods import build_method, validate_method
from erasure.objective import Objective


def _stepped(weights, losses, groups):
    weights.accumulate(torch.tensor(losses), torch.tensor(groups))
    weights.step()
    return weights.weights


def test_one_step_by_hand():
    """Losses 1 and 3 (mean 2) in groups 0 and 1 of three: log q moves by step * (r - 1) = 0.5 * [-0.5, 0.5] for
    the groups the batch holds, none for group 2, then renormalises."""
    weights = GroupWeights(3, step_size=0.5)
    assert torch.allclose(weights.weights, torch.full((3,), 1 / 3, dtype=torch.float64))
    raw = torch.tensor([math.exp(-0.25), math.exp(0.25), 1.0], dtype=torch.float64)
    assert torch.allclose(_stepped(weights, [1.0, 3.0], [0, 1]), raw / raw.sum())


def test_being_in_more_batches_does_not_raise_a_group():
    """Equal losses: a group that is in every batch (a big one) and one in few keep equal weights."""
    weights = GroupWeights(3, step_size=0.5)
    for step in range(30):
        groups = [0, 0, 0, 1] if step % 3 else [0, 0, 2, 2]
        _stepped(weights, [2.0] * 4, groups)
    assert torch.allclose(weights.weights, torch.full((3,), 1 / 3, dtype=torch.float64))


def test_the_group_that_stays_high_gains_weight_and_zero_step_stays_uniform():
    moving, still = GroupWeights(2, step_size=0.1), GroupWeights(2, step_size=0.0)
    for _ in range(40):
        for weights in (moving, still):
            _stepped(weights, [1.0, 1.0, 4.0], [0, 0, 1])
    assert moving.weights[1] > 0.9
    assert torch.allclose(still.weights, torch.full((2,), 0.5, dtype=torch.float64))


def test_micro_batches_pool_into_one_step():
    """Gradient accumulation: two micro-batches then one step equal one batch holding both."""
    pooled, split = GroupWeights(3, 0.5), GroupWeights(3, 0.5)
    _stepped(pooled, [1.0, 3.0, 6.0], [0, 1, 2])
    split.accumulate(torch.tensor([1.0, 3.0]), torch.tensor([0, 1]))
    split.accumulate(torch.tensor([6.0]), torch.tensor([2]))
    split.step()
    assert torch.allclose(split.weights, pooled.weights)


def test_sample_weights_give_the_q_weighted_mean_of_group_means():
    weights = GroupWeights(3, step_size=0.5)
    weights.log_weights = torch.log(torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64))
    losses, groups = torch.tensor([1.0, 3.0, 10.0]), torch.tensor([0, 0, 1])  # group 2 absent
    w = weights.sample_weights(groups, torch.full((3,), 1 / 3))
    expected = (0.5 * 2.0 + 0.3 * 10.0) / 0.8
    assert float((w * losses).sum()) == pytest.approx(expected)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="num_groups=0"):
        GroupWeights(0, 0.1)
    with pytest.raises(ValueError, match="step_size=-1"):
        GroupWeights(2, -1)
    with pytest.raises(ValueError, match=r"groups holds ids 2\.\.2; they must lie in \[0, 2\)"):
        GroupWeights(2, 0.1).accumulate(torch.tensor([1.0]), torch.tensor([2]))
    with pytest.raises(ValueError, match="one id per sample"):
        GroupWeights(2, 0.1).accumulate(torch.tensor([1.0, 2.0]), torch.tensor([0]))


def test_state_round_trip_and_a_checkpoint_of_other_groups_is_refused():
    weights = GroupWeights(3, step_size=0.5)
    _stepped(weights, [1.0, 5.0], [0, 2])
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


def test_reduce_retain_is_the_q_weighted_mean_of_group_means_and_q_steps_at_the_optimizer_step():
    method = _method(retain_dro=0.5)
    groups = torch.tensor([0, 0, 1, 1, 2, 2])  # by sample index
    method.hold_retain_groups(groups, names=["a", "b", "c"])
    batch, losses = _batch(), torch.tensor([1.0, 2.0, 3.0, 1.0, 4.0, 1.0])
    sample_groups = groups[batch["index"]]
    means = torch.stack([losses[sample_groups == g].mean() for g in range(3)]).double()
    # the first step's q is uniform: the plain mean of the group means
    assert float(method.reduce_retain(losses, batch)) == pytest.approx(float(means.mean()))
    logs = method.finalize_gradients(None)
    logits = torch.full((3,), math.log(1 / 3), dtype=torch.float64) + 0.5 * (means / losses.double().mean() - 1)
    q = torch.softmax(logits, 0)
    assert logs["retain_dro_max"] == pytest.approx(3 * float(q.max()))
    assert float(method.reduce_retain(losses, batch)) == pytest.approx(float((q * means).sum()))
    table = method.group_weight_table()
    assert list(table) == ["a", "b", "c"] and list(table.values()) == pytest.approx(q.tolist(), abs=1e-6)


def test_only_the_groups_the_retain_batches_draw_take_part():
    """A class the job forgets (no retain sample) is no group: q spreads over the retained ones."""
    method = _method(retain_dro=0.5)
    method.hold_retain_groups(torch.tensor([0, 3, 1, 3, 1, 0, 2]), indices=torch.tensor([0, 1, 2, 3, 4, 5]))
    assert method.retain_group_names == ["0", "1", "3"] and len(method.group_weights.log_weights) == 3
    assert method.retain_groups.tolist() == [0, 2, 1, 2, 1, 0, -1]


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
    method.finalize_gradients(None)
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
    with pytest.raises(ValueError, match="groups holds the id -2; group ids must be >= 0"):
        _method(retain_dro=0.1).hold_retain_groups(torch.tensor([0, -2]))
    with pytest.raises(ValueError, match="2 group names for group ids up to 2"):
        _method(retain_dro=0.1).hold_retain_groups(torch.tensor([0, 1, 2]), names=["a", "b"])


def _update_on_rank(rank, world, init_file, results):
    import torch.distributed as dist

    from erasure.launch import end_process_group

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    weights = GroupWeights(3, step_size=0.5)
    # each rank its own shard, of its own mean: rank 0 holds groups 0 and 1 (mean 2), rank 1 group 2 only (mean 8)
    losses, groups = (([1.0, 3.0], [0, 1]) if rank == 0 else ([8.0, 8.0, 8.0], [2, 2, 2]))
    weights.accumulate(torch.tensor(losses), torch.tensor(groups))
    weights.step()
    results[rank] = weights.log_weights.tolist()
    end_process_group()  # spawned ranks exit through the interpreter's end: gloo drained first


def test_every_rank_takes_the_same_step_from_every_ranks_groups(tmp_path):
    """Under data parallelism q must stay one distribution, stepped on the pooled batch: every rank's group sums,
    counts and total are added before the step (each rank judging its shard by its own mean would see
    rank 1's only group as average, r = 1, whatever its loss)."""
    import torch.multiprocessing as mp

    results = mp.Manager().dict()
    mp.spawn(_update_on_rank, args=(2, str(tmp_path / "init"), results), nprocs=2, join=True)
    assert results[0] == results[1]
    mean = 28.0 / 5  # every sample of both ranks
    raw = torch.tensor([math.exp(0.5 * (1.0 / mean - 1)), math.exp(0.5 * (3.0 / mean - 1)),
                        math.exp(0.5 * (8.0 / mean - 1))], dtype=torch.float64)
    assert torch.allclose(torch.tensor(results[0], dtype=torch.float64).exp(), raw / raw.sum())
