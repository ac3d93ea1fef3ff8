import pytest
import torch

from erasure.topk import count_to_select, global_threshold, topk_masks


def _flat(scores):
    return torch.cat([s.reshape(-1) for s in scores.values()])


@pytest.mark.parametrize("kept", [0.5, 0.9, 0.97, 0.995])
def test_exact_count_and_agrees_with_full_sort(kept):
    gen = torch.Generator().manual_seed(0)
    scores = {"a": torch.rand(40, 25, generator=gen) ** 3, "b": torch.rand(333, generator=gen), "c": torch.rand(7, generator=gen)}
    masks = topk_masks(scores, kept)
    flat, chosen = _flat(scores), _flat(masks)
    n = count_to_select(flat.numel(), kept)
    assert int(chosen.sum()) == n
    expected = torch.sort(flat, descending=True).values[:n]
    torch.testing.assert_close(torch.sort(flat[chosen], descending=True).values, expected)


def test_ties_are_broken_to_the_exact_count():
    scores = {"a": torch.tensor([1.0, 2.0, 2.0, 2.0]), "b": torch.tensor([2.0, 0.5])}
    masks = topk_masks(scores, 0.5)  # 3 of 6
    assert int(_flat(masks).sum()) == 3
    assert masks["a"].tolist() == [False, True, True, True]  # first ties in order


def test_refinement_path_matches_sort():
    gen = torch.Generator().manual_seed(1)
    scores = [torch.rand(20000, generator=gen) ** 8 for _ in range(3)]
    thr = global_threshold(scores, 0.99, bins=16, max_candidates=50)
    flat = torch.cat(scores)
    assert thr.value == torch.sort(flat, descending=True).values[thr.n_select - 1].item()
    assert thr.n_select == 600


def test_zero_selected_when_fraction_rounds_to_nothing():
    masks = topk_masks({"a": torch.rand(10)}, 0.99)
    assert not masks["a"].any()


@pytest.mark.parametrize("kept", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_bad_kept_fraction(kept):
    with pytest.raises(ValueError, match="kept_fraction"):
        topk_masks({"a": torch.rand(10)}, kept)


def test_nan_scores_rejected():
    with pytest.raises(ValueError, match="'a'"):
        topk_masks({"a": torch.tensor([1.0, float("nan")])}, 0.5)
