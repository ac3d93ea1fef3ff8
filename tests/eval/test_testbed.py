"""The testbed quality report: metrics on hand-made samples with known answers, and a real run."""

from types import SimpleNamespace

import pytest
import torch

from eval.colors import ColorJudge
from eval.testbed import (TestbedSamples, concept_summary, expected_entropy, judge_testbed, kept_prompts, pixel_diversity,
                          spread_report)
from pipelines.testbed_data import color_table
from prompts.colored_digits import COLOR_NAMES, DIGIT_WORDS


def test_pixel_diversity_is_zero_for_identical_images_and_the_l1_distance_otherwise():
    same = torch.rand(1, 3, 8, 8).repeat(4, 1, 1, 1)
    assert pixel_diversity(same, torch.zeros(4, dtype=torch.long)) == 0.0
    black, white = torch.zeros(1, 3, 8, 8), torch.ones(1, 3, 8, 8)
    pair = torch.cat([black, white, black, black])
    # prompt 0: black vs white (distance 1); prompt 1: black vs black (0) -> mean 0.5
    assert pixel_diversity(pair, torch.tensor([0, 0, 1, 1])) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="at least two"):
        pixel_diversity(black, torch.zeros(1, dtype=torch.long))


def test_expected_entropy_is_below_one_for_small_samples_and_near_one_for_large():
    uniform = torch.full((6,), 1 / 6)
    small, large = expected_entropy(uniform, 12), expected_entropy(uniform, 2000, draws=20)
    assert 0.75 < small < 0.95 and large > 0.99


class FixedJudge(torch.nn.Module):
    """Predicts whatever digit it was told to, image by image; its features are 2x2-pooled pixels."""

    config = SimpleNamespace(channels=[12])

    def __init__(self, digits):
        super().__init__()
        self.digits, self.told = digits, digits

    def predict(self, images):
        out, self.digits = self.digits[: len(images)], self.digits[len(images):]
        return out

    def probabilities(self, images):
        return torch.nn.functional.one_hot(self.told[: len(images)], 10).float()

    def features(self, images):
        return torch.nn.functional.adaptive_avg_pool2d(images, 2).flatten(1)


def painted(colors):
    """One image per colour index: a bar in that colour (-1: black)."""
    images = torch.zeros(len(colors), 3, 32, 32)
    for i, c in enumerate(colors):
        if c >= 0:
            images[i, :, 8:24, 14:18] = color_table()[c].view(3, 1, 1)
    return images


def test_judge_and_summaries_on_hand_made_samples():
    red, blue = COLOR_NAMES.index("red"), COLOR_NAMES.index("blue")
    # word group: digit 2 on a red prompt (drawn blue: the colour is gone), digit 3 on a blue prompt,
    # and two colour-free prompts of digit 3 drawn red and blue (entropy over two colours)
    asked_colors = torch.tensor([red, blue, -1, -1])
    samples = TestbedSamples(images=painted([blue, blue, red, blue]), digits=torch.tensor([2, 3, 3, 3]),
                             colors=asked_colors, prompt_ids=torch.tensor([0, 1, 2, 2]), groups=["word"] * 4)
    report = judge_testbed(samples, FixedJudge(torch.tensor([2, 5, 3, 3])), ColorJudge())
    word = report["groups"]["word"]
    assert word["recognition_per_digit"] == [None, None, 1.0, pytest.approx(2 / 3)] + [None] * 6
    assert word["recognition_worst"] == pytest.approx(2 / 3)
    assert word["color_accuracy"] == 0.5 and word["color_accuracy_per_color"] == {"red": 0.0, "blue": 1.0}
    assert word["color_entropy"] == pytest.approx(torch.log(torch.tensor(2.0)).item() / torch.log(torch.tensor(6.0)).item())
    # one-hot judge: the prompted digit's probability is 1 where it was recognised (3 of 4)
    assert word["alignment"] == pytest.approx(0.75)
    # prompt 2 has a red and a blue generation: positive diversity; the others have one image each
    assert word["diversity"] > 0 and word["pixel_diversity"] > 0
    assert word["fid"] >= 0 and "kid" in word and "fid_base" not in word
    red_summary = concept_summary(report, samples, "color:red")["word"]
    # two colour-free prompts of one digit drawn from the same two seeds, each in one colour: every
    # prompt has entropy 0 across its seeds although the digit's images hold two colours
    same_seed = TestbedSamples(images=painted([red, red, blue, blue]), digits=torch.tensor([3, 3, 3, 3]),
                               colors=torch.full((4,), -1), prompt_ids=torch.tensor([0, 0, 1, 1]), groups=["word"] * 4)
    per_prompt = judge_testbed(same_seed, FixedJudge(torch.tensor([3, 3, 3, 3])), ColorJudge())["groups"]["word"]
    assert per_prompt["color_entropy"] == 0.0 and per_prompt["color_entropy_worst"] == 0.0
    assert red_summary["erased"] == 0.0 and red_summary["digit_kept"] == 1.0
    assert red_summary["others"] == 0.0 and red_summary["worst_other_color"] == 1.0
    assert red_summary["worst_other_name"] == "blue"
    assert red_summary["erased_purity"] == 1.0  # the red prompt's stroke is all blue
    assert red_summary["erased_shares"] == {n: float(n == "blue") for n in [*COLOR_NAMES, "unclear"]}  # where red went
    blended = painted([blue, blue, red, blue])
    blended[0, :, 16:24, 14:18] = color_table()[COLOR_NAMES.index("green")].view(3, 1, 1)  # half blue, half green
    mixed = TestbedSamples(images=blended, digits=samples.digits, colors=asked_colors, prompt_ids=samples.prompt_ids,
                           groups=samples.groups)
    mixed_report = judge_testbed(mixed, FixedJudge(torch.tensor([2, 5, 3, 3])), ColorJudge())
    assert concept_summary(mixed_report, mixed, "color:red")["word"]["erased_purity"] == 0.5
    # a blank image on a red prompt counts in `erased`'s denominator but has no stroke to be pure or not
    with_blank = TestbedSamples(images=torch.cat([blended, painted([-1])]), digits=torch.tensor([2, 3, 3, 3, 2]),
                                colors=torch.cat([asked_colors, torch.tensor([red])]),
                                prompt_ids=torch.tensor([0, 1, 2, 2, 0]), groups=["word"] * 5)
    blank_report = judge_testbed(with_blank, FixedJudge(torch.tensor([2, 5, 3, 3, 2])), ColorJudge())
    blank_summary = concept_summary(blank_report, with_blank, "color:red")["word"]
    # the shares are over the one stroke, not the blank: half green, half blue holds no majority
    assert blank_summary["erased_purity"] == 0.5 and blank_summary["erased_shares"]["unclear"] == 1.0
    assert blank_summary["erased_blank"] == 0.5 and red_summary["erased_blank"] == 0.0  # 1 of the 2 red prompts' images
    assert "erased_purity" not in concept_summary(report, samples, "digits:two")["word"]
    digit_summary = concept_summary(report, samples, "digits:two")["word"]
    base = judge_testbed(samples, FixedJudge(torch.tensor([2, 5, 3, 3])), ColorJudge(), base=samples)["groups"]["word"]
    assert base["fid_base"] == pytest.approx(0.0, abs=1e-3) and base["diversity_ratio"] == pytest.approx(1.0)
    # the other digit's one colour prompt (blue, drawn blue) keeps its colour
    two_colors = torch.log(torch.tensor(2.0)).item() / torch.log(torch.tensor(6.0)).item()
    assert digit_summary == {"erased": 1.0, "others": pytest.approx(2 / 3), "worst_other": pytest.approx(2 / 3),
                             "worst_other_name": "three", "color_kept": 1.0,
                             # the erased digit's red prompt was drawn blue, and still recognised as a two
                             "erased_color_kept": 0.0,
                             "erased_shares": {w: float(w == "two") for w in DIGIT_WORDS},
                             # the colour-free prompt of 3 drew red and blue
                             "color_spread": pytest.approx(two_colors),
                             "color_free_shares": {**dict.fromkeys(COLOR_NAMES, 0.0), "red": 0.5, "blue": 0.5}}


def test_color_spread_of_colour_free_prompts_against_the_base():
    white, red, green, blue, yellow, magenta = (COLOR_NAMES.index(c) for c in
                                                ("white", "red", "green", "blue", "yellow", "magenta"))
    # three colour-free prompts of digit 3, two seeds each, and one of digit 2 (prompt 3)
    ids, digits = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]), torch.tensor([3] * 6 + [2] * 2)
    base_drawn = [green, blue, red, yellow, green, white, red, green]
    after_drawn = [magenta, magenta, magenta, yellow, magenta, white, red, red]
    make = lambda drawn: TestbedSamples(images=painted(drawn), digits=digits, colors=torch.full((8,), -1),
                                        prompt_ids=ids, groups=["word"] * 8)
    base, after = make(base_drawn), make(after_drawn)
    judge = FixedJudge(digits.repeat(2))
    report = judge_testbed(after, judge, ColorJudge(), base=base)
    two_colors = torch.log(torch.tensor(2.0)).item() / torch.log(torch.tensor(6.0)).item()
    red_summary = concept_summary(report, after, "color:red")["word"]
    # every prompt drew two colours on the base; after, prompt 0 and prompt 3 draw one
    assert red_summary["color_spread"] == pytest.approx(2 / 4 * two_colors)
    assert red_summary["color_spread_ratio"] == pytest.approx(0.5)
    # green (3 of 8 on the base) and blue are gone; the worst is the first of the two in grammar order
    assert red_summary["color_free_worst_name"] == "green" and red_summary["color_free_worst_ratio"] == 0.0
    assert red_summary["color_free_erased"] == pytest.approx(2 / 8)  # prompt 3 still draws red
    # erasing the digit two leaves prompt 3 out: the three prompts of 3 alone
    two_summary = concept_summary(report, after, "digits:two")["word"]
    assert two_summary["color_spread_ratio"] == pytest.approx(2 / 3)
    assert "color_free_erased" not in two_summary
    assert two_summary["color_free_shares"]["magenta"] == pytest.approx(4 / 6)
    # red is not erased there: its lost share (1 of 6 -> 0) counts, and it comes first in grammar order
    assert two_summary["color_free_worst_name"] == "red" and two_summary["color_free_worst_ratio"] == 0.0
    # the same model against itself keeps every figure
    same = concept_summary(judge_testbed(base, judge, ColorJudge(), base=base), base, "color:red")["word"]
    assert same["color_spread_ratio"] == pytest.approx(1.0) and same["color_free_worst_ratio"] == pytest.approx(1.0)


def test_kept_prompts_and_utility_over_them_alone():
    red, blue = COLOR_NAMES.index("red"), COLOR_NAMES.index("blue")
    samples = TestbedSamples(images=painted([blue, blue, red, blue]), digits=torch.tensor([2, 3, 3, 3]),
                             colors=torch.tensor([red, blue, -1, -1]), prompt_ids=torch.tensor([0, 1, 2, 2]),
                             groups=["word"] * 4)
    assert kept_prompts(samples, "digits:two").tolist() == [False, True, True, True]
    assert kept_prompts(samples, "color:red").tolist() == [False, True, False, False]  # colour-free: neither
    assert kept_prompts(samples, "digits:two", ("color:blue",)).tolist() == [False, False, True, True]
    # the erased prompt's generation changed (a white bar instead of a blue one), nothing else did:
    # the group's FID against the base sees the change, the kept prompts' FID does not
    erased = TestbedSamples(images=samples.images.clone(), digits=samples.digits, colors=samples.colors,
                            prompt_ids=samples.prompt_ids, groups=samples.groups)
    erased.images[0] = painted([COLOR_NAMES.index("white")])[0]
    judge = FixedJudge(torch.tensor([2, 3, 3, 3] * 2))
    report = judge_testbed(erased, judge, ColorJudge(), base=samples)
    summary = concept_summary(report, erased, "digits:two", judge=FixedJudge(torch.tensor([2, 3, 3, 3])),
                              base=samples)["word"]
    assert report["groups"]["word"]["fid_base"] > 5e-3
    assert summary["kept"]["fid_base"] == pytest.approx(0.0, abs=1e-4)
    assert summary["kept"]["diversity_ratio"] == pytest.approx(1.0)


def test_several_concepts_each_get_figures_without_counting_the_others_as_kept():
    red, blue, green = (COLOR_NAMES.index(c) for c in ("red", "blue", "green"))
    # digit 2 (recognised), digit 3 (misread as 5), digit 4 (recognised) on red / blue / green prompts
    samples = TestbedSamples(images=painted([red, blue, green]), digits=torch.tensor([2, 3, 4]),
                             colors=torch.tensor([red, blue, green]), prompt_ids=torch.tensor([0, 1, 2]),
                             groups=["word"] * 3)
    report = judge_testbed(samples, FixedJudge(torch.tensor([2, 5, 4])), ColorJudge())
    alone = concept_summary(report, samples, "digits:two")["word"]
    assert alone["others"] == pytest.approx(0.5)  # digits 3 (0%) and 4 (100%)
    assert alone["worst_other"] == 0.0 and alone["worst_other_name"] == "three"
    with_three = concept_summary(report, samples, "digits:two", also_erased=("digits:three",))["word"]
    assert with_three["others"] == 1.0 and with_three["worst_other"] == 1.0  # 3 is erased too: not an "other"
    red_with = concept_summary(report, samples, "color:red", also_erased=("color:blue", "digits:four"))["word"]
    assert set(report["groups"]["word"]["color_accuracy_per_color"]) >= {"red", "blue", "green"}
    assert red_with["other_colors"] == 1.0  # green only: blue is erased too
    nothing_left = concept_summary(report, samples, "color:red", also_erased=("color:blue", "color:green"))["word"]
    assert nothing_left["others"] is None and nothing_left["other_colors"] is None  # every other prompt erased


def test_spread_report_reads_the_kept_colour_free_prompts_of_its_own_sample():
    """The spread sample (more images a prompt) gives the same figures ``concept_summary`` gives the
    same images, per concept: the erased digit's prompts left out, an erased colour counted apart."""
    red, green, blue, yellow = (COLOR_NAMES.index(c) for c in ("red", "green", "blue", "yellow"))
    # two colour-free prompts of digit 3 (ids 0, 1) and one of digit 2 (id 2), four seeds each
    ids, digits = torch.tensor([0, 1, 2] * 4), torch.tensor([3, 3, 2] * 4)
    make = lambda drawn: TestbedSamples(images=painted(drawn), digits=digits, colors=torch.full((12,), -1),
                                        prompt_ids=ids, groups=["word"] * 12)
    base = make([red, green, red, green, blue, green, blue, red, red, yellow, yellow, green])
    after = make([green, green, red, green, blue, red, blue, green, green, green, yellow, red])
    quarter = lambda *counts: -sum(c / 4 * torch.log(torch.tensor(c / 4)).item() for c in counts) / torch.log(
        torch.tensor(6.0)).item()
    two = spread_report(after, "digits:two", base=base)
    # prompt 0: green x3, blue (base: red, green, blue, yellow); prompt 1: green, blue, green, yellow (base:
    # green, red, blue, yellow); prompt 2 (digit 2) is left out
    assert two["images_per_prompt"] == 4 and two["num_prompts"] == 2
    assert two["color_spread"] == pytest.approx((quarter(3, 1) + quarter(2, 1, 1)) / 2)
    assert two["color_spread_ratio"] == pytest.approx((quarter(3, 1) + quarter(2, 1, 1)) / (2 * quarter(1, 1, 1, 1)))
    assert two["color_free_worst_name"] == "red" and two["color_free_worst_ratio"] == 0.0
    report = judge_testbed(after, FixedJudge(digits.repeat(2)), ColorJudge(), base=base)
    summary = concept_summary(report, after, "digits:two", base=base)["word"]
    assert {k: summary[k] for k in two if k in summary} == {k: v for k, v in two.items() if k in summary}
    assert "color_spread_ideal_ratio" not in two  # a digit concept takes no colour from the colour-free prompts
    # a colour concept keeps every digit and counts what its colour still draws
    colour = spread_report(after, "color:red")
    assert colour["num_prompts"] == 3 and colour["color_free_erased"] == pytest.approx(3 / 12)
    assert "color_spread_ratio" not in colour and "color_spread_ideal_ratio" not in colour  # no base given
    # a perfect erasure of red: the base's draws without red -- prompt 0: green, blue, yellow; prompt 1:
    # green, blue, yellow; prompt 2: green, green (base: 4, 4 and 2 colours)
    against = spread_report(after, "color:red", base=base)
    base_spread = (2 * quarter(1, 1, 1, 1) + quarter(2, 2)) / 3
    three = torch.log(torch.tensor(3.0)).item() / torch.log(torch.tensor(6.0)).item()
    assert against["color_spread_ideal_ratio"] == pytest.approx((2 * three + 0.0) / 3 / base_spread)
    # a collapsed erasure (one colour everywhere) reads 0 and still gets its reference
    collapsed = spread_report(make([green] * 12), "color:red", base=base)
    assert collapsed["color_spread_ratio"] == 0.0
    assert collapsed["color_spread_ideal_ratio"] == against["color_spread_ideal_ratio"]
    only_twos = TestbedSamples(images=painted([red] * 4), digits=torch.tensor([2] * 4), colors=torch.full((4,), -1),
                               prompt_ids=torch.tensor([0, 0, 1, 1]), groups=["word"] * 4)
    with pytest.raises(ValueError, match="no colour-free prompt of a kept digit"):
        spread_report(only_twos, "digits:two")


def test_every_generation_has_its_own_seed_and_keeps_it_whichever_groups_are_drawn(monkeypatch):
    """Seeds shared by every prompt made each digit's figures rest on ``images_per_prompt`` noises."""
    import pipelines.sampling as sampling
    from eval.testbed import sample_testbed

    calls = []

    def fake_generate(pipe, items, batch_size, num_inference_steps, output_type):
        calls.append([(item.prompt.text, item.prompt.extra["eval_group"], item.seed) for item in items])
        for item in items:
            yield item, torch.zeros(3, 4, 4), None

    monkeypatch.setattr(sampling, "generate", fake_generate)
    everything = sample_testbed(None, images_per_prompt=3, seed=100)
    assert len({seed for _, _, seed in calls[0]}) == len(calls[0]) == everything.images.shape[0] == 3 * 700
    sample_testbed(None, images_per_prompt=3, seed=100, groups=("numeral",), digits=(4,))
    assert calls[1] and set(calls[1]) <= set(calls[0])  # a prompt drawn alone keeps its seeds
    eights = [seed for text, group, seed in calls[0] if group == "word" and "eight" in text]
    assert len(set(eights)) == len(eights) > 3
    assert min(seed for _, _, seed in calls[0]) == 100 and max(seed for _, _, seed in calls[0]) < 100 + 3 * 700
    # the spread sample: the colour-free prompts alone, each with the seeds the whole set gives it
    free = sample_testbed(None, images_per_prompt=3, seed=100, groups=("word",), color_free_only=True)
    assert (free.colors == -1).all() and len(calls[2]) == free.images.shape[0] > 0
    assert set(calls[2]) <= set(calls[0]) and len({text for text, _, _ in calls[2]}) == len(calls[2]) // 3


def test_shares_are_exact_fractions_so_a_share_at_a_target_meets_it():
    """3 of 60 images is 5%: a float32 mean read it as 0.0500000007 and the quality benchmark's '<= 5%' called
    a red erasure that left 3 of 60 red prompts red a miss (round 11, seed 0)."""
    import benchmarks.erasure_quality as quality
    from eval.testbed import share

    at_limit = torch.tensor([True] * 3 + [False] * 57)
    assert float(at_limit.float().mean()) > 0.05  # the old reading
    assert share(at_limit) == 0.05 and share(torch.tensor([True] * 12 + [False] * 48)) == 0.2
    base = [{"concept": "color:red", "erased": 1.0, "others": 0.99, "other_colors": 1.0, "worst_other_color": 1.0,
             "fid_kept": 10.0}]
    run = {"method": "scissorhands", "concept": "color:red", "diversity_ratio_kept": 1.0, "fid_kept": 10.0,
           "others": 0.99, "other_colors": 1.0, "worst_other_color": 1.0}
    for mask, status in ((at_limit, "met"), (torch.tensor([True] * 4 + [False] * 56), "missed")):
        result = quality.targets([{**run, "erased": share(mask)}], base, front=["scissorhands"])
        assert result["scissorhands: erased <= 5%"]["status"] == status
