"""The generation job: in-process end to end with resume, through `accelerate launch`, bad input."""

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
from safetensors.torch import load_file

from erasure.jobconfig import run_cli
from pipelines.generate import main
from pipelines.sampling import load_pipeline
from prompts.sets import load_concept
from tests.launch import main_process_port

ROW_FIELDS = {"file_name", "index", "prompt", "seed", "guidance_scale", "scheduler", "num_inference_steps", "model",
              "height", "width", "categories", "extra"}
REPO = Path(__file__).resolve().parents[2]


def job_args(pipeline_dir: Path, output_dir: Path, *extra: str) -> list[str]:
    return ["--pretrained_model_name_or_path", str(pipeline_dir), "--output_dir", str(output_dir),
            "--num_inference_steps", "2", "--batch_size", "4", *extra]


def rows_of(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]


def test_nudity_end_to_end_then_resume(tiny_pipeline_dir, tmp_path):
    out = tmp_path / "nudity"
    infos = main(job_args(tiny_pipeline_dir, out, "--concept", "nudity", "--num_images", "5"))
    forget, retain = rows_of(out / "forget"), rows_of(out / "retain")
    assert [r["prompt"] for r in forget] == ["nudity", "naked", "erotic", "sexual", "nudity"]  # round-robin
    assert [r["seed"] for r in forget] == [0, 1, 2, 3, 4] == [r["seed"] for r in retain]
    assert {r["prompt"] for r in retain} == {"a person wearing clothes"}
    assert set(forget[0]) == ROW_FIELDS
    assert (forget[0]["model"], forget[0]["scheduler"], forget[0]["num_inference_steps"]) == (
        str(tiny_pipeline_dir), "DDIMScheduler", 2)
    assert (forget[0]["height"], forget[0]["width"], forget[0]["guidance_scale"]) == (32, 32, 7.5)
    assert sorted(p.name for p in (out / "forget").iterdir()) == [
        *(f"{i:06d}.png" for i in range(5)), "info.json", "latents.safetensors", "metadata.jsonl"]

    info = json.loads((out / "forget" / "info.json").read_text())
    assert info == infos["forget"]
    assert info["complete"] and info["num_written"] == 5 and info["concept"] == "nudity"
    assert info["prompt_set"]["sha256"] == load_concept("nudity")[0].sha256() == info["protocol"]["prompt_set_sha256"]
    assert infos["retain"]["prompt_set"]["sha256"] == load_concept("nudity")[1].sha256()

    # The stored latents are the final ones, scaled: decoding them gives the saved image.
    latents = load_file(str(out / "forget" / "latents.safetensors"))
    assert sorted(latents) == [r["file_name"] for r in forget] and latents["000000.png"].shape == (4, 16, 16)
    pipe = load_pipeline(tiny_pipeline_dir)
    with torch.no_grad():
        decoded = pipe.vae.decode(latents["000001.png"][None] / pipe.vae.config.scaling_factor).sample
    image = np.asarray(pipe.image_processor.postprocess(decoded, output_type="pil")[0], dtype=int)
    saved = np.asarray(Image.open(out / "forget" / "000001.png"), dtype=int)
    assert np.abs(image - saved).max() <= 1  # decoded in a batch of 4 there, of 1 here

    # Resume: one more image per set is drawn, the first five are left alone.
    before = {p.name: p.stat().st_mtime_ns for p in (out / "forget").glob("*.png")}
    main(job_args(tiny_pipeline_dir, out, "--concept", "nudity", "--num_images", "6"))
    assert {p: (out / "forget" / p).stat().st_mtime_ns for p in before} == before
    assert [r["index"] for r in rows_of(out / "forget")] == list(range(6))
    assert len(load_file(str(out / "retain" / "latents.safetensors"))) == 6

    with pytest.raises(ValueError, match="holds images made with other settings .seed: 0 -> 1"):
        main(job_args(tiny_pipeline_dir, out, "--concept", "nudity", "--num_images", "6", "--seed", "1"))


def launch(pipeline_dir: Path, output_dir: Path, *launch_flags: str) -> None:
    """`accelerate launch <flags> -m pipelines.generate` for digits:7 with three images per set."""
    command = [sys.executable, "-m", "accelerate.commands.launch", *launch_flags, "--num_machines", "1", *main_process_port(),
               "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "pipelines.generate",
               *job_args(pipeline_dir, output_dir, "--concept", "digits:7", "--num_images", "3", "--batch_size", "2")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def test_accelerate_launch(tiny_pipeline_dir, tmp_path):
    out = tmp_path / "digits"
    launch(tiny_pipeline_dir, out, "--cpu", "--num_processes", "1")
    # the grammar's erase phrasings, word form, spread over the concept's (digit, colour) pairs
    assert [r["prompt"] for r in rows_of(out / "forget")] == [
        "a white handwritten digit seven", "a red handwritten digit seven", "a green handwritten digit seven"]
    assert [r["prompt"] for r in rows_of(out / "retain")] == [
        "a white handwritten digit zero", "a red handwritten digit zero", "a green handwritten digit zero"]
    assert len(load_file(str(out / "retain" / "latents.safetensors"))) == 3
    assert json.loads((out / "forget" / "info.json").read_text())["complete"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="two processes on one machine need gloo on the CPU")
def test_two_processes_make_the_same_folder_as_one(tiny_pipeline_dir, tmp_path):
    main(job_args(tiny_pipeline_dir, tmp_path / "one", "--concept", "digits:7", "--num_images", "3", "--batch_size", "2"))
    # `--multi_gpu` on a CPU-only machine: two gloo processes (`--cpu` would run just one).
    launch(tiny_pipeline_dir, tmp_path / "two", "--multi_gpu", "--num_processes", "2")
    for role in ("forget", "retain"):
        assert rows_of(tmp_path / "two" / role) == rows_of(tmp_path / "one" / role)
        one, two = (load_file(str(tmp_path / d / role / "latents.safetensors")) for d in ("one", "two"))
        assert sorted(one) == sorted(two) == ["000000.png", "000001.png", "000002.png"]
        for name in one:  # batched as [0, 1], [2] here and [0, 2] | [1] there: equal up to summation order
            torch.testing.assert_close(one[name], two[name], atol=1e-4, rtol=0)


@pytest.mark.parametrize("bad, field", [
    (["--concept", "nudity", "--num_images", "0"], "num_images=0"),
    (["--concept", "nudity", "--num_images", "1000000000000"], r"num_images=1000000000000 is out of range; allowed: \[1, "),
    (["--concept", "nudity", "--seed", "-5"], r"seed=-5 is out of range"),
    (["--concept", "nudity", "--num_inference_steps", "5000"], r"num_inference_steps=5000 is out of range"),
    (["--concept", "cats"], "concept='cats' is not known"),
    (["--concept", "imagenette:zebra"], "concept='imagenette:zebra': Unknown imagenette class 'zebra'"),
    (["--concept", "digits:eleven"], r"concept='digits:eleven': unknown digit 'eleven'; known: \['zero'"),
    (["--concept", "color:pink"], r"concept='color:pink': unknown color 'pink'; known: \['white'"),
    (["--concept", "color:red", "--concept_forms", "roman"], r"concept_forms=\['roman'\] must be"),
    (["--forget_prompts", "{empty}", "--retain_prompts", "{empty}"], "forget_prompts=.*has no prompts"),
    (["--concept", "nudity", "--pretrained_model_name_or_path", "{not_a_pipeline}"],
     "pretrained_model_name_or_path=.*no model_index.json"),
])
def test_bad_input_fails_cleanly(bad, field, tiny_pipeline_dir, tmp_path, capsys):
    """Each exits non-zero naming the field, before anything is written."""
    (tmp_path / "empty.txt").write_text("# only a comment\n")
    (tmp_path / "not_a_pipeline").mkdir()
    bad = [a.format(empty=tmp_path / "empty.txt", not_a_pipeline=tmp_path / "not_a_pipeline") for a in bad]
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, job_args(tiny_pipeline_dir, out, *bad))
    code = exit_info.value.code  # sys.exit("error: ...") exits with status 1, or an int status
    assert code not in (0, None)
    assert re.search(field, code if isinstance(code, str) else capsys.readouterr().err)
    assert not out.exists()


def test_folder_held_by_another_live_job_is_refused(tiny_pipeline_dir, tmp_path):
    """A second job on one folder stops with the holder's pid and host; a dead holder is taken over."""
    import socket

    out = tmp_path / "data"
    out.mkdir()
    other_job = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".lock").write_text(json.dumps({"pid": other_job.pid, "host": socket.gethostname()}))
        with pytest.raises(ValueError, match=f"{out}.*pid {other_job.pid} on host {socket.gethostname()}"):
            main(job_args(tiny_pipeline_dir, out, "--concept", "digits:7", "--num_images", "1"))
        assert sorted(p.name for p in out.iterdir()) == [".lock"]
    finally:
        other_job.kill()
        other_job.wait()
    main(job_args(tiny_pipeline_dir, out, "--concept", "digits:7", "--num_images", "1"))
    assert sorted(p.name for p in out.iterdir()) == ["forget", "retain"]  # the stale lock is gone


def test_non_finite_guidance_from_python_is_refused(tmp_path):
    from pipelines.generate import GenerateConfig

    with pytest.raises(ValueError, match="guidance_scale=nan must be a finite number"):
        GenerateConfig("m", str(tmp_path / "out"), concept="nudity", guidance_scale=float("nan"))
    assert not (tmp_path / "out").exists()


def test_color_concept_folders_hold_only_that_colour_on_the_forget_side(tiny_pipeline_dir, tmp_path):
    out = tmp_path / "red"
    main(job_args(tiny_pipeline_dir, out, "--concept", "color:red", "--num_images", "12", "--num_inference_steps", "1"))
    forget, retain = rows_of(out / "forget"), rows_of(out / "retain")
    assert len(forget) == len(retain) == 12
    assert all("red" in row["prompt"].split() for row in forget)
    assert not any("red" in row["prompt"].split() for row in retain)
    # spread over every digit: 12 images of an attribute already span all ten classes
    words = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
    assert {w for row in forget for w in row["prompt"].split() if w in words} == set(words)
    info = json.loads((out / "forget" / "info.json").read_text())
    assert info["concept"] == "color:red" and info["prompt_set"]["num_prompts"] == 30
    # the retain rows name their colour-free neutral prompts, which the erase job reads back
    from pipelines.data import ConceptImageSet
    from pipelines.erase import neutral_prompts

    assert all(row["extra"]["neutral"] and not any("red" in n.split() for n in row["extra"]["neutral"])
               for row in retain)
    pairs = neutral_prompts(ConceptImageSet.load(out / "retain"), ConceptImageSet.load(out / "forget"))
    assert len(pairs) == len({row["prompt"] for row in retain}) and all(len(held) == 3 for held in pairs.values())


def test_several_concepts_forget_their_union_and_retain_none_of_them(tmp_path):
    from pipelines.generate import concept_sets

    forget, retain = concept_sets("digits:two,digits:five,color:red")
    single = {c: concept_sets(c)[0] for c in ("digits:two", "digits:five", "color:red")}
    assert {p.text for p in forget} == set().union(*({p.text for p in s} for s in single.values()))
    assert all(p.text in {q.text for q in single[p.extra["concept"]]} for p in forget)  # tagged with its concept
    texts = [p.text for p in retain]
    assert texts and not any(" red " in f" {t} " or t.endswith((" two", " 2")) or " two " in f" {t} "
                             or " five " in f" {t} " for t in texts)
    assert not {p.text for p in forget} & set(texts)
    # a colour-free prompt may draw red: as in red's own run it is retained by no joint run with red
    assert all(p.extra["color"] is not None for p in retain)
    assert {p.text for p in retain} == {p.text for p in concept_sets("color:red")[1]} - {
        p.text for p in single["digits:two"]} - {p.text for p in single["digits:five"]}
    assert any(p.extra["color"] is None for p in concept_sets("digits:two,digits:five")[1])  # no colour concept
    # they are held through the colour prompts' neutral instead, whichever concept comes first
    red_neutral = {p.text: p.extra["neutral"] for p in concept_sets("color:red")[1]}
    for joined in ("digits:two,color:red", "color:red,digits:two"):
        kept = concept_sets(joined)[1]
        assert kept and all(p.extra["neutral"] == red_neutral[p.text] for p in kept)
    assert [p.extra["concept"] for p in forget][:3] == ["digits:two", "digits:five", "color:red"]  # interleaved
    listed = tmp_path / "concepts.txt"
    listed.write_text("digits:two  # the digit\ndigits:five\n\ncolor:red\n")
    assert [p.text for p in concept_sets(f"@{listed}")[0]] == [p.text for p in forget]
    with pytest.raises(ValueError, match="concept='cats' is not known"):
        concept_sets("digits:two,cats")
    with pytest.raises(ValueError, match="nothing to retain"):
        concept_sets(",".join(f"color:{c}" for c in ("white", "red", "green", "blue", "yellow", "magenta")))


def test_generate_job_takes_several_concepts(tiny_pipeline_dir, tmp_path):
    out = tmp_path / "multi"
    info = main(["--pretrained_model_name_or_path", str(tiny_pipeline_dir), "--concept", "digits:two,color:red",
                 "--output_dir", str(out), "--num_images", "4", "--num_inference_steps", "2"])
    assert info["forget"]["prompt_set"]["name"] == "digits:two+color:red"
    rows = [json.loads(line) for line in (out / "forget" / "metadata.jsonl").read_text().splitlines()]
    assert {row["extra"]["concept"] for row in rows} <= {"digits:two", "color:red"}
