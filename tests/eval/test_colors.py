"""The colour judge on hand-made images of known colour, and the colour entropy."""

import math

import pytest
import torch

from eval.colors import NO_STROKE, ColorJudge, color_entropy
from prompts.colored_digits import COLOR_NAMES


def stroke(color, brightness=1.0, size=32):
    """A black image with a bar of ``color`` (RGB in [0, 1]) at ``brightness``."""
    image = torch.zeros(3, size, size)
    image[:, 8:24, 14:18] = torch.tensor(color).view(3, 1, 1) * brightness
    return image


@pytest.mark.parametrize("name, rgb", [
    ("white", (1, 1, 1)), ("red", (1, 0, 0)), ("green", (0, 1, 0)), ("blue", (0, 0, 1)),
    ("yellow", (1, 1, 0)), ("magenta", (1, 0, 1)),
])
def test_pure_strokes_get_their_colour(name, rgb):
    judge = ColorJudge()
    images = torch.stack([stroke(rgb, b) for b in (1.0, 0.8, 0.5)])
    assert [COLOR_NAMES[i] for i in judge.predict(images)] == [name] * 3


def test_impure_strokes_go_to_the_nearest_colour_and_halo_does_not_count():
    judge = ColorJudge()
    orange_ish = stroke((1.0, 0.3, 0.1))  # nearer red than yellow
    pinkish_white = stroke((1.0, 0.85, 0.9))
    haze = stroke((0, 0, 1))
    haze[1] += 0.2  # a faint green haze over the whole image: the blue stroke wins
    names = [COLOR_NAMES[i] for i in judge.predict(torch.stack([orange_ish, pinkish_white, haze.clamp(0, 1)]))]
    assert names == ["red", "white", "blue"]


def test_purity_is_one_for_a_one_colour_stroke_and_the_winning_share_for_a_blend():
    judge = ColorJudge()
    halves = stroke((1, 1, 0))
    halves[:, 16:24, 14:18] = torch.tensor([1.0, 0.0, 1.0]).view(3, 1, 1)  # lower half magenta: 32 of 64 pixels
    thirds = stroke((0, 1, 0))
    thirds[:, 8:12, 14:18] = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)  # 16 red, 48 green pixels
    purity = judge.purity(torch.stack([stroke((0, 0, 1), 0.7), halves, thirds, torch.zeros(3, 32, 32)]))
    torch.testing.assert_close(purity, torch.tensor([1.0, 0.5, 0.75, 0.0]))
    assert judge.predict(thirds[None]).tolist() == [COLOR_NAMES.index("green")]  # named, yet only 0.75 pure


def test_blank_images_have_no_stroke():
    judge = ColorJudge()
    images = torch.stack([torch.zeros(3, 32, 32), torch.full((3, 32, 32), 0.1)])
    assert judge.predict(images).tolist() == [NO_STROKE, NO_STROKE]


def test_bad_input_shapes_are_refused():
    with pytest.raises(ValueError, match="RGB"):
        ColorJudge().predict(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match="palette"):
        ColorJudge(palette=torch.zeros(3, 2))


def test_color_entropy_bounds():
    assert color_entropy(torch.arange(6), 6) == pytest.approx(1.0)
    assert color_entropy(torch.zeros(10, dtype=torch.long), 6) == pytest.approx(0.0)
    half = torch.tensor([0, 1] * 5)
    assert color_entropy(half, 6) == pytest.approx(math.log(2) / math.log(6))
    # blank images are an outcome of their own: all blank is no diversity, not "uniform"
    assert color_entropy(torch.full((8,), NO_STROKE), 6) == pytest.approx(0.0)


def test_a_multicoloured_smear_is_unclear_not_white():
    from eval.colors import UNCLEAR

    smear = torch.zeros(3, 32, 32)
    smear[:, 8:24, 10:14] = torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1)  # green
    smear[:, 8:24, 14:18] = torch.tensor([1.0, 0.0, 1.0]).view(3, 1, 1)  # magenta
    smear[:, 8:24, 18:22] = torch.tensor([1.0, 1.0, 1.0]).view(3, 1, 1)  # white
    # its mean colour is pale (nearest white), but no colour has 60% of the stroke
    assert ColorJudge().predict(smear[None]).tolist() == [UNCLEAR]
    assert color_entropy(torch.full((5,), UNCLEAR), 6) == pytest.approx(0.0)
