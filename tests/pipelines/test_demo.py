"""The offline demo (README main command): argument errors fast, the full runs behind -m slow."""

import json
import subprocess
import sys

import pytest

import pipelines.demo as demo
from pipelines.demo import grid_rows, main, parse

SIDE_KEYS = {"erased", "others", "worst_other", "worst_other_name", "diversity", "alignment", "fid", "kid", "numeral", "paraphrase", "groups"}


def test_bad_digit_names_the_argument():
    with pytest.raises(ValueError, match="digit='eleven' is unknown"):
        parse(["--digit", "eleven"])


def test_digit_and_concept_forms(tmp_path):
    assert parse(["--digit", "7"]).concept == "digits:seven"
    assert parse(["--concept", "digits:7"]).concept == "digits:seven"
    assert parse(["--concept", "color:Red"]).concept == "color:red"
    assert parse([]).concept == "color:red"
    several = parse(["--concept", "digits:2, color:Red,digits:two"])
    assert several.concept == "digits:two,color:red" and several.concepts == ["digits:two", "color:red"]
    listed = tmp_path / "concepts.txt"  # @FILE, as generate and erase read it
    listed.write_text("digits:2  # the digit\ncolor:red\n")
    assert parse(["--concept", f"@{listed}"]).concepts == ["digits:two", "color:red"]
    with pytest.raises(ValueError, match="not both"):
        parse(["--digit", "2", "--concept", "color:red"])


@pytest.mark.parametrize("argv, message", [
    (["--concept", "color:pink"], "concept='color:pink': unknown color 'pink'; known: \\['white'"),
    (["--concept", "shape:round"], "unknown concept 'shape:round'"),
    (["--method", "nope"], "method='nope' is unknown"),
    (["--concept", "digits:two,color:pink"], "concept='digits:two,color:pink': unknown color 'pink'"),
])
def test_bad_concept_or_method_fails_before_any_work(argv, message):
    with pytest.raises(ValueError, match=message):
        parse(argv)


def test_grid_has_eight_seeds_per_row():
    labels, prompts = grid_rows("digits:two")
    assert len(labels) == 10 and all(len(row) == 8 for row in prompts)
    labels, prompts = grid_rows("color:red")
    assert labels[1] == "red" and all("red" in p for p in prompts[1]) and len(prompts[1]) == 8
    # the colour-free prompts, on neither side of a colour erasure, get a row of their own
    assert labels[-1] == "colour-free" and prompts[-1][2] == "a handwritten digit two" and len(labels) == 7
    labels, prompts = grid_rows("digits:two,color:red")  # the digit rows (colour-free), then the colour rows
    assert labels == [*grid_rows("digits:two")[0], *grid_rows("color:red")[0][:-1]] and len(prompts) == 16
    assert grid_rows("digits:two,digits:five") == grid_rows("digits:two")


@pytest.mark.parametrize("argv", [["--digit", "x"], ["--concept", "color:pink"], ["--method", "nope"]])
def test_cli_exits_1_without_output(tmp_path, argv):
    out = tmp_path / "o"
    proc = subprocess.run([sys.executable, "-m", "pipelines.demo", *argv, "--output_dir", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stderr.startswith("error: ") and len(proc.stderr.splitlines()) == 1
    assert not out.exists()


def test_overwrite_with_a_bad_method_keeps_the_old_folder(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("an earlier run")
    proc = subprocess.run([sys.executable, "-m", "pipelines.demo", "--method", "nope", "--overwrite_output_dir",
                           "--output_dir", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and (out / "keep.txt").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("concept", ["digits:two", "color:red"])
def test_demo_runs_end_to_end(tmp_path, concept):
    """Both kinds of concept through generate -> erase -> judge; metrics.json has every group."""
    metrics = main(["--concept", concept, "--output_dir", str(tmp_path / "demo")])
    saved = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert saved["concept"] == concept and (tmp_path / "demo" / "grid.png").is_file()
    for side in ("before", "after"):
        assert {"erased", "others", "numeral", "paraphrase", "groups", "diversity", "fid", "kid"} <= set(saved[side])
    assert metrics["before"]["erased"] >= 0.8


def test_metrics_json_has_the_utility_figures_on_both_sides(tmp_path, monkeypatch, fast_default_model):
    """A few-step run on the fast build: the keys of metrics.json, FID/KID/diversity per side."""
    fast = fast_default_model
    monkeypatch.setattr(demo, "build_default_model", lambda: fast)
    monkeypatch.setattr(demo, "default_judge_path", lambda: fast / "judge")
    metrics = main(["--concept", "digits:two", "--output_dir", str(tmp_path / "demo"), "--num_images", "4",
                    "--eval_images", "2", "--num_inference_steps", "2", "--erase_args", "--num_train_epochs", "1",
                    "--train_batch_size", "4"])
    saved = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert saved["before"].keys() >= SIDE_KEYS and saved["after"].keys() >= SIDE_KEYS | {"fid_base", "kid_base",
                                                                                        "diversity_ratio"}
    assert "fid_base" not in saved["before"]
    assert saved["after"]["fid_base"] >= 0 and saved["after"]["diversity_ratio"] > 0
    assert metrics["after"]["fid"] == saved["after"]["fid"]
    # the same utility over the kept prompts (the other nine digits) alone, on both sides
    assert {"fid", "kid", "diversity"} <= saved["before"]["kept"].keys()
    assert {"fid_base", "kid_base", "diversity_ratio"} <= saved["after"]["kept"].keys()
    assert saved["after"]["color_kept"] is not None
    # where the erased digit's prompts went, and whether they kept the colour they name
    assert 0 <= saved["after"]["erased_color_kept"] <= 1
    assert sum(saved["after"]["erased_shares"].values()) == pytest.approx(1.0)
    assert saved["after"]["erased_shares"]["two"] == pytest.approx(saved["after"]["erased"])


def test_several_concepts_report_each_one(tmp_path, monkeypatch, fast_default_model):
    """One joint erase; metrics.json gives every concept its own figures on both sides."""
    fast = fast_default_model
    monkeypatch.setattr(demo, "build_default_model", lambda: fast)
    monkeypatch.setattr(demo, "default_judge_path", lambda: fast / "judge")
    main(["--concept", "digits:two,color:red", "--output_dir", str(tmp_path / "demo"), "--num_images", "4",
          "--eval_images", "2", "--num_inference_steps", "2", "--erase_args", "--num_train_epochs", "1",
          "--train_batch_size", "4"])
    saved = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert saved["concept"] == "digits:two,color:red" and saved["erased"] == ["two", "red"]
    for side in ("before", "after"):
        assert set(saved[side]["concepts"]) == {"digits:two", "color:red"}
        for figures in saved[side]["concepts"].values():
            assert {"erased", "others", "numeral", "paraphrase", "kept"} <= set(figures)
        assert {"fid", "kid", "diversity", "groups"} <= set(saved[side])
    assert saved["after"]["diversity_ratio"] > 0
    erase_config = json.loads((tmp_path / "demo" / "erased" / "erase_config.json").read_text())
    assert erase_config["config"]["concept"] == "digits:two,color:red"
    assert erase_config["data"]["forget_images"] == 8  # --num_images per concept, as in each single run
