"""How much the colour-spread ratio moves when nothing changed: the base model against itself.

    python -m benchmarks.spread_noise --num_threads 2

Issue 13's colour term of diversity (``eval.testbed.color_spread``) is the mean over colour-free
prompts of the entropy of one prompt's judged colours across its seeds, and the erasure-quality
benchmark asks an erased model for >= 0.9x the base's. This draws the base model's colour-free
word prompts at ``--max_images`` seeds a prompt (the evaluation seeds, ``sample_testbed``'s), splits
the seeds into disjoint draws of n images a prompt for each n in ``--sizes``, and compares every
draw with every other: the spread of those ratios is the metric's noise at n images a prompt, the
range inside which a "miss" or a "pass" says nothing. Writes JSON and markdown (``--out``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
from pathlib import Path
from typing import Any

from benchmarks.outputs import results_file

ROOT = Path(__file__).resolve().parents[1]


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max_images", type=int, default=14, help="seeds drawn per colour-free prompt (<= 14)")
    parser.add_argument("--sizes", nargs="+", type=int, default=[2, 4, 7], help="images a prompt in one draw")
    parser.add_argument("--num_threads", type=int, default=None)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "spread-noise"),
                        help="results path without suffix (.json and .md are written)")
    args = parser.parse_args(argv)
    if not 2 <= args.max_images <= 14:  # 14: EVAL_SEED's seeds stay below TUNING_SEED's
        raise ValueError(f"max_images={args.max_images} must be from 2 to 14")
    for size in args.sizes:
        if not 2 <= size <= args.max_images // 2:
            raise ValueError(f"sizes: {size} must be from 2 to max_images // 2 = {args.max_images // 2} "
                             "(two disjoint draws at least)")
    if not Path(args.out).parent.is_dir():
        raise ValueError(f"out={args.out!r}: folder {Path(args.out).parent} does not exist")
    return args


def noise(samples, colors, sizes: list[int]) -> dict[int, dict[str, Any]]:
    """Per draw size n: the spread (``eval.testbed.color_spread``, what the benchmark's target reads)
    of each disjoint draw (seeds [0, n), [n, 2n), ...) and the ratios of every ordered pair of draws.

    Args:
        samples: ``TestbedSamples``, image k of prompt p at ``k * P + p`` (``sample_testbed``'s order).
        colors: their judged colours ``[K * P]``.
    """
    import torch

    from eval.testbed import color_spread

    prompt_ids = samples.prompt_ids
    num_prompts = int(prompt_ids.max()) + 1
    if len(prompt_ids) % num_prompts or not torch.equal(prompt_ids, torch.arange(len(prompt_ids)) % num_prompts):
        raise ValueError("noise: prompt_ids must run 0..P-1 once per seed (sample_testbed's order), "
                         f"got {prompt_ids[:12].tolist()}...")
    seed_of = torch.arange(len(prompt_ids)) // num_prompts  # k of each image
    num_seeds = len(prompt_ids) // num_prompts
    result = {}
    for n in sizes:
        starts = range(0, num_seeds - n + 1, n)
        spreads = [color_spread(samples, (seed_of >= start) & (seed_of < start + n), colors)["color_spread"]
                   for start in starts]
        ratios = [a / b for a, b in itertools.permutations(spreads, 2) if b > 0]  # a draw of one colour a prompt
        if not ratios:
            raise ValueError(f"noise: at {n} images a prompt no draw has any colour spread; nothing to compare")
        result[n] = {"draws": len(spreads), "spreads": spreads, "ratio_min": min(ratios), "ratio_max": max(ratios),
                     "ratio_median": statistics.median(ratios), "pairs": len(ratios),
                     "pairs_under_0.9": sum(r < 0.9 for r in ratios)}
    return result


def markdown(results: dict[str, Any]) -> str:
    lines = ["# Colour-spread noise: the base model against itself", "",
             f"Protocol: `{json.dumps(results['protocol'])}`", "",
             "| images a prompt | draws | ratio min | median | max | ordered pairs under 0.9x |", "|---|---|---|---|---|---|"]
    for n, r in results["noise"].items():
        lines.append(f"| {n} | {r['draws']} | {r['ratio_min']:.3f} | {r['ratio_median']:.3f} | {r['ratio_max']:.3f} | "
                     f"{r['pairs_under_0.9']} of {r['pairs']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    import torch

    from erasure.output import write_text_atomic
    from eval.colors import ColorJudge
    from eval.testbed import EVAL_SEED, GUIDANCE_SCALE, SAMPLING_STEPS, sample_testbed
    from pipelines.default_model import UNET_WEIGHTS_FILE, build_default_model, weight_hashes
    from pipelines.sampling import load_pipeline

    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    model = build_default_model()
    samples = sample_testbed(load_pipeline(model), images_per_prompt=args.max_images, seed=EVAL_SEED,
                             groups=("word",), color_free_only=True)
    colors = ColorJudge().predict(samples.images)
    results = {"protocol": {"model": "default", "unet_sha256": weight_hashes(model)[UNET_WEIGHTS_FILE],
                            "group": "word, colour-free prompts", "eval_seed": EVAL_SEED,
                            "num_inference_steps": SAMPLING_STEPS, "guidance_scale": GUIDANCE_SCALE,
                            "max_images": args.max_images, "prompts": int(samples.prompt_ids.max()) + 1},
               "noise": {str(n): r for n, r in noise(samples, colors, args.sizes).items()}}
    out = Path(args.out)
    write_text_atomic(results_file(out, ".json"), json.dumps(results, indent=1) + "\n")
    write_text_atomic(results_file(out, ".md"), markdown(results))
    print(markdown(results))
    return results


if __name__ == "__main__":
    from erasure.jobconfig import run_cli

    run_cli(main)
