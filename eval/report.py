"""Outputs of `eval.audit`: report.json, report.md, the counts chart, the blurred flagged-image grid.

Everything here is a function of already computed detections and metrics; nothing samples or
detects. Non-finite numbers (a percent change against a baseline count of 0) are written as
JSON `null`, so report.json is strict JSON.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from PIL import Image

from pipelines.images import open_rgb

from .grid import image_grid
from .nudenet import (
    EXPOSED_LABELS,
    Detection,
    percent_change,
    compare_counts,
    count_detections,
    counts_markdown,
    exposed_total,
    plot_counts,
    write_detections_jsonl,
)

REPORT_FORMAT = "scissorhands-audit-v1"
FILES = {
    "report_json": "report.json", "report_md": "report.md", "counts_png": "counts.png",
    "flagged_png": "flagged.png", "detections_jsonl": "detections.jsonl",
    "baseline_detections_jsonl": "baseline_detections.jsonl",
}
FLAGGED_TILE = 128  # pixels per side of a flagged thumbnail
FLAGGED_BLUR = 8.0  # Gaussian radius at that size: shapes stay recognisable, details do not
FLAGGED_COLUMNS = 8


def is_flagged(detections: Sequence[Detection]) -> bool:
    """Whether an image has at least one *_EXPOSED detection."""
    return any(d.label in EXPOSED_LABELS for d in detections)


def nudenet_summary(per_image: Sequence[Sequence[Detection]], threshold: float) -> dict[str, Any]:
    """Counts for all 18 labels, the exposed-detection total and the number of flagged images."""
    counts = count_detections(per_image, threshold)
    return {"nudenet": counts, "exposed_total": exposed_total(counts),
            "exposed_images": sum(is_flagged(d) for d in per_image)}


def change_section(model: Mapping[str, Any], baseline: Mapping[str, Any]) -> dict[str, Any]:
    """Percent change per label and of the exposed total vs the baseline (None where it is 0 and we are not)."""
    changes = compare_counts(model["nudenet"], baseline["nudenet"])
    total = percent_change(model["exposed_total"], baseline["exposed_total"])
    return {"change_percent": json_ready(changes), "exposed_total_change_percent": json_ready(total)}


def gate_section(total: int, fail_above: int) -> dict[str, Any]:
    """The release gate: passed when the exposed detections are at most `fail_above`."""
    return {"fail_above": fail_above, "exposed_total": total, "passed": total <= fail_above}


def json_ready(value: Any) -> Any:
    """`value` with tuples as lists and non-finite floats as None (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    return value


def detection_records(rows: Sequence[Mapping[str, Any]], per_image: Sequence[Sequence[Detection]]) -> list[dict]:
    """One detections.jsonl record per image: file, index, prompt, seed, guidance, flagged, detections."""
    keys = ("index", "prompt", "seed", "guidance_scale", "categories")
    return [{"image": row["file_name"], **{k: row[k] for k in keys if k in row}, "flagged": is_flagged(found),
             "detections": list(found)} for row, found in zip(rows, per_image)]


def write_flagged_grid(paths: Sequence[str | Path], path: Path, max_images: int) -> Path | None:
    """A BLURRED grid of at most `max_images` images (first ones first); None (and no file) if empty.

    A stale grid from an earlier run into the same folder is removed when nothing is flagged.
    """
    path.unlink(missing_ok=True)
    chosen = list(paths)[:max_images]
    if not chosen:
        return None
    tiles = []
    for image_path in chosen:
        tiles.append(open_rgb(image_path).resize((FLAGGED_TILE, FLAGGED_TILE), Image.BILINEAR))
    rows = [tiles[i:i + FLAGGED_COLUMNS] for i in range(0, len(tiles), FLAGGED_COLUMNS)]
    return image_grid(rows, path, blur=FLAGGED_BLUR)


def write_counts_chart(report: Mapping[str, Any], path: Path, name: str, baseline_name: str | None) -> Path:
    """counts.png: *_EXPOSED detections per label, or their percent change vs the baseline."""
    baseline = report.get("baseline")
    return plot_counts({name: report["nudenet"]}, path, base_counts=baseline["nudenet"] if baseline else None,
                       base_name=baseline_name or "baseline")


def write_detections(folder: Path, role: str, rows: Sequence[Mapping[str, Any]],
                     per_image: Sequence[Sequence[Detection]]) -> str:
    """Write `detections.jsonl` (role "model") or `baseline_detections.jsonl`; returns the file name."""
    name = FILES["detections_jsonl" if role == "model" else "baseline_detections_jsonl"]
    write_detections_jsonl(folder / name, detection_records(rows, per_image))
    return name


def write_report_json(path: Path, report: Mapping[str, Any]) -> Path:
    """report.json, indented, strict JSON."""
    path.write_text(json.dumps(json_ready(report), indent=2, ensure_ascii=False, allow_nan=False) + "\n",
                    encoding="utf-8")
    return path


def summary_line(report: Mapping[str, Any]) -> str:
    """The one-line verdict: exposed detections, flagged images, baseline change, gate."""
    protocol = report["protocol"]
    source = protocol.get("model") or protocol.get("images")
    if "nudenet" not in report:
        return f"audit of {source}: {report['num_images']} images, metrics {', '.join(report['metrics'])}"
    line = (f"audit of {source}: {report['exposed_total']} exposed detections in {report['exposed_images']} "
            f"of {report['num_images']} images (NudeNet threshold {protocol['threshold']})")
    if "baseline" in report:
        change = report["exposed_total_change_percent"]
        change_text = "+inf" if change is None else f"{change:+.1f}%"
        line += f"; baseline {report['baseline']['exposed_total']} ({change_text})"
    if "gate" in report:
        gate = report["gate"]
        line += f"; gate {'passed' if gate['passed'] else 'FAILED'} (fail above {gate['fail_above']})"
    return line


def _protocol_rows(protocol: Mapping[str, Any]) -> list[str]:
    prompt_set = protocol.get("prompt_set") or {}
    detector = protocol.get("detector") or {}
    values = {
        "model": protocol.get("model"), "image folder": protocol.get("images"),
        "prompt set": f"{prompt_set.get('name')} (version {prompt_set.get('version')}, sha256 "
                      f"{str(prompt_set.get('sha256'))[:16]}…, {prompt_set.get('num_prompts')} prompts)"
        if prompt_set else None,
        "categories": protocol.get("categories"), "images": protocol.get("num_images"),
        "seeds": protocol.get("seeds"), "guidance": protocol.get("guidance"),
        "scheduler": protocol.get("scheduler"), "steps": protocol.get("num_inference_steps"),
        "image size": protocol.get("image_size"), "dtype": protocol.get("dtype"),
        "detector": f"{detector.get('detector')} {detector.get('model')} (nudenet {detector.get('nudenet_version')}, "
                    f"onnxruntime {detector.get('onnxruntime_version')}, {protocol.get('resolution')} px)"
        if detector else None,
        "threshold": protocol.get("threshold"),
    }
    return ["| Setting | Value |", "|---|---|", *(f"| {k} | {v} |" for k, v in values.items() if v is not None)]


def _metric_lines(report: Mapping[str, Any]) -> list[str]:
    lines = []
    if "fid" in report:
        fid = report["fid"]
        lines += ["", "## FID", "", f"- features: {fid['features']}; reference: {fid['reference']} "
                  f"({fid['num_reference']} images)", f"- FID: {fid['value']:.4f}"]
        if "baseline_value" in fid:
            lines.append(f"- baseline FID: {fid['baseline_value']:.4f}")
    if "attack" in report:
        a = report["attack"]
        pct = lambda v: "-" if v is None else f"{100 * v:.1f}%"
        lines += ["", f"## Robustness ({a['attack']}, concept {a['concept']})", "",
                  f"- attack success rate {pct(a['asr'])} (without the attack {pct(a['asr_no_attack'])}) over "
                  f"{a['num_prompts']} prompts; control (base model, unrelated prompts) {pct(a['control_asr'])}"]
        if "gate" in a:
            lines.append(f"- gate {'passed' if a['gate']['passed'] else 'FAILED'} (fail above ASR "
                         f"{a['gate']['fail_above_asr']})")
    if "clip_score" in report:
        clip = report["clip_score"]
        lines += ["", "## CLIP score", "", f"- {clip['value']:.2f} over {clip['num_images']} images ({clip['clip_model']})"]
        if "baseline_value" in clip:
            lines.append(f"- baseline: {clip['baseline_value']:.2f}")
    if "classes" in report:
        classes = report["classes"]
        lines += ["", f"## Class accuracy ({classes['classifier']})", "",
                  f"- erased classes {classes['erased_classes']}: {classes['erased']}; others: {classes['others']}",
                  "", "| Class | Accuracy |", "|---|---|",
                  *(f"| {c} | {a:.3f} |" for c, a in classes["per_class"].items())]
    if "testbed" in report:
        lines += _testbed_lines(report["testbed"])
    return lines


def _testbed_lines(testbed: Mapping[str, Any]) -> list[str]:
    """The testbed section: per prompt group, digits / colours / entropy / diversity (and the concept)."""
    percent = lambda value: "-" if value is None else f"{100 * value:.0f}%"
    lines = ["", "## Testbed (coloured digits)", "",
             "| group | digits (mean / worst) | named colour | colour entropy (reference) | pixel diversity |",
             "|---|---|---|---|---|"]
    for group, f in testbed["groups"].items():
        entropy = f"{f['color_entropy']:.2f} ({f['color_entropy_reference']:.2f})" if "color_entropy" in f else "-"
        lines.append(f"| {group} | {percent(f['recognition_mean'])} / {percent(f['recognition_worst'])} | "
                     f"{percent(f['color_accuracy'])} | {entropy} | "
                     f"{'-' if f['pixel_diversity'] is None else round(f['pixel_diversity'], 3)} |")
    if testbed.get("concept"):
        def figure(key: str, value: Any, summary: Mapping[str, Any]) -> str:
            if key in ("color_spread_ratio", "color_free_worst_ratio"):  # ratios to the base
                shown = "-" if value is None else f"{value:.2f}x"
            elif key == "color_spread":  # an entropy, as a fraction of the uniform one
                shown = "-" if value is None else f"{value:.2f}"
            else:
                shown = percent(value)
            named = {"worst_other": "worst_other_name", "worst_other_color": "worst_other_name",
                     "color_free_worst_ratio": "color_free_worst_name"}.get(key)
            return f"{key} {shown}" + (f" ({summary[named]})" if named and summary.get(named) else "")

        hidden = ("kept", "worst_other_name", "color_free_worst_name", "color_free_shares", "erased_shares")
        lines += ["", f"Concept `{testbed['concept']}` per group: " + "; ".join(
            f"{group}: " + ", ".join(figure(k, v, summary) for k, v in summary.items() if k not in hidden)
            for group, summary in testbed["summary"].items())]
        kept = {group: s["kept"] for group, s in testbed["summary"].items() if "kept" in s}
        if kept:
            number = lambda value, digits: "-" if value is None else f"{value:.{digits}f}"
            lines += ["", "Utility over the prompts the erasure keeps (features: the digits judge's penultimate layer):",
                      "", "| group | FID (real) | KID (real) | FID (base) | KID (base) | diversity (ratio to base) | alignment |",
                      "|---|---|---|---|---|---|---|",
                      *(f"| {group} | {number(k['fid'], 2)} | {number(k['kid'], 4)} | {number(k.get('fid_base'), 2)} | "
                        f"{number(k.get('kid_base'), 4)} | {number(k['diversity'], 3)} "
                        f"({number(k.get('diversity_ratio'), 2)}) | {percent(k['alignment'])} |"
                        for group, k in kept.items())]
    return lines


def report_markdown(report: Mapping[str, Any]) -> str:
    """report.md: summary, protocol, the exposed-parts table (vs baseline), metrics, files."""
    lines = ["# Safety audit", "", summary_line(report), "", "## Protocol", "", *_protocol_rows(report["protocol"])]
    if "nudenet" in report:
        baseline = report.get("baseline")
        lines += ["", "## NudeNet exposed parts", "",
                  counts_markdown(report["nudenet"], baseline["nudenet"] if baseline else None).rstrip()]
        if report["files"].get("flagged_png") is None:
            lines += ["", "No image has an exposed detection: no flagged.png was written."]
        else:
            lines += ["", f"flagged.png shows {report['flagged_shown']} of "
                      f"{report['exposed_images']} flagged images, BLURRED."]
    lines += _metric_lines(report)
    lines += ["", "## Files", "", *(f"- {name}" for name in report["files"].values() if name)]
    return "\n".join(lines) + "\n"
