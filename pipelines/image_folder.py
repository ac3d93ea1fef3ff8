"""Resumable image folders: `{index:06d}.png`, per-process metadata rows, merged at the end.

Layout of a finished folder (what `pipelines.data.ConceptImageSet.load` reads):

    000000.png, 000001.png, ...
    metadata.jsonl         one JSON row per image, sorted by index (file_name, index, prompt, seed,
                           guidance_scale, model, scheduler, num_inference_steps, height, width,
                           categories, extra); "file_name" is what `datasets.load_dataset("imagefolder")`
                           reads; rows of older folders name their image "file", still read
    latents.safetensors   (optional) a dict: image file name -> final latents [C, h, w], float32,
                           already multiplied by the VAE's scaling factor

Every reader takes image names from `read_metadata` / `resolve_inside`: a name must be a
relative path that stays inside the folder (no absolute path, no "..", no symlink leading out),
so a metadata row can never make a job read, train on or keep a file elsewhere.

While a run is in progress each process appends to `metadata-{rank}.jsonl` and stores latents
in `latents-parts/{index:06d}.safetensors`; `finalize` merges both.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import torch
from safetensors.torch import save_file

from erasure.tensor_files import read_tensor_metadata, read_tensors

if TYPE_CHECKING:
    from PIL import Image

    from .sampling import SampleItem

__all__ = ["FILE_KEY", "LATENTS_FILE", "METADATA_FILE", "ImageFolderWriter", "read_metadata", "read_rows",
           "replace_atomic", "resolve_inside"]

logger = logging.getLogger(__name__)

METADATA_FILE = "metadata.jsonl"
LATENTS_FILE = "latents.safetensors"
LATENT_PARTS = "latents-parts"  # one file per sample until `finalize` merges them
FILE_KEY = "file_name"  # the image of a metadata row, as Hugging Face's imagefolder names it
LEGACY_FILE_KEY = "file"  # what folders written before FILE_KEY used

def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a metadata jsonl; a torn last line (a crash mid-write) is skipped with a warning."""
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number < len(lines):
                raise ValueError(f"{path}:{number}: invalid JSON ({err.msg})") from err
            logger.warning("%s:%d: ignoring a torn last line (interrupted write)", path, number)
    return rows


def resolve_inside(folder: Path, name: Any, where: str) -> Path:
    """``folder / name`` for an image name that stays inside ``folder``.

    Args:
        folder: the image folder.
        name: a relative path such as "000001.png" or "cats/1.png".
        where: the row or file the name comes from, for the message.

    Raises:
        ValueError: ``name`` is not a non-empty string, is absolute, has a ".." component, or
            resolves (through a symlink) outside ``folder``.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{where}: image name {name!r} must be a non-empty relative path")
    parts = Path(name.replace("\\", "/")).parts
    if Path(name).is_absolute() or name.startswith(("/", "\\")) or (parts and parts[0].endswith(":")):
        raise ValueError(f"{where}: image name {name!r} is an absolute path; allowed: a path inside {folder}")
    if ".." in parts:
        raise ValueError(f"{where}: image name {name!r} has a '..' component; allowed: a path inside {folder}")
    path = folder / name
    if not path.resolve().is_relative_to(folder.resolve()):
        raise ValueError(f"{where}: image {name!r} resolves to {path.resolve()}, outside {folder} (a symlink?)")
    return path


def read_metadata(path: Path, folder: Path | None = None) -> list[dict[str, Any]]:
    """Rows of a metadata jsonl, each with a checked ``FILE_KEY`` (from "file_name", or "file").

    Args:
        path: metadata.jsonl or a per-process metadata-{rank}.jsonl.
        folder: the image folder the names are inside (default: the file's folder).

    Raises:
        ValueError: naming the file and row: invalid JSON, a row that is no object or names no
            image, or an image name that leaves the folder (see `resolve_inside`).
    """
    folder = path.parent if folder is None else folder
    rows = []
    for number, row in enumerate(read_rows(path), start=1):
        where = f"{path}: row {number}"
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
        name = row.get(FILE_KEY, row.get(LEGACY_FILE_KEY))
        if name is None:
            raise ValueError(f"{where}: names no image ('{FILE_KEY}'); keys: {sorted(row)}")
        resolve_inside(folder, name, where)
        rows.append({**{k: v for k, v in row.items() if k != LEGACY_FILE_KEY}, FILE_KEY: name})
    return rows


def _drop_torn_tail(path: Path) -> None:
    """Cut an unterminated last line (a crash mid-append) so the next row starts a fresh line."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "r+b") as handle:
        handle.seek(-1, os.SEEK_END)
        if handle.read(1) != b"\n":
            logger.warning("%s: dropping a torn last line (interrupted write)", path)
            handle.truncate(path.read_bytes().rfind(b"\n") + 1)


def replace_atomic(path: Path, write: Any) -> None:
    """Call `write(tmp_path)`, then rename over `path` (readers never see half a file).

    The temporary name holds the pid: two processes replacing the same file never share it.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class ImageFolderWriter:
    """Resumable image folder: `{index:06d}.png`, one `metadata-{rank}.jsonl` per process.

    Each sample is written as latents (optional) -> png -> metadata row; only a sample with all
    of them counts as done, so a crash at any point leaves at worst an unrecorded image that the
    next run overwrites. `finalize` (main process, after all ranks finished) merges everything
    into `metadata.jsonl` (sorted by index, one row per index) and `latents.safetensors`
    (a dict: image file name -> latents [C, h, w]).

    Args:
        folder: the image folder (created if missing).
        rank: this process's index (names its metadata file).
        run_info: fields added to every row (model, scheduler, num_inference_steps, ...).
        with_latents: store each sample's latents; then a sample without latents is not done.
    """

    def __init__(self, folder: str | Path, rank: int = 0, run_info: Mapping[str, Any] | None = None,
                 with_latents: bool = False) -> None:
        self.folder = Path(folder)
        self.rank = rank
        self.run_info = dict(run_info or {})
        self.with_latents = with_latents

    def _rows(self) -> list[dict[str, Any]]:
        """Recorded rows, merged file first then rank files; later rows win per index."""
        paths = [self.folder / METADATA_FILE, *sorted(self.folder.glob("metadata-*.jsonl"))]
        by_index: dict[int, dict[str, Any]] = {}
        for path in paths:
            for number, row in enumerate(read_metadata(path, self.folder) if path.is_file() else [], start=1):
                if not isinstance(row.get("index"), int) or isinstance(row["index"], bool):
                    raise ValueError(f"{path}: row {number} has no integer 'index'; keys: {sorted(row)}")
                by_index[row["index"]] = row
        return [by_index[i] for i in sorted(by_index) if (self.folder / by_index[i][FILE_KEY]).is_file()]

    def _latent_files(self) -> set[str]:
        names = {p.stem + ".png" for p in (self.folder / LATENT_PARTS).glob("*.safetensors")}
        if (self.folder / LATENTS_FILE).is_file():
            names.update(read_tensor_metadata(self.folder / LATENTS_FILE, "cached latents")[0])
        return names

    def done(self) -> set[int]:
        """Indices whose image is written and recorded (and whose latents are stored, if kept)."""
        rows = self._rows()
        if self.with_latents:
            stored = self._latent_files()
            rows = [row for row in rows if row[FILE_KEY] in stored]
        return {row["index"] for row in rows}

    def write(self, item: SampleItem, image: Image.Image, latents: torch.Tensor | None = None) -> dict[str, Any]:
        """Store one sample; returns its metadata row.

        Raises:
            ValueError: latents missing although the writer keeps them.
        """
        if self.with_latents and latents is None:
            raise ValueError(f"{self.folder}: with_latents=True but sample {item.index} came without latents")
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"{item.index:06d}.png"
        if latents is not None:
            (self.folder / LATENT_PARTS).mkdir(exist_ok=True)
            part = self.folder / LATENT_PARTS / f"{item.index:06d}.safetensors"
            replace_atomic(part, lambda tmp: save_file({name: latents.contiguous()}, str(tmp)))
        replace_atomic(self.folder / name, lambda tmp: image.save(tmp, format="PNG"))
        row = {
            FILE_KEY: name, "index": item.index, "prompt": item.prompt.text, "seed": item.seed,
            "guidance_scale": item.guidance_scale, **self.run_info, "height": image.height,
            "width": image.width, "categories": list(item.prompt.categories), "extra": item.prompt.extra,
        }
        self._append(row)
        return row

    def _append(self, row: dict[str, Any]) -> None:
        path = self.folder / f"metadata-{self.rank}.jsonl"
        _drop_torn_tail(path)
        with open(path, "ab") as handle:
            handle.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())

    def finalize(self) -> list[dict[str, Any]]:
        """Merge rank files (and latents parts) into metadata.jsonl (and latents.safetensors).

        Call on the main process once every rank has finished writing. Temporary files that a
        killed run left are removed.

        Returns:
            The merged rows, sorted by index.
        """
        self._remove_temp_files()
        rows = [row for row in self._rows() if row["index"] in self.done()]
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        if self.with_latents:
            self._merge_latents([row[FILE_KEY] for row in rows])
        self.folder.mkdir(parents=True, exist_ok=True)
        replace_atomic(self.folder / METADATA_FILE, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        for path in self.folder.glob("metadata-*.jsonl"):
            path.unlink()
        logger.info("%s: %d images recorded", self.folder, len(rows))
        return rows

    def _remove_temp_files(self) -> None:
        """Every rank is done: temporary files still here are a killed run's (they would also
        keep `latents-parts/` from being removed)."""
        for folder in (self.folder, self.folder / LATENT_PARTS):
            for path in folder.glob(".*.tmp"):  # `replace_atomic`'s temporary names
                logger.warning("%s: removing %s, left by an interrupted write", folder, path.name)
                path.unlink()

    def _merge_latents(self, files: list[str]) -> None:
        merged_path = self.folder / LATENTS_FILE
        merged = read_tensors(merged_path, "cached latents") if merged_path.is_file() else {}
        parts = sorted((self.folder / LATENT_PARTS).glob("*.safetensors"))
        for part in parts:
            merged.update(read_tensors(part, "latents of one process"))
        merged = {name: merged[name] for name in files}
        replace_atomic(merged_path, lambda tmp: save_file(merged, str(tmp)))
        for part in parts:
            part.unlink()
        if (self.folder / LATENT_PARTS).is_dir():
            (self.folder / LATENT_PARTS).rmdir()


def refuse_changed_protocol(folder: Path, previous: Mapping[str, Any], current: Mapping[str, Any]) -> None:
    """Refuse to add images to ``folder`` when it was made under another protocol.

    Raises:
        ValueError: naming every field that differs, old -> new.
    """
    differ = {k: (previous.get(k), v) for k, v in current.items() if previous.get(k) != v}
    if differ:
        changes = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in differ.items())
        raise ValueError(f"output_dir: {folder} holds images made with other settings ({changes}); "
                         "use another --output_dir or delete that folder")
