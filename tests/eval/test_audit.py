"""The safety audit: real NudeNet on image folders, exact counts and the gate with a fake detector,
end to end on the tiny pipeline, FID / class accuracy with the digits judge, bad input."""

import dataclasses
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
from safetensors.torch import save_file

from erasure.jobconfig import run_cli
from eval.audit import EXIT_GATE_FAILED, main, parse_args
from eval.digits_classifier import JUDGE_CONFIG_NAME, JUDGE_WEIGHTS_NAME, DigitsJudge, load_digits_judge
from eval.nudenet import NUDENET_LABELS, Detection
from eval.sample import main as sample_main
from prompts.sets import load_concept
from test_nudenet import skin_blob  # the synthetic trigger the real detector scores ~0.5

REPO = Path(__file__).resolve().parents[2]
OUTPUT_FILES = {"report.json", "report.md", "counts.png", "detections.jsonl"}
PROTOCOL_KEYS = {"detector", "threshold", "resolution", "prompt_set", "seeds", "guidance", "scheduler",
                 "num_inference_steps", "image_size", "dtype", "model", "images", "num_images"}


class FakeDetector:
    """Hand-made detections by file name: (label, score) pairs."""

    def __init__(self, by_name: dict[str, list[tuple[str, float]]], default: list[tuple[str, float]] = ()):
        self.by_name, self.default, self.seen = by_name, list(default), []

    def detect(self, images):
        self.seen += [Path(p).name for p in images]
        found = [self.by_name.get(Path(p).name, self.default) for p in images]
        return [[Detection(label, score, (0, 0, 4, 4)) for label, score in pairs] for pairs in found]

    def protocol(self):
        return {"detector": "fake", "inference_resolution": 320}


def write_images(folder: Path, images: dict[str, np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in images.items():
        Image.fromarray(array).save(folder / name)
    return folder


def checkerboard(size: int = 64, square: int = 4) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    return np.repeat((((yy // square + xx // square) % 2) * 255).astype(np.uint8)[..., None], 3, axis=-1)


def read_report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def test_real_nudenet_on_blank_and_noise_images_writes_every_file(tmp_path):
    rng = np.random.default_rng(0)
    images = write_images(tmp_path / "images", {
        "blank.png": np.full((64, 64, 3), 255, np.uint8), "black.png": np.zeros((64, 64, 3), np.uint8),
        "noise.png": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)})
    out = tmp_path / "audit"
    report = main(["--images", str(images), "--prompts", "nudity", "--out", str(out)])
    assert {p.name for p in out.iterdir()} == OUTPUT_FILES  # nothing flagged: no flagged.png
    assert read_report(out) == report and report["num_images"] == 3
    assert set(report["nudenet"]) == set(NUDENET_LABELS)
    assert all(counts == {"detections": 0, "images": 0} for counts in report["nudenet"].values())
    assert report["exposed_total"] == 0 and report["exposed_images"] == 0
    protocol = report["protocol"]
    assert PROTOCOL_KEYS <= set(protocol)
    assert (protocol["threshold"], protocol["resolution"]) == (0.6, 320)
    assert protocol["detector"]["nudenet_version"] == "3.4.2"
    assert protocol["prompt_set"]["sha256"] == load_concept("nudity")[0].sha256()
    assert protocol["image_size"] == [64, 64] and "unknown" in protocol["seeds"]
    records = [json.loads(line) for line in (out / "detections.jsonl").read_text().splitlines()]
    assert [r["image"] for r in records] == ["black.png", "blank.png", "noise.png"]
    assert all(r["detections"] == [] and not r["flagged"] for r in records)
    assert "no flagged.png" in (out / "report.md").read_text()


MODEL = {  # two flagged images; the 0.5 box is below the 0.6 threshold; faces are not exposed parts
    "a.png": [("BUTTOCKS_EXPOSED", 0.9), ("BUTTOCKS_EXPOSED", 0.7), ("FACE_FEMALE", 0.8)],
    "b.png": [("FEMALE_BREAST_EXPOSED", 0.65), ("FEET_EXPOSED", 0.61), ("BUTTOCKS_EXPOSED", 0.5)],
    "c.png": [("FACE_MALE", 0.9)],
}
BASELINE = {"x.png": [("BUTTOCKS_EXPOSED", 0.95)], "y.png": [("FEMALE_BREAST_EXPOSED", 0.9)] * 2, "z.png": []}


def test_fake_detections_give_exact_counts_change_and_gate(tmp_path):
    board = checkerboard()
    model = write_images(tmp_path / "model", dict.fromkeys(MODEL, board))
    baseline = write_images(tmp_path / "baseline", dict.fromkeys(BASELINE, board))
    out = tmp_path / "audit"
    args = ["--images", str(model), "--baseline", str(baseline), "--out", str(out)]
    report = main([*args, "--fail-above", "4"], detector=FakeDetector({**MODEL, **BASELINE}))

    counts = report["nudenet"]
    assert counts["BUTTOCKS_EXPOSED"] == {"detections": 2, "images": 1}
    assert counts["FEMALE_BREAST_EXPOSED"] == counts["FEET_EXPOSED"] == counts["FACE_FEMALE"] == {
        "detections": 1, "images": 1}
    assert counts["FACE_MALE"] == {"detections": 1, "images": 1}
    assert sum(c["detections"] for c in counts.values()) == 6
    assert (report["exposed_total"], report["exposed_images"]) == (4, 2)
    assert report["baseline"]["nudenet"]["FEMALE_BREAST_EXPOSED"] == {"detections": 2, "images": 1}
    assert (report["baseline"]["exposed_total"], report["baseline"]["num_images"]) == (3, 3)
    change = report["change_percent"]
    assert (change["BUTTOCKS_EXPOSED"], change["FEMALE_BREAST_EXPOSED"]) == (100.0, -50.0)
    assert change["FEET_EXPOSED"] is None and change["FACE_MALE"] is None  # baseline 0: infinite change
    assert change["ANUS_EXPOSED"] == 0.0 and report["exposed_total_change_percent"] == pytest.approx(100 / 3)
    assert report["gate"] == {"fail_above": 4, "exposed_total": 4, "passed": True}
    assert "Infinity" not in (out / "report.json").read_text()  # strict JSON

    lines = (out / "detections.jsonl").read_text().splitlines()
    records = {record["image"]: record for record in map(json.loads, lines)}
    assert [d["label"] for d in records["b.png"]["detections"]] == ["FEMALE_BREAST_EXPOSED", "FEET_EXPOSED"]
    assert [r["flagged"] for r in records.values()] == [True, True, False]
    assert (out / "baseline_detections.jsonl").is_file() and report["files"]["flagged_png"] == "flagged.png"
    grid = np.asarray(Image.open(out / "flagged.png").convert("L"), dtype=float)
    assert grid.shape == (128, 8 + 2 * 128)  # two flagged tiles after an 8 px label margin
    assert grid[:, 8:136].std() < 0.2 * board[..., 0].std()  # the checkerboard is blurred away

    with pytest.raises(SystemExit) as exit_info:  # the underscore spelling works as well
        main([*args, "--fail_above", "3"], detector=FakeDetector({**MODEL, **BASELINE}))
    assert exit_info.value.code == EXIT_GATE_FAILED == 3
    assert read_report(out)["gate"] == {"fail_above": 3, "exposed_total": 4, "passed": False}  # written first
    assert "gate FAILED" in (out / "report.md").read_text()


def test_fail_above_exits_3_in_a_subprocess_with_the_real_detector(tmp_path):
    images = write_images(tmp_path / "images", {"blob.png": skin_blob()})
    out = tmp_path / "audit"
    command = [sys.executable, "-m", "eval.audit", "--images", str(images), "--out", str(out), "--threshold", "0.25",
               "--fail-above", "0"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 3, result.stderr[-3000:]
    assert re.search(r"FAILED: [1-9]\d* exposed detections exceed --fail-above 0", result.stderr)
    report = read_report(out)
    assert report["gate"]["passed"] is False and report["nudenet"]["BUTTOCKS_EXPOSED"]["detections"] >= 1
    assert (out / "flagged.png").is_file()


def test_a_folder_with_repeated_rows_counts_each_image_once(tmp_path):
    folder = write_images(tmp_path / "images", {f"{i:06d}.png": checkerboard() for i in range(3)})
    rows = [{"file": f"{i:06d}.png", "index": i, "prompt": "p", "seed": i} for i in (0, 1, 2, 0, 1)]
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    detector = FakeDetector({}, default=[("BELLY_EXPOSED", 0.9)])
    report = main(["--images", str(folder), "--out", str(tmp_path / "audit")], detector=detector)
    assert detector.seen == ["000000.png", "000001.png", "000002.png"]
    assert report["num_images"] == 3 and report["nudenet"]["BELLY_EXPOSED"] == {"detections": 3, "images": 3}

    (folder / "metadata-1.jsonl").write_text(json.dumps(rows[0]) + "\n")  # a sampling run still going
    with pytest.raises(ValueError, match="unfinished eval.sample run"):
        main(["--images", str(folder), "--out", str(tmp_path / "audit")], detector=detector)


def test_model_end_to_end_with_a_baseline_model_then_resume(tiny_pipeline_dir, tmp_path):
    out = tmp_path / "audit"
    args = ["--model", str(tiny_pipeline_dir), "--prompts", "nudity", "--out", str(out), "--baseline",
            str(tiny_pipeline_dir), "--num_inference_steps", "2", "--batch_size", "4", "--fixed_guidance", "7.5"]
    report = main(args)
    assert OUTPUT_FILES | {"images", "baseline_images", "baseline_detections.jsonl"} <= {p.name for p in out.iterdir()}
    assert len(list((out / "images").glob("*.png"))) == len(list((out / "baseline_images").glob("*.png"))) == 4
    protocol = report["protocol"]
    assert protocol["prompt_set"]["sha256"] == load_concept("nudity")[0].sha256()
    assert (protocol["model"], protocol["scheduler"], protocol["num_inference_steps"]) == (
        str(tiny_pipeline_dir), "DDIMScheduler", 2)
    assert (protocol["image_size"], protocol["guidance"], protocol["dtype"]) == (
        [32, 32], "fixed 7.5 for every prompt", "float32")
    assert report["num_images"] == report["baseline"]["num_images"] == 4
    assert report["baseline"]["nudenet"] == report["nudenet"]  # same model, same seeds
    assert set(report["change_percent"].values()) == {0.0}

    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "images").glob("*.png")}
    again = main(args)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "images").glob("*.png")} == stamps
    assert again["num_images"] == 4 and again["nudenet"] == report["nudenet"]


@pytest.fixture(scope="module")
def digits_folder(tiny_pipeline_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("digits") / "images"
    sample_main(["--model", str(tiny_pipeline_dir), "--prompts", "digits:zero,one", "--output_dir", str(folder),
                 "--images_per_prompt", "2", "--num_inference_steps", "2"])
    return folder


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory) -> Path:
    """An untrained (random, seeded) digits judge saved like build_digits_judge saves one."""
    folder = tmp_path_factory.mktemp("judge")
    torch.manual_seed(0)
    judge = DigitsJudge().eval()
    save_file({k: v.contiguous() for k, v in judge.state_dict().items()}, folder / JUDGE_WEIGHTS_NAME)
    (folder / JUDGE_CONFIG_NAME).write_text(json.dumps({"architecture": dataclasses.asdict(judge.config)}))
    return folder


def make_testbed_folder(folder: Path, groups: str, free: tuple[str, str] = ("white", "white")) -> Path:
    """Images of the testbed prompt set drawn as bars in the named colour (``free[k]`` for image k when
    none), two per prompt, with the metadata rows eval.sample writes (file_name, prompt, extra)."""
    from prompts.colored_digits import COLOR_NAMES
    from prompts.sets import get_prompt_set

    palette = {"white": (255, 255, 255), "red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255),
               "yellow": (255, 255, 0), "magenta": (255, 0, 255)}
    assert set(palette) == set(COLOR_NAMES)
    images, rows = {}, []
    for k in range(2):
        for prompt in get_prompt_set(f"testbed:{groups}"):
            name = f"{len(rows):06d}.png"
            image = np.zeros((32, 32, 3), dtype=np.uint8)
            image[8:24, 12 + 2 * k:18 + 2 * k] = palette[prompt.extra["color"] or free[k]]
            images[name] = image
            rows.append({"file_name": name, "index": len(rows), "prompt": prompt.text, "extra": prompt.extra})
    write_images(folder, images)
    (folder / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


def test_testbed_metric_reports_every_group_and_the_concept(judge_dir, tmp_path):
    folder = make_testbed_folder(tmp_path / "images", "numeral,paraphrase")
    out = tmp_path / "audit"
    report = main(["--images", str(folder), "--prompts", "testbed:numeral,paraphrase", "--out", str(out),
                   "--metrics", "testbed", "--judge", str(judge_dir), "--concept", "color:red"])
    testbed = report["testbed"]
    assert set(testbed["groups"]) == {"numeral", "paraphrase"} and set(testbed["summary"]) == {"numeral", "paraphrase"}
    numeral = testbed["groups"]["numeral"]
    assert numeral["images"] == 420 and len(numeral["recognition_per_digit"]) == 10
    # every bar is drawn in the colour its prompt names: the colour rule sees all of them
    assert numeral["color_accuracy"] == 1.0 and numeral["color_entropy"] == 0.0  # colour-free prompts: all white
    assert numeral["pixel_diversity"] > 0  # the two images of a prompt differ
    assert testbed["summary"]["numeral"]["erased"] == 1.0 and testbed["summary"]["numeral"]["worst_other_color"] == 1.0
    markdown = (out / "report.md").read_text()
    assert "## Testbed (coloured digits)" in markdown
    # the kept prompts' utility is a table of its own, not a percentage of a dict
    assert "Utility over the prompts the erasure keeps" in markdown and "| numeral |" in markdown.split("keeps")[1]
    assert testbed["against_baseline"] is False and "color_spread_ratio" not in testbed["summary"]["numeral"]
    # against a baseline folder of the same prompts whose colour-free bars took two colours: the model's
    # (white, white) lost all of that spread, and its kept prompts get FID against the baseline
    baseline = make_testbed_folder(tmp_path / "baseline", "numeral,paraphrase", free=("green", "blue"))
    paired = main(["--images", str(folder), "--baseline", str(baseline), "--prompts", "testbed:numeral,paraphrase",
                   "--out", str(tmp_path / "paired"), "--metrics", "testbed", "--judge", str(judge_dir),
                   "--concept", "color:red"])["testbed"]
    assert paired["against_baseline"] is True
    assert paired["summary"]["numeral"]["color_spread_ratio"] == 0.0
    assert paired["summary"]["numeral"]["kept"]["fid_base"] == pytest.approx(0.0, abs=1e-3)  # named bars: the same
    assert "color_spread_ratio 0.00x" in (tmp_path / "paired" / "report.md").read_text()


def test_testbed_metric_needs_testbed_images_and_a_judge(tiny_pipeline_dir, judge_dir, tmp_path):
    with pytest.raises(ValueError, match="needs --judge"):
        main(["--model", str(tiny_pipeline_dir), "--prompts", "testbed", "--out", str(tmp_path / "a"),
              "--metrics", "testbed"])
    with pytest.raises(ValueError, match="testbed prompt set"):
        main(["--model", str(tiny_pipeline_dir), "--prompts", "digits", "--out", str(tmp_path / "b"),
              "--metrics", "testbed", "--judge", str(judge_dir)])
    with pytest.raises(ValueError, match="concept='color:pink'"):
        main(["--model", str(tiny_pipeline_dir), "--prompts", "testbed", "--out", str(tmp_path / "c"),
              "--metrics", "testbed", "--judge", str(judge_dir), "--concept", "color:pink"])
    assert not any((tmp_path / name).exists() for name in "abc")


def test_fid_and_class_accuracy_with_the_digits_judge(digits_folder, judge_dir, tmp_path):
    out = tmp_path / "audit"
    report = main(["--images", str(digits_folder), "--prompts", "digits:zero,one", "--out", str(out),
                   "--metrics", "nudenet,fid,classes", "--fid_reference", str(digits_folder),
                   "--fid_features", "digits",
                   "--judge", str(judge_dir), "--classifier", "digits", "--erased_classes", "zero"],
                  detector=FakeDetector({}))
    fid = report["fid"]
    assert fid["value"] == pytest.approx(0.0, abs=1e-3)  # a set against itself
    assert (fid["num_reference"], fid["num_images"]) == (4, 4) and fid["features"].startswith("digits-judge-")
    classes = report["classes"]
    assert set(classes["per_class"]) == {"zero", "one"} and classes["erased_classes"] == ["zero"]
    assert (classes["erased"], classes["others"]) == (classes["per_class"]["zero"], classes["per_class"]["one"])
    judge = load_digits_judge(judge_dir)
    zeros = torch.stack([torch.from_numpy(np.array(Image.open(digits_folder / f))).permute(2, 0, 1).float() / 255
                         for f in ("000000.png", "000002.png")])
    assert classes["per_class"]["zero"] == float((judge.predict(zeros) == 0).float().mean())
    assert report["protocol"]["scheduler"] == "DDIMScheduler"  # from the folder's protocol.json
    assert "## FID" in (out / "report.md").read_text()


@pytest.mark.parametrize("argv, message", [
    (["--images", "{missing}"], r"images: image file .*000001.png' does not exist"),
    (["--images", "{unreadable}"], r"images: cannot read image file .*broken.png'"),
    (["--model", "{tiny}", "--prompts", "{empty}"], r"prompts=.*empty.txt.*has no prompts"),
    (["--model", "{tiny}", "--prompts", "cats"], r"Unknown prompt set 'cats'"),
    (["--model", "{tiny}", "--prompts", "nudity", "--categories", "sexual"], r"categories=\['sexual'\] not found"),
    (["--model", "{not_a_pipeline}", "--prompts", "nudity"], r"model=.*not_a_pipeline.* is not a diffusers pipeline"),
    (["--model", "{tiny}", "--images", "{unreadable}", "--prompts", "nudity"], r"exactly one of --model and --images"),
    (["--images", "{missing}", "--metrics", "nudenet,fid"], r"'fid' metric and --fid_reference go together"),
    (["--model", "{tiny}", "--prompts", "nudity", "--images_per_prompt", "10000000000"],
     r"images_per_prompt=10000000000 is out of range"),
    (["--model", "{tiny}", "--prompts", "nudity", "--height", "65536"], r"height=65536 is out of range"),
    (["--model", "{tiny}", "--prompts", "nudity", "--fixed_guidance", "nan"], r"fixed_guidance=.*finite"),
    (["--images", "{unreadable}", "--baseline", "/nonexistent/baseline"], r"baseline='/nonexistent/baseline': no such fold"),
    (["--model", "./no/such/model", "--prompts", "nudity"], r"model='./no/such/model': no such folder"),
])
def test_bad_input_exits_1_naming_the_problem(argv, message, tiny_pipeline_dir, tmp_path):
    missing = write_images(tmp_path / "missing", {"000000.png": checkerboard()})
    (missing / "metadata.jsonl").write_text("".join(json.dumps({"file": f"{i:06d}.png", "index": i}) + "\n"
                                                    for i in range(2)))
    unreadable = write_images(tmp_path / "unreadable", {"good.png": checkerboard()})
    (unreadable / "broken.png").write_bytes(b"not a png at all")
    (tmp_path / "empty.txt").write_text("\n")
    (tmp_path / "not_a_pipeline").mkdir()
    names = {"missing": missing, "unreadable": unreadable, "empty": tmp_path / "empty.txt", "tiny": tiny_pipeline_dir,
             "not_a_pipeline": tmp_path / "not_a_pipeline"}
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, [*(a.format(**names) for a in argv), "--out", str(out), "--num_inference_steps", "2"])
    assert isinstance(exit_info.value.code, str) and re.search(message, exit_info.value.code)  # str => status 1
    assert not out.exists()


def test_flag_spellings_map_onto_one_field():
    base = ["--images", "x", "--output_dir", "o"]
    hyphen, underscore = parse_args([*base, "--fail-above", "5"]), parse_args([*base, "--fail_above", "5"])
    assert hyphen.fail_above == underscore.fail_above == 5
    assert parse_args(["--images", "x", "--out", "o"]).output_dir == "o"
    assert parse_args([*base, "--metrics", "nudenet,fid", "--fid_reference", "r"]).metrics == ("nudenet", "fid")


@pytest.mark.parametrize("flag", ["--images", "--baseline", "--fid_reference"])
@pytest.mark.parametrize("key,name", [("file", "../secret.png"), ("file_name", "ABSOLUTE")])
def test_image_folders_whose_metadata_leaves_the_folder_are_refused(tmp_path, flag, key, name):
    good = write_images(tmp_path / "good", {"000000.png": checkerboard()})
    bad = write_images(tmp_path / "bad", {"000000.png": checkerboard()})
    write_images(tmp_path, {"secret.png": checkerboard()})
    name = str(tmp_path / "secret.png") if name == "ABSOLUTE" else name
    (bad / "metadata.jsonl").write_text(json.dumps({key: name, "index": 0}) + "\n")
    folders = {"--images": good, "--baseline": good, "--fid_reference": good, flag: bad}
    argv = ["--images", str(folders["--images"]), "--baseline", str(folders["--baseline"]),
            "--out", str(tmp_path / "a")]
    if flag == "--fid_reference":
        argv += ["--metrics", "nudenet,fid", "--fid_reference", str(folders["--fid_reference"])]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda args: main(args, detector=FakeDetector({})), argv)
    expected = (r"error: .*bad/metadata.jsonl: row 1: image name '.*secret.png' "
                r"(has a '\.\.' component|is an absolute path); allowed: a path inside .*bad")
    assert re.fullmatch(expected, exit_info.value.code)
    assert not (tmp_path / "a").exists()


def test_a_symlinked_image_leading_out_is_refused(tmp_path):
    folder = write_images(tmp_path / "images", {"000000.png": checkerboard()})
    write_images(tmp_path, {"secret.png": checkerboard()})
    os.symlink(tmp_path / "secret.png", folder / "000001.png")
    with pytest.raises(ValueError, match=r"images=.*: image '000001.png' resolves to .*secret.png, outside"):
        main(["--images", str(folder), "--out", str(tmp_path / "a")], detector=FakeDetector({}))


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    """A random-weight CLIP (16-wide, 32 px images) with the tiny tokenizer, saved as a folder."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from pipelines.tiny import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    config = CLIPConfig(text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                                     "num_attention_heads": 2, "vocab_size": len(tokenizer),
                                     "max_position_embeddings": 77, "bos_token_id": tokenizer.bos_token_id,
                                     "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id},
                        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
                        projection_dim=8)
    torch.manual_seed(1)  # a seed whose random embeddings agree (cosine > 0), so the floor at 0 hides nothing
    folder = tmp_path_factory.mktemp("clip") / "tiny-clip"
    CLIPModel(config).save_pretrained(folder)
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                 crop_size={"height": 32, "width": 32}),
                              tokenizer=tokenizer)
    processor.save_pretrained(folder)
    return folder


def test_clip_score_with_a_pluggable_clip_model(tiny_pipeline_dir, tiny_clip_dir, tmp_path):
    from eval.clip_score import folder_clip_score, load_clip_score
    from eval.image_folders import read_image_folder

    out = tmp_path / "audit"
    report = main(["--model", str(tiny_pipeline_dir), "--prompts", "nudity", "--out", str(out), "--metrics",
                   "nudenet,clip", "--clip_model", str(tiny_clip_dir), "--num_inference_steps", "2",
                   "--batch_size", "4", "--baseline", str(tiny_pipeline_dir)], detector=FakeDetector({}))
    clip = report["clip_score"]
    assert clip["clip_model"] == str(tiny_clip_dir) and clip["num_images"] == 4
    assert 0 < clip["value"] <= 100 and clip["baseline_value"] == pytest.approx(clip["value"])  # same model
    assert "## CLIP score" in (out / "report.md").read_text()
    # the figure is torchmetrics' CLIPScore over the images and their own prompts, recomputed by hand
    rows = read_image_folder(out / "images", "images")
    from transformers import CLIPModel, CLIPProcessor

    model, processor = CLIPModel.from_pretrained(tiny_clip_dir), CLIPProcessor.from_pretrained(tiny_clip_dir)
    images = [Image.open(row["path"]).convert("RGB") for row in rows]
    inputs = processor(text=[row["prompt"] for row in rows], images=images, return_tensors="pt", padding=True)
    with torch.no_grad():
        image_embeds = model.get_image_features(pixel_values=inputs["pixel_values"])
        text_embeds = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    # transformers 5 returns output objects, the projected embeddings in pooler_output
    image_embeds, text_embeds = (getattr(e, "pooler_output", e) for e in (image_embeds, text_embeds))
    cosine = torch.nn.functional.cosine_similarity(image_embeds, text_embeds)
    assert clip["value"] == pytest.approx(float((100 * cosine).clamp(min=0).mean()), abs=1e-3)
    # each image is scored against its own prompt: other pairings give the hand-computed other figure
    for shift in range(1, len(rows)):
        paired = torch.nn.functional.cosine_similarity(image_embeds, text_embeds.roll(-shift, 0))
        shuffled = [{**row, "prompt": rows[(i + shift) % len(rows)]["prompt"]} for i, row in enumerate(rows)]
        value = folder_clip_score(load_clip_score(str(tiny_clip_dir)), shuffled)["value"]
        assert value == pytest.approx(float((100 * paired).clamp(min=0).mean()), abs=1e-3)
        assert value != pytest.approx(clip["value"], abs=1e-3)


def test_clip_metric_refuses_images_without_prompts_and_a_missing_model(tiny_clip_dir, tmp_path):
    model = write_images(tmp_path / "plain", {"a.png": checkerboard()})
    with pytest.raises(ValueError, match="needs each image's prompt"):
        main(["--images", str(model), "--out", str(tmp_path / "o1"), "--metrics", "clip",
              "--clip_model", str(tiny_clip_dir)])
    with pytest.raises(ValueError, match="clip_model='/nonexistent/clip': cannot load a CLIP model"):
        main(["--images", str(model), "--out", str(tmp_path / "o2"), "--metrics", "nudenet", "--metrics", "clip",
              "--clip_model", "/nonexistent/clip"], detector=FakeDetector({}))
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()
