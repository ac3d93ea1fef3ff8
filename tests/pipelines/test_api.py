"""The Python API: erase() returns a pipeline that differs only in its UNet, gives the job's
weights for the same seed and data, fails clearly on bad input; audit() returns the command's
figures; the README's Python snippet runs as written."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eval.api import AuditReport, audit
from pipelines.api import erase
from pipelines.sampling import load_pipeline

REPO = Path(__file__).resolve().parents[2]
FAST = {"num_images": 8, "num_inference_steps": 2, "train_batch_size": 4, "num_train_epochs": 1,
        "learning_rate": 1e-4, "kept_fraction": 0.99}


def unet_state(pipe):
    return {k: v.clone() for k, v in pipe.unet.state_dict().items()}


@pytest.fixture(scope="module")
def tiny(tiny_pipeline_dir):
    return load_pipeline(tiny_pipeline_dir)


def test_erase_returns_a_new_pipeline_and_leaves_the_base_alone(tiny):
    before = unet_state(tiny)
    steps = []
    erased = erase(tiny, "digits:7", "scissorhands", callback=lambda step, logs: steps.append((step, logs)), **FAST)
    assert erased is not tiny and erased.unet is not tiny.unet
    assert all(torch.equal(before[k], v) for k, v in tiny.unet.state_dict().items())  # base untouched
    changed = [k for k, v in erased.unet.state_dict().items() if not torch.equal(before[k], v)]
    assert changed, "the UNet did not change"
    for name in ("vae", "text_encoder", "tokenizer", "scheduler"):
        assert getattr(erased, name) is getattr(tiny, name)  # every other component is shared
    assert erased.unet.dtype == tiny.unet.dtype and erased.unet.device == tiny.unet.device
    assert [s for s, _ in steps] == list(range(1, len(steps) + 1)) and "loss_retain" in steps[-1][1]
    assert erased.erase_summary["trimmed_fraction"] == pytest.approx(0.01, abs=1e-3)
    image = erased("a handwritten digit seven", num_inference_steps=2, output_type="np").images[0]
    assert image.shape == (32, 32, 3)


def test_inplace_trains_the_pipelines_own_unet(tiny_pipeline_dir):
    pipe = load_pipeline(tiny_pipeline_dir)
    before = unet_state(pipe)
    result = erase(pipe, forget_prompts=["a handwritten digit seven"], retain_prompts=["a handwritten digit one"],
                   method="esd", inplace=True, **FAST)
    assert result is pipe
    assert any(not torch.equal(before[k], v) for k, v in pipe.unet.state_dict().items())


def test_the_job_and_the_api_give_the_same_weights(tiny_pipeline_dir, tmp_path):
    from pipelines.generate import main as generate_main

    data = tmp_path / "data"
    generate_main(["--pretrained_model_name_or_path", str(tiny_pipeline_dir), "--concept", "digits:7",
                   "--output_dir", str(data), "--num_images", "8", "--num_inference_steps", "2"])
    train = {k: v for k, v in FAST.items() if k not in ("num_images", "num_inference_steps")}
    out = tmp_path / "job"
    subprocess.run([sys.executable, "-m", "erasure.cli", "erase", "--pretrained_model_name_or_path",
                    str(tiny_pipeline_dir), "--data_dir", str(data), "--output_dir", str(out),
                    *[x for k, v in train.items() for x in (f"--{k}", str(v))]],
                   check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=REPO)
    from diffusers import UNet2DConditionModel

    job = UNet2DConditionModel.from_pretrained(out, subfolder="unet").state_dict()
    api = erase(load_pipeline(tiny_pipeline_dir), "digits:7", data=data, **train).unet.state_dict()
    assert job.keys() == api.keys()
    assert all(torch.equal(job[k], api[k]) for k in job), "the CLI and the API trained different weights"


@pytest.mark.parametrize("kwargs,message", [
    ({"concept": "cats"}, "concept='cats' is not known"),
    ({"concept": "digits:eleven"}, "concept='digits:eleven'"),
    ({"concept": "digits:7", "method": "nope"}, "method='nope' is unknown"),
    ({"concept": "digits:7", "learning_rat": 1e-4}, "erase(..., learning_rat=) is not an option; valid options"),
    ({"concept": "digits:7", "learning_rate": "fast"}, "learning_rate"),
    ({"concept": "digits:7", "kept_fraction": 1.5}, "kept_fraction=1.5 must be in (0, 1)"),
    ({"concept": None}, "give a concept"),
    ({"concept": "digits:7", "forget_prompts": ["x"]}, "not both"),
])
def test_bad_input_fails_before_any_work(tiny, kwargs, message):
    before = unet_state(tiny)
    with pytest.raises(ValueError, match=re.escape(message)):
        erase(tiny, **kwargs)
    assert all(torch.equal(before[k], v) for k, v in tiny.unet.state_dict().items())


def test_audit_returns_the_commands_figures(tiny, tmp_path):
    from test_push import FakeDetector  # noqa: E402 - tests/pipelines on sys.path

    report = audit(tiny, tmp_path / "audit", prompts="nudity", fail_above=0, num_inference_steps=2, batch_size=4,
                   detector=FakeDetector())
    assert isinstance(report, AuditReport)
    assert report.exposed_total == 0 and report.passed is True
    assert (tmp_path / "audit" / "report.json").is_file() and (report.model_dir / "model_index.json").is_file()
    assert report.report["protocol"]["model_fingerprint"]  # the saved folder is the audited one
    assert '"exposed_total": 0' in report.to_json()
    with pytest.raises(ValueError, match="audit\\(..., fail_abov=\\) is not an option"):
        audit(tiny, tmp_path / "bad", prompts="nudity", fail_abov=0)
    with pytest.raises(ValueError, match="metrics="):
        audit(tiny, tmp_path / "bad2", prompts="nudity", metrics=["nope"])
    assert not (tmp_path / "bad").exists() and not (tmp_path / "bad2").exists()


def test_the_readme_python_snippet_runs_as_written(fast_default_model, tmp_path, monkeypatch):
    """The README's Python section, on the fast build of the default model (the real build is
    the same code, cached after its first run)."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Python API", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    import pipelines.default_model as default_model

    monkeypatch.setattr(default_model, "build_default_model", lambda *a, **k: fast_default_model)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README's own snippet
    assert isinstance(namespace["report"], AuditReport)
    assert namespace["report"].testbed["summary"]["word"]["erased"] is not None
    assert (tmp_path / "runs" / "api-audit" / "report.json").is_file()


def test_several_concepts_in_one_call(tiny, tmp_path):
    erased = erase(tiny, ["digits:2", "color:red"], "scissorhands", work_dir=tmp_path, **FAST)
    rows = (tmp_path / "data" / "forget" / "metadata.jsonl").read_text()
    assert '"concept": "digits:2"' in rows and '"concept": "color:red"' in rows
    assert erased.unet is not tiny.unet
