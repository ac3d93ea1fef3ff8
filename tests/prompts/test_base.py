"""prompts.base.closest_prompts: the substitute of a forget prompt keeps everything but the concept."""

import pytest

from prompts.base import closest_prompts


def test_same_template_and_colour_win_and_ties_rotate():
    retain = ["a red handwritten digit two", "a blue handwritten digit three", "a handwritten digit three in red",
              "a red handwritten digit five", "the number three"]
    pairs = closest_prompts(["a red handwritten digit three", "a red handwritten digit four"], retain)
    # both keep "a red handwritten digit": the two candidates that share it tie and are shared out
    assert pairs == {"a red handwritten digit three": "a red handwritten digit two",
                     "a red handwritten digit four": "a red handwritten digit five"}


def test_imagenette_and_nudity_shapes():
    assert closest_prompts(["an image of a tench"], ["an image of a church", "a photo of a dog"]) == {
        "an image of a tench": "an image of a church"}
    assert closest_prompts(["nudity", "naked"], ["a person wearing clothes"]) == {
        "nudity": "a person wearing clothes", "naked": "a person wearing clothes"}


def test_no_candidates_is_an_error():
    with pytest.raises(ValueError, match="at least one candidate"):
        closest_prompts(["nudity"], [])
