"""Prompt sets from files: .txt / .csv / .jsonl and the I2P benchmark (CSV or Hub dataset).

Prompt files are UTF-8 text (a UTF-8 byte-order mark is accepted); a prompt is at most
``MAX_PROMPT_CHARS`` characters (CLIP reads 77 tokens, so anything longer is not a prompt).
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import logging
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .base import Prompt, PromptSet

logger = logging.getLogger(__name__)

I2P_DATASET_ID = "AIML-TUDA/i2p"
PROMPT_FILE_SUFFIXES = (".txt", ".csv", ".jsonl")
# Column / key aliases: our names first, then the I2P Hub dataset's, then the ESD / UnlearnDiffAtk
# CSVs' (prompts/data/SOURCES.md): a row's own seed and guidance are never replaced by defaults.
_SEED_KEYS = ("seed", "sd_seed", "evaluation_seed")
_GUIDANCE_KEYS = ("guidance_scale", "sd_guidance_scale", "evaluation_guidance")
_RESERVED_KEYS = ("prompt", "categories", *_SEED_KEYS, *_GUIDANCE_KEYS)
MAX_PROMPT_CHARS = 2000


def _parse_seed(value: Any, where: str) -> int | None:
    """Seeds arrive as int (JSON, Hub), "123" (CSV) or an integral float such as 123.0."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise ValueError(f"{where}: seed {value!r} is not an integer")
    try:
        seed = value if isinstance(value, int) else (
            int(value) if isinstance(value, str) and value.strip().lstrip("+-").isdigit() else _integral(value))
    except (TypeError, ValueError, OverflowError) as err:  # OverflowError: int(float('inf'))
        raise ValueError(f"{where}: seed {value!r} is not an integer") from err
    if seed < 0:
        raise ValueError(f"{where}: seed {value!r} must be >= 0")
    return seed


def _integral(value: Any) -> int:
    number = float(value)
    if not number.is_integer():
        raise ValueError(f"{value!r} is not integral")
    return int(number)


def _parse_float(value: Any, where: str, key: str) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {key} {value!r} is not a number") from err
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{where}: {key} {value!r} must be a finite number >= 0 (<= 1 turns guidance off)")
    return number


def _first(row: Mapping[str, Any], keys: Sequence[str]) -> Any:
    return next((row[k] for k in keys if row.get(k) not in (None, "")), None)


def prompt_from_record(row: Mapping[str, Any], where: str = "record") -> Prompt:
    """Build a `Prompt` from a CSV row / JSON object / I2P record (`prompt` key required).

    Args:
        row: mapping with "prompt" and optionally seed/sd_seed, guidance_scale/sd_guidance_scale,
            categories (list or comma-separated string); other keys go to `extra`.
        where: location used in error messages, e.g. "file.csv:3".

    Raises:
        ValueError: missing prompt or unparsable seed / guidance scale.
    """
    text = row.get("prompt")
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{where}: missing or empty 'prompt' (keys: {sorted(row)})")
    categories = row.get("categories") or ()
    if isinstance(categories, str):
        categories = [c.strip() for c in categories.split(",") if c.strip()]
    return Prompt(
        text=text.strip(),
        seed=_parse_seed(_first(row, _SEED_KEYS), where),
        guidance_scale=_parse_float(_first(row, _GUIDANCE_KEYS), where, "guidance_scale"),
        categories=tuple(categories),
        extra={k: v for k, v in row.items() if k not in _RESERVED_KEYS},
    )


def read_text_file(path: Path) -> str:
    """The text of a UTF-8 file (a leading byte-order mark dropped).

    Raises:
        ValueError: one line naming the file and the byte offset of the first byte that is
            not UTF-8 text (or is a NUL byte, as in binary files).
    """
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        offset = err.start + (len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0)
        utf16 = data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))
        hint = " (it starts with a UTF-16 byte-order mark)" if utf16 else ""
        raise ValueError(f"{path}: byte offset {offset} ({data[offset]:#04x}) is not UTF-8{hint}; "
                         "prompt files must be UTF-8 text") from None
    if "\0" in text:
        offset = data.index(b"\0")
        raise ValueError(f"{path}: byte offset {offset} is a NUL byte (a binary file?); prompt files must be "
                         "UTF-8 text")
    return text


def _csv_records(path: Path, f: io.StringIO) -> Iterable[tuple[str, Mapping[str, Any]]]:
    reader = csv.DictReader(f)
    try:
        if "prompt" not in (reader.fieldnames or []):
            raise ValueError(f"{path}: CSV needs a 'prompt' column, found {reader.fieldnames}")
        for row in reader:
            if None in row:
                raise ValueError(f"{path}:{reader.line_num}: more fields than the header's {reader.fieldnames}")
            yield f"{path}:{reader.line_num}", row
    except csv.Error as err:  # e.g. a field over csv's size limit: not a prompt file
        raise ValueError(f"{path}:{reader.line_num}: malformed CSV ({err})") from None


def _records(path: Path) -> Iterable[tuple[str, Mapping[str, Any]]]:
    """Yield (location, record) pairs from a .txt, .csv or .jsonl prompt file."""
    with io.StringIO(read_text_file(path), newline="") as f:
        if path.suffix == ".csv":
            yield from _csv_records(path, f)
            return
        for line_num, line in enumerate(f, start=1):
            line = line.strip()
            if not line or (path.suffix == ".txt" and line.startswith("#")):
                continue
            try:
                record = {"prompt": line} if path.suffix == ".txt" else json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{line_num}: invalid JSON ({err.msg})") from err
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{line_num}: expected a JSON object, got {type(record).__name__}")
            yield f"{path}:{line_num}", record


def _bounded(row: Mapping[str, Any], where: str) -> Mapping[str, Any]:
    text = row.get("prompt")
    if isinstance(text, str) and len(text) > MAX_PROMPT_CHARS:
        raise ValueError(f"{where}: prompt of {len(text)} characters; at most {MAX_PROMPT_CHARS} are allowed")
    return row


def load_prompt_file(path: str | Path, name: str | None = None, skip_empty: bool = False) -> PromptSet:
    """Load prompts from .txt (one per line, blank and '#' lines skipped), .csv or .jsonl.

    Args:
        path: the file; .csv needs a `prompt` column, .jsonl objects a "prompt" key.
        name: set name; defaults to the file stem.
        skip_empty: drop rows whose prompt is empty, with a warning naming them (the I2P CSV
            has one, case 2260); otherwise such a row is an error.

    Returns:
        The prompt set, with `version=None` and `source` = the path.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unsupported suffix, not UTF-8 text (naming the byte offset), malformed rows,
            a prompt over ``MAX_PROMPT_CHARS`` characters (naming file:line), or no prompts.
    """
    path = Path(path)
    if path.suffix not in PROMPT_FILE_SUFFIXES:
        raise ValueError(f"Unsupported prompt file {str(path)!r}; use one of {PROMPT_FILE_SUFFIXES}")
    if not path.is_file():
        raise FileNotFoundError(f"Prompt file {str(path)!r} does not exist")
    records = list(_records(path))
    if skip_empty:
        empty = [where for where, row in records if isinstance(row.get("prompt"), str) and not row["prompt"].strip()]
        if empty:
            logger.warning("%s: skipped %d rows with an empty prompt (%s)", path, len(empty), ", ".join(empty[:5]))
        records = [(where, row) for where, row in records if where not in set(empty)]
    prompts = [prompt_from_record(_bounded(row, where), where) for where, row in records]
    logger.info("Loaded %d prompts from %s", len(prompts), path)
    return PromptSet(name or path.stem, prompts, version=None, source=str(path))


def _load_i2p_records(source: str) -> list[Mapping[str, Any]]:
    try:
        import datasets
    except ImportError as err:
        raise ImportError(
            f"Loading I2P from the Hub ({source!r}) needs `datasets`: pip install scissorhands[i2p] "
            "(or pass a local CSV path as `source`)"
        ) from err
    return list(datasets.load_dataset(source, split="train"))


def load_i2p(source: str | Path = I2P_DATASET_ID, categories: str | Sequence[str] | None = None) -> PromptSet:
    """The I2P benchmark prompts, each with its seed and guidance scale (`sd_seed` /
    `sd_guidance_scale` on the Hub, `evaluation_seed` / `evaluation_guidance` in the CSVs).

    Args:
        source: a local CSV with the I2P columns (the vendored 4703 prompts: `prompts.sets`
            `"i2p"`), or a Hub dataset id (needs `datasets`).
        categories: keep rows having any of these categories (e.g. "sexual"); None keeps all.

    Raises:
        ImportError: a Hub id without `datasets` installed.
        ValueError: a requested category that no row has (the message lists those present).
    """
    is_path = isinstance(source, Path) or Path(source).suffix == ".csv" or Path(source).exists()
    if is_path:
        full = load_prompt_file(source, name="i2p", skip_empty=True)
    else:
        rows = _load_i2p_records(str(source))
        prompts = [prompt_from_record(row, f"{source}[{i}]") for i, row in enumerate(rows)]
        full = PromptSet("i2p", prompts, source=str(source))
    if categories is None:
        return full
    wanted = [categories] if isinstance(categories, str) else list(categories)
    present = sorted({c for p in full.prompts for c in p.categories})
    unknown = [c for c in wanted if c not in present]
    if unknown:
        raise ValueError(f"Unknown I2P categories {unknown}; categories present: {present}")
    kept = [p for p in full.prompts if set(p.categories) & set(wanted)]
    return PromptSet(f"i2p:{','.join(wanted)}", kept, version=full.version, source=full.source)
