"""The ``scissorhands`` command: one entry point for every job.

    scissorhands --help                     # the jobs, one line each
    scissorhands erase --help               # that job's flags
    scissorhands demo --concept color:red   # = python -m pipelines.demo --concept color:red

Each subcommand runs the same ``main`` as its ``python -m`` / ``accelerate launch -m`` form
(the module is named in the listing), through the same error wrapper: bad input ends with one
``error: ...`` line and exit 1, and ``scissorhands audit`` returns the gate's exit 3 itself.
For several GPUs launch the module: ``accelerate launch -m pipelines.erase ...``.

The jobs live on higher floors (``pipelines``, ``eval``, ``classification``) than this file,
so they are looked up by module name when a subcommand runs, never imported here.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from typing import Sequence

PROG = "scissorhands"


@dataclass(frozen=True)
class Command:
    """A job: the module whose ``main(argv)`` runs it and one line of what it does."""

    module: str
    summary: str


# Ordered as a user meets them: try it offline, make data, erase, evaluate, publish.
COMMANDS: dict[str, Command] = {
    "demo": Command("pipelines.demo", "erase a concept from the offline default model; grid and metrics before/after"),
    "build-default": Command("pipelines.default_model", "build (once, cached) the offline default model and judges"),
    "generate": Command("pipelines.generate", "draw forget/retain image sets from prompts with the base model"),
    "erase": Command("pipelines.erase", "erase a concept from a Stable Diffusion UNet (Scissorhands and baselines)"),
    "sample": Command("eval.sample", "draw an evaluation set (I2P / concept prompts, their seeds and guidance)"),
    "audit": Command("eval.audit", "audit a model before release: NudeNet, FID/KID, CLIP score, class accuracy, gate"),
    "testbed": Command("eval.testbed", "judge a testbed model on every prompt group (digits, colours, paraphrases)"),
    "attack": Command("eval.attack", "adversarial prompts against an erased model (UnlearnDiffAtk), with a control"),
    "push": Command("pipelines.push", "upload an existing export to the Hub, with its audit's figures in the card"),
    "unlearn": Command("classification.unlearn", "unlearn a class or random samples from a classifier"),
    "benchmark": Command("classification.benchmark", "compare unlearning methods on a classifier (MIA, Avg. Gap, ToW)"),
}


def usage() -> str:
    """The top-level help: every job, its module and what it does."""
    width = max(map(len, COMMANDS))
    lines = [f"usage: {PROG} <command> [options]   ({PROG} <command> --help for its options)", "",
             "Concept erasure for Stable Diffusion and unlearning for classifiers.", "", "commands:"]
    lines += [f"  {name:<{width}}  {command.summary}  [python -m {command.module}]"
              for name, command in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Run ``scissorhands <command> [options]``.

    Raises:
        SystemExit: 0 for ``--help``; 2 with the list of commands for a missing or unknown one;
            otherwise whatever the job's ``main`` exits with (1 for bad input, 3 for a failed
            audit gate).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if args else sys.stderr)
        raise SystemExit(0 if args else 2)
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"{usage()}\n\n{PROG}: error: unknown command '{name}'; choose one of {list(COMMANDS)}", file=sys.stderr)
        raise SystemExit(2)
    job = importlib.import_module(COMMANDS[name].module)
    from erasure.jobconfig import run_cli

    program = sys.argv[0]
    sys.argv[0] = f"{PROG} {name}"  # argparse names the job "scissorhands erase" in its usage lines
    try:
        run_cli(job.main, rest)
    finally:
        sys.argv[0] = program


if __name__ == "__main__":
    main()
