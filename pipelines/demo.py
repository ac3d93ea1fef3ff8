"""The offline end-to-end demo: erase a concept from the embedded default model.

    python -m pipelines.demo --concept color:red --output_dir runs/demo      # an attribute (default)
    python -m pipelines.demo --concept digits:two --output_dir runs/demo-2   # an object class
    python -m pipelines.demo --digit two ...                                 # = --concept digits:two
    python -m pipelines.demo --concept digits:two,color:red ...              # several in one run

1. builds (once, cached) the tiny text-to-image pipeline that draws coloured digits and the
   judges of its generations (``pipelines/default_model.py``);
2. generates the forget and retain sets with the model itself (``pipelines.generate``), from
   the word form of the grammar's erase phrasings;
3. erases the concept (``pipelines.erase``, Scissorhands by default);
4. judges generations of every grammar prompt before and after, on the same seeds
   (``eval.testbed``): the erase phrasings with words, the same with numerals ("the number 2")
   and unseen paraphrases, each reported apart. Writes ``metrics.json``, a before/after grid
   ``grid.png`` (8 seeds per row) and the erased pipeline under ``erased/``.
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
from eval.digits_classifier import load_digits_judge
from eval.grid import image_grid
from eval.testbed import EVAL_SEED, TestbedSamples, report_of, sample_testbed, worst_other
from pipelines import erase, generate
from pipelines.default_model import GUIDANCE_SCALE, build_default_model, default_judge_path
from pipelines.sampling import SampleItem, generate as draw, load_pipeline
from prompts.base import Prompt
from prompts.colored_digits import COLOR_NAMES, DIGIT_WORDS, grammar_prompts, parse_concept

logger = logging.getLogger("pipelines.demo")
CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def method_config(method: str) -> Path:
    """The erase configuration of ``method`` tuned on the testbed: ``configs/erase_digits_<method>.yaml``.

    Raises:
        FileNotFoundError: for a method without one (naming the path).
    """
    path = CONFIGS / f"erase_digits_{method}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"method {method!r} has no testbed configuration at {path}; pass --config")
    return path
GRID_SEEDS = 8


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concept", default=None,
                        help="digits:<word or 0-9> (an object class) or color:<name> (an attribute across every "
                             "digit, the offline analogue of nudity or a style; the default, color:red); several "
                             "joined by ',' (or @FILE, one per line) are erased in one run")
    parser.add_argument("--digit", default=None, help="shorthand for --concept digits:<digit>")
    parser.add_argument("--method", default="scissorhands")
    parser.add_argument("--config", default=None,
                        help="erase-job YAML (default: the method's tuned configs/erase_digits_<method>.yaml)")
    parser.add_argument("--output_dir", default="runs/demo")
    parser.add_argument("--overwrite_output_dir", action="store_true")
    parser.add_argument("--num_images", type=int, default=64,
                        help="forget and retain images to generate per concept (as many as its single run)")
    parser.add_argument("--eval_images", type=int, default=2, help="judged generations per grammar prompt")
    parser.add_argument("--num_inference_steps", type=int, default=20)
    parser.add_argument("--guidance_scale", type=float, default=GUIDANCE_SCALE)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_threads", type=int, default=None,
                        help="torch threads (tiny models on a busy 2-core machine run fastest on 1)")
    parser.add_argument("--erase_args", nargs=argparse.REMAINDER, default=[],
                        help="extra flags passed to pipelines.erase (must come last)")
    args = parser.parse_args(argv)
    if args.concept is not None and args.digit is not None:
        raise ValueError(f"give --concept or --digit, not both (got concept={args.concept!r}, digit={args.digit!r})")
    if args.digit is not None:
        try:
            args.concept = f"digits:{DIGIT_WORDS[parse_concept(f'digits:{args.digit}')[1]]}"
        except ValueError as err:
            raise ValueError(f"digit={args.digit!r} is unknown; choose 0-9 or one of {list(DIGIT_WORDS)}") from err
    args.concept = args.concept or "color:red"
    names = []
    for name in generate.split_concepts(args.concept):
        try:
            kind, value = parse_concept(name)
        except ValueError as err:
            raise ValueError(f"concept={args.concept!r}: {err}") from err
        names.append(f"{kind}:{DIGIT_WORDS[value] if kind == 'digits' else value}")
    args.concepts = list(dict.fromkeys(names))  # each once, in the order given
    args.concept = ",".join(args.concepts)
    for name in ("num_images", "eval_images", "num_inference_steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"{name}={getattr(args, name)} must be >= 1")
    from erasure.methods import get_method

    get_method(args.method)  # an unknown method fails here, before anything is built or written
    args.config = args.config or str(method_config(args.method))
    if not Path(args.config).is_file():
        raise FileNotFoundError(f"config={args.config!r}: no such file")
    return args


def grid_rows(concept: str) -> tuple[list[str], list[list[str]]]:
    """Row labels and prompts of the before/after grid: one row per digit (colour-free prompts,
    so the colours show too) for a digit concept; for a colour concept one row per colour and a
    last row of colour-free prompts of digits 0-7 ("colour-free": the prompts a colour erasure
    leaves on neither side, whose spread over the colours it can narrow); the digit rows and the
    colour rows when ``concept`` joins digits and colours ("digits:two,color:red"), the digit rows
    being colour-free already."""
    kinds = {parse_concept(name)[0] for name in generate.split_concepts(concept)}
    labels, prompts = [], []
    if "digits" in kinds:
        labels += list(DIGIT_WORDS)
        prompts += [[f"a handwritten digit {w}"] * GRID_SEEDS for w in DIGIT_WORDS]
    if "color" in kinds:
        labels += list(COLOR_NAMES)
        prompts += [[f"a {c} handwritten digit {DIGIT_WORDS[k % 10]}" for k in range(GRID_SEEDS)] for c in COLOR_NAMES]
        if "digits" not in kinds:
            labels.append("colour-free")
            prompts.append([f"a handwritten digit {DIGIT_WORDS[k % 10]}" for k in range(GRID_SEEDS)])
    return labels, prompts


def grid_images(pipe, prompts: list[list[str]], args: argparse.Namespace) -> list[list[Image.Image]]:
    """Generations of the grid's prompts, seed ``EVAL_SEED + column`` (the same in every row)."""
    flat = [p for row in prompts for p in row]
    items = [SampleItem(i, Prompt(p), EVAL_SEED + i % GRID_SEEDS, args.guidance_scale) for i, p in enumerate(flat)]
    images: list = [None] * len(items)
    for item, image, _ in draw(pipe, items, 64, args.num_inference_steps, output_type="pil", show_progress=False):
        images[item.index] = image
    return [images[r * GRID_SEEDS:(r + 1) * GRID_SEEDS] for r in range(len(prompts))]


def draw_model(model_dir: str | Path, args: argparse.Namespace) -> tuple[TestbedSamples, list[list[Image.Image]]]:
    """Generations of every grammar prompt on the evaluation seeds, and the grid images, of a model."""
    pipe = load_pipeline(model_dir)
    samples = sample_testbed(pipe, images_per_prompt=args.eval_images, seed=EVAL_SEED,
                             num_inference_steps=args.num_inference_steps, guidance_scale=args.guidance_scale)
    return samples, grid_images(pipe, grid_rows(args.concept)[1], args)


UTILITY = ("diversity", "pixel_diversity", "alignment", "fid", "kid", "fid_base", "kid_base", "diversity_ratio")


def side(report: dict) -> dict:
    """One side of metrics.json: the concept's figures on the word prompts (the headline: erased,
    others, worst_other, ...) with their distribution-level utility (diversity, alignment, FID and
    KID against real digits; on the after side also against the base model's generations), the
    same over the prompts the erasure must leave alone (``kept``: ``eval.testbed.kept_prompts``),
    the numeral and paraphrase groups apart, and every group's full figures. With several concepts
    the concept figures are per concept, under ``concepts`` (each one's "others" without the other
    erased concepts), beside the utility of all word prompts."""
    word = report["groups"]["word"]
    utility = {key: word[key] for key in UTILITY if key in word}
    figures = lambda c: {**c["word"], "numeral": c["numeral"], "paraphrase": c["paraphrase"]}
    if "concepts" in report:
        return {"concepts": {name: figures(c) for name, c in report["concepts"].items()}, **utility,
                "groups": report["groups"]}
    return {**figures(report["concept"]), **utility, "groups": report["groups"]}


def log_concept(name: str, b: dict, a: dict, eval_images: int = 2) -> None:
    """One concept's before -> after line (``eval_images``: generations a prompt, for the spread's noise)."""
    logger.info("'%s' %.0f%% -> %.0f%% (numeral %.0f%% -> %.0f%%, paraphrase %.0f%% -> %.0f%%); others %.0f%% -> "
                "%.0f%%, worst %s %.0f%% -> %s %.0f%%; on the kept prompts: diversity x%.2f of the base, FID vs real "
                "digits %.2f -> %.2f, vs the base %.2f",
                name, 100 * b["erased"], 100 * a["erased"], 100 * b["numeral"]["erased"],
                100 * a["numeral"]["erased"], 100 * b["paraphrase"]["erased"], 100 * a["paraphrase"]["erased"],
                100 * b["others"], 100 * a["others"], b["worst_other_name"], 100 * worst_other(b),
                a["worst_other_name"], 100 * worst_other(a), a["kept"]["diversity_ratio"], b["kept"]["fid"],
                a["kept"]["fid"], a["kept"]["fid_base"])
    if a.get("color_spread_ratio") is not None:
        worst = a.get("color_free_worst_ratio")
        noise = ("; at 2 images a prompt an unchanged model reads 0.85-1.17x (python -m benchmarks.erasure_quality "
                 "measures it on 8, eval.testbed.spread_report)" if eval_images == 2 else
                 f"; {eval_images} images a prompt (python -m benchmarks.spread_noise measures the noise)")
        logger.info("'%s': colour-free prompts' colour spread x%.2f of the base's (the colour that lost most: %s)%s%s",
                    name, a["color_spread_ratio"],
                    "-" if worst is None else f"{a.get('color_free_worst_name')}, x{worst:.2f} of its share",
                    "" if "color_free_erased" not in a else
                    f"; drawn {name.partition(':')[2]} {100 * b['color_free_erased']:.0f}% -> "
                    f"{100 * a['color_free_erased']:.0f}% of the time", noise)
    if a.get("erased_purity") is not None and b.get("erased_purity") is not None:
        logger.info("'%s': the erased prompts' strokes in one colour: purity %.2f -> %.2f (a blend of colours reads "
                    "lower; eval.colors.ColorJudge.purity)", name, b["erased_purity"], a["erased_purity"])
    if a.get("erased_color_kept") is not None and b.get("erased_color_kept") is not None:
        logger.info("'%s' prompts that name a colour drawn in it: %.0f%% -> %.0f%% (the rest of the prompt kept)",
                    name, 100 * b["erased_color_kept"], 100 * a["erased_color_kept"])
    if a.get("erased_shares"):
        drawn = sorted(a["erased_shares"].items(), key=lambda item: -item[1])
        logger.info("'%s' prompts are now drawn %s%s", name,
                    ", ".join(f"{color} {100 * value:.0f}%" for color, value in drawn if value > 0),
                    f" ({100 * a['erased_blank']:.0f}% of them blank, not counted)" if a.get("erased_blank") else "")


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
    data_dir, erased_dir = output.path / "data", output.path / "erased"
    generate.main(["--pretrained_model_name_or_path", str(model_dir), "--concept", args.concept,
                   "--output_dir", str(data_dir), "--num_images", str(args.num_images * len(args.concepts)),
                   "--num_inference_steps", str(args.num_inference_steps), "--guidance_scale", str(args.guidance_scale),
                   "--seed", str(args.seed)])
    erase.main(["--config", args.config, "--pretrained_model_name_or_path", str(model_dir), "--data_dir", str(data_dir),
                "--output_dir", str(erased_dir), "--concept", args.concept, "--method", args.method,
                "--seed", str(args.seed), *args.erase_args])
    before_samples, before_grid = draw_model(model_dir, args)
    after_samples, after_grid = draw_model(erased_dir, args)
    before = report_of(before_samples, judge, args.concept)
    after = report_of(after_samples, judge, args.concept, base=before_samples)
    protocol = {"judge": "DigitsJudge", "color_judge": "ColorJudge (stroke hue rule)",
                "features": "DigitsJudge penultimate layer (diversity, FID, KID)",
                "prompt_set_sha256": grammar_prompts().sha256(), "images_per_prompt": args.eval_images,
                "seed": EVAL_SEED, "num_inference_steps": args.num_inference_steps,
                "guidance_scale": args.guidance_scale, "grid_seeds": GRID_SEEDS, "erase_args": list(args.erase_args)}
    erased_names = [name.partition(":")[2] for name in args.concepts]
    metrics = {"concept": args.concept, "erased": erased_names[0] if len(erased_names) == 1 else erased_names,
               "method": args.method,
               "before": side(before), "after": side(after),
               "protocol": protocol,
               "seconds": time.perf_counter() - started}
    write_text_atomic(output.path / "metrics.json", json.dumps(metrics, indent=2))
    labels, _ = grid_rows(args.concept)
    rows = [b + a for b, a in zip(before_grid, after_grid)]
    image_grid(rows, output.path / "grid.png", row_labels=labels,
               column_labels=["before", *[""] * (GRID_SEEDS - 1), "after"], scale=2)
    b, a = metrics["before"], metrics["after"]
    for name in args.concepts:
        several = "concepts" in b
        log_concept(name, b["concepts"][name] if several else b, a["concepts"][name] if several else a,
                    args.eval_images)
    logger.info("metrics: %s, grid: %s", output.path / "metrics.json", output.path / "grid.png")
    return metrics


if __name__ == "__main__":
    from erasure.jobconfig import run_cli

    run_cli(main)
