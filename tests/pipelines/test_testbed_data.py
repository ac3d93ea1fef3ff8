"""Renders of the offline testbed: split before augmenting, colours, seeded determinism."""

import pytest
import torch

from eval.colors import ColorJudge
from pipelines.testbed_data import AugmentConfig, color_table, load_digit_strokes, render_digits, split_digits


@pytest.fixture(scope="module")
def split():
    return split_digits(seed=0)


def test_split_is_stratified_disjoint_and_seeded(split):
    strokes, labels = load_digit_strokes()
    assert len(split.train_labels) + len(split.test_labels) == len(labels) == 1797
    assert torch.bincount(split.test_labels).min() >= 30  # every digit held out
    # no real digit on both sides: compare the strokes themselves
    train, test = split.train_strokes.flatten(1), split.test_strokes.flatten(1)
    assert torch.cdist(test[:50], train).min() > 0
    again = split_digits(seed=0)
    assert torch.equal(again.test_strokes, split.test_strokes)
    assert not torch.equal(split_digits(seed=1).test_labels, split.test_labels)


def test_renders_are_seeded_coloured_and_varied(split):
    strokes = split.train_strokes[:64]
    colors = torch.arange(64) % len(color_table())
    first = render_digits(strokes, colors, torch.Generator().manual_seed(3))
    second = render_digits(strokes, colors, torch.Generator().manual_seed(3))
    other = render_digits(strokes, colors, torch.Generator().manual_seed(4))
    assert first.shape == (64, 3, 32, 32) and torch.equal(first, second) and not torch.equal(first, other)
    assert 0.0 <= first.min() and first.max() <= 1.0
    # the colour rule reads back the colour each render was drawn in
    assert torch.equal(ColorJudge().predict(first), colors)
    # the same digit rendered twice differs (pose / stroke variation)
    twice = render_digits(strokes[:1].repeat(8, 1, 1, 1), torch.zeros(8, dtype=torch.long),
                          torch.Generator().manual_seed(0))
    assert (twice[1:] - twice[:1]).abs().flatten(1).mean(dim=1).min() > 0.01


def test_unaugmented_render_is_the_stroke_times_the_colour(split):
    red = color_table().tolist().index([1.0, 0.0, 0.0])
    image = render_digits(split.train_strokes[:1], torch.tensor([red]), torch.Generator(), augment=None)[0]
    assert torch.equal(image[0], split.train_strokes[0, 0]) and image[1:].abs().max() == 0


def test_bad_render_arguments():
    with pytest.raises(ValueError, match="strokes must be"):
        render_digits(torch.zeros(2, 3, 32, 32), torch.zeros(2, dtype=torch.long), torch.Generator())
    with pytest.raises(ValueError, match="colors must be"):
        render_digits(torch.zeros(2, 1, 32, 32), torch.zeros(3, dtype=torch.long), torch.Generator())
    with pytest.raises(ValueError, match="scale_range"):
        AugmentConfig(scale_range=(1.2, 1.0))
