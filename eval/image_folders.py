"""Image folders as evaluation inputs: one row per image, every file checked, and their protocol.

A folder written by `eval.sample` (or `pipelines.generate`) lists its images in metadata.jsonl
(one row per image after `finalize`) and records how they were drawn in protocol.json; any
other folder of .png/.jpg/.jpeg/.webp/.bmp files is read file by file, in name order.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

from pipelines.images import image_size
from pipelines.image_folder import FILE_KEY, METADATA_FILE, read_metadata, resolve_inside
from prompts.base import PromptSet

from .sample import PROTOCOL_FILE, prompt_set_record

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# Fields of a sampling protocol that an evaluation report repeats.
SAMPLING_KEYS = ("model", "model_fingerprint", "prompt_set", "categories", "images_per_prompt", "seeds", "guidance", "scheduler",
                 "num_inference_steps", "image_size", "dtype")


def check_image(path: Path, name: str) -> tuple[int, int]:
    """(height, width) of a readable image file.

    Raises:
        FileNotFoundError / ValueError: a missing or unreadable file, naming it.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{name}: image file {str(path)!r} does not exist")
    try:
        return image_size(path)
    except ValueError as err:
        raise ValueError(f"{name}: cannot read image file {str(path)!r}: {err}") from None


def metadata_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a metadata.jsonl, one per image file (the last row of a file wins), by index.

    Raises:
        ValueError: a row without "file_name" (or the older "file"), or naming an image outside
            the folder (see `pipelines.image_folder.read_metadata`).
    """
    rows = read_metadata(path)
    by_file = {row[FILE_KEY]: row for row in rows}
    if len(by_file) < len(rows):
        logger.warning("%s: %d rows for %d images; counting each image once", path, len(rows), len(by_file))
    return sorted(by_file.values(), key=lambda row: row.get("index", 0))


def read_image_folder(folder: str | Path, name: str = "images") -> list[dict[str, Any]]:
    """One row per image: metadata.jsonl rows (last row per file wins) or every image file, sorted.

    Each row gets "path" and "size" ([height, width]); every image is opened and verified.

    Raises:
        FileNotFoundError: no such folder, or a listed image missing (naming it).
        ValueError: an unreadable image, an unfinished `eval.sample` run, or no images.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{name}={str(folder)!r}: no such folder")
    if any(folder.glob("metadata-*.jsonl")):
        raise ValueError(f"{name}={str(folder)!r} holds metadata-*.jsonl of an unfinished eval.sample run; "
                         "rerun eval.sample to finish it")
    if (folder / METADATA_FILE).is_file():
        rows = metadata_rows(folder / METADATA_FILE)
    else:
        rows = [{FILE_KEY: p.name} for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    if not rows:
        raise ValueError(f"{name}={str(folder)!r} has no images ({', '.join(IMAGE_SUFFIXES)})")
    for row in rows:
        path = resolve_inside(folder, row[FILE_KEY], f"{name}={str(folder)!r}")
        row["path"] = str(path)
        row["size"] = list(check_image(path, name))
    return rows


def folder_protocol(folder: str | Path, rows: Sequence[dict[str, Any]],
                    prompt_set: PromptSet | None) -> dict[str, Any]:
    """The sampling protocol of an image folder: its protocol.json, else what the files tell.

    Raises:
        ValueError: `--prompts` differs from the prompts the folder was sampled from.
    """
    path = Path(folder) / PROTOCOL_FILE
    if path.is_file():
        recorded = json.loads(path.read_text(encoding="utf-8"))
        if prompt_set is not None and recorded["prompt_set"]["sha256"] != prompt_set.sha256():
            raise ValueError(f"prompts={prompt_set.name!r} differ from those {str(folder)!r} was sampled from "
                             f"({recorded['prompt_set']['name']!r}, sha256 {recorded['prompt_set']['sha256'][:16]}…)")
        return {key: recorded.get(key) for key in SAMPLING_KEYS}
    sizes = sorted({tuple(row["size"]) for row in rows})
    unknown = "unknown (an image folder without protocol.json)"
    return {**dict.fromkeys(SAMPLING_KEYS), "prompt_set": prompt_set_record(prompt_set) if prompt_set else None,
            "seeds": unknown, "guidance": unknown, "image_size": list(sizes[0]) if len(sizes) == 1 else sizes}
