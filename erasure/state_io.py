"""Save a method's state (masks, references, counters) without pickle.

Tensors go to ``<dir>/method_state.safetensors`` under dotted keys; everything else (plain
numbers, strings, dicts, None) to ``<dir>/method_state.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor


def _split(state: dict[str, Any], prefix: str = "") -> tuple[dict[str, Tensor], dict[str, Any]]:
    tensors, plain = {}, {}
    for key, value in state.items():
        if isinstance(value, Tensor):
            tensors[prefix + key] = value.detach().cpu().contiguous()
        elif isinstance(value, dict) and value and all(isinstance(v, Tensor) for v in value.values()):
            plain[key] = {"__tensors__": sorted(value)}
            for sub, tensor in value.items():
                tensors[f"{prefix}{key}.{sub}"] = tensor.detach().cpu().contiguous()
        else:
            plain[key] = value
    return tensors, plain


def save_state(state: dict[str, Any], directory: str | Path) -> None:
    """Write ``state`` (a method's ``state_dict()``) into ``directory``."""
    directory = Path(directory)
    tensors, plain = _split(state)
    if tensors:
        save_file(tensors, str(directory / "method_state.safetensors"))
    (directory / "method_state.json").write_text(json.dumps(plain, indent=1))


def load_state(directory: str | Path) -> dict[str, Any]:
    """Read what :func:`save_state` wrote.

    Raises:
        FileNotFoundError: naming the missing file.
        ValueError: naming the file that cannot be parsed (truncated or changed).
    """
    directory = Path(directory)
    path = directory / "method_state.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the checkpoint was not written by this toolkit or is incomplete")
    tensor_path = directory / "method_state.safetensors"
    try:
        plain = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path} is unreadable ({err}): the checkpoint is damaged") from err
    try:
        tensors = load_file(str(tensor_path)) if tensor_path.is_file() else {}
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{tensor_path} is unreadable ({err}): the checkpoint is damaged") from err
    for key, value in plain.items():
        if isinstance(value, dict) and "__tensors__" in value:
            plain[key] = {sub: tensors[f"{key}.{sub}"] for sub in value["__tensors__"]}
    for key, value in tensors.items():
        if "." not in key:
            plain[key] = value
    return plain
