"""The coloured-digits prompt grammar: content, concepts, errors."""

import pytest

from prompts.colored_digits import (
    COLOR_NAMES,
    DIGIT_WORDS,
    concept_prompts,
    grammar,
    grammar_prompts,
    parse_concept,
    parse_digit,
)


def test_grammar_covers_every_digit_colour_form_and_group():
    prompts = grammar_prompts()
    g = grammar()
    per_digit = sum(len(group["colored"]) * len(g.colors) + len(group["plain"]) for group in g.phrasings.values())
    assert len(prompts) == 10 * 2 * per_digit  # ten digits, word and numeral
    assert len(set(prompts.texts)) == len(prompts)  # no prompt twice
    assert "a red handwritten digit two" in prompts.texts and "the number 2" in prompts.texts
    assert "a drawing of the number 2 in blue" in prompts.texts
    assert len(COLOR_NAMES) >= 6 and "white" in COLOR_NAMES


def test_prompt_labels_match_their_text():
    for prompt in grammar_prompts():
        extra = prompt.extra
        name = DIGIT_WORDS[extra["label"]] if extra["form"] == "word" else str(extra["label"])
        assert prompt.text.split()[-1] == name or f" {name} " in f" {prompt.text} "
        if extra["color"] is None:
            assert not any(c in prompt.text.split() for c in COLOR_NAMES)
        else:
            assert extra["color"] in prompt.text.split()


def test_grammar_is_versioned_and_hashed():
    first, second = grammar_prompts(), grammar_prompts()
    assert first.sha256() == second.sha256() and first.version == grammar().version
    assert grammar_prompts(forms=("word",)).sha256() != first.sha256()


def test_digit_concept_sides():
    forget, retain = concept_prompts("digits:two")
    assert {p.extra["label"] for p in forget} == {2}
    assert {p.extra["label"] for p in retain} == set(range(10)) - {2}
    # the erase job's default: word form of the erase phrasings only, every colour and colour-free
    for side in (forget, retain):
        assert {p.extra["form"] for p in side} == {"word"} and {p.extra["group"] for p in side} == {"erase"}
    assert {p.extra["color"] for p in forget} == {*COLOR_NAMES, None}
    assert concept_prompts("digits:2")[0].sha256() == forget.sha256()


def test_color_concept_forget_names_only_that_colour_and_retain_none_of_it():
    forget, retain = concept_prompts("color:red")
    assert {p.extra["color"] for p in forget} == {"red"}
    assert all("red" in p.text.split() for p in forget)
    assert "red" not in {p.extra["color"] for p in retain} and None not in {p.extra["color"] for p in retain}
    assert not any("red" in p.text.split() for p in retain)
    assert {p.extra["label"] for p in forget} == set(range(10))


def test_color_concept_retain_prompts_name_their_colour_free_neutrals():
    """Each retained colour prompt names the colour-free prompts of its own digit, form and phrasing
    group (the erase job holds one of them per sample to the retain prompt's prediction); a digit
    concept retains its colour-free prompts as they are and names none."""
    _, retain = concept_prompts("color:red", forms=("word", "numeral"), groups=("erase", "paraphrase"))
    plain = {p.text: p for p in grammar_prompts(colors=[None], forms=("word", "numeral"), groups=("erase", "paraphrase"))}
    for prompt in retain:
        slot = {k: prompt.extra[k] for k in ("label", "form", "group")}
        assert prompt.extra["neutral"] == [t for t, p in plain.items()
                                           if {k: p.extra[k] for k in ("label", "form", "group")} == slot]
    blue_two = next(p for p in retain if p.text == "a blue handwritten digit two")
    assert blue_two.extra["neutral"] == ["a handwritten digit two", "the number two", "a drawing of the number two"]
    assert {n for p in retain for n in p.extra["neutral"]} == set(plain)
    assert not any("neutral" in p.extra for side in concept_prompts("digits:two") for p in side)


@pytest.mark.parametrize("concept", ["digits:five", "digits:zero", "color:red", "color:white"])
def test_the_first_images_of_a_concept_set_cover_every_digit_and_colour(concept):
    """Jobs draw a prefix of each set (64 images of a 189-prompt retain set by default in the
    benchmarks): in grammar order that prefix held digits 0-2 only."""
    from pipelines.sampling import plan_samples

    for side in concept_prompts(concept):
        pairs = {(p.extra["label"], p.extra["color"]) for p in side}
        prefix = [item.prompt for item in plan_samples(side, 1, 0)[:len(pairs)]]
        assert {(p.extra["label"], p.extra["color"]) for p in prefix} == pairs
        assert sorted(p.text for p in side) == sorted(p.text for p in grammar_prompts(
            {p.extra["label"] for p in side}, {p.extra["color"] for p in side}, forms=("word",),
            groups=("erase",)))  # the same prompts, only reordered


def test_concepts_with_numerals_and_paraphrases():
    forget, _ = concept_prompts("digits:seven", forms=("numeral",), groups=("paraphrase",))
    assert all(" 7" in p.text for p in forget) and {p.extra["group"] for p in forget} == {"paraphrase"}


@pytest.mark.parametrize("bad, message", [
    ("digits:eleven", "unknown digit 'eleven'"), ("color:pink", "unknown color 'pink'"),
    ("colour:red", "unknown concept"), ("digits:", "unknown concept"), ("nudity", "unknown concept"),
])
def test_bad_concepts_name_the_known_ones(bad, message):
    with pytest.raises(ValueError, match=message):
        parse_concept(bad)


def test_parse_digit_accepts_words_and_numerals():
    assert parse_digit("Two") == parse_digit("2") == parse_digit(2) == 2
    with pytest.raises(ValueError, match="known"):
        parse_digit("10")
