"""The multi-concept benchmark on the fast (noise-drawing) build: what it runs, judges and writes;
the numbers themselves are what the real run measures."""

import json

import pytest

import benchmarks.multi_concept as multi


@pytest.mark.parametrize("argv, message", [
    (["--concepts", "digits:two"], "give at least two"),
    (["--concepts", "digits:two", "color:mauve"], "mauve"),
])
def test_bad_arguments_fail_before_any_work(argv, message):
    with pytest.raises(ValueError, match=message):
        multi.parse(argv)


def test_tuning_run_judges_tuning_seeds_and_passes_the_erase_flags(tmp_path, monkeypatch, fast_default_model):
    import eval.testbed
    from eval.testbed import TUNING_SEED

    fast = fast_default_model
    monkeypatch.setattr("pipelines.default_model.build_default_model", lambda: fast)
    monkeypatch.setattr("pipelines.default_model.default_judge_path", lambda: fast / "judge")
    seeds, erased = [], []
    sample = eval.testbed.sample_testbed
    monkeypatch.setattr(eval.testbed, "sample_testbed", lambda pipe, **kw: seeds.append(kw["seed"]) or sample(pipe, **kw))
    erase = multi.erase_tuned
    monkeypatch.setattr(multi, "erase_tuned", lambda *a: erased.append(a) or erase(*a))
    out = tmp_path / "multi"
    results = multi.main(["--concepts", "digits:two", "color:red", "--tune", "--seed", "100", "--joint_only",
                          "--num_images", "2", "--num_inference_steps", "2", "--out", str(out),
                          "--erase_args", "--num_train_epochs", "1", "--train_batch_size", "2"])
    assert seeds == [TUNING_SEED, TUNING_SEED]  # the base and the joint run, never the reported seeds
    assert len(erased) == 1 and erased[0][4] == "digits:two,color:red" and erased[0][5] == 100
    assert erased[0][6:] == ("--num_train_epochs", "1", "--train_batch_size", "2")
    saved = json.loads(out.with_suffix(".json").read_text())
    assert [r["run"] for r in saved["runs"]] == ["joint"] and saved["cost"]["ratio"] is None
    assert saved["protocol"]["eval_seed"] == TUNING_SEED and saved["protocol"]["erase_args"][0] == "--num_train_epochs"
    assert set(saved["runs"][0]["concepts"]) == {"digits:two", "color:red"}
    assert "no single runs" in out.with_suffix(".md").read_text()
    assert "| FID vs base (kept) | FID vs base (all) |" in out.with_suffix(".md").read_text()
    erased = {c: f["erased"] <= 0.05 for c, f in saved["runs"][0]["concepts"].items()}  # the target reads the joint run
    assert results["targets"]["every concept <= 5% recognised"] == {
        "status": "met" if all(erased.values()) else "missed", **erased}
