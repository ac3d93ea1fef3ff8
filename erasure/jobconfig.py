"""Typed job configs from a YAML file plus CLI flags.

Every dataclass field becomes one flag of the same name (``--kept_fraction 0.99``); a YAML
file given with ``--config`` lists only what differs from the defaults, and flags given on
the command line override it. Several dataclasses can share one flat namespace (a job's
own config and the :class:`~erasure.config.MethodConfig`).

YAML values and flags are typed by the fields' annotations with the same rules
(`erasure.coerce`): ``learning_rate: 1e-4`` is a float, ``num_train_epochs: 2.5`` and
``overwrite_output_dir: 'nope'`` are errors naming the file (or ``--flag``), the key, the value and
the expected type. YAML files are read by `read_yaml`: UTF-8, at most 1 MiB, no anchors or
aliases, no duplicate keys, no Python tags.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import textwrap
import tokenize
import types
import typing
from pathlib import Path
from typing import Any, Sequence, TypeVar

import yaml

from erasure.coerce import coerce_fields, field_types, parse_bool

T = TypeVar("T")

MAX_YAML_BYTES = 1 << 20  # a config lists a few dozen options; anything this large is not one


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
    """A CLI boolean word (see `erasure.coerce.BOOL_WORDS`)."""
    value = parse_bool(text)
    if value is None:
        raise argparse.ArgumentTypeError(f"expected true/false, got '{text}'")
    return value


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type,
                            defaults: dict[str, Any] | None = None) -> None:
    """Add one ``--<field>`` flag per field of ``cls`` (default: unset), its help from the field's
    comment (`field_comments`) with its type and default (``defaults`` override the dataclass's).

    Flags are kept as text; `parse` converts them with the same rules as YAML values
    (`erasure.coerce`), so a bad flag fails with one line naming it.
    """
    hints = typing.get_type_hints(cls)
    comments = field_comments(cls)
    for field in dataclasses.fields(cls):
        if any(a.dest == field.name for a in parser._actions):
            continue
        kind, many = _base_type(hints[field.name])
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "dest": field.name,
                                  "help": _help_text(field, hints[field.name], comments.get(field.name),
                                                     (defaults or {}).get(field.name, dataclasses.MISSING))}
        if kind is bool:
            kwargs.update(nargs="?", const=True, metavar="BOOL")
        if many:
            kwargs["nargs"] = "+"
        parser.add_argument(f"--{field.name}", **kwargs)


def field_comments(cls: type) -> dict[str, str]:
    """field name -> the comment that documents it in the class source (the comment lines right
    above the field and its trailing comment), for every dataclass in ``cls``'s MRO.

    The comments beside the fields are the documentation of the options; the flags' help reads
    them rather than repeating them in a second place. Classes without source give nothing.
    """
    found: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            lines, _ = inspect.getsourcelines(klass)
        except (OSError, TypeError):
            continue
        source = textwrap.dedent("".join(lines))
        comments = {tok.start[0]: tok.string.lstrip("#").strip()
                    for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}
        code_lines = source.splitlines()
        for node in ast.parse(source).body[0].body:
            if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
                continue
            above, line = [], node.lineno - 1
            while line >= 1 and line in comments and code_lines[line - 1].lstrip().startswith("#"):
                above.insert(0, comments[line])
                line -= 1
            parts = above + ([comments[node.end_lineno]] if node.end_lineno in comments else [])
            if parts:
                found[node.target.id] = " ".join(parts)
    return found


def _help_text(field: dataclasses.Field, annotation: Any, comment: str | None, domain_default: Any) -> str:
    """A flag's help: the field's ``metadata["help"]`` or its comment, then type and default."""
    kind, many = _base_type(annotation)
    type_name = getattr(kind, "__name__", str(kind)) + (" ..." if many else "")
    if domain_default is not dataclasses.MISSING:
        default = domain_default
    elif field.default is not dataclasses.MISSING:
        default = field.default
    elif field.default_factory is not dataclasses.MISSING:
        default = field.default_factory()
    else:
        default = "required"
    text = field.metadata.get("help") or comment or ""
    text = f"{text} [{type_name}, default: {default}]" if text else f"[{type_name}, default: {default}]"
    return text.replace("%", "%%")  # argparse formats help with %


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader without aliases and anchors (an alias bomb fails at its first alias)
    and without duplicate keys (the second would silently win)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise yaml.composer.ComposerError(None, None, "YAML anchors and aliases (&name, *name) are not allowed; "
                                              "write the values out", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, typing.Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path, name: str = "--config") -> Any:
    """The YAML document in ``path``, read safely: UTF-8 only, at most ``MAX_YAML_BYTES``, no
    aliases, anchors, duplicate keys or Python tags.

    Raises:
        FileNotFoundError: no such file, naming ``name`` and the path.
        ValueError: one line, ``PATH:LINE: problem`` for a YAML error, else naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{name} {path}: no such file")
    size = path.stat().st_size
    if size > MAX_YAML_BYTES:
        raise ValueError(f"{name} {path}: {size} bytes is too large for a config (at most {MAX_YAML_BYTES})")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"{name} {path}: not UTF-8 text (byte offset {err.start}: {data[err.start]:#04x}); "
                         "save it as UTF-8") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(err, "problem", None) or str(err)
        context = getattr(err, "context", None)
        message = f"{problem} ({context})" if context else problem
        raise ValueError(f"{where}: {' '.join(str(message).split())}") from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping of option: value (still untyped; `parse` types it), read by `read_yaml`.

    Raises:
        FileNotFoundError / ValueError: naming the file.
    """
    data = read_yaml(path) or {}
    if not isinstance(data, dict):
        raise ValueError(f"--config {path}: expected a mapping of option: value, got {type(data).__name__}")
    keys = [key for key in data if not isinstance(key, str)]
    if keys:
        raise ValueError(f"--config {path}: option names must be text, got {keys[0]!r}")
    return data


def build(cls: type[T], values: dict[str, Any]) -> T:
    """Instantiate ``cls`` from the keys of ``values`` that are its fields."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})


def parse(classes: Sequence[type], argv: Sequence[str] | None = None, description: str = "",
          defaults: dict[str, Any] | None = None, parser: argparse.ArgumentParser | None = None) -> tuple[Any, ...]:
    """Parse defaults, then YAML, then flags into one instance of each dataclass in ``classes``.

    ``defaults`` overrides dataclass defaults for one domain (e.g. kept_fraction=0.995 for
    Stable Diffusion) and is itself overridden by the YAML file and the flags. Every value is
    converted to its field's type by `erasure.coerce` (the same rules for YAML and flags).

    Args:
        parser: a parser with a job's own spellings (e.g. ``--out`` for ``output_dir``);
            ``--config`` and one flag per remaining field are added to it.

    Raises:
        SystemExit(2): via argparse for unknown flags.
        ValueError: one line naming the file (or ``--flag``), the option, the bad value and
            the expected type; YAML keys that are no field of any class (listing the valid ones).
    """
    parser = parser or argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default=None, help="YAML file with option: value pairs")
    for cls in classes:
        add_dataclass_arguments(parser, cls, defaults)
    args = vars(parser.parse_args(argv))
    config_path = args.pop("config", None)
    values = load_yaml(config_path) if config_path else {}
    known = field_types(*classes)
    typed = {**coerce_fields(defaults or {}, known, lambda key: f"defaults: {key}"),
             **coerce_fields(values, known, lambda key: f"{config_path}: {key}"),
             **coerce_fields(args, known, lambda key: f"--{key}")}
    return tuple(build(cls, typed) for cls in classes)


def to_dict(*instances: Any) -> dict[str, Any]:
    """Merge dataclass instances into one JSON-able dict (tuples become lists)."""
    merged: dict[str, Any] = {}
    for instance in instances:
        for key, value in dataclasses.asdict(instance).items():
            merged[key] = list(value) if isinstance(value, tuple) else value
    return merged


def tracker_config(config: dict[str, Any], secrets: Sequence[str] = ("hub_token", "token")) -> dict[str, Any]:
    """A job's options as trackers take them (``accelerator.init_trackers(config=...)``): only
    str / int / float / bool values, lists joined by ",", None dropped, secrets left out.

    TensorBoard's hparams accept scalars and strings only; a list such as ``trim_include``
    would make it raise.
    """
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if value is None or key in secrets:
            continue
        if isinstance(value, (list, tuple)):
            value = ",".join(map(str, value))
        flat[key] = value if isinstance(value, (str, int, float, bool)) else str(value)
    return flat


# What jobs raise for bad input (values, files, folders, permissions), divergence (NaN), a
# missing optional dependency and a failed child process (benchmarks). TypeError, KeyError, AttributeError, ... are bugs and keep their
# traceback: wrong-typed config values are already ValueErrors (`erasure.coerce`), and damaged
# files are ValueErrors naming them (`erasure.tensor_files`, `pipelines.model_folder`).
INPUT_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
                PermissionError, FloatingPointError, ImportError, ChildProcessError)


def run_cli(main: Any, argv: Sequence[str] | None = None) -> None:
    """Run a job's ``main``; bad input and divergence end with one ``error: ...`` line and exit 1.
    A job that ends with its process group up (a launched sampling or attack job) has it taken down
    (``erasure.launch.end_process_group``): gloo drained before the interpreter's end.

    Raises:
        SystemExit: with the message (status 1) for the errors in `INPUT_ERRORS`; other
            exceptions propagate unchanged.
    """
    import sys

    from erasure.launch import end_process_group

    try:
        main(argv)
    except INPUT_ERRORS as err:
        message = " ".join(str(err).split()) or type(err).__name__
        sys.exit(f"error: {message}")
    end_process_group()
