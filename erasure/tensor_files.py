"""Reading safetensors files with errors that name the file.

safetensors raises its own ``SafetensorError`` ("Error while deserializing header: header too
small") without saying which file; a truncated cache or a half-copied model then ends in a
traceback. Every read of a user-supplied ``.safetensors`` goes through these helpers, which
turn such failures into one ``ValueError`` naming the file, what it is, and what to do.
Pickled weights (``.bin``, ``.pt``, ``.pth``, ``.ckpt``) are never read: unpickling runs code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

__all__ = ["PICKLE_SUFFIXES", "check_tensor_file", "read_tensor_metadata", "read_tensors"]

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def _where(path: Path, what: str) -> str:
    return f"{what} {path}" if what else str(path)


def _unreadable(path: Path, what: str, err: Exception) -> ValueError:
    reason = " ".join(str(err).split()) or type(err).__name__
    return ValueError(f"{_where(path, what)}: not a readable safetensors file ({reason}); "
                      "it is truncated, empty or not safetensors: rewrite or re-download it")


def _existing(path: str | Path, what: str) -> Path:
    path = Path(path)
    if path.suffix in PICKLE_SUFFIXES:
        raise ValueError(f"{_where(path, what)}: pickled weights are not loaded (unpickling can run code); "
                         "convert them to .safetensors")
    if not path.is_file():
        raise FileNotFoundError(f"{_where(path, what)}: no such file")
    return path


def read_tensor_metadata(path: str | Path, what: str = "") -> tuple[list[str], dict[str, str]]:
    """(tensor names, header metadata) of a safetensors file, reading only its header.

    Args:
        path: the file.
        what: what the file is, for messages (e.g. ``"cached latents"``).

    Raises:
        FileNotFoundError: no such file.
        ValueError: pickled weights, or a file whose header cannot be read (empty, truncated,
            not safetensors), naming the file.
    """
    path = _existing(path, what)
    try:
        with safe_open(str(path), framework="pt") as handle:
            return list(handle.keys()), dict(handle.metadata() or {})
    except (SafetensorError, OSError) as err:
        raise _unreadable(path, what, err) from None


def check_tensor_file(path: str | Path, what: str = "") -> None:
    """Refuse a safetensors file whose header does not cover the file (see `read_tensor_metadata`)."""
    read_tensor_metadata(path, what)


def read_tensors(path: str | Path, what: str = "", device: str = "cpu") -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file (never pickle).

    Raises:
        FileNotFoundError / ValueError: as `read_tensor_metadata`, naming the file.
    """
    path = _existing(path, what)
    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError) as err:
        raise _unreadable(path, what, err) from None


def describe(value: Any) -> str:
    """A short repr for messages."""
    shown = repr(value)
    return shown if len(shown) <= 80 else shown[:77] + "..."
