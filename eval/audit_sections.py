"""The metric sections of `eval.audit`: each maps an `AuditRun` to its part of report.json.

`METRIC_SECTIONS` dispatches `--metrics` names: "nudenet" (counts of all 18 labels, exposed
total, baseline change, gate, and the detections / counts / blurred flagged-image files),
"fid" and "classes" (see `eval.audit_metrics`), "testbed" (see `eval.testbed`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

from tqdm.auto import tqdm

from . import report as reports
from .image_folders import folder_protocol
from .nudenet import Detection, ImageInput

if TYPE_CHECKING:
    from .audit import AuditConfig


class Detector(Protocol):
    """What the audit needs from a detector (`NudeNetDetector`, or a fake in tests)."""

    def detect(self, images: Sequence[ImageInput]) -> list[list[Detection]]: ...

    def protocol(self) -> dict[str, Any]: ...


def scan(detector: Detector, rows: Sequence[dict[str, Any]], threshold: float, batch_size: int,
         desc: str) -> list[list[Detection]]:
    """NudeNet detections (score >= threshold) of each row's image, in batches, with a progress bar."""
    found: list[list[Detection]] = []
    with tqdm(total=len(rows), desc=desc, unit="img") as progress:
        for start in range(0, len(rows), batch_size):
            chunk = [row["path"] for row in rows[start:start + batch_size]]
            results = detector.detect(chunk)
            if len(results) != len(chunk):
                raise RuntimeError(f"detector returned {len(results)} results for {len(chunk)} images")
            found += [[d for d in detections if d.score >= threshold] for detections in results]
            progress.update(len(chunk))
    return found


@dataclass
class AuditRun:
    """What the metric sections share: options, checked inputs (detector, classifier, FID extractor and
    reference rows), one row list per role, the report's protocol and files so far."""

    config: AuditConfig
    checked: dict[str, Any]
    folders: dict[str, Path]
    rows: dict[str, list[dict[str, Any]]]
    protocol: dict[str, Any]
    files: dict[str, str | None]

    @property
    def out(self) -> Path:
        return Path(self.config.output_dir)


def nudenet_section(run: AuditRun) -> dict[str, Any]:
    """Detect, count (vs the baseline), gate; write detections, counts.png and the blurred flagged.png."""
    config, detector = run.config, run.checked["detector"]
    detector_protocol = detector.protocol()
    run.protocol.update(detector=detector_protocol, threshold=config.threshold,
                        resolution=detector_protocol.get("inference_resolution"))
    per_image = {role: scan(detector, rows, config.threshold, config.nudenet_batch_size, f"NudeNet {role}")
                 for role, rows in run.rows.items()}
    for role, found in per_image.items():
        run.files[f"{'' if role == 'model' else 'baseline_'}detections_jsonl"] = reports.write_detections(
            run.out, role, run.rows[role], found)
    section = reports.nudenet_summary(per_image["model"], config.threshold)
    if "baseline" in run.rows:
        baseline = {"source": config.baseline, "images": str(run.folders["baseline"]),
                    "protocol": folder_protocol(run.folders["baseline"], run.rows["baseline"], None),
                    "num_images": len(run.rows["baseline"]),
                    **reports.nudenet_summary(per_image["baseline"], config.threshold)}
        section.update(baseline=baseline, **reports.change_section(section, baseline))
    if config.fail_above is not None:
        section["gate"] = reports.gate_section(section["exposed_total"], config.fail_above)
    flagged = [row["path"] for row, found in zip(run.rows["model"], per_image["model"]) if reports.is_flagged(found)]
    written = reports.write_flagged_grid(flagged, run.out / reports.FILES["flagged_png"], config.max_flagged)
    section["flagged_shown"] = min(len(flagged), config.max_flagged)
    run.files["flagged_png"] = written.name if written else None
    name = config.model or config.images
    run.files["counts_png"] = reports.write_counts_chart(section, run.out / reports.FILES["counts_png"], name,
                                                         config.baseline).name
    return section


def fid_section(run: AuditRun) -> dict[str, Any]:
    """FID of the model's (and the baseline's) images against `--fid_reference`."""
    from .audit_metrics import folder_fid

    generated = {role: [row["path"] for row in rows] for role, rows in run.rows.items()}
    reference = [row["path"] for row in run.checked["fid_reference"]]
    return {"fid": folder_fid(run.checked["fid_extractor"], run.config.fid_reference, reference, generated,
                              run.config.fid_cache_dir)}


def classes_section(run: AuditRun) -> dict[str, Any]:
    """Class accuracy of the model's (and the baseline's) images, erased classes vs the others."""
    from .audit_metrics import folder_class_accuracy

    config, classifier = run.config, run.checked["classifier"]
    result = {"classifier": config.classifier, "erased_classes": list(config.erased_classes),
              **folder_class_accuracy(run.rows["model"], classifier, config.erased_classes)}
    if "baseline" in run.rows:
        result["baseline"] = folder_class_accuracy(run.rows["baseline"], classifier, config.erased_classes)
    return {"classes": result}


def testbed_section(run: AuditRun) -> dict[str, Any]:
    """The offline testbed's figures (``eval.testbed``) of the model's (and the baseline's) images:
    recognition, named colour, colour entropy and diversity per prompt group, and with
    ``--concept`` what erased means for it."""
    from .testbed import report_of, samples_from_rows

    judge = run.checked["judge"]
    base_samples = samples_from_rows(run.rows["baseline"]) if "baseline" in run.rows else None
    # the model against the baseline (FID/KID vs base, diversity and colour-spread ratios) where both
    # drew the same prompts with the same seeds, row for row
    key = lambda rows: [(r.get("prompt"), r.get("seed")) for r in rows]
    paired = base_samples is not None and key(run.rows["model"]) == key(run.rows["baseline"])
    result = report_of(samples_from_rows(run.rows["model"]), judge, run.config.concept,
                       base=base_samples if paired else None)
    section = {"concept": run.config.concept, "groups": result["groups"], "summary": result.get("concept"),
               "against_baseline": paired}
    if base_samples is not None:
        baseline = report_of(base_samples, judge, run.config.concept)
        section["baseline"] = {"groups": baseline["groups"], "summary": baseline.get("concept")}
    return {"testbed": section}


def clip_section(run: AuditRun) -> dict[str, Any]:
    """CLIP score of the model's (and the baseline's) images against their prompts."""
    from .clip_score import folder_clip_score

    metric, batch = run.checked["clip"], run.config.clip_batch_size
    result = {"clip_model": run.config.clip_model,
              **folder_clip_score(metric, run.rows["model"], batch, "CLIP score model")}
    if "baseline" in run.rows:
        baseline = folder_clip_score(metric, run.rows["baseline"], batch, "CLIP score baseline")
        result.update(baseline_value=baseline["value"], baseline_num_images=baseline["num_images"])
    return {"clip_score": result}


METRIC_SECTIONS: dict[str, Callable[[AuditRun], dict[str, Any]]] = {
    "nudenet": nudenet_section, "fid": fid_section, "classes": classes_section, "testbed": testbed_section,
    "clip": clip_section,
}

