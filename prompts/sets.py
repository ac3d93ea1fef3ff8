"""Built-in prompt sets (versioned JSON in `prompts/data/`) and the name registry.

`get_prompt_set(name)` resolves "nudity", "nudity-retain", "imagenette", "imagenette:church",
"digits", "digits:seven", "i2p" (the 4703 prompts, vendored), "i2p:sexual",
"unlearndiffatk:nudity" (and :church, :garbage_truck, :parachute, :tench, :vangogh),
"coco10k" (or "coco10k:1000", the first 1000), "testbed" (every prompt of the coloured-digits
grammar), "testbed:numeral" (one evaluation group) or a .txt/.csv/.jsonl path. The public
files are vendored unchanged with their sources and licences (`VENDORED`, data/SOURCES.md).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
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


@dataclass(frozen=True)
class VendoredFile:
    """A public prompt file copied unchanged into `prompts/data/` (sources: prompts/data/SOURCES.md)."""

    file_name: str
    sha256: str
    version: str  # where it comes from
    license: str


VENDORED = {
    "i2p": VendoredFile("i2p_unsafe_prompts4703.csv",
                        "6c1821aeeb20beb276b4e20ce4c4b801f9106dc935bafc9f6fd5e12aa2651e6f",
                        "rohitgandikota/erasing data/unsafe-prompts4703.csv (I2P, AIML-TUDA)", "MIT"),
    "coco10k": VendoredFile("unlearndiffatk_coco_10k.csv",
                            "3c4eddc1fa5458d685d6ef7175bc8d501d8a9f0a86d17c22b898ce5f3942376e",
                            "OPTML-Group/Diffusion-MU-Attack prompts/coco_10k.csv (MS-COCO captions)",
                            "MIT; captions CC BY 4.0"),
    **{f"unlearndiffatk:{name}": VendoredFile(f"unlearndiffatk_{name}.csv", digest,
                                              f"OPTML-Group/Diffusion-MU-Attack prompts/{name}.csv", "MIT")
       for name, digest in (
           ("nudity", "0a40f6e63bca976513d1d56df71480239ba1eb5c7a9de4df2f535d80f6e0eccd"),
           ("church", "4987e201148cfa3bd3dabfb67e5681ca09e64155cdadf03b0a0c295269d2c18c"),
           ("garbage_truck", "e561240be67ea653bac8dd22bc31d44ae6ccb88268b2e306448eea39feefa6cd"),
           ("parachute", "f44fdef671aecf3f759ef53101e23b5cd614e3da6e2021c3c3d0a1c35a5fe0e5"),
           ("tench", "6d5fc0988e40e7ef97e035031badf52e6a0e971b96be4bf277c2eee3c55f546d"),
           ("vangogh", "9d0b141b6674b5ef93be5a38c4d220ec56ca1ec096cdfdb5baf0932deca72362"))},
}
ATTACK_SETS = tuple(name.split(":", 1)[1] for name in VENDORED if name.startswith("unlearndiffatk:"))


def vendored_file(name: str) -> Path:
    """The path of a vendored prompt file, after checking it is the file that was vendored.

    Raises:
        ValueError: the file's sha256 differs from the recorded one (edited or damaged).
    """
    entry = VENDORED[name]
    path = DATA_DIR / entry.file_name
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != entry.sha256:
        raise ValueError(f"{path}: sha256 {digest[:16]}… differs from the vendored file's {entry.sha256[:16]}… "
                         "(reinstall the package; vendored prompt files are kept unchanged)")
    return path


def _vendored_set(name: str, set_name: str | None = None) -> PromptSet:
    entry = VENDORED[name]
    loaded = load_prompt_file(vendored_file(name), name=set_name or name)
    return PromptSet(loaded.name, loaded.prompts, version=f"{entry.version} ({entry.license})", source=loaded.source)


def i2p_prompts(categories: Sequence[str] | None = None, source: str | Path | None = None) -> PromptSet:
    """I2P's 4703 prompts with their seeds and guidance (vendored; ``source`` reads another copy,
    e.g. the Hub dataset ``AIML-TUDA/i2p``), optionally only those of ``categories``."""
    if source is not None:
        return load_i2p(source, categories)
    entry = VENDORED["i2p"]
    loaded = load_i2p(vendored_file("i2p"), categories)
    return PromptSet(loaded.name, loaded.prompts, version=f"{entry.version} ({entry.license})", source=loaded.source)


def attack_prompts(name: str | None) -> PromptSet:
    """UnlearnDiffAtk's prompt set of a concept (nudity, an Imagenette class, Van Gogh's style)."""
    if name not in ATTACK_SETS:
        raise ValueError(f"unlearndiffatk needs one of {list(ATTACK_SETS)} after ':', got {name!r}")
    return _vendored_set(f"unlearndiffatk:{name}")


def coco_prompts(count: str | None = None) -> PromptSet:
    """MS-COCO captions of UnlearnDiffAtk's utility set (9969 rows), each with its seed; ``count``
    keeps the first N (``coco10k:1000``)."""
    full = _vendored_set("coco10k")
    if count is None:
        return full
    if not count.isdigit() or not 1 <= int(count) <= len(full):
        raise ValueError(f"coco10k:{count}: give a count of prompts from 1 to {len(full)}")
    return PromptSet(f"coco10k:{count}", full.prompts[: int(count)], full.version, full.source)


def filter_min_percentage(prompt_set: PromptSet, column: str, threshold: float) -> PromptSet:
    """The prompts whose ``column`` (e.g. I2P's nudity_percentage) is at least ``threshold``.

    Raises:
        ValueError: the set has no such column, or nothing is left.
    """
    missing = [p.text[:40] for p in prompt_set if p.extra.get(column) in (None, "")]
    if missing:
        raise ValueError(f"{column} >= {threshold}: prompt set {prompt_set.name!r} has no {column!r} column "
                         f"(e.g. for {missing[0]!r}); it filters I2P-style CSVs")
    kept = [p for p in prompt_set if float(p.extra[column]) >= threshold]
    if not kept:
        raise ValueError(f"{column} >= {threshold} keeps none of the {len(prompt_set)} prompts of {prompt_set.name!r}")
    return PromptSet(f"{prompt_set.name}[{column}>={threshold:g}]", kept, prompt_set.version, prompt_set.source)


def paraphrase_prompts(concept: str | None) -> PromptSet:
    """Rewordings of a concept for the paraphrase attack: ``paraphrase:nudity``,
    ``paraphrase:<imagenette class>`` (from data/paraphrases.json), or a testbed concept's unseen
    phrasings (``paraphrase:digits:two``: the grammar's paraphrase group, word and numeral)."""
    data = _read_data("paraphrases.json")
    source = str(DATA_DIR / "paraphrases.json")
    if concept == "nudity":
        return PromptSet("paraphrase:nudity", [Prompt(t, categories=("nudity",)) for t in data["nudity"]],
                         data["version"], source)
    by_lower = {name.lower(): name for name in data["imagenette"]}
    if concept and concept.lower().removeprefix("imagenette:") in by_lower:
        name = by_lower[concept.lower().removeprefix("imagenette:")]
        return PromptSet(f"paraphrase:{name}", [Prompt(t, categories=(name,)) for t in data["imagenette"][name]],
                         data["version"], source)
    if concept and concept.split(":", 1)[0] in ("digits", "color"):
        from .colored_digits import concept_prompts

        forget, _ = concept_prompts(concept, forms=("word", "numeral"), groups=("paraphrase",))
        return PromptSet(f"paraphrase:{concept}", forget.prompts, forget.version, forget.source)
    raise ValueError(f"paraphrase needs a concept after ':': nudity, one of {list(data['imagenette'])}, "
                     f"digits:<d> or color:<c>; got {concept!r}")


CONCEPTS = ("nudity",)
PROMPT_SETS: dict[str, Callable[..., PromptSet]] = {
    "nudity": _no_arg("nudity", lambda: load_concept("nudity")[0]),
    "nudity-retain": _no_arg("nudity-retain", lambda: load_concept("nudity")[1]),
    "imagenette": lambda arg, **kw: imagenette_prompts(classes=_split(arg), **kw),
    "digits": lambda arg, **kw: digit_prompts(classes=_split(arg), **kw),
    "i2p": lambda arg, **kw: i2p_prompts(categories=_split(arg), **kw),
    "unlearndiffatk": lambda arg: attack_prompts(arg),
    "coco10k": lambda arg: coco_prompts(arg),
    "paraphrase": lambda arg: paraphrase_prompts(arg),
    "testbed": lambda arg, **kw: eval_prompts(groups=_split(arg), **kw),
}


def get_prompt_set(name: str, **kw: Any) -> PromptSet:
    """Resolve a prompt-set name, `name:argument` or file path to a `PromptSet`.

    Args:
        name: one of `PROMPT_SETS` ("nudity", "nudity-retain", "imagenette", "digits", "i2p",
            "unlearndiffatk", "coco10k", "testbed"),
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
