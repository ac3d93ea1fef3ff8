"""Replace a job's final export in its output folder as a whole, next to checkpoints and logs.

A job writes its complete export (e.g. a diffusers pipeline, its model card and config) into
``<output>/.export-<pid>/`` and calls :func:`publish_export`. The output folder itself stays what
a diffusers user loads (``from_pretrained(output_dir)``), so the swap works entry by entry:

1. ``.export.json`` is rewritten (atomically) to say "swapping": which entries belong
   to the old export, which to the new one, and where both live; the staged export is complete.
2. The old entries move into ``.export-old-<pid>/`` (``model_index.json`` first, so the folder
   stops being loadable before anything is mixed), then the new ones move in (``model_index.json``
   last, so it is loadable only once everything is there).
3. The manifest is rewritten to "complete" with the new entries; both hidden folders are removed.

Every step is a rename, so at rest the folder holds either the old export or the new one. A kill
inside the few renames of step 2 leaves a folder without ``model_index.json`` and a "swapping"
manifest; the next job in the folder (``recover_export``, under its lock) finishes the swap.
Staging folders without a "swapping" manifest are incomplete and are deleted. Checkpoints,
logs and anything else not listed in the manifest are never touched.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

MANIFEST = ".export.json"
STAGING = re.compile(r"^\.export-(old-)?\d+$")


def staging_folder(output_dir: str | Path) -> Path:
    """A fresh, empty ``<output>/.export-<pid>`` to write the complete export into."""
    staging = Path(output_dir) / f".export-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def read_manifest(output_dir: str | Path) -> dict[str, Any]:
    """The export manifest (``{"state", "entries", ...}``), ``{}`` when the folder has none."""
    path = Path(output_dir) / MANIFEST
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path} is unreadable ({err}); move the folder's export away by hand") from err


def _write_manifest(output_dir: Path, manifest: dict[str, Any]) -> None:
    tmp = output_dir / f"{MANIFEST}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, output_dir / MANIFEST)


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _finish_swap(output_dir: Path, journal: dict[str, Any]) -> None:
    """Steps 2 and 3 of the module docstring; safe to repeat after a kill at any point."""
    staging, trash, key = output_dir / journal["staging"], output_dir / journal["trash"], journal["key"]
    incoming = journal["incoming"]
    trash.mkdir(exist_ok=True)
    for name in sorted(journal["entries"], key=lambda n: n != key):  # the key file leaves first
        if name in incoming and not _exists(staging / name):
            continue  # the new entry of that name is already in place
        if _exists(output_dir / name):
            os.replace(output_dir / name, trash / name)
    for name in sorted(incoming, key=lambda n: n == key):  # the key file arrives last
        if _exists(staging / name):
            os.replace(staging / name, output_dir / name)
    _write_manifest(output_dir, {"state": "complete", "entries": incoming})
    shutil.rmtree(trash)
    shutil.rmtree(staging, ignore_errors=True)


def publish_export(output_dir: str | Path, staging: str | Path, key: str = "model_index.json") -> list[str]:
    """Replace the export in ``output_dir`` by the complete export in ``staging`` (see module doc).

    Args:
        output_dir: the job's output folder (the caller holds its lock).
        staging: a folder inside ``output_dir`` holding every entry of the new export.
        key: the entry that makes the folder loadable; it leaves first and arrives last.

    Returns:
        The names of the new export's entries.
    """
    output_dir, staging = Path(output_dir), Path(staging)
    if staging.parent.resolve() != output_dir.resolve():
        raise ValueError(f"staging={staging} must be a folder directly inside output_dir={output_dir}")
    incoming = sorted(p.name for p in staging.iterdir())
    previous = read_manifest(output_dir).get("entries", [])
    outgoing = sorted(set(previous) | {name for name in incoming if _exists(output_dir / name)})
    journal = {"state": "swapping", "entries": outgoing, "incoming": incoming, "staging": staging.name,
               "trash": f".export-old-{os.getpid()}", "key": key}
    _write_manifest(output_dir, journal)
    _finish_swap(output_dir, journal)
    return incoming


def recover_export(output_dir: str | Path) -> None:
    """Finish a swap a killed job left half done, then delete incomplete staging folders.

    Call while holding the folder's lock, before the job writes anything.
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return
    journal = read_manifest(output_dir)
    if journal.get("state") == "swapping":
        logger.warning("%s: finishing the export swap an interrupted run left half done", output_dir)
        _finish_swap(output_dir, journal)
    for path in output_dir.iterdir():
        if STAGING.match(path.name) and path.is_dir():
            logger.warning("removing %s, left by an interrupted export", path)
            shutil.rmtree(path)
