"""Safety audit of a model or of a folder of its images: NudeNet counts, optional FID and class accuracy.

    accelerate launch -m eval.audit --model runs/erased --prompts i2p.csv --categories sexual \\
        --fixed_guidance 7.5 --scheduler ddim --out audit/erased --baseline CompVis/stable-diffusion-v1-4
    python -m eval.audit --images eval/sd14-i2p-sexual --out audit/sd14 --fail-above 50

`--model` images are drawn first by `eval.sample` into `<out>/images` (a `--baseline` model into
`<out>/baseline_images`; a baseline that is an image folder is used as it is); rerunning resumes
them. `--images` takes a folder from `eval.sample` (its protocol.json is reported) or any folder
of image files. Metrics (`--metrics nudenet,fid,classes,clip`, default nudenet) run on the main
process over a finished folder's metadata.jsonl, one row per image file, so a resumed run never
counts an image twice.

FID: `--metrics nudenet,fid --fid_reference <image folder>` over Inception-v3 features
(`--fid_features inception`, needs torch-fidelity) or, offline, `--fid_features digits --judge
<digits judge folder>`. Class accuracy: `--metrics nudenet,classes --classifier digits --judge
<folder>` or `--classifier imagenette [--classifier_model microsoft/resnet-50]`, with
`--erased_classes seven`, over a class prompt set (digits, imagenette) sampled by eval.sample.
CLIP score (`clip`, torchmetrics): each image against its own prompt, with `--clip_model` (a Hub id,
default openai/clip-vit-large-patch14, or a local folder), e.g. on `--prompts coco10k:1000`.
Offline testbed: `--prompts testbed --metrics testbed --judge <judge folder> --concept color:red`
reports recognition, named colour, colour entropy and diversity per prompt group (word,
numeral, paraphrase) and what erased means for the concept (`eval.testbed`).

Writes into `--out`: report.json (protocol, counts of all 18 NudeNet labels, exposed_total,
baseline counts and change_percent, fid, classes, gate), report.md, counts.png (*_EXPOSED
counts, or their change vs the baseline), flagged.png (a BLURRED grid of at most --max_flagged
images with an exposed detection; not written when there is none), detections.jsonl (one line
per image; baseline_detections.jsonl for the baseline).

Robustness: `--attack unlearndiffatk --attack_base_model <model before erasure>` runs `eval.attack`
on the audited model (records in `<out>/attack/`) and adds an `attack` section (ASR with and
without the attack, the control's ASR); `--fail_above_asr 0.2` joins the gate.

Exit codes: 0 done (gate passed or not asked for); 1 bad input, one `error: ...` line, nothing
written; 3 the report is written but exposed detections exceed `--fail-above N` (or the attack's
ASR exceeds `--fail_above_asr`). `accelerate
launch` turns any non-zero exit of its child into its own failure (exit 1), so a release
pipeline gates on `python -m eval.audit` or reads report.json's "gate".
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from erasure import jobconfig
from erasure.launch import end_process_group
from erasure.output import check_output_dir

from . import report as reports
from .audit_sections import METRIC_SECTIONS, AuditRun, Detector
from .clip_score import DEFAULT_CLIP
from .image_folders import folder_protocol, read_image_folder
from .nudenet import DEFAULT_THRESHOLD
from .sample import SampleConfig, SamplingOptions, check_model_path, partial_state, resolve_prompt_set, sample

logger = logging.getLogger(__name__)

METRICS = ("nudenet", "fid", "classes", "testbed", "clip")
EXIT_GATE_FAILED = 3


@dataclass
class AuditConfig(SamplingOptions):
    """Options of `eval.audit`; sampling options apply when `model` / a baseline model is sampled."""

    model: str | None = None
    images: str | None = None
    prompts: str | None = None
    output_dir: str = ""  # --out
    baseline: str | None = None
    fail_above: int | None = None
    metrics: tuple[str, ...] = ("nudenet",)
    threshold: float = DEFAULT_THRESHOLD
    nudenet_batch_size: int = 8
    max_flagged: int = 32
    fid_reference: str | None = None
    fid_features: str = "inception"
    fid_cache_dir: str | None = None
    classifier: str | None = None
    judge: str | None = None  # a build_digits_judge folder: --classifier digits / --fid_features digits
    classifier_model: str = "microsoft/resnet-50"
    erased_classes: tuple[str, ...] = ()
    concept: str | None = None  # testbed metric: digits:<d> or color:<c>
    clip_model: str = DEFAULT_CLIP  # clip metric: a Hub id or a local CLIPModel folder
    clip_batch_size: int = 16
    attack: str | None = None  # "unlearndiffatk" (or "none"): an attack section (eval.attack; needs --model)
    attack_base_model: str | None = None  # the model before erasure: the attack's target images and control
    attack_concept: str | None = None  # default: --concept (testbed) or nudity
    attack_max_prompts: int | None = None  # attack the first N of the concept's prompts
    fail_above_asr: float | None = None  # the gate also fails when the attack's ASR exceeds this (0-1)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.metrics = tuple(m.strip() for text in self.metrics for m in str(text).split(",") if m.strip())
        self.erased_classes = tuple(c.strip() for t in self.erased_classes for c in str(t).split(",") if c.strip())
        if (self.model is None) == (self.images is None):
            raise ValueError(f"give exactly one of --model and --images, got model={self.model!r}, "
                             f"images={self.images!r}")
        if not self.output_dir:
            raise ValueError("output_dir is required (--out ...)")
        check_output_dir(self.output_dir, "out")
        if self.model is not None:
            check_model_path(self.model, "model")
        if self.baseline is not None and not Path(self.baseline).exists():
            check_model_path(self.baseline, "baseline")  # a missing folder, unless a Hub id
        if self.baseline is not None and baseline_is_model(self.baseline) and not self.prompts:
            raise ValueError(f"baseline={self.baseline!r} is a model: sampling it needs --prompts")
        if self.categories and not self.prompts:
            raise ValueError(f"categories={list(self.categories)} filter a prompt set: give --prompts as well")
        if self.model is not None and not self.prompts:
            raise ValueError("--model needs --prompts (a prompt set name or file) to sample from")
        self._check_metrics()
        self._check_attack()

    def _check_attack(self) -> None:
        if self.attack is None:
            if self.fail_above_asr is not None or self.attack_base_model is not None:
                raise ValueError("fail_above_asr / attack_base_model need --attack unlearndiffatk")
            return
        from .attack import ATTACKS

        if self.attack not in ATTACKS:
            raise ValueError(f"attack={self.attack!r} is unknown; choose one of {list(ATTACKS)}")
        if self.model is None or self.attack_base_model is None:
            raise ValueError("--attack needs --model (the erased model) and --attack_base_model (the model before "
                             "erasure: it draws the target images and runs the control)")
        if self.fail_above_asr is not None and not 0.0 <= self.fail_above_asr <= 1.0:
            raise ValueError(f"fail_above_asr={self.fail_above_asr} must be in [0, 1]")

    def _check_metrics(self) -> None:
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown or not self.metrics:
            raise ValueError(f"metrics={list(self.metrics)}: choose one or more of {list(METRICS)}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold={self.threshold} must be in [0, 1]")
        for name in ("nudenet_batch_size", "max_flagged", "clip_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.fail_above is not None and (self.fail_above < 0 or "nudenet" not in self.metrics):
            raise ValueError(f"fail_above={self.fail_above} needs a count >= 0 and 'nudenet' in --metrics")
        if ("fid" in self.metrics) != (self.fid_reference is not None):
            raise ValueError(f"the 'fid' metric and --fid_reference go together; got metrics={list(self.metrics)}, "
                             f"fid_reference={self.fid_reference!r}")
        if "testbed" in self.metrics and not self.judge:
            raise ValueError("the 'testbed' metric needs --judge <folder of the default model's judge>")
        if self.concept is not None:
            from prompts.colored_digits import parse_concept

            try:
                parse_concept(self.concept)
            except ValueError as err:
                raise ValueError(f"concept={self.concept!r}: {err}") from err
        if ("classes" in self.metrics) != (self.classifier is not None):
            raise ValueError(f"the 'classes' metric and --classifier go together; got metrics={list(self.metrics)}, "
                             f"classifier={self.classifier!r}")


def baseline_is_model(baseline: str) -> bool:
    """A Hub id or a diffusers folder (sampled), rather than a folder of images (used as it is)."""
    path = Path(baseline)
    return not path.is_dir() or (path / "model_index.json").is_file()


def parse_args(argv: Sequence[str] | None = None) -> AuditConfig:
    """Flags (one per `AuditConfig` field, plus `--out` and `--fail-above` spellings) over an optional YAML.

    Raises:
        SystemExit(2): via argparse for unknown flags.
        ValueError: YAML keys that are no option, or invalid values.
    """
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", "--output_dir", dest="output_dir", default=argparse.SUPPRESS)
    parser.add_argument("--fail-above", "--fail_above", dest="fail_above", default=argparse.SUPPRESS,
                        help=f"exit {EXIT_GATE_FAILED} after writing the report when exposed detections exceed N")
    (config,) = jobconfig.parse((AuditConfig,), argv, parser=parser)
    return config


def _sample_into(config: AuditConfig, model: str, folder: Path, state: Any) -> None:
    options = {f.name: getattr(config, f.name) for f in dataclasses.fields(SamplingOptions)}
    sample(SampleConfig(**options, model=model, prompts=config.prompts, output_dir=str(folder)), state)


def _preflight(config: AuditConfig, detector: Detector | None) -> dict[str, Any]:
    """Resolve and load everything that can fail on bad input, before anything is written."""
    from .audit_metrics import fid_extractor, load_classifier
    from .nudenet import NudeNetDetector

    checked: dict[str, Any] = {"prompt_set": None, "rows": {}}
    if "nudenet" in config.metrics:
        checked["detector"] = detector or NudeNetDetector(config.threshold, batch_size=config.nudenet_batch_size)
    if config.prompts:
        checked["prompt_set"] = resolve_prompt_set(config.prompts, config.categories, config.min_nudity_percentage)
        if "classes" in config.metrics and any("label" not in p.extra for p in checked["prompt_set"]):
            raise ValueError(f"the 'classes' metric needs a class prompt set (digits, imagenette), "
                             f"got prompts={config.prompts!r}")
    if config.images:
        checked["rows"]["model"] = read_image_folder(config.images, "images")
    if config.baseline and not baseline_is_model(config.baseline):
        checked["rows"]["baseline"] = read_image_folder(config.baseline, "baseline")
    rows = [row for rows in checked["rows"].values() for row in rows]
    unlabelled = [row["file_name"] for row in rows if "label" not in (row.get("extra") or {})]
    if "classes" in config.metrics and unlabelled:
        raise ValueError(f"the 'classes' metric needs class labels (metadata.jsonl extra.label from eval.sample on a "
                         f"class prompt set); {len(unlabelled)} images have none, e.g. {unlabelled[0]!r}")
    if "fid" in config.metrics:
        checked["fid_reference"] = read_image_folder(config.fid_reference, "fid_reference")
        checked["fid_extractor"] = fid_extractor(config.fid_features, config.judge)
    if "classes" in config.metrics:
        checked["classifier"] = load_classifier(config.classifier, config.judge, config.classifier_model)
    if "clip" in config.metrics:
        from .clip_score import check_prompted, load_clip_score

        checked["clip"] = load_clip_score(config.clip_model)
        check_prompted(rows)
    if "testbed" in config.metrics:
        from .digits_classifier import load_digits_judge

        checked["judge"] = load_digits_judge(config.judge)
        unlabelled = [row["file_name"] for row in rows if "eval_group" not in (row.get("extra") or {})]
        if unlabelled or (checked["prompt_set"] is not None and not checked["prompt_set"].name.startswith("testbed")):
            raise ValueError("the 'testbed' metric needs images of the testbed prompt set (eval.sample --prompts "
                             f"testbed), got prompts={config.prompts!r}")
    return checked


def _image_folders(config: AuditConfig, state: Any) -> dict[str, Path]:
    """role ("model", "baseline") -> finished image folder; draws the models' images first."""
    out = Path(config.output_dir)
    folders = {"model": out / "images" if config.model else Path(config.images)}
    if config.model:
        _sample_into(config, config.model, folders["model"], state)
    if config.baseline:
        sampled = baseline_is_model(config.baseline)
        folders["baseline"] = out / "baseline_images" if sampled else Path(config.baseline)
        if sampled:
            _sample_into(config, config.baseline, folders["baseline"], state)
    return folders


def run_audit(config: AuditConfig, detector: Detector | None = None, state: Any | None = None) -> dict[str, Any]:
    """Sample (unless `--images`), run the chosen metrics and write the report; every process calls this.

    Args:
        config: validated options.
        detector: replaces NudeNet (e.g. a fake in tests); needs `detect(paths)` and `protocol()`.
        state: an accelerate `PartialState`; None makes one.

    Returns:
        The report (report.json's content) on the main process, {} on the others. A launched audit's
        process group ends after the sampling (``erasure.launch.end_process_group``), on every rank.

    Raises:
        ValueError / FileNotFoundError / ImportError: bad input, before anything is written.
    """
    checked = _preflight(config, detector)
    state = state or partial_state()
    if config.attack is not None and state.num_processes > 1:
        raise ValueError(f"--attack runs on the main process only, and this audit runs in {state.num_processes} "
                         "processes: launch it with one process, or run eval.attack under accelerate launch itself")
    folders = _image_folders(config, state)
    # the sampling was the last step the processes share: the group ends here on every rank (gloo drained), so the
    # others need not wait in a collective while the main process scores the images
    end_process_group()
    if not state.is_main_process:
        return {}
    rows = {role: checked["rows"].get(role) or read_image_folder(folder, role) for role, folder in folders.items()}
    protocol = {**folder_protocol(folders["model"], rows["model"], checked["prompt_set"]),
                "images": str(folders["model"]), "num_images": len(rows["model"])}
    files: dict[str, str | None] = {key: reports.FILES[key] for key in ("report_json", "report_md")}
    run = AuditRun(config, checked, folders, rows, protocol, files)
    run.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"format": reports.REPORT_FORMAT, "protocol": run.protocol,
                              "num_images": len(rows["model"]), "metrics": list(config.metrics)}
    for metric in config.metrics:
        report.update(METRIC_SECTIONS[metric](run))
    if config.attack is not None:
        report.update(attack_section(config, run.out))
    report["files"] = run.files
    reports.write_report_json(run.out / reports.FILES["report_json"], report)
    (run.out / reports.FILES["report_md"]).write_text(reports.report_markdown(report), encoding="utf-8")
    logger.info("%s", reports.summary_line(report))
    return reports.json_ready(report)


def attack_section(config: AuditConfig, out: Path) -> dict[str, Any]:
    """``eval.attack`` on the audited model (records under ``<out>/attack``), and the ASR gate."""
    from .attack import AttackConfig, run as run_attack

    concept = config.attack_concept or config.concept or "nudity"
    summary = run_attack(AttackConfig(
        model=config.model, base_model=config.attack_base_model, concept=concept, output_dir=str(out / "attack"),
        attack=config.attack, judge=config.judge, max_prompts=config.attack_max_prompts, seed=config.seed,
        num_inference_steps=config.num_inference_steps))
    section: dict[str, Any] = {"attack": {"attack": config.attack, "concept": concept, "folder": "attack",
                                          **{k: summary[k] for k in ("asr", "asr_no_attack", "control_asr",
                                                                     "num_prompts", "successes",
                                                                     "median_seconds_per_prompt")}}}
    if config.fail_above_asr is not None:
        section["attack"]["gate"] = {"fail_above_asr": config.fail_above_asr, "asr": summary["asr"],
                                     "passed": summary["asr"] <= config.fail_above_asr}
    return section


def main(argv: Sequence[str] | None = None, detector: Detector | None = None) -> dict[str, Any]:
    """Parse flags, audit, and exit with `EXIT_GATE_FAILED` (3) when the `--fail-above` gate fails.

    Returns:
        The report (on the main process; {} on the others).

    Raises:
        SystemExit(3): exposed detections above `--fail-above`, after the report is written.
    """
    config = parse_args(argv)
    state = partial_state()
    logging.basicConfig(level=logging.INFO if state.is_main_process else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    report = run_audit(config, detector, state)
    gate = report.get("gate")
    where = Path(config.output_dir) / reports.FILES["report_json"]
    if gate is not None and not gate["passed"]:
        logger.error("FAILED: %d exposed detections exceed --fail-above %d (report: %s); exit code %d",
                     gate["exposed_total"], gate["fail_above"], where, EXIT_GATE_FAILED)
        raise SystemExit(EXIT_GATE_FAILED)
    attack_gate = (report.get("attack") or {}).get("gate")
    if attack_gate is not None and not attack_gate["passed"]:
        logger.error("FAILED: attack success rate %.3f exceeds --fail_above_asr %.3f (report: %s); exit code %d",
                     attack_gate["asr"], attack_gate["fail_above_asr"], where, EXIT_GATE_FAILED)
        raise SystemExit(EXIT_GATE_FAILED)
    return report


if __name__ == "__main__":
    jobconfig.run_cli(main)
