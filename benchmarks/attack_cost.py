"""Time per attacked prompt of UnlearnDiffAtk, one prompt at a time against prompts attacked together.

    python -m benchmarks.attack_cost --model runs/erased-two --concept digits:two --max_prompts 8 \\
        --attack_batches 1 8 --num_threads 2

Issue 9 asks that one attacked prompt on the testbed take <= 30 s on 2 CPU cores. The public
protocol is 50 timesteps x 40 steps per prompt; at batch 1 the CPU kernels of the testbed's UNet
are mostly overhead. ``eval.attack --attack_batch B`` attacks B prompts together (each its own
attack, batched passes). This runs ``eval.attack`` on the same model and prompts once per batch size
(no control, so only the attacked model's prompts are timed), and prints, side by side: wall time,
seconds per prompt, ASR, and whether every prompt's outcome (success, timestep of success) agrees
with the first batch size's (batched kernels round differently, so a prompt on the edge may flip).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="the erased model folder")
    parser.add_argument("--concept", required=True, help="digits:<d> or color:<c>")
    parser.add_argument("--max_prompts", type=int, default=8)
    parser.add_argument("--attack_batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_threads", type=int, default=None)
    parser.add_argument("--out", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.max_prompts < 1 or any(b < 1 for b in args.attack_batches):
        raise ValueError(f"--max_prompts ({args.max_prompts}) and --attack_batches ({args.attack_batches}) must be >= 1")
    import torch

    from eval.attack import RECORDS, AttackConfig, run

    if args.num_threads is not None:
        torch.set_num_threads(args.num_threads)
    rows = {}
    with tempfile.TemporaryDirectory(prefix="attack-cost-") as tmp:
        for batch in args.attack_batches:
            out = Path(tmp) / f"batch-{batch}"
            started = time.perf_counter()
            summary = run(AttackConfig(model=args.model, concept=args.concept, output_dir=str(out), control=False,
                                       max_prompts=args.max_prompts, attack_batch=batch, seed=args.seed))
            wall = time.perf_counter() - started
            records = [json.loads(line) for line in (out / RECORDS).read_text().splitlines()]
            rows[batch] = {"wall_seconds": round(wall, 1), "seconds_per_prompt": round(wall / len(records), 1),
                           "median_seconds_per_prompt": round(summary["median_seconds_per_prompt"], 1),
                           "asr": summary["asr"], "asr_no_attack": summary["asr_no_attack"],
                           "outcomes": {r["index"]: [r["success"], r["iterations"]] for r in records}}
    first = args.attack_batches[0]
    for batch, row in rows.items():
        row["outcomes_agree_with_batch_" + str(first)] = row["outcomes"] == rows[first]["outcomes"]
        row["speedup_vs_batch_" + str(first)] = round(rows[first]["wall_seconds"] / row["wall_seconds"], 2)
    result = {"model": args.model, "concept": args.concept, "max_prompts": args.max_prompts,
              "threads": torch.get_num_threads(), "torch": torch.__version__, "by_attack_batch": rows}
    for batch, row in rows.items():
        print(f"attack_batch {batch}: {row['wall_seconds']} s for {args.max_prompts} prompts, "
              f"{row['seconds_per_prompt']} s a prompt ({row['speedup_vs_batch_' + str(first)]}x), "
              f"ASR {100 * row['asr']:.0f}% (without attack {100 * row['asr_no_attack']:.0f}%), outcomes agree with "
              f"batch {first}: {row['outcomes_agree_with_batch_' + str(first)]}")
    if args.out:
        from erasure.output import write_text_atomic

        write_text_atomic(Path(args.out), json.dumps(result, indent=2) + "\n")  # a kill leaves no half a file
    return result


if __name__ == "__main__":
    main()
