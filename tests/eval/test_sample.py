"""The evaluation sampling job: per-row seeds and guidance, fixed guidance, categories, resume, bad input."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from erasure.jobconfig import run_cli
from eval.sample import PROTOCOL_FILE, main, resolve_prompt_set
from pipelines.sampling import SampleItem
from prompts.base import Prompt
from tests.launch import main_process_port

REPO = Path(__file__).resolve().parents[2]
# I2P's columns: categories, sd_seed, sd_guidance_scale (empty = the job's default).
I2P_CSV = """prompt,categories,sd_seed,sd_guidance_scale
a naked figure,sexual,1234,7
an erotic photo,"sexual, violence",2345,
a church,violence,3456,9
a person,sexual,,
"""


@pytest.fixture
def i2p_csv(tmp_path: Path) -> Path:
    path = tmp_path / "i2p.csv"
    path.write_text(I2P_CSV)
    return path


def sample_args(pipeline_dir: Path, prompts: Path | str, output_dir: Path, *extra: str) -> list[str]:
    return ["--model", str(pipeline_dir), "--prompts", str(prompts), "--output_dir", str(output_dir),
            "--num_inference_steps", "2", "--batch_size", "4", *extra]


def rows_of(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=int)


def test_i2p_rows_keep_their_seed_and_guidance_and_categories_filter(tiny_pipeline_dir, i2p_csv, tmp_path):
    out = tmp_path / "i2p"
    protocol = main(sample_args(tiny_pipeline_dir, i2p_csv, out, "--categories", "sexual", "--images_per_prompt", "2",
                                "--seed", "5", "--guidance_scale", "6"))
    rows = rows_of(out)
    assert [r["prompt"] for r in rows] == ["a naked figure", "an erotic photo", "a person"] * 2  # round-robin
    # Own seed + k where the row has one, else --seed + image index.
    assert [r["seed"] for r in rows] == [1234, 2345, 5 + 2, 1235, 2346, 5 + 5]
    assert [r["guidance_scale"] for r in rows] == [7.0, 6.0, 6.0] * 2  # own guidance, else --guidance_scale
    assert rows[1]["categories"] == ["sexual", "violence"]
    assert sorted(p.name for p in out.iterdir()) == [*(f"{i:06d}.png" for i in range(6)), "metadata.jsonl",
                                                     PROTOCOL_FILE]

    recorded = json.loads((out / PROTOCOL_FILE).read_text())
    assert recorded == protocol
    expected_set = resolve_prompt_set(str(i2p_csv), ["sexual"])
    assert recorded["prompt_set"] == {"name": "i2p:sexual", "version": None, "source": str(i2p_csv),
                                      "sha256": expected_set.sha256(), "num_prompts": 3}
    assert (recorded["categories"], recorded["fixed_guidance"], recorded["guidance_scale"]) == (["sexual"], None, 6.0)
    assert (recorded["scheduler"], recorded["num_inference_steps"], recorded["image_size"], recorded["dtype"]) == (
        "DDIMScheduler", 2, [32, 32], "float32")
    assert "own seed" in recorded["seeds"] and "own" in recorded["guidance"]
    assert (recorded["num_images"], recorded["num_written"], recorded["complete"]) == (6, 6, True)


def test_fixed_guidance_and_batching_match_one_by_one(tiny_pipeline_dir, i2p_csv, tmp_path):
    """--fixed_guidance overrides the rows; a batch of 3 and three batches of 1 draw the same images."""
    flags = ("--categories", "sexual", "--fixed_guidance", "7.5", "--scheduler", "ddim")
    batched = main(sample_args(tiny_pipeline_dir, i2p_csv, tmp_path / "batched", *flags, "--batch_size", "3"))
    single = main(sample_args(tiny_pipeline_dir, i2p_csv, tmp_path / "single", *flags, "--batch_size", "1"))
    assert batched == single and batched["guidance"] == "fixed 7.5 for every prompt"
    rows_b, rows_s = rows_of(tmp_path / "batched"), rows_of(tmp_path / "single")
    assert [r["guidance_scale"] for r in rows_b] == [7.5] * 3
    assert [r["seed"] for r in rows_b] == [r["seed"] for r in rows_s] == [1234, 2345, 2]
    for row in rows_b:  # same per-sample noise; batching only reorders float sums (pipelines.sampling)
        assert np.abs(pixels(tmp_path / "batched" / row["file_name"]) - pixels(tmp_path / "single" / row["file_name"])).max() <= 1
    assert np.abs(pixels(tmp_path / "single" / "000000.png") - pixels(tmp_path / "single" / "000001.png")).max() > 1


def test_resume_draws_only_missing_images_and_records_each_once(tiny_pipeline_dir, tmp_path):
    out = tmp_path / "digits"
    args = sample_args(tiny_pipeline_dir, "digits:zero,one", out, "--images_per_prompt", "2")
    main(args)
    # A crash: image 3 never finished, and a rank file still repeats the row of image 0.
    (out / "000003.png").unlink()
    first = rows_of(out)
    (out / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in first[:3]))
    (out / "metadata-0.jsonl").write_text(json.dumps(first[0]) + "\n")
    before = {name: (out / name).stat().st_mtime_ns for name in ("000000.png", "000001.png", "000002.png")}

    protocol = main(args)
    assert [r["index"] for r in rows_of(out)] == [0, 1, 2, 3] and protocol["num_written"] == 4
    assert {name: (out / name).stat().st_mtime_ns for name in before} == before
    assert not list(out.glob("metadata-*.jsonl"))

    protocol = main(sample_args(tiny_pipeline_dir, "digits:zero,one", out, "--images_per_prompt", "3"))
    assert [r["index"] for r in rows_of(out)] == list(range(6)) and protocol["complete"]
    assert [r["extra"]["label"] for r in rows_of(out)] == [0, 1] * 3

    with pytest.raises(ValueError, match=r"other settings \(.*seed: 0 -> 1"):
        main(sample_args(tiny_pipeline_dir, "digits:zero,one", out, "--seed", "1"))


@pytest.mark.parametrize("prompts, extra, message", [
    ("{empty}", [], r"prompts=.*empty.txt.*has no prompts"),
    ("cats", [], r"prompts='cats': Unknown prompt set 'cats'"),
    ("{i2p}", ["--categories", "gore"], r"categories=\['gore'\] not found .*present: \['sexual', 'violence'\]"),
    ("digits", ["--model", "{not_a_pipeline}"], r"model=.*not_a_pipeline.* is not a diffusers pipeline folder"),
    ("digits", ["--images_per_prompt", "0"], r"images_per_prompt=0 must be >= 1"),
    ("digits", ["--images_per_prompt", "10000000000"], r"images_per_prompt=10000000000 is out of range; allowed: \[1, "),
    ("digits", ["--height", "65536"], r"height=65536 is out of range; allowed: \[1, 4096\]"),
    ("digits", ["--width", "0"], r"width=0 is out of range"),
    ("digits", ["--seed", "-1"], r"seed=-1 is out of range"),
    ("digits", ["--num_inference_steps", "100000"], r"num_inference_steps=100000 is out of range"),
    ("digits", ["--images_per_prompt", "100000", "--height", "4096", "--width", "4096"],
     r"images_per_prompt x prompts=1000000 images of 4096x4096 would need \d+ GiB of pixels; at most 1024 GiB"),
])
def test_bad_input_exits_1_with_a_clear_message(prompts, extra, message, tiny_pipeline_dir, i2p_csv, tmp_path):
    (tmp_path / "empty.txt").write_text("# only a comment\n")
    (tmp_path / "not_a_pipeline").mkdir()
    names = {"empty": tmp_path / "empty.txt", "i2p": i2p_csv, "not_a_pipeline": tmp_path / "not_a_pipeline"}
    out = tmp_path / "out"
    argv = [a.format(**names) for a in sample_args(tiny_pipeline_dir, prompts, out, *extra)]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, argv)
    assert isinstance(exit_info.value.code, str) and re.search(message, exit_info.value.code)  # str => status 1
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="two processes on one machine need gloo on the CPU")
def test_two_launched_processes_split_the_images(tiny_pipeline_dir, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` on the CPU joins both ranks (PartialState(cpu=True))."""
    args = sample_args(tiny_pipeline_dir, "digits:zero,one,two", tmp_path / "two", "--batch_size", "2")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", *main_process_port(), "--mixed_precision", "no", "--dynamo_backend", "no", "-m",
               "eval.sample", *args]
    result = subprocess.run(command, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    main(sample_args(tiny_pipeline_dir, "digits:zero,one,two", tmp_path / "one", "--batch_size", "2"))
    assert rows_of(tmp_path / "two") == rows_of(tmp_path / "one")


def test_a_prompt_file_that_is_not_utf8_is_a_one_line_value_error(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_bytes("a cat\n".encode("utf-16"))
    with pytest.raises(ValueError) as caught:  # was a TypeError: UnicodeDecodeError rebuilt with one argument
        resolve_prompt_set(str(path))
    assert str(caught.value) == (f"prompts={str(path)!r}: {path}: byte offset 0 (0xff) is not UTF-8 (it starts "
                                 "with a UTF-16 byte-order mark); prompt files must be UTF-8 text")


def test_folder_held_by_another_live_job_is_refused(tiny_pipeline_dir, i2p_csv, tmp_path):
    import socket

    out = tmp_path / "samples"
    out.mkdir()
    other_job = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".lock").write_text(json.dumps({"pid": other_job.pid, "host": socket.gethostname()}))
        with pytest.raises(ValueError, match=f"pid {other_job.pid}"):
            main(sample_args(tiny_pipeline_dir, i2p_csv, out, "--categories", "violence"))
        assert sorted(p.name for p in out.iterdir()) == [".lock"]
    finally:
        other_job.kill()
        other_job.wait()


@pytest.mark.parametrize("field", ["guidance_scale", "fixed_guidance"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_guidance_from_python_is_refused(field, value):
    from eval.sample import SamplingOptions

    with pytest.raises(ValueError, match=rf"{field}={value} must be a finite number"):
        SamplingOptions(**{field: value})


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is allowed with a GPU")
def test_fp16_without_cuda_is_refused():
    from eval.sample import SamplingOptions

    with pytest.raises(ValueError, match="mixed_precision='fp16' needs a CUDA GPU"):
        SamplingOptions(mixed_precision="fp16")


def test_sample_items_refuse_non_finite_guidance_and_negative_seeds():
    """The one place every drawing job (sample, generate, demo, testbed) passes through."""
    with pytest.raises(ValueError, match=r"guidance_scale=nan \(prompt 'a'\) must be a finite number >= 0"):
        SampleItem(0, Prompt("a"), 0, float("nan"))
    with pytest.raises(ValueError, match=r"seed=-2 \(prompt 'a'\) must be >= 0"):
        SampleItem(0, Prompt("a"), -2, 7.5)
