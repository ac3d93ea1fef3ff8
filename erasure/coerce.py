"""Typed values from YAML and CLI text, driven by dataclass annotations.

One rule set for both sources, so ``--learning_rate 1e-4`` and ``learning_rate: 1e-4`` (which
PyYAML reads as the *string* '1e-4') give the same float:

- ``int``: an int or an integer string ('3'); never a float (2.5, 3.0) or a bool.
- ``float``: an int, a float or a number string ('1e-4', '1.0e-4'); NaN and infinity refused.
- ``str``: a string only (a YAML number or boolean must be quoted to be text).
- ``bool``: a bool or one of the words in ``BOOL_WORDS`` (any case); other strings refused,
  so a quoted ``'false'`` is False and ``'nope'`` is an error, not a truthy string.
- ``X | None``: None, or an ``X``; None for a field without ``| None`` is refused.
- ``tuple[X, ...]`` / ``list[X]``: a list (or tuple) of ``X``; a bare string is refused rather
  than split into characters.
- a dataclass: a mapping of its fields, each coerced the same way.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Callable, Mapping

__all__ = ["BOOL_WORDS", "coerce", "coerce_fields", "field_types", "parse_bool"]

BOOL_WORDS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


def parse_bool(text: str) -> bool | None:
    """True/False for a word of ``BOOL_WORDS`` (any case, surrounding spaces ignored), else None."""
    return BOOL_WORDS.get(text.strip().lower())


def _fail(name: str, value: Any, expected: str) -> ValueError:
    shown = repr(value)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    return ValueError(f"{name}={shown} is not {expected}")


def _coerce_int(value: Any, name: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        return int(value)
    raise _fail(name, value, "an integer (int), e.g. 3")


def _coerce_float(value: Any, name: str) -> float:
    number = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    if number is None:
        raise _fail(name, value, "a number (float), e.g. 1e-4")
    if not math.isfinite(number):
        raise _fail(name, value, "a finite number (float): NaN and infinity are not allowed")
    return number


def _coerce_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    word = parse_bool(value) if isinstance(value, str) else None
    if word is None:
        raise _fail(name, value, f"a boolean: true/false (or {'/'.join(BOOL_WORDS)})")
    return word


def _coerce_str(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise _fail(name, value, f"a string (str); quote it in YAML: '{value}'")
    return value


def _coerce_sequence(value: Any, annotation: Any, name: str) -> tuple | list:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    element = args[0] if args else Any
    if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
        raise TypeError(f"{name}: fixed-length tuple annotations are not supported, got {annotation}")
    if not isinstance(value, (list, tuple)):
        raise _fail(name, value, f"a list of {getattr(element, '__name__', element)}, e.g. [a, b]")
    items = [coerce(item, element, f"{name}[{i}]") for i, item in enumerate(value)]
    return tuple(items) if origin is tuple else items


SCALARS: dict[Any, Callable[[Any, str], Any]] = {int: _coerce_int, float: _coerce_float, bool: _coerce_bool,
                                                 str: _coerce_str}


def coerce(value: Any, annotation: Any, name: str) -> Any:
    """``value`` converted to the type ``annotation`` names (see the module docstring).

    Args:
        value: a YAML value, or the text of a CLI flag.
        annotation: a field's resolved type hint (int, float, str, bool, ``X | None``,
            ``tuple[X, ...]``, ``list[X]``, a dataclass, or Any).
        name: where the value comes from, e.g. ``"run.yaml: lam"`` or ``"--lam"``.

    Raises:
        ValueError: one line naming ``name``, the bad value and the expected type.
        TypeError: an annotation this module does not support (a programming error).
    """
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(options) != 1:
            raise TypeError(f"{name}: only 'X | None' unions are supported, got {annotation}")
        return None if value is None else coerce(value, options[0], name)
    if value is None:
        raise _fail(name, value, f"allowed: a value of type {getattr(annotation, '__name__', annotation)} is required")
    if annotation is Any:
        return value
    if origin in (tuple, list):
        return _coerce_sequence(value, annotation, name)
    if annotation in SCALARS:
        return SCALARS[annotation](value, name)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, Mapping):
            raise _fail(name, value, f"a mapping of {annotation.__name__} fields")
        return annotation(**coerce_fields(value, field_types(annotation), lambda key: f"{name}.{key}"))
    raise TypeError(f"{name}: unsupported annotation {annotation}")


def field_types(*classes: type) -> dict[str, Any]:
    """Field name -> resolved annotation over dataclasses (the first class naming a field wins)."""
    types_by_name: dict[str, Any] = {}
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            types_by_name.setdefault(field.name, hints[field.name])
    return types_by_name


def coerce_fields(values: Mapping[str, Any], types_by_name: Mapping[str, Any],
                  name: Callable[[str], str]) -> dict[str, Any]:
    """Every value coerced to its field's type; ``name(key)`` labels errors.

    Raises:
        ValueError: an unknown key (listing the known ones) or a value of the wrong type.
    """
    unknown = sorted(str(key) for key in values if key not in types_by_name)
    if unknown:
        raise ValueError(f"{name(unknown[0])} is not an option; valid options: {sorted(types_by_name)}")
    return {key: coerce(value, types_by_name[key], name(key)) for key, value in values.items()}
