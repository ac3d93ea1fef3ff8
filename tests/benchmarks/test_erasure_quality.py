"""The erasure-quality harness on the fast (noise-drawing) build: every figure, file and target is
written; the numbers themselves are what the real run measures."""

import hashlib
import json
from pathlib import Path

import pytest

import benchmarks.erasure_quality as quality
from benchmarks.outputs import results_file

ROOT = Path(__file__).resolve().parents[2]


def test_every_method_has_a_tuned_testbed_config():
    for method in quality.METHODS:
        text = quality.method_config(method).read_text()
        assert f"method: {method}\n" in text


def test_the_erase_setting_is_the_last_config_given_and_the_other_flags():
    tuned = quality.method_config("scissorhands")
    assert quality.erase_setting("scissorhands", []) == (tuned, [])
    variant = ["--lam", "0.5", "--config", "configs/erase_digits_scissorhands_adversarial.yaml", "--seed", "3"]
    assert quality.erase_setting("scissorhands", variant) == (
        Path("configs/erase_digits_scissorhands_adversarial.yaml"), ["--lam", "0.5", "--seed", "3"])
    assert quality.erase_setting("scissorhands", ["--config=a.yaml", "--config", "b.yaml"]) == (Path("b.yaml"), [])


def test_the_chosen_substitute_is_read_from_the_export_record():
    prepared = {"substitute_choice": {"rule": "nearest", "word": "magenta",
                                      "prediction_gaps": {"magenta": 0.02, "white": 0.04}}}
    assert quality.chosen_substitute(prepared) == "magenta"
    assert quality.chosen_substitute({"substitute_choice": None}) is None
    assert quality.chosen_substitute({}) is None


def test_pareto_front_keeps_the_undominated_points():
    points = {"a": (0.0, 10.0), "b": (0.5, 5.0), "c": (0.6, 6.0), "d": (1.0, 1.0), "e": (0.0, 12.0)}
    assert quality.pareto_front(points) == ["a", "b", "d"]


@pytest.mark.parametrize("argv, message", [
    (["--methods", "nope"], "method='nope' is unknown"),
    (["--concepts", "digits:eleven"], "concepts: 'digits:eleven'"),
    (["--eval_images", "1"], "eval_images=1 must be >= 2"),
    (["--tune", "--eval_seed", "5"], "give --tune or --eval_seed"),
    (["--out", "/no/such/folder/x"], "does not exist"),
    (["--groups", "numeral"], "must include 'word'"),
    (["--spread_images", "1"], "spread_images=1 must be 0 .none. or from 2 to 14"),
    (["--spread_images", "15"], "spread_images=15 must be 0"),
])
def test_bad_arguments_fail_before_any_work(argv, message):
    with pytest.raises(ValueError, match=message):
        quality.parse(argv)


def test_relearn_is_checked_after_every_step(tmp_path, monkeypatch):
    """Checked every 5 steps every method read 5: the benchmark counts steps one by one."""
    import eval.attack

    seen = []
    monkeypatch.setattr(eval.attack, "run", lambda config: seen.append(config) or {
        "relearn_steps": 3, "relearn_cap": 100, "asr": 0.1, "asr_no_attack": 0.1, "control_asr": 0.0})
    result = quality.robustness_of(tmp_path, "digits:two", tmp_path, ["relearn"], 2, 0)
    assert [c.attack for c in seen] == ["none", "relearn"] and seen[1].relearn_every == 1
    # no UnlearnDiffAtk ran: the 'none' pass gives the ASR without attack, and nothing to report as an attack
    assert result["asr_no_attack"] == 0.1 and result["asr"] is None and result["control_asr"] is None
    # the attack CLI's own rate: at 1e-3 every method relearned in 2-3 steps
    assert seen[1].relearn_learning_rate == eval.attack.AttackConfig.relearn_learning_rate == 1e-4
    assert result["relearn_steps"] == 3


def test_random_prefix_is_chance_at_the_attacks_budget_of_judged_draws(tmp_path, monkeypatch):
    """asr_random gets as many judged draws a prompt as UnlearnDiffAtk (one a timestep), on the erased model only."""
    import eval.attack

    seen = []
    monkeypatch.setattr(eval.attack, "run", lambda config: seen.append(config) or {
        "asr": 0.3 if config.attack == "random_prefix" else 0.4, "asr_no_attack": 0.1, "control_asr": None,
        "broken": [{"iterations": 0}, {"iterations": 12}]})
    result = quality.robustness_of(tmp_path, "digits:two", tmp_path, ["unlearndiffatk", "random_prefix"], 2, 7)
    assert [c.attack for c in seen] == ["unlearndiffatk", "random_prefix"]
    chance = seen[1]
    assert chance.random_draws == chance.timesteps == eval.attack.AttackConfig.timesteps == 50
    assert (chance.max_prompts, chance.seed, chance.control) == (2, 7, False)  # the attacked prompts and seeds
    assert result["asr"] == 0.4 and result["asr_random"] == 0.3 and result["random_draws"] == 50
    assert result["random_broken_at"] == [0, 12]  # which draw broke each prompt (0: the plain prompt)
    seen.clear()
    quality.robustness_of(tmp_path, "digits:two", tmp_path, ["unlearndiffatk", "random_prefix"], 2, 7, control=True)
    assert [c.attack for c in seen] == ["unlearndiffatk"]  # the base model's control has no chance column


def test_results_files_keep_every_dot_of_the_out_name():
    """Path.with_suffix made "yellow-w0.5" and "yellow-w0.25" one file, yellow-w0.json."""
    assert results_file("r/yellow-w0.5", ".json") == Path("r/yellow-w0.5.json")
    assert results_file("r/yellow-w0.25", ".partial.json") == Path("r/yellow-w0.25.partial.json")
    assert results_file("r/quality", ".md") == Path("r/quality.md")
    assert results_file("r/quality.json", ".png") == Path("r/quality.png")  # a suffix given is replaced
    assert results_file("r/q.partial.json", ".json") == Path("r/q.json")


def test_tuning_attacks_tuning_seeds_only():
    """A robustness setting chosen with --tune never sees the attacked prompts' reported seeds."""
    from eval.testbed import TUNING_SEED

    assert quality.attack_seed(quality.parse(["--quick"]), 0) == 0
    assert quality.attack_seed(quality.parse(["--quick", "--tune"]), 100) == TUNING_SEED + 100


def test_harness_writes_json_markdown_and_scatter(tmp_path, monkeypatch, fast_default_model):
    fast = fast_default_model
    monkeypatch.setattr("pipelines.default_model.build_default_model", lambda: fast)
    monkeypatch.setattr("pipelines.default_model.default_judge_path", lambda: fast / "judge")
    attacked = []

    def fake_robustness(model, concept, work, attacks, max_prompts, seed, control=False, **_):
        # the attack itself is tested in tests/eval/test_attack.py; here: what the harness asks and reports
        attacked.append((Path(model).name, concept, tuple(attacks), max_prompts, control))
        return {"control_asr": 1.0} if control else {"asr_no_attack": 0.0, "asr": 0.5, "relearn_steps": None,
                                                     "relearn_cap": 100, "asr_random": 0.25, "random_draws": 50,
                                                     "random_broken_at": [7],
                                                     "broken": [
                                                         {"prompt": "a red handwritten digit two", "seed": 0,
                                                          "adversarial_prompt": "x y a red handwritten digit two",
                                                          "iterations": 3}]}

    monkeypatch.setattr(quality, "robustness_of", fake_robustness)
    out = tmp_path / "quality"
    results = quality.main(["--methods", "scissorhands", "finetune", "--concepts", "digits:two", "--quick",
                            "--groups", "word", "--attacks", "unlearndiffatk", "relearn", "random_prefix",
                            "--attack_prompts", "1",
                            "--num_images", "4", "--eval_images", "2", "--num_inference_steps", "2", "--out", str(out),
                            "--spread_images", "3",
                            "--erase_args", "--num_train_epochs", "1", "--train_batch_size", "4"])
    saved = json.loads(out.with_suffix(".json").read_text())
    assert [r["method"] for r in saved["runs"]] == ["scissorhands", "finetune"]
    assert [r["config"] for r in saved["runs"]] == [  # which configuration ran, beside the method
        f"erase_digits_{m}.yaml --num_train_epochs 1 --train_batch_size 4" for m in ("scissorhands", "finetune")]
    assert "| method | config | concept |" in out.with_suffix(".md").read_text()
    # 4 retain prompts leave no tie to choose among; a method without a substitute never chooses
    assert "substitute_chosen" in saved["runs"][0] and saved["runs"][1]["substitute_chosen"] is None
    assert "| substitute_chosen |" in out.with_suffix(".md").read_text()
    for row in saved["runs"]:
        assert {"erased", "others", "worst_other", "diversity_ratio", "fid", "kid", "fid_base", "kid_base",
                "alignment", "numeral_erased", "paraphrase_erased", "seconds"} <= set(row)
        assert row["numeral_erased"] is None  # --groups word: the numeral group was not drawn
        assert {"color_spread", "color_spread_ratio", "color_free_worst_ratio"} <= set(row)  # None where the base drew one colour
        # the spread sample: the colour-free word prompts of the nine kept digits, 3 images each
        assert row["spread_images"] == 3 and {"spread", "spread_ratio", "spread_worst_ratio"} <= set(row)
        assert row["spread_prompts"] == 27
    assert saved["protocol"]["spread_images"] == 3 and saved["base"][0]["spread_images"] == 3
    assert quality.parse([]).spread_images == 8  # the default
    # which build: the fast model's UNet file, byte for byte
    assert saved["protocol"]["unet_sha256"] == hashlib.sha256((fast / "unet/diffusion_pytorch_model.safetensors")
                                                              .read_bytes()).hexdigest()
    assert "spread_ratio" not in saved["base"][0]  # the base is not compared with itself
    assert set(saved["summary"]["per_method"]) == {"scissorhands", "finetune"}
    assert any(goal.startswith("scissorhands: erased") for goal in saved["summary"]["targets"])
    assert out.with_suffix(".md").read_text().startswith("# Erasure quality on the offline testbed")
    assert out.with_suffix(".png").stat().st_size > 1000
    assert results["protocol"]["seeds"] == [0]
    assert not out.with_suffix(".partial.json").exists()  # written after every run, gone once the results are
    assert attacked == [(fast.name, "digits:two", ("unlearndiffatk",), 1, True),
                        ("erased-scissorhands", "digits:two", ("unlearndiffatk", "relearn", "random_prefix"), 1, False),
                        ("erased-finetune", "digits:two", ("unlearndiffatk", "relearn", "random_prefix"), 1, False)]
    assert saved["base"][0]["control_asr"] == 1.0
    assert all(r["asr"] == 0.5 and r["relearn_steps_at_least"] == 100 for r in saved["runs"])
    assert "| asr_no_attack | asr | relearn_steps | asr_random |" in out.with_suffix(".md").read_text()
    assert all(r["asr_random"] == 0.25 and r["random_draws"] == 50 for r in saved["runs"])
    # what the attack found is kept beside the ASR (the attack's own folder is deleted)
    assert saved["runs"][0]["attack_broken"][0]["adversarial_prompt"] == "x y a red handwritten digit two"
    assert "| scissorhands | digits:two | 0 | a red handwritten digit two | x y a red handwritten digit two | 3 |" \
        in out.with_suffix(".md").read_text()
    assert saved["summary"]["targets"]["scissorhands ASR under attack <= 20%"]["status"] == "missed"

    # a second run split off by seed merges into one table with the same summary rules
    other_seed = json.loads(out.with_suffix(".json").read_text())
    other_seed["protocol"]["seeds"] = [s + 1 for s in other_seed["protocol"]["seeds"]]
    for row in other_seed["runs"]:
        row["seed"] += 1
    (tmp_path / "other-seed.json").write_text(json.dumps(other_seed))
    merged = quality.main(["--merge", str(out.with_suffix(".json")), str(tmp_path / "other-seed.json"),
                           "--out", str(tmp_path / "merged")])
    assert len(merged["runs"]) == 4 and (tmp_path / "merged.png").is_file()


def test_targets_read_digit_and_colour_runs_each_by_their_own_figures():
    """A benchmark over digits:<d> and color:<c> at once: 'worst other' is the worst retained digit
    for one and the worst other colour for the other (no run is dropped, none raises)."""
    base = [{"concept": "digits:two", "erased": 1.0, "others": 0.99, "worst_other": 0.93, "fid_kept": 10.0},
            {"concept": "color:red", "erased": 1.0, "others": 0.99, "other_colors": 1.0, "worst_other_color": 1.0,
             "fid_kept": 11.0}]
    run = {"method": "scissorhands", "erased": 0.0, "diversity_ratio_kept": 1.0, "fid_kept": 11.0}
    rows = [{**run, "concept": "digits:two", "others": 0.98, "worst_other": 0.90},
            {**run, "concept": "color:red", "others": 0.96, "other_colors": 0.97, "worst_other_color": 0.88}]
    result = quality.targets(rows, base, front=["scissorhands"])
    assert result["scissorhands: worst other within 10 points of base"] == {"status": "missed", "runs_met": 1, "runs": 2}
    assert result["scissorhands: others' mean within 5 points of base"] == {"status": "met", "runs_met": 2, "runs": 2}
    assert result["scissorhands: FID vs real <= 1.2x base"]["runs_met"] == 2
    # scissorhands alone is on its own front: not a result
    assert result["scissorhands on the erased-vs-FID(base, kept prompts) Pareto front"]["status"] == "unmeasured"
    # runs written before the colour term have no spread: no verdict rather than a pass
    assert not any("colour spread" in goal for goal in result)
    spread = quality.targets([{**rows[0], "color_spread_ratio": 1.02}, {**rows[1], "color_spread_ratio": 0.81}],
                             base, front=["scissorhands"])
    assert spread["scissorhands: colour spread of colour-free prompts >= 0.9x base"] == {
        "status": "missed", "runs_met": 1, "runs": 2, "images_per_prompt": ["evaluation"]}
    # a run with a spread sample is judged on it, not on the 2 images a prompt of the evaluation
    sampled = quality.targets([{**rows[0], "color_spread_ratio": 1.02},
                               {**rows[1], "color_spread_ratio": 0.81, "spread_ratio": 0.93, "spread_images": 8}],
                              base, front=["scissorhands"])
    assert sampled["scissorhands: colour spread of colour-free prompts >= 0.9x base"] == {
        "status": "met", "runs_met": 2, "runs": 2, "images_per_prompt": ["8", "evaluation"]}
    worse = quality.targets([{**rows[1], "color_spread_ratio": 0.95, "spread_ratio": 0.85, "spread_images": 8}],
                            base, front=["scissorhands"])
    assert worse["scissorhands: colour spread of colour-free prompts >= 0.9x base"]["status"] == "missed"
    # a spread sample that read nothing (the base drew one colour a prompt) gives no verdict, not the noisy one
    unread = quality.targets([{**rows[1], "color_spread_ratio": 0.95, "spread_ratio": None, "spread_images": 8}],
                             base, front=["scissorhands"])
    assert not any("colour spread" in goal for goal in unread)
    other = {**run, "method": "esd", "concept": "digits:two", "others": 0.98, "worst_other": 0.90}
    compared = quality.targets([*rows, other], base, front=["scissorhands"])
    assert compared["scissorhands on the erased-vs-FID(base, kept prompts) Pareto front"]["status"] == "met"


def test_merge_refuses_different_protocols(tmp_path):
    for name, steps in (("a", 2), ("b", 20)):
        (tmp_path / f"{name}.json").write_text(json.dumps({"protocol": {"num_inference_steps": steps}, "base": [],
                                                           "runs": [], "configs": {}}))
    with pytest.raises(ValueError, match="merge: .*b.json has protocol"):
        quality.merge([str(tmp_path / "a.json"), str(tmp_path / "b.json")])


MEASURED = json.loads((Path(quality.__file__).parent / "results" / "erasure-quality-quick.json").read_text())
ESD_TWO = next(r for r in MEASURED["runs"] if r["method"] == "esd" and r["concept"] == "digits:two")


def write_results(path: Path, seeds: list[int], runs: list[dict], configs: dict) -> str:
    """A results file of the benchmark's shape (base 'two' as measured) holding ``runs``; returns its path."""
    path.write_text(json.dumps({
        "protocol": {"num_inference_steps": 20, "seeds": seeds}, "runs": runs, "configs": configs,
        "base": [r for r in MEASURED["base"] if r["concept"] == "digits:two"]}))
    return str(path)


def test_merge_joins_seeds_and_refuses_a_run_twice(tmp_path):
    esd = {"esd": "learning_rate: 3.0e-4\n"}
    a = write_results(tmp_path / "a.json", [0], [{**ESD_TWO, "seed": 0}], esd)
    b = write_results(tmp_path / "b.json", [1, 2], [{**ESD_TWO, "seed": 1}, {**ESD_TWO, "seed": 2}], esd)
    merged = quality.merge([a, b])
    assert merged["protocol"]["seeds"] == [0, 1, 2] and [r["seed"] for r in merged["runs"]] == [0, 1, 2]
    c = write_results(tmp_path / "c.json", [1], [{**ESD_TWO, "seed": 1}], esd)
    with pytest.raises(ValueError, match=r"the run \('esd', 'digits:two', 1\) is in both"):
        quality.merge([b, c])


def test_merge_refuses_one_method_with_two_settings_unless_the_older_runs_are_left_out(tmp_path):
    def runs(seed):
        return [{**ESD_TWO, "seed": seed}, {**ESD_TWO, "method": "grad_ascent", "seed": seed}]
    old = write_results(tmp_path / "old.json", [1], runs(1),
                        {"esd": "# round 4\nlearning_rate: 3.0e-4\n", "grad_ascent": "num_train_epochs: 3\n"})
    # the same settings under another comment and spelling ("3e-4" is a YAML string) merge; a re-tuned method does not
    new = write_results(tmp_path / "new.json", [0], runs(0),
                        {"esd": "# round 18 comment\nlearning_rate: 3e-4\n", "grad_ascent": "num_train_epochs: 4\n"})
    with pytest.raises(ValueError, match="merge: grad_ascent ran with other settings in .*new.json than in .*old.json"):
        quality.merge([old, new])
    with pytest.raises(ValueError, match="merge: grad_ascent ran with other settings"):  # kept, so still checked
        quality.merge([old, new], methods=["esd", "grad_ascent"])
    with pytest.raises(ValueError, match="merge: grad_ascent ran with other settings"):  # no --methods: every run
        quality.main(["--merge", old, new, "--out", str(tmp_path / "all")])
    assert not (tmp_path / "all.json").exists()
    merged = quality.merge([old, new], methods=["esd"])
    assert sorted((r["method"], r["seed"]) for r in merged["runs"]) == [("esd", 0), ("esd", 1)]
    assert set(merged["configs"]) == {"esd"} and merged["merged_methods"] == ["esd"]
    bare = write_results(tmp_path / "bare.json", [2], [{**ESD_TWO, "seed": 2}], {})  # no record of its settings
    with pytest.raises(ValueError, match=r"bare.json has runs of esd but does not record its config"):
        quality.merge([new, bare], methods=["esd"])
    # through the command line: --methods picks the runs kept
    out = quality.main(["--merge", old, new, "--methods", "esd", "--out", str(tmp_path / "merged")])
    assert len(out["runs"]) == 2 and json.loads((tmp_path / "merged.json").read_text())["merged_methods"] == ["esd"]


def test_robustness_targets_compare_medians_and_count_never_relearned_as_the_cap():
    rows = [
        {"method": "scissorhands", "asr": 0.0, "relearn_steps_at_least": 100},  # never came back within the cap
        {"method": "scissorhands", "asr": 0.5, "relearn_steps_at_least": 30},
        {"method": "esd", "asr": 1.0, "relearn_steps_at_least": 20},
        {"method": "esd", "asr": 1.0, "relearn_steps_at_least": 40},
        {"method": "salun", "asr": 0.5, "relearn_steps_at_least": 80},
    ]
    targets = quality.robustness_targets(rows, [{"concept": "digits:two", "control_asr": 0.75}])
    assert targets["attack control ASR >= 80%"]["status"] == "missed"
    assert targets["scissorhands ASR under attack <= 20%"] == {"status": "missed", "median": 0.25}
    assert targets["scissorhands ASR below ESD's"]["status"] == "met"
    steps = targets["scissorhands relearn steps above ESD's and SalUn's"]
    assert steps == {"status": "missed", "scissorhands": 65.0, "esd": 30.0, "salun": 80, "runs": 1}
    # a concept ESD was not attacked on stays out of the comparison (round 15: red 70% beside digits at 80 / 50 /
    # 100% read a median of 75% against ESD's 80% on the digits alone, where the paired medians tie)
    rows = [*({"method": "scissorhands", "concept": c, "seed": 1, "asr": a}
              for c, a in (("two", 0.8), ("five", 0.5), ("seven", 1.0), ("red", 0.7))),
            *({"method": "esd", "concept": c, "seed": 1, "asr": a} for c, a in (("two", 0.8), ("five", 0.7), ("seven", 0.8)))]
    paired = quality.robustness_targets(rows, [])
    assert paired["scissorhands ASR under attack <= 20%"]["median"] == 0.75  # its own runs, all of them
    assert paired["scissorhands ASR below ESD's"] == {"status": "missed", "scissorhands": 0.8, "esd": 0.8, "runs": 3}
    # round 16: digits 30 / 30 / 0% and red 10% have a median of 20% together, the digits alone 30%: each kind of
    # concept is read by its own median
    rows = [{"method": "scissorhands", "concept": c, "seed": 1, "asr": a}
            for c, a in (("digits:two", 0.3), ("digits:five", 0.3), ("digits:seven", 0.0), ("color:red", 0.1))]
    kinds = quality.robustness_targets(rows, [])["scissorhands ASR under attack <= 20%"]
    assert kinds == {"status": "missed", "median": 0.2, "by_kind": {"color": 0.1, "digits": 0.3}}
    rows[0]["asr"] = 0.1
    assert quality.robustness_targets(rows, [])["scissorhands ASR under attack <= 20%"]["status"] == "met"
    assert quality.robustness_targets([{"method": "esd", "erased": 0.0}], []) == {}


def test_robustness_benchmark_uses_the_same_targets_and_adds_the_time_per_prompt():
    from benchmarks.robustness import targets

    methods = {"scissorhands": {"asr": 0.0, "relearn_steps": None, "relearn_cap": 100, "median_seconds_per_prompt": 40},
               "esd": {"asr": 1.0, "relearn_steps": 20, "relearn_cap": 100, "median_seconds_per_prompt": 10}}
    result = targets(methods, {"control_asr": 1.0}, ["unlearndiffatk", "relearn"])
    assert result["scissorhands ASR below ESD's"]["status"] == "met"
    assert result["scissorhands relearn steps above ESD's and SalUn's"] == {"status": "met", "scissorhands": 100,
                                                                          "esd": 20, "runs": 1}
    assert result["<= 30 s per attacked prompt (median)"]["status"] == "missed"
    assert set(targets(methods, {"control_asr": None}, ["relearn"])) == {"scissorhands relearn steps above ESD's and SalUn's"}


def test_robustness_report_shows_only_the_attacks_that_ran():
    """Without UnlearnDiffAtk there is no control ASR or attacked column to print (the 'none' run on
    unrelated prompts is not a control)."""
    from benchmarks.robustness import markdown

    row = {"asr_no_attack": 0.1, "asr": None, "median_seconds_per_prompt": None, "relearn_steps": 3,
           "relearn_cap": 100, "paraphrase_asr": 0.0}
    results = {"protocol": {"attacks": ["relearn", "paraphrase"], "relearn_learning_rate": 1e-3},
               "control": {"control_asr": None, "num_prompts": 10, "paraphrase_control_asr": 1.0},
               "methods": {"scissorhands": row}, "targets": {}}
    text = markdown(results)
    assert "UnlearnDiffAtk" not in text and "| scissorhands | 10% | 3 | 0% |" in text
    assert "relearn steps (lr 0.001)" in text and "Paraphrase control (base model on the rewordings): 100%" in text
    results["protocol"]["attacks"] = ["unlearndiffatk"]
    results["control"]["control_asr"] = 1.0
    results["methods"]["scissorhands"].update(asr=0.5, median_seconds_per_prompt=20.0)
    text = markdown(results)
    assert "UnlearnDiffAtk ASR 100% over 10 prompts" in text and "| scissorhands | 10% | 50% | 20.0 |" in text
    assert "paraphrase" not in text.split("Protocol")[1].split("\n", 1)[1]


def test_the_table_says_where_a_colour_went():
    run = {"method": "scissorhands", "concept": "color:green", "seed": 0, "erased": 0.0, "erased_purity": 0.72,
           "erased_shares": {"white": 0.58, "red": 0.05, "unclear": 0.25, "green": 0.0}}
    results = {"protocol": {}, "base": [], "runs": [run, {**run, "concept": "digits:two", "erased_shares": None}],
               "summary": {"targets": {}}}
    rows = [line for line in quality.markdown(results).splitlines() if line.startswith("| scissorhands")]
    header = next(line for line in quality.markdown(results).splitlines() if line.startswith("| method"))
    column = header.split(" | ").index("erased_to")
    assert rows[0].split(" | ")[column] == "white 0.58, unclear 0.25"  # red's 5% left out
    assert rows[1].split(" | ")[column] == ""
