"""The benchmark's own config shape: typed values, and one clear line for a wrong shape."""

import re

import pytest

from classification.benchmark import CONFIG, load_config, main
from erasure.jobconfig import run_cli

GOOD = """defaults: {pretrain_epochs: 2, pretrain_lr: 0.05}
random:
  scissorhands: {learning_rate: 5e-2, num_train_epochs: 1, kept_fraction: 0.99}
  salun+loreun: {learning_rate: 0.005, num_train_epochs: '2'}
class:
  finetune: {learning_rate: 0.05, num_train_epochs: 1}
grid:
  finetune: {learning_rate: [1e-2, 0.05], num_train_epochs: [1, 2]}
"""


def write(tmp_path, text):
    path = tmp_path / "bench.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_shipped_config_loads():
    config = load_config(CONFIG)
    assert config["random"]["scissorhands"]["method"] == "scissorhands"
    assert isinstance(config["defaults"]["pretrain_lr"], float)


def test_values_are_typed_and_names_give_method_and_plugin(tmp_path):
    config = load_config(write(tmp_path, GOOD))
    scissorhands, salun = config["random"]["scissorhands"], config["random"]["salun+loreun"]
    assert scissorhands["learning_rate"] == 0.05 and isinstance(scissorhands["learning_rate"], float)
    assert (salun["method"], salun["loreun"], salun["num_train_epochs"]) == ("salun", True, 2)
    assert config["grid"]["finetune"]["learning_rate"] == [0.01, 0.05]


@pytest.mark.parametrize("old,new,message", [
    ("num_train_epochs: 1, kept", "num_train_epochs: 1.5, kept",
     "random.scissorhands.num_train_epochs=1.5 is not an integer"),
    ("kept_fraction: 0.99", "kept_fraction: 1.5", "random.scissorhands: kept_fraction=1.5 must be in (0, 1)"),
    ("kept_fraction: 0.99", "kep_fraction: 0.99", "random.scissorhands.kep_fraction is not an option"),
    ("finetune: {learning_rate: 0.05, num_train_epochs: 1}", "finetune: {learning_rate: 0.05}",
     "class.finetune: missing ['num_train_epochs']"),
    ("finetune: {learning_rate: 0.05, num_train_epochs: 1}", "finetune: 0.05", "class.finetune: expected a mapping"),
    ("salun+loreun", "salun+other", "random.salun+other: unknown plugin '+other'"),
    ("salun+loreun", "nosuch", "random.nosuch: method='nosuch' is unknown"),
    ("pretrain_lr: 0.05", "pretrain_lr: fast", "defaults.pretrain_lr='fast' is not a number"),
    ("defaults: {pretrain_epochs: 2, pretrain_lr: 0.05}", "defaults: {pretrain_epochs: 2}", "defaults needs"),
    ("class:", "klass:", "sections ['defaults', 'grid', 'klass', 'random']; expected"),
    ("learning_rate: [1e-2, 0.05]", "learning_rate: 0.05", "grid.finetune.learning_rate=0.05 is not a list"),
])
def test_a_wrong_shape_fails_with_one_line_naming_the_place(tmp_path, old, new, message):
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(ValueError, match=re.escape(f"{path}: {message}") if "sections" not in message
                       else re.escape(message)) as caught:
        load_config(path)
    assert "\n" not in str(caught.value)


def test_the_job_exits_with_an_error_line_before_training(tmp_path):
    path = write(tmp_path, GOOD.replace("pretrain_lr: 0.05", "pretrain_lr: [0.05]"))
    with pytest.raises(SystemExit) as caught:
        run_cli(main, ["--config", str(path), "--out", str(tmp_path / "out.json")])
    assert caught.value.code == f"error: {path}: defaults.pretrain_lr=[0.05] is not a number (float), e.g. 1e-4"
    with pytest.raises(SystemExit, match=r"error: --methods \['nope'\] not in the random section"):
        run_cli(main, ["--config", str(write(tmp_path, GOOD)), "--methods", "nope"])
    assert not (tmp_path / "out.json").exists()


@pytest.mark.parametrize("make_out, message", [
    (lambda tmp: tmp, "is a folder"),
    (lambda tmp: (tmp / "file.txt").write_text("x") and tmp / "file.txt" / "results.json", "is a file, not a folder"),
])
def test_a_bad_out_is_refused_before_any_training(tmp_path, make_out, message):
    from classification.benchmark import main

    with pytest.raises((IsADirectoryError, NotADirectoryError), match=message):
        main(["--quick", "--out", str(make_out(tmp_path))])
