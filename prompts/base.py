"""The two prompt types: one `Prompt` and a named, versioned, hashable `PromptSet`."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterator


@dataclass(frozen=True)
class Prompt:
    """One prompt with the generation settings a benchmark pins (None = the job's default)."""

    text: str
    seed: int | None = None
    guidance_scale: float | None = None
    categories: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not self.text.strip():
            raise ValueError(f"Prompt text must be a non-empty string, got {self.text!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ValueError(f"Prompt seed must be an int or None, got {self.seed!r}")
        if self.guidance_scale is not None:
            if isinstance(self.guidance_scale, bool) or not isinstance(self.guidance_scale, (int, float)):
                raise ValueError(f"Prompt guidance_scale must be a number or None, got {self.guidance_scale!r}")
            # 7 and 7.0 must hash alike: store floats.
            object.__setattr__(self, "guidance_scale", float(self.guidance_scale))
        object.__setattr__(self, "categories", tuple(self.categories))


@dataclass
class PromptSet:
    """A named, versioned list of prompts; `sha256()` identifies its content in eval protocols."""

    name: str
    prompts: list[Prompt]
    version: str | None = None
    source: str = ""

    def __post_init__(self) -> None:
        if not self.prompts:
            where = f" (from {self.source})" if self.source else ""
            raise ValueError(f"Prompt set {self.name!r}{where} has no prompts")

    def __len__(self) -> int:
        return len(self.prompts)

    def __iter__(self) -> Iterator[Prompt]:
        return iter(self.prompts)

    @property
    def texts(self) -> list[str]:
        """The prompt strings, in order."""
        return [p.text for p in self.prompts]

    def sha256(self) -> str:
        """Hash of what determines generation: text, seed, guidance scale and categories, in order.

        Name, version, source and `extra` are left out: `extra` holds source metadata whose
        types differ between a CSV export and the Hub dataset for the same prompts.

        Returns:
            Hex SHA-256 of the canonical JSON of the prompts.
        """
        rows = [[p.text, p.seed, p.guidance_scale, list(p.categories)] for p in self.prompts]
        canonical = json.dumps(rows, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def prompt_words(text: str) -> list[str]:
    """The lower-cased words of a prompt, in order, punctuation left out ("a person, photo" -> ["a", "person", "photo"])."""
    return re.findall(r"\w+", text.lower())


def closest_prompts(prompts: list[str], candidates: list[str], prefer: str | None = None) -> dict[str, str]:
    """For each prompt, the candidate that keeps most of its wording: the highest
    ``difflib.SequenceMatcher`` ratio over their words (``prompt_words``), ties shared round-robin.

    This is what a substitute prompt should be (paper 000's and SalUn's public SD code pair
    "nudity" with "a person wearing clothes", Imagenette's "an image of a tench" with another
    class in the same template): everything but the concept stays, so a relabelled loss moves
    the concept and not the colour, style or phrasing around it. On the testbed "a red
    handwritten digit three" gets "a red handwritten digit <d>" for some other d, never a
    prompt in another colour. Ties rotate so the forget prompts spread over the candidates.

    With ``prefer`` (a word of the candidates that no prompt holds), only the candidates holding it compete: every prompt gets
    the same replacement for its concept ("a yellow handwritten digit five" -> "a blue handwritten
    digit five" with ``prefer="blue"``). Rotating ties give a concept named by one word several
    replacements across prompts, and the word then learns a blend of them (measured on the
    testbed: README, "Erasure quality", the substitute word).

    Raises:
        ValueError: if ``candidates`` is empty, or no candidate holds ``prefer``, or a prompt does (for
            ``digits:two``, "blue" is in "a blue handwritten digit two": it would change the colour too).
    """
    if not candidates:
        raise ValueError("closest_prompts needs at least one candidate prompt, got none")
    words = {text: prompt_words(text) for text in {*prompts, *candidates}}
    if prefer is not None:
        word = prefer.strip().lower()
        forgotten = {w for p in prompts for w in words[p]}
        usable = sorted({w for c in candidates for w in words[c]} - forgotten)
        if word in forgotten:
            raise ValueError(f"substitute_word={prefer!r} is in the forget prompts (e.g. "
                             f"{next(p for p in prompts if word in words[p])!r}): a replacement names what they "
                             f"do not; allowed: a word of the retain prompts only, {usable}")
        candidates = [c for c in candidates if word in words[c]]
        if not candidates:
            raise ValueError(f"substitute_word={prefer!r} is in none of the retain prompts; "
                             f"allowed: a word of the retain prompts only, {usable}")
    return {prompt: best[k % len(best)] for k, (prompt, best) in enumerate(_closest(prompts, candidates, words).items())}


def _closest(prompts: list[str], candidates: list[str], words: dict[str, list[str]]) -> dict[str, list[str]]:
    """Each prompt's candidates of the highest word-sequence ratio (``closest_prompts``' ties), in candidate order."""
    from difflib import SequenceMatcher

    tied = {}
    for prompt in prompts:
        scores = [SequenceMatcher(None, words[prompt], words[c], autojunk=False).ratio() for c in candidates]
        tied[prompt] = [c for c, s in zip(candidates, scores) if s == max(scores)]
    return tied


def has_ties(prompts: list[str], candidates: list[str]) -> bool:
    """Whether some prompt's closest candidates (``closest_prompts``) tie."""
    words = {text: prompt_words(text) for text in {*prompts, *candidates}}
    return any(len(best) > 1 for best in _closest(prompts, candidates, words).values())


def rewritten_prompts(prompts: list[str], candidates: list[str], word: str) -> dict[str, str]:
    """Each prompt with the concept's word replaced by ``word``, whether or not ``candidates`` hold the result.

    The concept's word is the one word that every prompt holds and no candidate does ("two" in the
    forget prompts of ``digits:two``). ``closest_prompts`` can only pick among the candidates, which
    a finite retain set does not fill: "a handwritten digit two in blue" got "a handwritten digit
    three" (no blue three among 64 retain images) and "the number two" got "a yellow handwritten
    digit three", so the substitute changed the colour as well as the digit. Here it becomes "a
    handwritten digit three in blue" and "the number three". Empty when no single word names the
    concept in every prompt (nudity's "nudity", "naked", ...: nothing to rewrite).

    Raises:
        ValueError: ``word`` is not one word, or the prompts already hold it.
    """
    if not re.fullmatch(r"\w+", word.strip()):
        raise ValueError(f"rewritten_prompts: word={word!r} must be a single word (letters, digits, _)")
    word = word.strip()
    words = [set(prompt_words(p)) for p in prompts]
    if word.lower() in set().union(*words):
        raise ValueError(f"rewritten_prompts: word={word!r} is in the prompts it would replace the concept in")
    shared = set.intersection(*words) - {w for c in candidates for w in prompt_words(c)} if prompts else set()
    if len(shared) != 1:
        return {}
    concept = re.compile(rf"(?i)\b{re.escape(shared.pop())}\b")
    return {p: concept.sub(word, p) for p in prompts}


def replacement_words(prompts: list[str], candidates: list[str]) -> list[str]:
    """The words that could replace a concept named by one word: each word that some prompt's tied
    closest candidates (``closest_prompts``' ties) put in place of one of its words, the forget
    prompts' own words left out, sorted (``color:yellow``: "a yellow handwritten digit five" ties with
    "a blue handwritten digit five", "a green ...", ...: blue, green, magenta, red, white). Empty when
    no prompt's closest candidates tie (nudity's one anchor, "a person wearing clothes")."""
    if not candidates:
        raise ValueError("replacement_words needs at least one candidate prompt, got none")
    words = {text: prompt_words(text) for text in {*prompts, *candidates}}
    forgotten = {w for p in prompts for w in words[p]}
    found = set()
    for prompt, best in _closest(prompts, candidates, words).items():
        if len(best) < 2:
            continue
        for candidate in best:
            new = set(words[candidate]) - set(words[prompt])
            if len(new) == 1 and not new & forgotten:
                found |= new
    return sorted(found)
