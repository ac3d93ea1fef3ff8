"""Where a benchmark writes its results: ``--out`` names a path without suffix, each file appends its own."""

from __future__ import annotations

from pathlib import Path

RESULT_SUFFIXES = (".partial.json", ".json", ".md", ".png")  # the longest first: ".partial.json" ends in ".json"


def results_file(out: str | Path, suffix: str) -> Path:
    """``--out`` (a results path without suffix) with ``suffix`` appended: ``Path.with_suffix`` would
    replace whatever follows a dot in the name ("yellow-w0.5" and "yellow-w0.25" both wrote
    yellow-w0.json). A path already ending in one of the results' suffixes has it replaced."""
    out = Path(out)
    for known in RESULT_SUFFIXES:
        if out.name.endswith(known) and len(out.name) > len(known):
            out = out.with_name(out.name[: -len(known)])
            break
    return out.with_name(out.name + suffix)
