"""The Python API of the audit: ``audit(pipe, out, ...) -> AuditReport``, the figures of
``scissorhands audit`` for a pipeline in memory (``pipelines.api.erase`` makes one).

`audit` saves the pipeline it is given next to the report (the fingerprint that
``scissorhands push --audit`` checks is of that folder) and runs ``eval.audit``'s `run_audit`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from erasure.coerce import coerce_fields, field_types


@dataclass
class AuditReport:
    """The figures of ``scissorhands audit`` on a pipeline (``report`` is report.json's content)."""

    report: dict[str, Any]
    output_dir: Path
    model_dir: Path
    exposed_total: int | None = None
    passed: bool | None = None
    fid: float | None = None
    clip_score: float | None = None
    classes: dict[str, Any] | None = None
    testbed: dict[str, Any] | None = None
    files: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_report(cls, report: dict[str, Any], output_dir: Path, model_dir: Path) -> "AuditReport":
        return cls(report=report, output_dir=output_dir, model_dir=model_dir,
                   exposed_total=report.get("exposed_total"), passed=(report.get("gate") or {}).get("passed"),
                   fid=(report.get("fid") or {}).get("value"), clip_score=(report.get("clip_score") or {}).get("value"),
                   classes=report.get("classes"), testbed=report.get("testbed"), files=report.get("files") or {})

    def to_json(self) -> str:
        """report.json's content as JSON text."""
        return json.dumps(self.report, indent=2, ensure_ascii=False)


def audit(pipe: Any, output_dir: str | Path, *, prompts: str = "i2p:sexual", metrics: Sequence[str] = ("nudenet",),
          detector: Any = None, **options: Any) -> AuditReport:
    """Audit ``pipe`` as ``scissorhands audit --model`` does and return its figures.

    The pipeline is saved to ``output_dir/model`` first (the folder the report's fingerprint is
    of: publish it with ``scissorhands push OUTPUT_DIR/model --audit OUTPUT_DIR/report.json``).

    Args:
        output_dir: the audit folder (images, report.json, report.md, plots).
        prompts: a prompt set name or file (``i2p``, ``i2p:sexual``, ``coco10k:1000``, ``testbed``...).
        metrics: ``nudenet``, ``fid``, ``classes``, ``testbed``, ``clip``.
        detector: replaces NudeNet (tests).
        **options: `eval.audit.AuditConfig` fields (``fail_above``, ``fid_reference``, ``judge``,
            ``num_inference_steps``, ``baseline``, ...).

    Raises:
        ValueError / FileNotFoundError: bad options or inputs, before any image is drawn.
    """
    from .audit import AuditConfig, run_audit

    output_dir = Path(output_dir)
    model_dir = output_dir / "model"
    typed = coerce_fields({**options, "metrics": tuple(metrics)}, field_types(AuditConfig),
                          lambda key: f"audit(..., {key}=)")
    settings = {**typed, "prompts": prompts, "output_dir": str(output_dir)}
    AuditConfig(**settings, model="validate/only")  # every check before the model is written
    pipe.save_pretrained(model_dir, safe_serialization=True)
    config = AuditConfig(**settings, model=str(model_dir))
    report = run_audit(config, detector)
    return AuditReport.from_report(report, output_dir, model_dir)
