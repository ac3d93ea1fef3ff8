"""The prompt grammar of the offline default model: coloured digits (`prompts/data/colored_digits.json`).

Every prompt names one digit, by its word ("two") or its numeral ("2"), in one of several
phrasings, and names a colour in part of them ("a red handwritten digit two", "the number 2").
Phrasings come in two groups: `erase` (what erase jobs train on by default) and `paraphrase`
(wordings the base model learned but an erase job never sees), so that an evaluation can ask
whether an erasure generalises beyond the words it was given.

Two kinds of concept come out of it (`concept_prompts`):
    digits:<d>   an object class: forget = digit d's prompts, retain = the other nine digits';
    color:<c>    an attribute across classes: forget = prompts naming colour c for every
                 digit, retain = prompts naming the other colours.
"""

from __future__ import annotations

import dataclasses

import itertools

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Sequence

from .base import Prompt, PromptSet

__all__ = [
    "COLOR_NAMES", "DIGIT_WORDS", "EVAL_GROUPS", "FORMS", "GRAMMAR_FILE", "GROUPS", "NUMERALS", "Grammar", "concept_prompts",
    "eval_prompts", "grammar", "grammar_prompts", "parse_concept", "parse_digit",
]

GRAMMAR_FILE = Path(__file__).resolve().parent / "data" / "colored_digits.json"
FORMS = ("word", "numeral")  # how a prompt names its digit
GROUPS = ("erase", "paraphrase")  # which phrasings
CONCEPT_KINDS = ("digits", "color")
# What evaluations report apart: the erase phrasings by word, the same by numeral, and unseen
# paraphrases (both names). name -> (forms, groups).
EVAL_GROUPS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "word": (("word",), ("erase",)),
    "numeral": (("numeral",), ("erase",)),
    "paraphrase": (FORMS, ("paraphrase",)),
}


@dataclass(frozen=True)
class Grammar:
    """The parsed grammar file: colours (name -> RGB in [0, 1]), digit names, phrasings."""

    version: str
    colors: dict[str, tuple[float, float, float]]
    words: tuple[str, ...]
    numerals: tuple[str, ...]
    phrasings: dict[str, dict[str, tuple[str, ...]]]
    colored_fraction: float
    source: str

    def name(self, digit: int, form: str) -> str:
        """``digit`` as a word ("two") or a numeral ("2")."""
        return (self.words if form == "word" else self.numerals)[digit]

    def vocabulary(self) -> list[str]:
        """Every word any prompt of the grammar uses, sorted (each must be one token)."""
        words = set(self.words) | set(self.numerals) | set(self.colors)
        for group in self.phrasings.values():
            for template in (*group["colored"], *group["plain"]):
                words |= {w for w in template.split() if not w.startswith("{")}
        return sorted(words)


@lru_cache(maxsize=1)
def grammar() -> Grammar:
    """The grammar shipped in ``prompts/data/colored_digits.json`` (parsed once)."""
    data = json.loads(GRAMMAR_FILE.read_text(encoding="utf-8"))
    phrasings = {g: {kind: tuple(t) for kind, t in data["phrasings"][g].items()} for g in GROUPS}
    return Grammar(
        version=data["version"], colors={k: tuple(v) for k, v in data["colors"].items()},
        words=tuple(data["words"]), numerals=tuple(data["numerals"]), phrasings=phrasings,
        colored_fraction=float(data["colored_fraction"]), source=str(GRAMMAR_FILE),
    )


COLOR_NAMES: tuple[str, ...] = tuple(grammar().colors)
DIGIT_WORDS: tuple[str, ...] = grammar().words
NUMERALS: tuple[str, ...] = grammar().numerals


def parse_digit(value: str | int) -> int:
    """0-9 from "two", "2" or 2 (case-insensitive).

    Raises:
        ValueError: naming the value and the known digits.
    """
    text = str(value).strip().lower()
    if text in DIGIT_WORDS:
        return DIGIT_WORDS.index(text)
    if text in NUMERALS:
        return NUMERALS.index(text)
    raise ValueError(f"unknown digit {value!r}; known: {list(DIGIT_WORDS)} or 0-9")


def _parse_color(value: str) -> str:
    text = str(value).strip().lower()
    if text not in COLOR_NAMES:
        raise ValueError(f"unknown color {value!r}; known: {list(COLOR_NAMES)}")
    return text


def _check(values: Iterable[str], allowed: Sequence[str], what: str) -> tuple[str, ...]:
    values = tuple(values)
    for value in values:
        if value not in allowed:
            raise ValueError(f"unknown {what} {value!r}; known: {list(allowed)}")
    return values


def grammar_prompts(digits: Iterable[int] | None = None, colors: Iterable[str | None] | None = None,
                    forms: Iterable[str] = FORMS, groups: Iterable[str] = GROUPS, name: str = "colored-digits",
                    ) -> PromptSet:
    """Every prompt of the grammar for the given digits, colours, name forms and phrasing groups.

    Args:
        digits: digits 0-9 (default all).
        colors: colour names, with ``None`` for the colour-free ("plain") phrasings
            (default: every colour and ``None``).
        forms: "word" and/or "numeral".
        groups: "erase" and/or "paraphrase".
        name: the prompt set's name.

    Returns:
        A `PromptSet` whose prompts carry ``extra = {"label": digit, "color": name or None,
        "form": ..., "group": ...}`` and the categories ``(digit word, color or "any")``.

    Raises:
        ValueError: an unknown digit, colour, form or group, or an empty selection.
    """
    g = grammar()
    digits = [parse_digit(d) for d in (range(10) if digits is None else digits)]
    colors = [None if c is None else _parse_color(c) for c in ([*g.colors, None] if colors is None else colors)]
    forms, groups = _check(forms, FORMS, "form"), _check(groups, GROUPS, "phrasing group")
    prompts = []
    for group in groups:
        for form in forms:
            for digit in digits:
                for color in colors:
                    templates = g.phrasings[group]["plain" if color is None else "colored"]
                    for template in templates:
                        text = template.format(digit=g.name(digit, form), color=color)
                        extra = {"label": digit, "color": color, "form": form, "group": group}
                        prompts.append(Prompt(text, categories=(g.words[digit], color or "any"), extra=extra))
    return PromptSet(name, prompts, version=g.version, source=g.source)


def eval_prompts(groups: Iterable[str] | None = None) -> PromptSet:
    """The grammar's prompts of the given evaluation groups (``EVAL_GROUPS``; default all three),
    with ``extra["eval_group"]`` set: the prompt set ``testbed`` / ``testbed:numeral`` names.

    Raises:
        ValueError: an unknown group.
    """
    groups = list(EVAL_GROUPS) if groups is None else list(groups)
    prompts = []
    for group in _check(groups, tuple(EVAL_GROUPS), "evaluation group"):
        forms, phrasings = EVAL_GROUPS[group]
        for prompt in grammar_prompts(forms=forms, groups=phrasings):
            prompts.append(Prompt(prompt.text, categories=prompt.categories,
                                  extra={**prompt.extra, "eval_group": group}))
    name = "testbed" if len(groups) == len(EVAL_GROUPS) else "testbed:" + ",".join(groups)
    return PromptSet(name, prompts, version=grammar().version, source=grammar().source)


def parse_concept(concept: str) -> tuple[str, Any]:
    """``("digits", 2)`` from "digits:two" / "digits:2", ``("color", "red")`` from "color:red".

    Raises:
        ValueError: an unknown kind, digit or colour, naming the known ones.
    """
    kind, _, value = str(concept).partition(":")
    if kind not in CONCEPT_KINDS or not value:
        raise ValueError(f"unknown concept {concept!r}; known: digits:<{'|'.join(DIGIT_WORDS)} or 0-9>, "
                         f"color:<{'|'.join(COLOR_NAMES)}>")
    return kind, parse_digit(value) if kind == "digits" else _parse_color(value)


def concept_prompts(concept: str, forms: Iterable[str] = ("word",), groups: Iterable[str] = ("erase",),
                    ) -> tuple[PromptSet, PromptSet]:
    """The (forget, retain) prompts of a testbed concept.

    ``digits:<d>``: forget = digit d in every colour (and colour-free), retain = the other nine.
    ``color:<c>``: forget = prompts naming colour c for every digit, retain = prompts naming the
    other colours (colour-free prompts are on neither side). The erase job's default is the
    word form of the `erase` phrasings; evaluations ask for the numeral form and the
    `paraphrase` group separately.

    Raises:
        ValueError: unknown concept, form or group.
    """
    kind, value = parse_concept(concept)
    forms, groups = tuple(forms), tuple(groups)
    forget, retain = _concept_sets(kind, value, forms, groups, concept)
    return spread(forget), spread(retain)


def spread(prompt_set: PromptSet) -> PromptSet:
    """The same prompts, reordered round-robin over their (digit, colour) pairs.

    Jobs draw the first ``num_images`` prompts of a set (``pipelines.sampling.plan_samples``). In
    grammar order (digit by digit) the first 64 of a 189-prompt retain set were digits 0-2 only,
    and every erasure's repair then never saw digits 3-9; spread, any prefix of at least one
    prompt per pair covers every digit and colour of the set.
    """
    pairs: dict[tuple, list[Prompt]] = {}
    for prompt in prompt_set.prompts:
        pairs.setdefault((prompt.extra["label"], prompt.extra["color"]), []).append(prompt)
    ordered = [p for row in itertools.zip_longest(*pairs.values()) for p in row if p is not None]
    return PromptSet(prompt_set.name, ordered, version=prompt_set.version, source=prompt_set.source)


def _concept_sets(kind: str, value: Any, forms: tuple, groups: tuple, concept: str) -> tuple[PromptSet, PromptSet]:
    if kind == "digits":
        others = [d for d in range(10) if d != value]
        forget = grammar_prompts([value], forms=forms, groups=groups, name=concept)
        retain = grammar_prompts(others, forms=forms, groups=groups, name=f"{concept}-retain")
    else:
        others = [c for c in COLOR_NAMES if c != value]
        forget = grammar_prompts(colors=[value], forms=forms, groups=groups, name=concept)
        retain = with_neutral(grammar_prompts(colors=others, forms=forms, groups=groups, name=f"{concept}-retain"),
                              grammar_prompts(colors=[None], forms=forms, groups=groups))
    return forget, retain


def with_neutral(retain: PromptSet, plain: PromptSet) -> PromptSet:
    """``retain``'s prompts with ``extra["neutral"]``: the colour-free prompts of the same digit,
    name form and phrasing group.

    A colour concept leaves the colour-free prompts on neither side (they may draw the colour),
    and nothing in its loss held them: an erasure of red or blue narrowed their colours (per-prompt
    colour entropy 0.73-0.81x the base's on the evaluation seeds, most of them drawn green or red).
    The erase job's ``neutral_weight`` term pulls a neutral prompt's prediction to the original
    model's under the retain prompt, on the retain image: the colour-free prompts then draw what
    the other colours' prompts draw, neither the erased colour nor one colour alone. Each retain
    prompt names all of its digit's colour-free wordings (the job takes one per sample), so that each
    of them meets every retained colour, not the one or two of a single retain prompt's images.
    """
    plain_of: dict[tuple, list[str]] = {}
    for prompt in plain:
        plain_of.setdefault(_slot(prompt), []).append(prompt.text)
    prompts = [dataclasses.replace(prompt, extra={**prompt.extra, "neutral": plain_of[_slot(prompt)]})
               if _slot(prompt) in plain_of else prompt for prompt in retain]
    return PromptSet(retain.name, prompts, version=retain.version, source=retain.source)


def _slot(prompt: Prompt) -> tuple:
    return prompt.extra["label"], prompt.extra["form"], prompt.extra["group"]
