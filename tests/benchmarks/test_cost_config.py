"""The cost benchmark refuses bad options up front and fails (no results file) when a child fails."""

import math

import pytest

from benchmarks import erasure_cost
from benchmarks.erasure_cost import CostConfig
from erasure.jobconfig import run_cli


@pytest.mark.parametrize("changes,message", [
    ({"timeout_s": 0.0}, r"timeout_s=0.0 is out of range; allowed: \(0, inf\]"),
    ({"kept_fraction": math.nan}, r"kept_fraction=nan must be a finite number"),
    ({"kept_fraction": 1.5}, r"kept_fraction=1.5 is out of range; allowed: \(0, 1\]"),
    ({"max_cpu_mem_gb": -1.0}, r"max_cpu_mem_gb=-1.0 is out of range"),
    ({"seed": -1}, r"seed=-1 is out of range"),
    ({"out": "results.txt"}, r"out='results.txt' must end in .json"),
])
def test_bad_options_are_refused_before_any_child_runs(changes, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        CostConfig(**{"out": str(tmp_path / "r.json"), **changes})


def test_a_failed_child_exits_1_without_a_results_file(tmp_path, monkeypatch):
    def failing_child(fn, timeout_s, **kwargs):
        raise RuntimeError(f"{fn.__name__} ran past {timeout_s:.0f} s")

    monkeypatch.setattr(erasure_cost, "run_isolated", failing_child)
    monkeypatch.setattr(erasure_cost, "parameter_count", lambda size: 1000)
    out = tmp_path / "r.json"
    with pytest.raises(SystemExit) as caught:
        run_cli(erasure_cost.main, ["--methods", "finetune", "--skip_sampling", "true", "--out", str(out)])
    assert isinstance(caught.value.code, str)  # status 1
    assert "2 measurement(s) failed, no results written: finetune: method_cost ran past" in caught.value.code
    assert "topk: topk_cost ran past" in caught.value.code
    assert not out.exists() and not out.with_suffix(".md").exists()
