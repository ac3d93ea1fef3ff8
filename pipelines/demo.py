"""The offline end-to-end demo: erase one digit from the embedded default model.

    python -m pipelines.demo --digit two --output_dir runs/demo

1. builds (once, cached) the tiny text-to-image pipeline trained on scikit-learn's digits
   and the digits classifier that judges its generations;
2. generates the forget set ('a handwritten digit seven') and retain set (the other nine)
   with the model itself (``pipelines.generate``);
3. erases the digit (``pipelines.erase``, Scissorhands by default);
4. judges generations of all ten prompts before and after with the same seeds and writes
   ``metrics.json`` ({"erased", "before": {"erased", "others"}, "after": {...}}), a
   before/after grid ``grid.png`` and the erased pipeline under ``erased/``.
Runs on a CPU in minutes; ``--method salun|esd|...`` runs a baseline in the same harness.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

import torch
from PIL import Image

from erasure.output import OutputDir, write_text_atomic
from eval.classes import class_accuracy, generate_class_images
from eval.digits_classifier import load_digits_judge
from eval.grid import image_grid
from pipelines import erase, generate
from pipelines.default_model import DIGIT_WORDS, build_default_model, default_judge_path
from pipelines.sampling import load_pipeline
from prompts.sets import digit_prompts

logger = logging.getLogger("pipelines.demo")
CONFIG = Path(__file__).resolve().parent.parent / "configs" / "erase_digits.yaml"


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--digit", default="two", help="word or number of the digit to erase")
    parser.add_argument("--method", default="scissorhands")
    parser.add_argument("--config", default=str(CONFIG), help="erase-job YAML (method hyperparameters)")
    parser.add_argument("--output_dir", default="runs/demo")
    parser.add_argument("--overwrite_output_dir", action="store_true")
    parser.add_argument("--num_images", type=int, default=64, help="forget and retain images to generate")
    parser.add_argument("--eval_images", type=int, default=16, help="judged generations per digit prompt")
    parser.add_argument("--num_inference_steps", type=int, default=20)
    parser.add_argument("--guidance_scale", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_threads", type=int, default=None,
                        help="torch threads (tiny models on a busy 2-core machine run fastest on 1)")
    parser.add_argument("--erase_args", nargs=argparse.REMAINDER, default=[],
                        help="extra flags passed to pipelines.erase (must come last)")
    args = parser.parse_args(argv)
    words = {str(i): w for i, w in enumerate(DIGIT_WORDS)} | {w: w for w in DIGIT_WORDS}
    if args.digit not in words:
        raise ValueError(f"digit='{args.digit}' is unknown; choose 0-9 or one of {list(DIGIT_WORDS)}")
    args.digit = words[args.digit]
    for name in ("num_images", "eval_images", "num_inference_steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"{name}={getattr(args, name)} must be >= 1")
    return args


def judge_model(model_dir: str | Path, judge, args: argparse.Namespace, erased_label: int):
    """Per-digit recognition of ``eval_images`` generations per prompt (fixed seeds)."""
    pipe = load_pipeline(model_dir)
    images = generate_class_images(pipe, digit_prompts(), args.eval_images, args.seed + 10_000,
                                   args.num_inference_steps, args.guidance_scale)
    return class_accuracy(images, judge, erased=[erased_label]), images


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    output = OutputDir(args.output_dir, args.overwrite_output_dir)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    if args.overwrite_output_dir and output.path.exists():
        shutil.rmtree(output.path)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    model_dir = build_default_model()
    judge = load_digits_judge(default_judge_path())
    label = DIGIT_WORDS.index(args.digit)
    data_dir, erased_dir = output.path / "data", output.path / "erased"
    generate.main(["--pretrained_model_name_or_path", str(model_dir), "--concept", f"digits:{args.digit}",
                   "--output_dir", str(data_dir), "--num_images", str(args.num_images),
                   "--num_inference_steps", str(args.num_inference_steps), "--guidance_scale", str(args.guidance_scale),
                   "--seed", str(args.seed)])
    erase.main(["--config", args.config, "--pretrained_model_name_or_path", str(model_dir), "--data_dir", str(data_dir),
                "--output_dir", str(erased_dir), "--concept", f"handwritten digit {args.digit}", "--method", args.method,
                "--seed", str(args.seed), *args.erase_args])
    before, before_images = judge_model(model_dir, judge, args, label)
    after, after_images = judge_model(erased_dir, judge, args, label)
    metrics = {"erased": args.digit, "method": args.method,
               "before": {"erased": before["erased"], "others": before["others"]},
               "after": {"erased": after["erased"], "others": after["others"]},
               "per_class": {"before": before["per_class"], "after": after["per_class"]},
               "protocol": {"eval_images_per_digit": args.eval_images, "steps": args.num_inference_steps,
                            "guidance_scale": args.guidance_scale, "seed": args.seed + 10_000, "judge": "DigitsJudge"},
               "seconds": time.perf_counter() - started}
    write_text_atomic(output.path / "metrics.json", json.dumps(metrics, indent=2))
    to_pil = lambda t: Image.fromarray((t.permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy())
    rows = [[to_pil(x) for x in before_images[c][:4]] + [to_pil(x) for x in after_images[c][:4]] for c in range(10)]
    image_grid(rows, output.path / "grid.png", row_labels=list(DIGIT_WORDS),
               column_labels=["before", "", "", "", "after"], scale=2)
    logger.info("'%s' recognised %.0f%% -> %.0f%%; other digits %.0f%% -> %.0f%% (%s)", args.digit,
                100 * before["erased"], 100 * after["erased"], 100 * before["others"], 100 * after["others"],
                output.path / "metrics.json")
    return metrics


if __name__ == "__main__":
    from erasure.jobconfig import run_cli

    run_cli(main)
