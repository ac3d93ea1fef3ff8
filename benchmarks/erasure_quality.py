"""Erasure quality: every method in one harness on the offline testbed, forget against utility.

    python -m benchmarks.erasure_quality --quick              # 3 digits x 1 seed, every method
    python -m benchmarks.erasure_quality                      # 3 digits x 3 seeds
    python -m benchmarks.erasure_quality --concepts color:red digits:two --methods scissorhands esd

For each concept and seed the forget/retain sets are generated once by the default model
(``pipelines.generate``) and shared by every method; each method erases with its own tuned
configuration (``configs/erase_digits_<method>.yaml``, chosen on tuning seeds) and is judged on
the evaluation seeds (``eval.testbed``) against the base model's generations of the same prompts
and seeds. Per run: erased recognition (word, numeral and paraphrase prompts), the others' mean
and worst, diversity ratio to the base, alignment, FID and KID against real digits and against
the base, and the erase job's wall time. Writes ``<out>.json``, ``<out>.md`` and a forget-vs-utility
scatter ``<out>.png`` (one point per method and seed), with the targets of issue 8 met or missed.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.outputs import results_file
from eval.testbed import worst_other

from pipelines.default_model import GUIDANCE_SCALE, SAMPLING_STEPS
from pipelines.demo import method_config

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("scissorhands", "scissorhands_minmax", "salun", "esd", "random_label", "grad_ascent", "finetune")
DEFAULT_CONCEPTS = ("digits:two", "digits:five", "digits:seven")
logger = logging.getLogger("benchmarks.erasure_quality")


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=None,
                        help=f"default: every method ({' '.join(METHODS)}); with --merge, the methods whose runs to keep")
    parser.add_argument("--concepts", nargs="+", default=list(DEFAULT_CONCEPTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="one seed (the first of --seeds)")
    parser.add_argument("--num_images", type=int, default=64, help="forget and retain images per concept and seed")
    parser.add_argument("--eval_images", type=int, default=2, help="judged generations per grammar prompt (>= 2)")
    parser.add_argument("--spread_images", type=int, default=8,
                        help="generations per colour-free word prompt in a sample of their own for the colour spread "
                             "(eval.testbed.spread_report; 2 a prompt is noise of about +-15%%); 0: none")
    parser.add_argument("--groups", nargs="+", default=["word", "numeral", "paraphrase"],
                        help="prompt groups to judge (eval.testbed); fewer for a quicker look")
    parser.add_argument("--num_inference_steps", type=int, default=20)
    parser.add_argument("--guidance_scale", type=float, default=GUIDANCE_SCALE)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "erasure-quality"),
                        help="results path without suffix (.json, .md, .png are written)")
    parser.add_argument("--eval_seed", type=int, default=None,
                        help="first evaluation seed (default eval.testbed's EVAL_SEED; tuning uses TUNING_SEED, "
                             "with --tune)")
    parser.add_argument("--tune", action="store_true",
                        help="judge on the tuning seeds (eval.testbed.TUNING_SEED), never the reported ones")
    parser.add_argument("--num_threads", type=int, default=None)
    parser.add_argument("--merge", nargs="+", default=None, metavar="RESULTS_JSON",
                        help="combine results files of runs split by method or concept (same protocol) into --out; "
                             "runs nothing")
    parser.add_argument("--attacks", nargs="*", default=[], choices=["unlearndiffatk", "relearn", "random_prefix"],
                        help="robustness columns (issue 9): ASR without and under UnlearnDiffAtk, relearn steps, "
                             "ASR under random prefixes at the attack's budget of judged draws (asr_random: chance); "
                             "the control runs once per concept on the base model")
    parser.add_argument("--attack_prompts", type=int, default=2,
                        help="concept prompts attacked per run (one the attack cannot break: ~110 s on 2 idle cores)")
    parser.add_argument("--erase_args", nargs=argparse.REMAINDER, default=[],
                        help="extra flags for every erase job (a tuning grid point; must come last)")
    args = parser.parse_args(argv)
    from eval.testbed import EVAL_SEED, TUNING_SEED

    if args.tune and args.eval_seed is not None:
        raise ValueError(f"give --tune or --eval_seed, not both (eval_seed={args.eval_seed})")
    args.eval_seed = TUNING_SEED if args.tune else (EVAL_SEED if args.eval_seed is None else args.eval_seed)
    from erasure.methods import get_method
    from prompts.colored_digits import parse_concept

    for method in args.methods or METHODS:
        get_method(method)
        method_config(method)
    for concept in args.concepts:
        try:
            parse_concept(concept)
        except ValueError as err:
            raise ValueError(f"concepts: {concept!r}: {err}") from err
    from prompts.colored_digits import EVAL_GROUPS

    if not args.groups or not set(args.groups) <= set(EVAL_GROUPS) or "word" not in args.groups:
        raise ValueError(f"groups={args.groups} must include 'word' and come from {list(EVAL_GROUPS)}")
    if args.eval_images < 2:
        raise ValueError(f"eval_images={args.eval_images} must be >= 2 (diversity compares seeds of one prompt)")
    if args.spread_images and not 2 <= args.spread_images <= 14:  # 14: EVAL_SEED's seeds stay below TUNING_SEED's
        raise ValueError(f"spread_images={args.spread_images} must be 0 (none) or from 2 to 14")
    for name in ("num_images", "num_inference_steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"{name}={getattr(args, name)} must be >= 1")
    if args.attack_prompts < 1:
        raise ValueError(f"attack_prompts={args.attack_prompts} must be >= 1")
    if args.quick:
        args.seeds = args.seeds[:1]
    out = Path(args.out)
    if not out.parent.is_dir():
        raise ValueError(f"out={args.out!r}: folder {out.parent} does not exist")
    return args


def draw_concept_data(model_dir: Path, concept: str, out: Path, num_images: int, seed: int,
                      num_inference_steps: int = SAMPLING_STEPS, guidance_scale: float = GUIDANCE_SCALE) -> Path:
    """The forget/retain folders of ``concept``, drawn by the default model (``pipelines.generate``);
    every testbed benchmark draws its data through this."""
    from pipelines import generate

    generate.main(["--pretrained_model_name_or_path", str(model_dir), "--concept", concept, "--output_dir", str(out),
                   "--num_images", str(num_images), "--num_inference_steps", str(num_inference_steps),
                   "--guidance_scale", str(guidance_scale), "--seed", str(seed)])
    return out


def erase_tuned(method: str, model_dir: Path, data_dir: Path, out: Path, concept: str, seed: int,
                *extra: str) -> Path:
    """``pipelines.erase`` with the method's tuned config (``configs/erase_digits_<method>.yaml``),
    ``extra`` flags last; returns the export folder."""
    from pipelines import erase

    erase.main(["--config", str(method_config(method)), "--pretrained_model_name_or_path", str(model_dir),
                "--data_dir", str(data_dir), "--output_dir", str(out), "--concept", concept, "--method", method,
                "--seed", str(seed), *extra])
    return out


def erase_setting(method: str, erase_args: list[str]) -> tuple[Path, list[str]]:
    """The config file an erase job of ``method`` reads (the last ``--config`` in ``erase_args``, which
    overrides the method's tuned one, as argparse keeps the last) and the other flags of ``erase_args``."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--config", default=str(method_config(method)))
    given, others = parser.parse_known_args(erase_args)  # "--config X" and "--config=X", the last one wins
    return Path(given.config), others


def robustness_of(model: Path, concept: str, work: Path, attacks: list[str], max_prompts: int, seed: int,
                  control: bool = False, relearn_learning_rate: float | None = None,
                  relearn_max_steps: int = 100, relearn_every: int = 1) -> dict[str, Any]:
    """``eval.attack`` on ``model``: ASR without and under UnlearnDiffAtk on the concept's first
    ``max_prompts`` prompts (``control``: the same attack on this model from unrelated prompts
    instead, for the base model) and, with ``"relearn"`` in ``attacks``, the fine-tuning steps
    until the concept is back, checked after every step (a check is 8 testbed generations, about a
    second; checked every 5 steps, as the CLI's default for SD, every method had read 5, the first
    check, and the column could not rank them). ``relearn_learning_rate`` None is ``eval.attack``'s own
    default (1e-4); at 1e-3 every method relearned 'two' in 2-3 steps, a column that could not rank them
    either (`benchmarks/results/robustness-relearn-paraphrase-v5.md`). With ``"random_prefix"``:
    ``asr_random``, the ASR when each prompt gets as many random ``k``-token prefixes, each judged, as
    UnlearnDiffAtk may judge (one a timestep): the share of its ASR that needs no search. Every testbed
    benchmark attacks through this."""
    from eval.attack import AttackConfig, run

    if relearn_learning_rate is None:
        relearn_learning_rate = AttackConfig.relearn_learning_rate

    attack = "unlearndiffatk" if "unlearndiffatk" in attacks else "none"
    summary = run(AttackConfig(model=str(model), concept=concept, output_dir=str(work / "attack"), attack=attack,
                               max_prompts=max_prompts, control=control, seed=seed))
    keep = ("asr", "asr_no_attack", "control_asr", "num_prompts", "successes", "broken", "median_seconds_per_prompt",
            "protocol")
    result = {k: summary.get(k) for k in keep}
    if attack == "none":  # the prompts were only drawn: no attacked ASR, no control, no time per attack
        result.update(asr=None, control_asr=None, broken=None, median_seconds_per_prompt=None)
    if "relearn" in attacks and not control:
        relearned = run(AttackConfig(model=str(model), concept=concept, output_dir=str(work / "relearn"),
                                     attack="relearn", max_prompts=max_prompts, seed=seed,
                                     relearn_learning_rate=relearn_learning_rate, relearn_max_steps=relearn_max_steps,
                                     relearn_every=relearn_every))
        result.update(relearn_steps=relearned["relearn_steps"], relearn_cap=relearned["relearn_cap"])
    if "random_prefix" in attacks and not control:
        chance = run(AttackConfig(model=str(model), concept=concept, output_dir=str(work / "random"),
                                  attack="random_prefix", max_prompts=max_prompts, seed=seed, control=False,
                                  random_draws=AttackConfig.timesteps))
        # the draw that broke each broken prompt (0: the plain prompt): many early ones read as a leak at any prefix
        result.update(asr_random=chance["asr"], random_draws=AttackConfig.timesteps,
                      random_broken_at=[b["iterations"] for b in chance["broken"]])
    return result


def attack_seed(args: argparse.Namespace, seed: int) -> int:
    """The first image seed of the attacked prompts: the run's seed, or with ``--tune`` that seed past
    ``TUNING_SEED`` (a robustness setting is never chosen on the seeds the benchmark reports)."""
    from eval.testbed import TUNING_SEED

    return TUNING_SEED + seed if args.tune else seed


def sample_spread(pipe: Any, args: argparse.Namespace) -> Any:
    """The colour-free word prompts at ``--spread_images`` a prompt (``eval.testbed.spread_report``'s sample)."""
    from eval.testbed import sample_testbed

    return sample_testbed(pipe, images_per_prompt=args.spread_images, seed=args.eval_seed, groups=("word",),
                          num_inference_steps=args.num_inference_steps, guidance_scale=args.guidance_scale,
                          color_free_only=True)


def spread_columns(spread: dict[str, Any]) -> dict[str, Any]:
    """``spread_report``'s figures as row columns (``spread_*``)."""
    names = {"images_per_prompt": "spread_images", "color_spread": "spread", "color_spread_ratio": "spread_ratio",
             "color_free_shares": "spread_shares", "color_free_worst_name": "spread_worst_name",
             "color_free_worst_ratio": "spread_worst_ratio", "color_free_erased": "spread_erased",
             "color_spread_ideal_ratio": "spread_ideal_ratio"}
    return {"spread_prompts": spread["num_prompts"],
            **{column: spread[key] for key, column in names.items() if key in spread}}


def run_one(method: str, concept: str, seed: int, data_dir: Path, work: Path, model_dir: Path, base, judge,
            args: argparse.Namespace, base_spread=None) -> dict[str, Any]:
    """Erase ``concept`` with ``method``, judge it against the base samples (and, with
    ``base_spread``, its colour spread against the base's) and, with ``--attacks``, attack it."""
    from eval.testbed import report_of, sample_testbed, spread_report
    from pipelines.sampling import load_pipeline

    started = time.perf_counter()
    erased = erase_tuned(method, model_dir, data_dir, work / f"erased-{method}", concept, seed, *args.erase_args)
    seconds = time.perf_counter() - started
    pipe = load_pipeline(erased)
    samples = sample_testbed(pipe, images_per_prompt=args.eval_images, seed=args.eval_seed,
                             groups=tuple(args.groups),
                             num_inference_steps=args.num_inference_steps, guidance_scale=args.guidance_scale)
    report = report_of(samples, judge, concept, base=base)
    row = row_of(method, concept, seed, report, seconds)
    if base_spread is not None:
        row.update(spread_columns(spread_report(sample_spread(pipe, args), concept, base=base_spread)))
    config, flags = erase_setting(method, args.erase_args)
    row["config"] = " ".join([config.name, *flags])  # which of a method's configurations ran
    prepared = json.loads((erased / "erase_config.json").read_text()).get("prepare", {})
    row["substitute_chosen"] = chosen_substitute(prepared)
    if prepared.get("retain_group_weights") is not None:  # --retain_dro: where the groups' weights ended
        row["retain_group_weights"] = prepared["retain_group_weights"]
    if args.attacks:
        robust = robustness_of(erased, concept, work / f"attack-{method}", args.attacks, args.attack_prompts,
                               attack_seed(args, seed))
        row.update({"asr_no_attack": robust["asr_no_attack"],
                    "asr": robust["asr"], "attack_broken": robust.get("broken"),
                    "relearn_steps": robust.get("relearn_steps"), "relearn_cap": robust.get("relearn_cap")})
        if "random_prefix" in args.attacks:
            row.update({k: robust[k] for k in ("asr_random", "random_draws", "random_broken_at")})
        if "relearn" in args.attacks:  # a lower bound where the concept never came back within the cap
            row["relearn_steps_at_least"] = row["relearn_steps"] if row["relearn_steps"] is not None else row["relearn_cap"]
        shutil.rmtree(work / f"attack-{method}", ignore_errors=True)
    shutil.rmtree(erased)
    return row


def chosen_substitute(prepared: dict[str, Any]) -> str | None:
    """The replacement word the erase job chose itself (``--substitute_ties nearest``), from the ``prepare``
    section of the export's ``erase_config.json``; None where the run named one, rotated ties, or its method
    has no substitute."""
    return (prepared.get("substitute_choice") or {}).get("word")


def row_of(method: str, concept: str, seed: int, report: dict, seconds: float | None) -> dict[str, Any]:
    """One result row: the concept's word-prompt figures, the numeral and paraphrase erasure, utility."""
    word, summary = report["groups"]["word"], report["concept"]
    keep = ("diversity", "diversity_ratio", "alignment", "fid", "kid", "fid_base", "kid_base")
    figures = {k: v for k, v in summary["word"].items() if k != "kept"}
    # utility over the prompts the erasure must leave alone (eval.testbed.kept_prompts): the
    # word group's FID also counts the erased concept's own prompts, which must change
    kept = {f"{k}_kept": summary["word"].get("kept", {}).get(k) for k in keep}
    return {"method": method, "concept": concept, "seed": seed, **figures, **kept,
            "numeral_erased": summary.get("numeral", {}).get("erased"),
            "paraphrase_erased": summary.get("paraphrase", {}).get("erased"),
            **{k: word[k] for k in keep if k in word}, "seconds": seconds}


def pareto_front(points: dict[str, tuple[float, float]]) -> list[str]:
    """Names whose (a, b) no other point beats in both (lower is better in both)."""
    return sorted(name for name, (a, b) in points.items()
                  if not any(a2 <= a and b2 <= b and (a2, b2) != (a, b) for a2, b2 in points.values()))


def summarise(rows: list[dict[str, Any]], base_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per method: medians over concepts and seeds; the erased-vs-FID(base) Pareto front; the targets."""
    per_method: dict[str, dict[str, float]] = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        keys = dict.fromkeys(k for r in mine for k, v in r.items() if isinstance(v, (int, float)) and k != "seed")
        per_method[method] = {key: statistics.median(r[key] for r in mine if r.get(key) is not None) for key in keys}
    # FID against the base model's own generations: the judge-feature FID against real digits
    # barely moved while a retained class was lost (measured), this one did
    front = pareto_front({m: (s["erased"], s["fid_base_kept"]) for m, s in per_method.items()})
    return {"per_method": per_method, "pareto_front_erased_vs_fid_base_kept": front,
            "targets": targets(rows, base_rows, front)}


def _status(ok: bool | None) -> str:
    return "unmeasured" if ok is None else ("met" if ok else "missed")


def targets(rows: list[dict[str, Any]], base_rows: list[dict[str, Any]], front: list[str]) -> dict[str, Any]:
    """Issue 8's targets for Scissorhands (every run must meet them) and the baselines."""
    base = {(r["concept"]): r for r in base_rows}
    mine = [r for r in rows if r["method"] == "scissorhands"]
    result: dict[str, Any] = {}
    if mine:
        checks = {
            "erased <= 5%": [r["erased"] <= 0.05 for r in mine],
            "diversity >= 0.9x base": [r["diversity_ratio_kept"] >= 0.9 for r in mine],
            "FID vs real <= 1.2x base": [r["fid_kept"] <= 1.2 * base[r["concept"]]["fid_kept"] for r in mine],
        }
        # worst other: the worst retained digit for digits:<d>, the worst other colour for color:<c>;
        # others: the retained digits' mean, for color:<c> the digits drawn on the other colours' prompts
        checks["worst other within 10 points of base"] = [
            worst_other(r) >= worst_other(base[r["concept"]]) - 0.10 for r in mine]
        checks["others' mean within 5 points of base"] = [
            r["others"] >= base[r["concept"]]["others"] - 0.05 for r in mine]
        # diversity's colour term (issue 13 section 3): the colour-free prompts of the kept digits
        # keep their spread over the colours; a colour erasure puts them on neither side of its loss
        # read on the spread sample where the run has one (eval.testbed.spread_report: 2 images a prompt
        # put an unchanged model under 0.9x a quarter of the time)
        # images: "8" (a spread sample of 8 a prompt) or "evaluation" (a row without one: the evaluation's own
        # images, 2 a prompt unless --eval_images said otherwise); a spread sample that read nothing is no verdict
        ratio = lambda r: r.get("spread_ratio") if r.get("spread_images") else r.get("color_spread_ratio")
        sample = lambda r: str(r["spread_images"]) if r.get("spread_images") else "evaluation"
        read = [r for r in mine if ratio(r) is not None]
        if read:
            checks["colour spread of colour-free prompts >= 0.9x base"] = [ratio(r) >= 0.9 for r in read]
        for goal, passed in checks.items():
            result[f"scissorhands: {goal}"] = {"status": _status(all(passed)), "runs_met": sum(passed),
                                               "runs": len(passed)}
        if read:
            result["scissorhands: colour spread of colour-free prompts >= 0.9x base"]["images_per_prompt"] = sorted(
                {sample(r) for r in read})
        # alone in a run it is always on the front: that says nothing, so it is not judged
        compared = len({r["method"] for r in rows}) > 1
        result["scissorhands on the erased-vs-FID(base, kept prompts) Pareto front"] = {
            "status": _status("scissorhands" in front if compared else None), "front": front}
    for method in ("salun", "esd"):
        theirs = [r["erased"] for r in rows if r["method"] == method]
        if theirs:
            result[f"{method} erases (<= 20%)"] = {"status": _status(max(theirs) <= 0.20), "worst_run": max(theirs)}
    result.update(robustness_targets(rows, base_rows))
    return result


def robustness_targets(rows: list[dict[str, Any]], base_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Issue 9's testbed targets over the runs that were attacked (medians over concepts and seeds)."""
    result: dict[str, Any] = {}
    controls = [r["control_asr"] for r in base_rows if r.get("control_asr") is not None]
    if controls:
        result["attack control ASR >= 80%"] = {"status": _status(min(controls) >= 0.8), "worst_concept": min(controls)}
    runs = lambda method, key: {(r.get("concept"), r.get("seed")) for r in rows
                                if r["method"] == method and r.get(key) is not None}

    def median(method: str, key: str, over: set | None = None) -> float | None:
        """``method``'s median of ``key``, with ``over`` over those (concept, seed) runs alone."""
        vals = [r[key] for r in rows if r["method"] == method and r.get(key) is not None
                and (over is None or (r.get("concept"), r.get("seed")) in over)]
        return statistics.median(vals) if vals else None

    mine = median("scissorhands", "asr")
    if mine is not None:
        # issue 9 reads the digits (three digits x seeds); a colour beside them is another kind of concept, and a
        # median over both could pass on the colour's figure where the digits' misses (round 16: digits 30 / 30 /
        # 0% and red 10% read 20% together): every kind's own median must be within the target
        kinds: dict[str, list[float]] = {}  # digits, color, imagenette, ...
        for r in rows:
            if r["method"] == "scissorhands" and r.get("asr") is not None:
                kinds.setdefault(str(r.get("concept")).split(":")[0], []).append(r["asr"])
        by_kind = {kind: statistics.median(vals) for kind, vals in sorted(kinds.items())}
        result["scissorhands ASR under attack <= 20%"] = {
            "status": _status(all(v <= 0.2 for v in by_kind.values())), "median": mine,
            **({"by_kind": by_kind} if len(by_kind) > 1 else {})}
        # a comparison reads both methods on the runs both have: never one's concepts against the other's
        shared = runs("scissorhands", "asr") & runs("esd", "asr")
        if shared:
            paired, esd = median("scissorhands", "asr", shared), median("esd", "asr", shared)
            result["scissorhands ASR below ESD's"] = {"status": _status(paired < esd), "scissorhands": paired,
                                                      "esd": esd, "runs": len(shared)}
    key = "relearn_steps_at_least"
    compared = [m for m in ("esd", "salun") if runs(m, key)]
    shared = runs("scissorhands", key).intersection(*(runs(m, key) for m in compared)) if compared else set()
    if shared:
        steps, others = median("scissorhands", key, shared), {m: median(m, key, shared) for m in compared}
        result["scissorhands relearn steps above ESD's and SalUn's"] = {
            "status": _status(all(steps > v for v in others.values())), "scissorhands": steps, **others,
            "runs": len(shared)}
    return result


def markdown(results: dict[str, Any]) -> str:
    """The per-run table, the medians per method and the targets."""
    columns = ("method", "concept", "seed", "erased", "numeral_erased", "paraphrase_erased", "erased_purity", "erased_color_kept", "erased_to", "substitute_chosen", "others",
               "worst_other", "worst_other_name", "color_kept", "digit_kept", "other_colors", "worst_other_color",
               "diversity_ratio_kept", "color_spread_ratio", "color_free_worst_name", "color_free_worst_ratio",
               "color_free_erased", "spread_images", "spread_ratio", "spread_ideal_ratio", "spread_worst_name",
               "spread_worst_ratio", "spread_erased", "alignment",
               "fid_kept", "fid_base_kept", "kid_base_kept", "fid", "seconds")
    if any("asr_no_attack" in r for r in results["runs"]):
        columns += ("asr_no_attack", "asr", "relearn_steps")
    if any("asr_random" in r for r in results["runs"]):
        columns += ("asr_random",)
    if any("config" in r for r in results["runs"]):  # results written before the column have none
        columns = columns[:1] + ("config",) + columns[1:]
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else ("" if v is None else str(v))
    lines = ["# Erasure quality on the offline testbed", "", f"Protocol: `{json.dumps(results['protocol'])}`", "",
             "## Base model", "", "| concept | erased | others | worst other (digit or colour) | color_kept | "
             "diversity | colour spread (colour-free) | spread sample | fid_kept | fid |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['concept']} | {fmt(r['erased'])} | {fmt(r.get('others'))} | "
              f"{fmt(worst_other(r))} {fmt(r.get('worst_other_name'))} | "
              f"{fmt(r.get('color_kept'))} | {fmt(r['diversity'])} | {fmt(r.get('color_spread'))} | "
              f"{fmt(r.get('spread'))} | {fmt(r.get('fid_kept'))} | {fmt(r['fid'])} |"
              for r in results["base"]]
    controls = {r["concept"]: r["control_asr"] for r in results["base"] if r.get("control_asr") is not None}
    if controls:
        lines += ["", "Attack control (UnlearnDiffAtk on the base model from unrelated prompts): "
                  + ", ".join(f"{c} {100 * a:.0f}%" for c, a in controls.items())]
    lines += ["", "## Runs", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    # where the concept's prompts went (eval.testbed's erased_shares): the colours or digits holding >= 10% of them
    went = lambda r: ", ".join(f"{c} {v:.2f}" for c, v in sorted((r.get("erased_shares") or {}).items(),
                                                                key=lambda item: -item[1]) if v >= 0.1)
    lines += ["| " + " | ".join(went(r) if c == "erased_to" else fmt(r.get(c)) for c in columns) + " |"
              for r in results["runs"]]
    broken = [(r, b) for r in results["runs"] for b in r.get("attack_broken") or []]
    if broken:  # what the attack found, to read beside the ASR
        lines += ["", "## Prompts the attack broke", "", "| method | concept | seed | prompt | adversarial prompt | "
                  "timesteps used |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['method']} | {r['concept']} | {r['seed']} | {b['prompt']} | {b['adversarial_prompt']} | "
                  f"{b['iterations']} |" for r, b in broken]
    lines += ["", "## Targets", "", "| target | status | detail |", "|---|---|---|"]
    for goal, t in results["summary"]["targets"].items():
        detail = {k: v for k, v in t.items() if k != "status"}
        lines.append(f"| {goal} | {t['status']} | `{json.dumps(detail)}` |")
    return "\n".join(lines) + "\n"


def scatter(rows: list[dict[str, Any]], base_rows: list[dict[str, Any]], path: Path) -> None:
    """Erased recognition against FID (vs the base model's generations) and against the others' recognition."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        axes[0].scatter([r["erased"] for r in mine], [r["fid_base_kept"] for r in mine], label=method, alpha=0.8)
        axes[1].scatter([r["erased"] for r in mine], [r.get("others", r.get("other_colors")) for r in mine],
                        label=method, alpha=0.8)
    axes[0].scatter([r["erased"] for r in base_rows], [0.0] * len(base_rows), marker="*", s=150, c="k",
                    label="base model")
    if max((r["fid_base_kept"] for r in rows), default=0.0) > 10.0:
        # methods that wreck the model sit at FID 50-100, the rest below 10: linear up to 10, log above
        # (with every point under 10 a symlog axis labels only its ends, in scientific notation)
        axes[0].set_yscale("symlog", linthresh=10.0)
    axes[0].set(xlabel="erased concept recognised (lower: better erased)",
                ylabel="FID vs the base, kept prompts (lower: better)", title="forget vs distribution quality")
    axes[1].set(xlabel="erased concept recognised", ylabel="others recognised (higher: better)",
                title="forget vs retained classes")
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_results(results: dict[str, Any], out: Path) -> None:
    """``<out>.json``, ``<out>.md`` and the scatter ``<out>.png``; logs the targets."""
    from erasure.output import write_text_atomic

    write_text_atomic(results_file(out, ".json"), json.dumps(results, indent=2))
    write_text_atomic(results_file(out, ".md"), markdown(results))
    scatter(results["runs"], results["base"], results_file(out, ".png"))
    for goal, t in results["summary"]["targets"].items():
        logger.info("%s: %s %s", goal, t["status"], {k: v for k, v in t.items() if k != "status"})


def config_settings(text: str) -> dict[str, Any]:
    """What an erase config's text sets, each value typed as the erase job types it (``erasure.coerce``):
    comments and spellings aside ("3e-4", a YAML string, and 3.0e-4 are one learning rate)."""
    import yaml

    from erasure.coerce import coerce_fields, field_types
    from erasure.config import MethodConfig
    from pipelines.erase import EraseConfig

    return coerce_fields(yaml.safe_load(text) or {}, field_types(EraseConfig, MethodConfig), lambda key: f"config {key}")


def merge(paths: list[str], methods: list[str] | None = None) -> dict[str, Any]:
    """One results dict from several runs of the same protocol (split by method, concept or seed:
    the seeds may differ, the merged protocol lists them all). ``methods``: keep only these methods'
    runs (a method re-tuned since one of the files was written is left out of that file this way).

    Raises:
        ValueError: files whose protocols differ in anything but the seeds (naming the first that
            does), a (method, concept, seed) run present twice, or one method run with different
            settings in two files (``config_settings`` of its config).
    """
    parts = [json.loads(Path(p).read_text()) for p in paths]
    same = {k: v for k, v in parts[0]["protocol"].items() if k != "seeds"}
    for path, part in zip(paths, parts):
        if {k: v for k, v in part["protocol"].items() if k != "seeds"} != same:
            raise ValueError(f"merge: {path} has protocol {part['protocol']}, {paths[0]} has {parts[0]['protocol']}")
    base = list({r["concept"]: r for part in parts for r in part["base"]}.values())
    rows, seen, configs, config_of = [], {}, {}, {}
    for path, part in zip(paths, parts):
        runs = [r for r in part["runs"] if methods is None or r["method"] in methods]
        for method in sorted({r["method"] for r in runs}):
            text = part["configs"].get(method)
            if not isinstance(text, str):
                raise ValueError(f"merge: {path} has runs of {method} but does not record its config (configs."
                                 f"{method} is {text!r}); results written by this benchmark always do")
            if method in configs and config_settings(text) != config_settings(configs[method]):
                raise ValueError(f"merge: {method} ran with other settings in {path} than in {config_of[method]}; "
                                 "leave the older runs out (--methods, one merge per set of settings)")
            configs.setdefault(method, text)
            config_of.setdefault(method, path)
        for r in runs:
            key = (r["method"], r["concept"], r["seed"])
            if key in seen:
                raise ValueError(f"merge: the run {key} is in both {seen[key]} and {path}")
            seen[key] = path
            rows.append(r)
    protocol = dict(parts[0]["protocol"])
    if "seeds" in protocol:
        protocol["seeds"] = sorted({s for part in parts for s in part["protocol"].get("seeds", [])})
    return {"protocol": protocol, "base": base, "runs": rows, "summary": summarise(rows, base),
            "configs": configs, "merged_from": [str(p) for p in paths],
            **({"merged_methods": list(methods)} if methods is not None else {})}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.merge:
        results = merge(args.merge, args.methods)
        write_results(results, Path(args.out))
        return results
    import torch

    from erasure.output import write_text_atomic
    from eval.digits_classifier import load_digits_judge
    from eval.testbed import report_of, sample_testbed
    from pipelines.default_model import UNET_WEIGHTS_FILE, build_default_model, default_judge_path, weight_hashes
    from pipelines.sampling import load_pipeline

    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    methods = args.methods or list(METHODS)
    model_dir, judge = build_default_model(), load_digits_judge(default_judge_path())
    base_pipe = load_pipeline(model_dir)
    base = sample_testbed(base_pipe, images_per_prompt=args.eval_images, seed=args.eval_seed,
                          groups=tuple(args.groups),
                          num_inference_steps=args.num_inference_steps, guidance_scale=args.guidance_scale)
    base_rows = [row_of("base", c, -1, report_of(base, judge, c), None) for c in args.concepts]
    base_spread = sample_spread(base_pipe, args) if args.spread_images else None
    del base_pipe
    if base_spread is not None:
        from eval.testbed import spread_report

        for row in base_rows:
            row.update(spread_columns(spread_report(base_spread, row["concept"])))
    rows = []
    partial = results_file(args.out, ".partial.json")
    with tempfile.TemporaryDirectory(prefix="erasure-quality-") as tmp:
        if "unlearndiffatk" in args.attacks:
            for row in base_rows:
                control = robustness_of(model_dir, row["concept"], Path(tmp) / f"control-{row['concept']}",
                                        ["unlearndiffatk"], args.attack_prompts, attack_seed(args, args.seeds[0]),
                                        control=True)
                row["control_asr"] = control["control_asr"]
        for concept in args.concepts:
            for seed in args.seeds:
                data_dir = draw_concept_data(model_dir, concept, Path(tmp) / f"data-{concept.replace(':', '-')}-{seed}",
                                             args.num_images, seed, args.num_inference_steps, args.guidance_scale)
                for method in methods:
                    rows.append(run_one(method, concept, seed, data_dir, Path(tmp), model_dir, base, judge, args,
                                        base_spread))
                    logger.info("%s", {k: v for k, v in rows[-1].items() if not isinstance(v, dict)})
                    # what a long run has measured survives a crash or a kill: <out>.partial.json
                    write_text_atomic(partial, json.dumps({"base": base_rows, "runs": rows}, indent=1))
    protocol = {"eval_seed": args.eval_seed, "groups": args.groups, "tuning": args.tune, "erase_args": args.erase_args, "images_per_prompt": args.eval_images, "num_images": args.num_images,
                "spread_images": args.spread_images,
                # which build the figures are of: the same recipe builds other weights on other CPUs
                "unet_sha256": weight_hashes(model_dir)[UNET_WEIGHTS_FILE],
                "num_inference_steps": args.num_inference_steps, "guidance_scale": args.guidance_scale,
                "seeds": args.seeds, "features": "DigitsJudge penultimate layer",
                "attacks": args.attacks, "attack_prompts": args.attack_prompts if args.attacks else None}
    if "relearn" in args.attacks:
        from eval.attack import AttackConfig

        protocol["relearn_learning_rate"] = AttackConfig.relearn_learning_rate
    results = {"protocol": protocol, "base": base_rows, "runs": rows, "summary": summarise(rows, base_rows),
               "configs": {m: erase_setting(m, args.erase_args)[0].read_text() for m in methods}}
    write_results(results, Path(args.out))
    partial.unlink(missing_ok=True)
    return results


if __name__ == "__main__":
    from erasure.jobconfig import run_cli

    run_cli(main)
