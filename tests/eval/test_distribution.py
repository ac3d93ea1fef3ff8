"""Distribution-level utility figures on inputs with known answers."""

import pytest
import torch
from torch import nn

from eval.colors import ColorJudge
from eval.distribution import alignment, distances_of_features, feature_distances, feature_diversity, reference_renders
from eval.fid import FrechetDistance, KernelDistance
from prompts.colored_digits import COLOR_NAMES


class PooledFeatures(nn.Module):
    """Per-channel means and stds of a 4x4 pooled image: 96 features that see colour and layout."""

    num_features = 96

    def forward(self, images):
        pooled = nn.functional.adaptive_avg_pool2d(images.float(), 4).flatten(1)
        return torch.cat([pooled, pooled.square()], dim=1)


def test_identical_generations_have_zero_diversity():
    features = torch.randn(3, 8).repeat_interleave(4, dim=0)
    assert feature_diversity(features, torch.arange(3).repeat_interleave(4)) == pytest.approx(0.0, abs=1e-9)


def test_diversity_is_the_mean_pairwise_distance_per_prompt():
    features = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 0.0], [1.0, 0.0]])
    # prompt 0: one pair at distance 5; prompt 1: identical pair -> mean over prompts 2.5
    assert feature_diversity(features, torch.tensor([0, 0, 1, 1])) == pytest.approx(2.5)


def test_diversity_needs_repeated_prompts():
    with pytest.raises(ValueError, match="at least two"):
        feature_diversity(torch.randn(3, 2), torch.arange(3))


def test_a_set_against_itself_has_zero_fid_and_a_shifted_set_does_not():
    images = torch.rand(200, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    same = feature_distances(PooledFeatures(), images, images.clone(), kid_subsets=5, kid_subset_size=50)
    assert same["fid"] == pytest.approx(0.0, abs=1e-3)
    assert abs(same["kid"]) < 1e-3
    darker = feature_distances(PooledFeatures(), images * 0.5, images, kid_subsets=5, kid_subset_size=50)
    assert darker["fid"] > 0.1 and darker["kid"] > 1e-3


def test_a_collapsed_set_has_a_larger_fid_than_a_fresh_sample():
    generator = torch.Generator().manual_seed(1)
    reference, fresh = torch.rand(300, 3, 16, 16, generator=generator), torch.rand(300, 3, 16, 16, generator=generator)
    collapsed = fresh[:3].repeat(100, 1, 1, 1)  # three images, each 100 times: perfect "accuracy", no variety
    fresh_fid = feature_distances(PooledFeatures(), fresh, reference, kid_subsets=5)["fid"]
    collapsed_fid = feature_distances(PooledFeatures(), collapsed, reference, kid_subsets=5)["fid"]
    assert collapsed_fid > 3 * fresh_fid



def test_features_extracted_once_give_torchmetrics_figures_exactly():
    """feature_distances (and distances_of_features on the same features) = torchmetrics' FID and
    KID over the same extractor, the KID subsets drawn from the same seed."""
    generator = torch.Generator().manual_seed(2)
    generated, reference = torch.rand(150, 3, 16, 16, generator=generator), torch.rand(120, 3, 16, 16, generator=generator) ** 2
    fid, kid = FrechetDistance(feature=PooledFeatures()), KernelDistance(feature=PooledFeatures(), subsets=7, subset_size=60)
    for metric in (fid, kid):
        metric.update(reference, real=True)
        metric.update(generated, real=False)
    torch.manual_seed(3)
    kid_mean, kid_std = kid.compute()
    ours = feature_distances(PooledFeatures(), generated, reference, kid_subsets=7, kid_subset_size=60, kid_seed=3)
    assert ours == {"fid": float(fid.compute()), "kid": float(kid_mean), "kid_std": float(kid_std)}
    again = distances_of_features(PooledFeatures()(generated), PooledFeatures()(reference), 7, 60, kid_seed=3)
    assert again == ours
    torch.manual_seed(3)
    assert distances_of_features(PooledFeatures()(generated), PooledFeatures()(reference), 7, 60, kid_seed=None) == ours
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        distances_of_features(torch.rand(5, 4), torch.rand(5, 3))


def test_kid_does_not_depend_on_what_ran_before_and_leaves_the_global_generator_alone():
    """The KID subsets come from their own seed: two calls on the same features agree whatever the global
    generator's state, and the caller's next draw is the one it would have made without the call."""
    generator = torch.Generator().manual_seed(5)
    generated, reference = torch.rand(80, 6, generator=generator), torch.rand(70, 6, generator=generator) + 0.1
    torch.manual_seed(11)
    first = distances_of_features(generated, reference, kid_subsets=4, kid_subset_size=30)
    expected_next = torch.rand(3)
    torch.manual_seed(11)
    torch.rand(100)  # some other work moved the global generator
    second = distances_of_features(generated, reference, kid_subsets=4, kid_subset_size=30)
    assert second == first
    torch.manual_seed(11)
    distances_of_features(generated, reference, kid_subsets=4, kid_subset_size=30)
    assert torch.equal(torch.rand(3), expected_next)


class FixedJudge:
    def __init__(self, probabilities):
        self.table = probabilities

    def probabilities(self, images):
        return self.table[: len(images)]


def test_alignment_reads_the_prompted_class():
    probabilities = torch.tensor([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8]])
    judge = FixedJudge(probabilities)
    assert alignment(judge, torch.zeros(3, 3, 4, 4), torch.tensor([0, 0, 1])) == pytest.approx((0.9 + 0.4 + 0.8) / 3)


def test_reference_renders_follow_the_requested_labels_and_colours():
    digits = torch.tensor([0, 1, 2, 3] * 6)
    colors = torch.tensor([c for c in range(len(COLOR_NAMES)) for _ in range(4)])
    images = reference_renders(digits, colors, seed=0)
    assert images.shape == (24, 3, 32, 32) and 0.0 <= images.min() and images.max() <= 1.0
    assert torch.equal(ColorJudge().predict(images), colors)
    again = reference_renders(digits, colors, seed=0)
    assert torch.equal(images, again)
    free = reference_renders(torch.zeros(60, dtype=torch.long), torch.full((60,), -1), seed=0)
    assert len(ColorJudge().predict(free).unique()) >= 4  # colour-free labels are drawn over the colours
