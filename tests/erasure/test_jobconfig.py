"""Typed job configs: YAML values and CLI flags go through one annotation-driven coercer."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from erasure import jobconfig
from erasure.coerce import coerce
from erasure.config import MethodConfig


@dataclass
class JobConfig:
    learning_rate: float = 1e-5
    train_batch_size: int = 16
    num_train_epochs: int = 5
    overwrite_output_dir: bool = False
    max_grad_norm: float | None = 1.0
    output_dir: str = "runs"
    forget_classes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.train_batch_size < 1:
            raise ValueError(f"train_batch_size={self.train_batch_size} must be >= 1")


def parse_yaml(tmp_path: Path, text: str, *flags: str) -> tuple[JobConfig, MethodConfig]:
    path = tmp_path / "job.yaml"
    path.write_text(text, encoding="utf-8")
    return jobconfig.parse((JobConfig, MethodConfig), ["--config", str(path), *flags])


def test_yaml_values_are_converted_to_the_field_types(tmp_path):
    job, method = parse_yaml(tmp_path, "learning_rate: 1e-4\nnum_train_epochs: '3'\noverwrite_output_dir: 'false'\n"
                                       "trim_include: ['*attn2*']\nforget_classes: [3, '4']\n")
    assert job.learning_rate == 1e-4 and isinstance(job.learning_rate, float)  # PyYAML reads 1e-4 as a string
    assert job.num_train_epochs == 3 and job.overwrite_output_dir is False
    assert method.trim_include == ("*attn2*",) and job.forget_classes == (3, 4)


def test_flags_use_the_same_rules_and_override_yaml(tmp_path):
    job, method = parse_yaml(tmp_path, "learning_rate: 1.0e-4\n", "--learning_rate", "2e-4", "--overwrite_output_dir",
                             "--trim_include", "*attn2*", "--forget_classes", "1", "2", "--lam", "0.5")
    assert (job.learning_rate, job.overwrite_output_dir, job.forget_classes) == (2e-4, True, (1, 2))
    assert (method.trim_include, method.lam) == (("*attn2*",), 0.5)
    (job,) = jobconfig.parse((JobConfig,), ["--overwrite_output_dir", "No"])
    assert job.overwrite_output_dir is False


@pytest.mark.parametrize("text,message", [
    ("train_batch_size: sixteen\n", "job.yaml: train_batch_size='sixteen' is not an integer"),
    ("num_train_epochs: 2.5\n", "job.yaml: num_train_epochs=2.5 is not an integer"),
    ("overwrite_output_dir: 'nope'\n", "job.yaml: overwrite_output_dir='nope' is not a boolean"),
    ("overwrite_output_dir: 2\n", "job.yaml: overwrite_output_dir=2 is not a boolean"),
    ("trim_include: '*attn2*'\n", "job.yaml: trim_include='*attn2*' is not a list of str"),
    ("learning_rate: .nan\n", "job.yaml: learning_rate=nan is not a finite number"),
    ("lam: inf\n", "job.yaml: lam='inf' is not a finite number"),
    ("learning_rate: fast\n", "job.yaml: learning_rate='fast' is not a number"),
    ("learning_rate: null\n", "job.yaml: learning_rate=None is not allowed"),
    ("output_dir: 123\n", "job.yaml: output_dir=123 is not a string"),
    ("forget_classes: [1, two]\n", "job.yaml: forget_classes[1]='two' is not an integer"),
    ("no_such_option: 1\n", "job.yaml: no_such_option is not an option; valid options: ['adversarial_population', 'adversarial_prefix',"),
])
def test_bad_yaml_values_fail_with_one_line_naming_file_key_and_value(tmp_path, text, message):
    with pytest.raises(ValueError, match=re.escape(message)) as caught:
        parse_yaml(tmp_path, text)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("flags,message", [
    (["--train_batch_size", "sixteen"], "--train_batch_size='sixteen' is not an integer"),
    (["--learning_rate", "nan"], "--learning_rate='nan' is not a finite number"),
    (["--overwrite_output_dir", "maybe"], "--overwrite_output_dir='maybe' is not a boolean"),
])
def test_bad_flags_fail_as_value_errors_naming_the_flag(flags, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        jobconfig.parse((JobConfig,), flags)


def test_none_only_for_optional_fields(tmp_path):
    job, _ = parse_yaml(tmp_path, "max_grad_norm: null\n")
    assert job.max_grad_norm is None
    assert coerce("3", int | None, "x") == 3 and coerce(None, int | None, "x") is None


@pytest.mark.parametrize("text,message", [
    ("a: [1,\n", "job.yaml:2: expected the node content"),
    ("x: !!python/object/apply:os.system ['true']\n", "job.yaml:1: could not determine a constructor"),
    ("base: &b 1\nlam: *b\n", "job.yaml:1: YAML anchors and aliases"),
    ("lam: 1\nlam: 2\n", "job.yaml:2: duplicate key 'lam'"),
    ("- lam\n", "expected a mapping of option: value, got list"),
])
def test_yaml_errors_are_one_line_with_file_and_line(tmp_path, text, message):
    with pytest.raises(ValueError, match=re.escape(message)) as caught:
        parse_yaml(tmp_path, text)
    assert "\n" not in str(caught.value)


def test_an_alias_bomb_fails_fast(tmp_path):
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 12)]
    started = time.perf_counter()
    with pytest.raises(ValueError, match="anchors and aliases"):
        parse_yaml(tmp_path, "\n".join(levels) + "\n")
    assert time.perf_counter() - started < 5.0


def test_large_and_non_utf8_files_are_refused_naming_the_file(tmp_path):
    path = tmp_path / "utf16.yaml"
    path.write_bytes("lam: 0.5\n".encode("utf-16"))
    with pytest.raises(ValueError, match=r"utf16.yaml: not UTF-8 text \(byte offset 0"):
        jobconfig.parse((MethodConfig,), ["--config", str(path)])
    big = tmp_path / "big.yaml"
    big.write_text("# padding\n" * (jobconfig.MAX_YAML_BYTES // 10 + 1))
    with pytest.raises(ValueError, match="big.yaml: .* bytes is too large"):
        jobconfig.parse((MethodConfig,), ["--config", str(big)])
    bom = tmp_path / "bom.yaml"
    bom.write_bytes("lam: 0.5\n".encode("utf-8-sig"))
    (method,) = jobconfig.parse((MethodConfig,), ["--config", str(bom)])
    assert method.lam == 0.5


def test_run_cli_turns_a_bad_value_into_one_error_line(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("train_batch_size: sixteen\n")
    with pytest.raises(SystemExit) as caught:
        jobconfig.run_cli(lambda argv: jobconfig.parse((JobConfig,), argv), ["--config", str(path)])
    assert caught.value.code == f"error: {path}: train_batch_size='sixteen' is not an integer (int), e.g. 3"


@pytest.mark.parametrize("error", [FileExistsError("f exists"), NotADirectoryError("out is a file"),
                                   IsADirectoryError("x is a folder"), PermissionError("read-only"),
                                   ChildProcessError("a child failed"), ValueError("two\nlines")])
def test_run_cli_turns_input_errors_into_one_line_and_status_1_but_not_bugs(error):
    def raising(exception):
        def main(argv):
            raise exception

        return main

    with pytest.raises(SystemExit) as caught:
        jobconfig.run_cli(raising(error), [])
    assert isinstance(caught.value.code, str) and caught.value.code.startswith("error: ")  # a str exits with 1
    assert "\n" not in caught.value.code
    for bug in (TypeError("a bug"), KeyError("a bug"), AttributeError("a bug")):  # keep their traceback
        with pytest.raises(type(bug)):
            jobconfig.run_cli(raising(bug), [])
