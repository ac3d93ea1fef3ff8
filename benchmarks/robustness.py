"""Robustness of each method's erasure to UnlearnDiffAtk on the offline testbed, with its control.

    python -m benchmarks.robustness                                   # digits:two; scissorhands, esd, salun
    python -m benchmarks.robustness --concept digits:five --methods esd --max_prompts 4

Each method erases ``--concept`` with its tuned config (``configs/erase_digits_<method>.yaml``);
``eval.attack`` then attacks the first ``--max_prompts`` of the concept's prompts on the erased
model (ASR without and with the attack, iterations, seconds per prompt). The control — the same
attack on the base model from unrelated prompts — is run once (it does not depend on the
method). Targets (issue 9): control ASR >= 80%; Scissorhands' ASR <= 20% and below ESD's; an
attacked prompt <= 30 s. Writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.erasure_quality import ROOT, draw_concept_data, erase_tuned, robustness_of, robustness_targets
from benchmarks.outputs import results_file
from pipelines.demo import method_config

logger = logging.getLogger("benchmarks.robustness")


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["scissorhands", "esd", "salun"])
    parser.add_argument("--concept", default="digits:two")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_images", type=int, default=64)
    parser.add_argument("--max_prompts", type=int, default=6)
    parser.add_argument("--attacks", nargs="+", default=["unlearndiffatk", "relearn"],
                        choices=["unlearndiffatk", "relearn", "paraphrase"])
    parser.add_argument("--relearn_learning_rate", type=float, default=None,
                        help="AdamW rate of the relearning fine-tune (default: eval.attack's, 1e-4; at 1e-3 every "
                             "method relearned 'two' in 2-3 steps)")
    parser.add_argument("--relearn_max_steps", type=int, default=100)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "robustness"))
    args = parser.parse_args(argv)
    if args.relearn_learning_rate is None:
        from eval.attack import AttackConfig

        args.relearn_learning_rate = AttackConfig.relearn_learning_rate
    if not args.relearn_learning_rate > 0:
        raise ValueError(f"relearn_learning_rate={args.relearn_learning_rate} must be > 0")
    for method in args.methods:
        method_config(method)
    return args


def markdown(results: dict[str, Any]) -> str:
    """The tables of what ran: UnlearnDiffAtk's columns and its control only when it was among the attacks."""
    pct = lambda v: "-" if v is None else f"{100 * v:.0f}%"
    attacks = results["protocol"]["attacks"]
    relearned = lambda s: (str(s["relearn_steps"]) if s.get("relearn_steps") is not None
                           else "-" if s.get("relearn_cap") is None else f"never (cap {s['relearn_cap']})")
    columns = [("ASR without attack", lambda s: pct(s["asr_no_attack"]))]
    lines = ["# Robustness on the offline testbed", "", f"Protocol: `{json.dumps(results['protocol'])}`", ""]
    if "unlearndiffatk" in attacks:
        lines += [f"Control (base model, from unrelated prompts): UnlearnDiffAtk ASR "
                  f"{pct(results['control'].get('control_asr'))} over {results['control']['num_prompts']} prompts.", ""]
        columns += [("ASR under UnlearnDiffAtk", lambda s: pct(s["asr"])),
                    ("median s / prompt", lambda s: f"{s['median_seconds_per_prompt']:.1f}")]
    if "relearn" in attacks:
        columns.append((f"relearn steps (lr {results['protocol']['relearn_learning_rate']:g})", relearned))
    if "paraphrase" in attacks:
        lines += [f"Paraphrase control (base model on the rewordings): "
                  f"{pct(results['control'].get('paraphrase_control_asr'))}.", ""]
        columns.append(("paraphrase ASR", lambda s: pct(s.get("paraphrase_asr"))))
    lines += ["| method | " + " | ".join(name for name, _ in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += [f"| {method} | " + " | ".join(cell(s) for _, cell in columns) + " |"
              for method, s in results["methods"].items()]
    lines += ["", "## Targets (issue 9)", "", "| target | status | detail |", "|---|---|---|"]
    for goal, t in results["targets"].items():
        lines.append(f"| {goal} | {t['status']} | `{json.dumps({k: v for k, v in t.items() if k != 'status'})}` |")
    return "\n".join(lines) + "\n"


def targets(methods: dict[str, Any], control: dict[str, Any], attacks: list[str]) -> dict[str, Any]:
    """Issue 9's targets through the quality harness's rule (``robustness_targets``), plus the time per prompt."""
    rows = [{"method": m, "asr": s["asr"] if "unlearndiffatk" in attacks else None,
             "relearn_steps_at_least": (s["relearn_steps"] if s.get("relearn_steps") is not None
                                        else s.get("relearn_cap")) if "relearn" in attacks else None}
            for m, s in methods.items()]
    base = [{"control_asr": control["control_asr"]}] if "unlearndiffatk" in attacks else []
    result = robustness_targets(rows, base)
    if "unlearndiffatk" in attacks:
        slowest = max(s["median_seconds_per_prompt"] for s in methods.values())
        result["<= 30 s per attacked prompt (median)"] = {"status": "met" if slowest <= 30 else "missed",
                                                          "slowest_method_median": slowest}
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from erasure.output import write_text_atomic
    from eval.attack import AttackConfig, run
    from pipelines.default_model import build_default_model

    model_dir = build_default_model()
    summaries = {}
    with tempfile.TemporaryDirectory(prefix="robustness-") as tmp:
        attacked = "unlearndiffatk" in args.attacks
        control = robustness_of(model_dir, args.concept, Path(tmp) / "control", ["unlearndiffatk"], args.max_prompts,
                                args.seed, control=True) if attacked else None
        data = draw_concept_data(model_dir, args.concept, Path(tmp) / "data", args.num_images, args.seed)
        for method in args.methods:
            erased = erase_tuned(method, model_dir, data, Path(tmp) / f"erased-{method}", args.concept, args.seed)
            summaries[method] = robustness_of(erased, args.concept, Path(tmp) / f"attack-{method}", args.attacks,
                                              args.max_prompts, args.seed,
                                              relearn_learning_rate=args.relearn_learning_rate,
                                              relearn_max_steps=args.relearn_max_steps)
            if "paraphrase" in args.attacks:
                reworded = run(AttackConfig(model=str(erased), concept=args.concept, output_dir=f"{tmp}/para-{method}",
                                            attack="paraphrase", seed=args.seed, control=method == args.methods[0]))
                summaries[method]["paraphrase_asr"] = reworded["asr"]
                if reworded["control_asr"] is not None:
                    summaries.setdefault("_paraphrase_control", {"asr": reworded["control_asr"]})
            logger.info("%s: %s", method, {k: summaries[method].get(k) for k in ("asr", "asr_no_attack", "relearn_steps")})
    paraphrase_control = summaries.pop("_paraphrase_control", {}).get("asr")
    keep = ("asr", "asr_no_attack", "num_prompts", "successes", "median_seconds_per_prompt", "relearn_steps",
            "relearn_cap", "paraphrase_asr")
    results = {"protocol": {**{k: getattr(args, k) for k in ("concept", "seed", "num_images", "max_prompts")},
                            "attacks": args.attacks, "relearn_learning_rate": args.relearn_learning_rate,
                            "attack": {k: control["protocol"][k] for k in ("k", "iterations", "timesteps",
                                                                           "learning_rate", "weight_decay",
                                                                           "num_inference_steps")}
                            if attacked else None},
               "control": {"control_asr": control["control_asr"] if attacked else None,
                           "num_prompts": control["num_prompts"] if attacked else None,
                           "paraphrase_control_asr": paraphrase_control},
               "methods": {m: {k: s.get(k) for k in keep} for m, s in summaries.items()}}
    results["targets"] = targets(results["methods"], results["control"], args.attacks)
    out = Path(args.out)
    write_text_atomic(results_file(out, ".json"), json.dumps(results, indent=2))
    write_text_atomic(results_file(out, ".md"), markdown(results))
    return results


if __name__ == "__main__":
    from erasure.jobconfig import run_cli

    run_cli(main)
