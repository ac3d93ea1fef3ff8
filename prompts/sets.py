"""Built-in prompt sets (versioned JSON in `prompts/data/`) and the name registry.

`get_prompt_set(name)` resolves "nudity", "nudity-retain", "imagenette", "imagenette:church",
"digits", "digits:seven", "i2p", "i2p:sexual", "testbed" (every prompt of the coloured-digits
grammar), "testbed:numeral" (one evaluation group) or a .txt/.csv/.jsonl path.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

from .base import Prompt, PromptSet
from .colored_digits import eval_prompts
from .files import I2P_DATASET_ID, PROMPT_FILE_SUFFIXES, load_i2p, load_prompt_file, prompt_from_record

__all__ = [
    "CONCEPTS", "DATA_DIR", "I2P_DATASET_ID", "PROMPT_FILE_SUFFIXES", "PROMPT_SETS", "Prompt", "PromptSet",
    "digit_prompts", "get_prompt_set", "imagenette_prompts", "load_concept", "load_i2p", "load_prompt_file",
    "prompt_from_record",
]

DATA_DIR = Path(__file__).resolve().parent / "data"


def _read_data(file_name: str) -> dict[str, Any]:
    with open(DATA_DIR / file_name, encoding="utf-8") as f:
        return json.load(f)


def _pick(names: Sequence[str], wanted: Sequence[str] | None, exclude: Sequence[str], what: str) -> list[str]:
    """Select `wanted` (case-insensitive, default all) minus `exclude`, keeping data order."""
    by_lower = {n.lower(): n for n in names}
    for name in [*(wanted or ()), *exclude]:
        if name.lower() not in by_lower:
            raise ValueError(f"Unknown {what} {name!r}; known: {list(names)}")
    keep = {n.lower() for n in wanted} if wanted else set(by_lower)
    drop = {n.lower() for n in exclude}
    return [n for n in names if n.lower() in keep and n.lower() not in drop]


def _class_prompts(file_name: str, name: str, classes: Sequence[str] | None, exclude: Sequence[str]) -> PromptSet:
    data = _read_data(file_name)
    all_classes = data["classes"]
    prompts = [
        Prompt(data["template"].format(**{"class": c}), categories=(c,), extra={"label": all_classes.index(c)})
        for c in _pick(all_classes, classes, exclude, f"{name} class")
    ]
    return PromptSet(name, prompts, version=data["version"], source=str(DATA_DIR / file_name))


def load_concept(name: str) -> tuple[PromptSet, PromptSet]:
    """Forget and retain prompts of a built-in concept (paper 000, §8.1.2 for "nudity").

    Args:
        name: concept name; a `prompts/data/<name>.json` with "forget" and "retain" lists.

    Returns:
        (forget, retain) prompt sets, named `<name>` and `<name>-retain`.

    Raises:
        ValueError: unknown concept.
    """
    if name not in CONCEPTS:
        raise ValueError(f"Unknown concept {name!r}; known: {list(CONCEPTS)}")
    data = _read_data(f"{name}.json")
    source = str(DATA_DIR / f"{name}.json")
    forget = PromptSet(name, [Prompt(t) for t in data["forget"]], data["version"], source)
    retain = PromptSet(f"{name}-retain", [Prompt(t) for t in data["retain"]], data["version"], source)
    return forget, retain


def imagenette_prompts(classes: Sequence[str] | None = None, exclude: Sequence[str] = ()) -> PromptSet:
    """'an image of a {class}' for the ten Imagenette classes (`extra["label"]` = class index).

    Args:
        classes: class names to keep (case-insensitive); None keeps all ten.
        exclude: class names to drop.

    Raises:
        ValueError: unknown class name, or nothing left.
    """
    return _class_prompts("imagenette.json", "imagenette", classes, exclude)


def digit_prompts(classes: Sequence[str] | None = None, exclude: Sequence[str] = ()) -> PromptSet:
    """'a handwritten digit {word}' for zero..nine, the offline default model's prompts.

    Args:
        classes: digit words to keep (case-insensitive); None keeps all ten.
        exclude: digit words to drop, e.g. ("seven",) for a retain set.

    Raises:
        ValueError: unknown digit word, or nothing left.
    """
    return _class_prompts("digits.json", "digits", classes, exclude)


def _no_arg(name: str, build: Callable[..., PromptSet]) -> Callable[..., PromptSet]:
    def resolve(arg: str | None, **kw: Any) -> PromptSet:
        if arg is not None:
            raise ValueError(f"Prompt set {name!r} takes no ':' argument, got {name}:{arg}")
        return build(**kw)

    return resolve


def _split(arg: str | None) -> list[str] | None:
    return None if arg is None else [a.strip() for a in arg.split(",") if a.strip()]


CONCEPTS = ("nudity",)
PROMPT_SETS: dict[str, Callable[..., PromptSet]] = {
    "nudity": _no_arg("nudity", lambda: load_concept("nudity")[0]),
    "nudity-retain": _no_arg("nudity-retain", lambda: load_concept("nudity")[1]),
    "imagenette": lambda arg, **kw: imagenette_prompts(classes=_split(arg), **kw),
    "digits": lambda arg, **kw: digit_prompts(classes=_split(arg), **kw),
    "i2p": lambda arg, **kw: load_i2p(categories=_split(arg), **kw),
    "testbed": lambda arg, **kw: eval_prompts(groups=_split(arg), **kw),
}


def get_prompt_set(name: str, **kw: Any) -> PromptSet:
    """Resolve a prompt-set name, `name:argument` or file path to a `PromptSet`.

    Args:
        name: one of `PROMPT_SETS` ("nudity", "nudity-retain", "imagenette", "digits", "i2p"),
            optionally with ":" and a comma-separated selection ("imagenette:church",
            "digits:seven", "i2p:sexual"), or a path to a .txt/.csv/.jsonl file.
        **kw: forwarded to the loader, e.g. `exclude=("seven",)` or `source="i2p.csv"`.

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    if Path(name).suffix in PROMPT_FILE_SUFFIXES:
        return load_prompt_file(name, **kw)
    base, _, arg = name.partition(":")
    if base not in PROMPT_SETS:
        raise ValueError(
            f"Unknown prompt set {name!r}; known: {sorted(PROMPT_SETS)} (optionally 'name:selection'), "
            f"or a path ending in one of {PROMPT_FILE_SUFFIXES}"
        )
    return PROMPT_SETS[base](arg if ":" in name else None, **kw)
