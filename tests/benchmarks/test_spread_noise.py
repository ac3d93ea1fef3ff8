"""The colour-spread noise benchmark: draws split as documented, ratios on known answers, bad input."""

import math

import pytest
import torch

from benchmarks import spread_noise
from eval.testbed import TestbedSamples


def test_disjoint_draws_and_their_ratios_on_known_colours():
    # two prompts, four seeds each (image k of prompt p at k * 2 + p); draws of 2 seeds: [0, 2) and [2, 4)
    colors = torch.tensor([0, 1,   1, 1,   2, 3,   2, 4])
    prompt_ids = torch.tensor([0, 1] * 4)
    samples = lambda ids: TestbedSamples(images=torch.zeros(len(ids), 3, 4, 4), digits=ids,
                                         colors=torch.full((len(ids),), -1), prompt_ids=ids, groups=["word"] * len(ids))
    result = spread_noise.noise(samples(prompt_ids), colors, [2])[2]
    two = math.log(2) / math.log(6)
    # draw 1: prompt 0 draws 0, 1 (two colours), prompt 1 draws 1, 1 (one); draw 2: prompt 0 draws 2, 2,
    # prompt 1 draws 3, 4
    assert result["draws"] == 2 and result["spreads"] == pytest.approx([two / 2, two / 2])
    assert result["ratio_min"] == result["ratio_max"] == pytest.approx(1.0) and result["pairs_under_0.9"] == 0
    # draw 1: both prompts draw two colours; draw 2: prompt 0 one colour (3, 3), prompt 1 two (3, 5)
    skewed = spread_noise.noise(samples(prompt_ids), torch.tensor([0, 1, 1, 2, 3, 3, 3, 5]), [2])[2]
    assert skewed["spreads"] == pytest.approx([two, two / 2])
    assert (skewed["ratio_min"], skewed["ratio_max"], skewed["ratio_median"]) == pytest.approx((0.5, 2.0, 1.25))
    assert skewed["pairs"] == 2 and skewed["pairs_under_0.9"] == 1
    # a draw with no spread at all divides nothing: it is a numerator only
    flat = spread_noise.noise(samples(prompt_ids), torch.tensor([0, 1, 1, 2, 3, 4, 3, 4]), [2])[2]
    assert flat["spreads"] == pytest.approx([two, 0.0]) and flat["pairs"] == 1 and flat["ratio_min"] == 0.0
    with pytest.raises(ValueError, match="no draw has any colour spread"):
        spread_noise.noise(samples(prompt_ids), torch.zeros(8, dtype=torch.long), [2])
    with pytest.raises(ValueError, match="sample_testbed's order"):
        spread_noise.noise(samples(torch.tensor([0, 0, 1, 1] * 2)), colors, [2])


@pytest.mark.parametrize("argv, message", [
    (["--max_images", "15"], "max_images=15 must be from 2 to 14"),
    (["--sizes", "8"], "sizes: 8 must be from 2 to max_images // 2 = 7"),
    (["--out", "/no/such/folder/x"], "does not exist"),
])
def test_bad_arguments_fail_before_any_work(argv, message):
    with pytest.raises(ValueError, match=message):
        spread_noise.parse(argv)
