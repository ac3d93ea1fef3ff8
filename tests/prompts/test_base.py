"""prompts.base.closest_prompts: the substitute of a forget prompt keeps everything but the concept."""

import pytest

from prompts.base import closest_prompts, has_ties, replacement_words, rewritten_prompts


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


def test_a_preferred_word_gives_every_prompt_the_same_replacement():
    colours = ("blue", "green", "white")
    retain = [f"a {c} handwritten digit {d}" for c in colours for d in ("five", "six")]
    retain += [f"a handwritten digit five in {c}" for c in colours]
    forget = ["a yellow handwritten digit five", "a yellow handwritten digit six", "a handwritten digit five in yellow"]
    rotating = closest_prompts(forget, retain)
    assert len({p.split()[1] for p in list(rotating.values())[:2]}) == 2  # ties rotate over the colours
    assert closest_prompts(forget, retain, prefer="Blue") == {
        "a yellow handwritten digit five": "a blue handwritten digit five",
        "a yellow handwritten digit six": "a blue handwritten digit six",
        "a handwritten digit five in yellow": "a handwritten digit five in blue"}
    with pytest.raises(ValueError, match=r"substitute_word='magenta' is in none of the retain prompts; allowed: .*"
                                         r"\['blue', 'green', 'white'\]"):
        closest_prompts(forget, retain, prefer="magenta")
    # a word the forget prompts hold is no replacement: erasing a digit, "blue" would change the colour too
    with pytest.raises(ValueError, match="substitute_word='blue' is in the forget prompts"):
        closest_prompts(["a blue handwritten digit two"], ["a blue handwritten digit three"], prefer="blue")
    # SD-style prompts with punctuation: words, not whitespace-split pieces
    assert closest_prompts(["a naked person, photo"], ["a person wearing clothes, photo", "a person, photo"],
                           prefer=" Clothes ") == {"a naked person, photo": "a person wearing clothes, photo"}


def test_replacement_words_are_what_tied_prompts_could_take_instead():
    colours = ("blue", "green", "white")
    retain = [f"a {c} handwritten digit {d}" for c in colours for d in ("five", "six")]
    forget = ["a yellow handwritten digit five", "a yellow handwritten digit six"]
    assert replacement_words(forget, retain) == ["blue", "green", "white"]
    # a word some tied prompt can take counts (a subsampled retain set lacks "a white ... six")
    assert replacement_words(forget, retain[:-1]) == ["blue", "green", "white"]
    # no ties (nudity's one anchor): nothing to choose; a word the forget prompts hold is no replacement
    assert replacement_words(["nudity", "naked"], ["a person wearing clothes"]) == []
    assert not has_ties(["nudity", "naked"], ["a person wearing clothes"]) and has_ties(forget, retain)
    # ties whose candidates differ by two words (a two-word class name): ties, but no one replacement word
    two_words = ["an image of a garbage truck", "an image of a french horn"]
    assert has_ties(["an image of a tench"], two_words) and replacement_words(["an image of a tench"], two_words) == []
    assert replacement_words(["a red handwritten digit two", "a blue handwritten digit five"],
                             ["a blue handwritten digit two", "a green handwritten digit two"]) == ["green"]
    with pytest.raises(ValueError, match="at least one candidate"):
        replacement_words(forget, [])


def test_rewritten_prompts_change_the_concept_word_and_nothing_else():
    # a finite retain set without "... three in blue": the closest candidate drops the colour, the rewrite keeps it
    retain = ["a blue handwritten digit three", "a handwritten digit three", "a handwritten digit five in red"]
    forget = ["a handwritten digit two in blue", "the number two", "A Blue handwritten digit TWO"]
    assert closest_prompts(forget[:1], retain, prefer="three") == {forget[0]: "a handwritten digit three"}
    assert rewritten_prompts(forget, retain, "three") == {
        "a handwritten digit two in blue": "a handwritten digit three in blue",
        "the number two": "the number three", "A Blue handwritten digit TWO": "A Blue handwritten digit three"}
    # no one word names the concept in every prompt (nudity's wordings): nothing to rewrite
    assert rewritten_prompts(["nudity", "naked"], ["a person wearing clothes"], "clothes") == {}
    # "digit" is in every prompt but also in the candidates: still one concept word
    assert rewritten_prompts(["a handwritten digit two"], ["a handwritten digit three"], "four") == {
        "a handwritten digit two": "a handwritten digit four"}
    with pytest.raises(ValueError, match="word='blue' is in the prompts"):
        rewritten_prompts(forget, retain, "blue")
    with pytest.raises(ValueError, match="word='light blue' must be a single word"):
        rewritten_prompts(forget, retain, "light blue")
