"""Typed job configs from a YAML file plus CLI flags.

Every dataclass field becomes one flag of the same name (``--kept_fraction 0.99``); a YAML
file given with ``--config`` lists only what differs from the defaults, and flags given on
the command line override it. Several dataclasses can share one flat namespace (a job's
own config and the :class:`~erasure.config.MethodConfig`).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Sequence, TypeVar

import yaml

T = TypeVar("T")


def _base_type(annotation: Any) -> tuple[Any, bool]:
    """(element type, is_sequence) of a field annotation, ``X | None`` unwrapped."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(args[0])
    if origin in (tuple, list):
        return typing.get_args(annotation)[0], True
    return annotation, False


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got '{text}'")


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one ``--<field>`` flag per field of ``cls`` (default: unset)."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if any(a.dest == field.name for a in parser._actions):
            continue
        kind, many = _base_type(hints[field.name])
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "dest": field.name}
        if kind is bool:
            kwargs.update(type=_bool, nargs="?", const=True, metavar="BOOL")
        elif kind in (int, float, str):
            kwargs["type"] = kind
        if many:
            kwargs["nargs"] = "+"
        parser.add_argument(f"--{field.name}", **kwargs)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping of field values.

    Raises:
        FileNotFoundError / ValueError: naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--config {path}: no such file")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"--config {path}: expected a mapping of option: value, got {type(data).__name__}")
    return data


def build(cls: type[T], values: dict[str, Any]) -> T:
    """Instantiate ``cls`` from the keys of ``values`` that are its fields."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})


def parse(classes: Sequence[type], argv: Sequence[str] | None = None, description: str = "",
          defaults: dict[str, Any] | None = None) -> tuple[Any, ...]:
    """Parse defaults, then YAML, then flags into one instance of each dataclass in ``classes``.

    ``defaults`` overrides dataclass defaults for one domain (e.g. kept_fraction=0.995 for
    Stable Diffusion) and is itself overridden by the YAML file and the flags.

    Raises:
        SystemExit(2): via argparse for unknown flags.
        ValueError: for YAML keys that are no field of any class (listing the valid ones).
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default=None, help="YAML file with option: value pairs")
    for cls in classes:
        add_dataclass_arguments(parser, cls)
    args = vars(parser.parse_args(argv))
    values = load_yaml(args.pop("config")) if args.get("config") else {}
    args.pop("config", None)
    known = {f.name for cls in classes for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} in the YAML config; valid options: {sorted(known)}")
    values = {**(defaults or {}), **values, **args}
    return tuple(build(cls, values) for cls in classes)


def to_dict(*instances: Any) -> dict[str, Any]:
    """Merge dataclass instances into one JSON-able dict (tuples become lists)."""
    merged: dict[str, Any] = {}
    for instance in instances:
        for key, value in dataclasses.asdict(instance).items():
            merged[key] = list(value) if isinstance(value, tuple) else value
    return merged


def run_cli(main: Any, argv: Sequence[str] | None = None) -> None:
    """Run a job's ``main``; bad input and divergence end with one clear line and exit 1."""
    import sys

    try:
        main(argv)
    except (ValueError, FileNotFoundError, FloatingPointError, ImportError) as err:
        sys.exit(f"error: {err}")
