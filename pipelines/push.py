"""Publish an existing export to the Hugging Face Hub, as it is: the model that was audited.

    scissorhands push runs/erased --repo_id your-name/sd-v1-4-erased-nudity --audit audit/report.json
    scissorhands push runs/erased --repo_id your-name/test --dry_run      # write the card, upload nothing

Nothing is retrained. The folder is uploaded without its checkpoints, logs, locks and staging
folders (`RELEASE_IGNORE`). With ``--audit`` (the report.json of ``scissorhands audit --model
FOLDER``):

- the report must be of these weights: ``eval.sample`` records the folder's fingerprint
  (`folder_fingerprint`, a sha256 over every published file but the card) and the push
  compares it with the folder's now. An audit of another folder, or of plain images (an
  ``--images`` folder without eval.sample's protocol.json), is refused;
- a failed ``--fail-above`` gate refuses the push;
- the audit's figures (NudeNet exposed detections, FID/KID, class accuracy, the testbed's
  erased/others, CLIP score and attack success when present) enter the card's ``model-index``
  as ``EvalResult`` entries, and report.json / report.md are uploaded under ``audit/``.

``--force`` publishes despite a refused audit, and says so in the card. Exit codes: 0 pushed
(or dry run), 1 bad input or a refused audit (one ``error: ...`` line, nothing uploaded).
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from erasure import jobconfig
from erasure.lock import refuse_if_locked
from erasure.output import write_text_atomic

logger = logging.getLogger(__name__)

RELEASE_IGNORE = ["checkpoint-*", "logs/*", "*.tmp", ".export-*", ".export.json", ".lock", ".lock.*",
                  ".checkpoint-*", ".checkpoint-*/*"]
CARD = "README.md"
AUDIT_FOLDER = "audit"  # the audit's report files, uploaded beside the weights
NOT_FINGERPRINTED = (CARD, f"{AUDIT_FOLDER}/*")  # what a push itself writes


def _ignored(relative: str, patterns: Sequence[str]) -> bool:
    top = relative.split("/", 1)[0]
    return any(fnmatch.fnmatch(relative, p) or fnmatch.fnmatch(top, p) for p in patterns)


def release_files(folder: str | Path) -> list[str]:
    """The files of ``folder`` a push uploads (relative, sorted): all but `RELEASE_IGNORE`."""
    folder = Path(folder)
    files = (p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return sorted(f for f in files if not _ignored(f, RELEASE_IGNORE))


def folder_fingerprint(folder: str | Path) -> str:
    """sha256 over the path and content of every published file but the card and the audit.

    Two folders with this fingerprint draw the same images; a re-export or a swapped UNet changes
    it. The SD v1.4 pipeline (about 5 GB) hashes in seconds.
    """
    folder = Path(folder)
    digest = hashlib.sha256()
    for relative in release_files(folder):
        if _ignored(relative, NOT_FINGERPRINTED):
            continue
        file_digest = hashlib.sha256()
        with (folder / relative).open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                file_digest.update(block)
        digest.update(f"{relative}\0{file_digest.hexdigest()}\n".encode())
    return digest.hexdigest()


def check_export(folder: str | Path) -> str:
    """The kind of export in ``folder``: "pipeline" (model_index.json), "unet" (unet/ alone) or
    "lora" (a diffusers LoRA adapter).

    Raises:
        FileNotFoundError / ValueError: no folder, a damaged pipeline, or a job still writing it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"folder={str(folder)!r}: no such folder")
    refuse_if_locked(folder)
    if (folder / "model_index.json").is_file():
        from pipelines.model_folder import check_pipeline_folder

        check_pipeline_folder(folder, f"folder={str(folder)!r}")
        return "pipeline"
    if (folder / "unet" / "config.json").is_file():
        return "unet"
    from pipelines.lora import LORA_WEIGHTS

    if (folder / LORA_WEIGHTS).is_file():
        from erasure.tensor_files import check_tensor_file

        check_tensor_file(folder / LORA_WEIGHTS, "adapter")
        return "lora"
    raise ValueError(f"folder={str(folder)!r} is no export of `scissorhands erase` (no model_index.json, "
                     "unet/config.json or pytorch_lora_weights.safetensors)")


def read_audit(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """(report.json path, report) of ``--audit`` (the report file, or the audit's --out folder).

    Raises:
        FileNotFoundError / ValueError: naming the file.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    if not path.is_file():
        raise FileNotFoundError(f"audit={str(path)!r}: no such file (give the report.json of `scissorhands audit`)")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"audit={str(path)!r} is not a JSON report: {err}") from None
    if not isinstance(report, dict) or "protocol" not in report:
        raise ValueError(f"audit={str(path)!r} is no audit report (no \"protocol\")")
    return path, report


def audit_problems(report: dict[str, Any], fingerprint: str, folder: Path) -> list[str]:
    """Why the report does not clear ``folder`` for release (empty: it does)."""
    problems = []
    audited = (report.get("protocol") or {}).get("model_fingerprint")
    if audited is None:
        problems.append("the audit does not record which weights it saw (plain images without protocol.json, or an older "
                        "report); "
                        f"audit the folder itself: scissorhands audit --model {folder} ...")
    elif audited != fingerprint:
        problems.append(f"the audit is of other weights (fingerprint {audited[:12]}…, this folder {fingerprint[:12]}…): "
                        "the folder changed after the audit, or the audit is of another model")
    gate = report.get("gate")
    if gate is not None and not gate.get("passed"):
        problems.append(f"the audit's gate failed: {gate.get('exposed_total')} exposed detections > fail_above "
                        f"{gate.get('fail_above')}")
    attack_gate = (report.get("attack") or {}).get("gate")
    if attack_gate is not None and not attack_gate.get("passed"):
        problems.append(f"the audit's attack gate failed: ASR {attack_gate.get('asr')} > fail_above_asr "
                        f"{attack_gate.get('fail_above_asr')}")
    return problems


def _prompts_name(protocol: dict[str, Any]) -> str:
    prompt_set = protocol.get("prompt_set") or {}
    name = prompt_set.get("name") or "prompts"
    categories = protocol.get("categories")
    return f"{name} ({', '.join(categories)})" if categories else name


def eval_results(report: dict[str, Any]) -> list[Any]:
    """The audit's figures as ``huggingface_hub.EvalResult`` entries of the card's model-index."""
    from huggingface_hub import EvalResult

    protocol = report.get("protocol") or {}
    dataset = _prompts_name(protocol)
    dataset_type = (protocol.get("prompt_set") or {}).get("name") or "prompts"
    results = []

    def add(metric_type: str, name: str, value: Any, dataset_name: str = dataset) -> None:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            results.append(EvalResult(task_type="text-to-image", dataset_type=dataset_type, dataset_name=dataset_name,
                                      metric_type=metric_type, metric_name=name, metric_value=value,
                                      ))

    add("nudenet_exposed_detections", "NudeNet exposed detections", report.get("exposed_total"))
    add("nudenet_exposed_images", "images with an exposed detection", report.get("exposed_images"))
    add("nudenet_exposed_change_percent", "exposed detections vs the base (%)",
        report.get("exposed_total_change_percent"))
    fid = report.get("fid") or {}
    reference = f"{dataset} vs {Path(str(fid.get('reference', 'reference'))).name}"
    add("fid", f"FID ({fid.get('features')} features)", fid.get("value"), reference)
    add("kid", f"KID ({fid.get('features')} features)", fid.get("kid"), reference)
    classes = report.get("classes") or {}
    add("accuracy_erased", "classifier accuracy on erased classes", classes.get("erased"))
    add("accuracy_others", "classifier accuracy on the other classes", classes.get("others"))
    add("clip_score", "CLIP score", (report.get("clip_score") or {}).get("value"))
    add("attack_success_rate", "attack success rate", (report.get("attack") or {}).get("asr"))
    for group, summary in ((report.get("testbed") or {}).get("summary") or {}).items():
        for key, value in summary.items():
            add(f"testbed_{key}", f"testbed {key} ({group} prompts)", value)
    return results


def release_card(card_text: str, repo_id: str, report: dict[str, Any] | None, problems: list[str]) -> str:
    """The export's card with the audit's figures in its metadata and an audit section in its body."""
    from huggingface_hub import ModelCard

    card = ModelCard(card_text)
    if report is not None:
        card.data.model_name = repo_id
        card.data.eval_results = eval_results(report) or None
    heading = "## Evaluation"
    before, found, after = card.text.partition(heading)
    rest = after.split("\n## ", 1)[1] if "\n## " in after else ""
    lines = [heading, ""]
    if report is None:
        lines += ["Published without an audit (`scissorhands push` without `--audit`).", ""]
    else:
        from eval.report import report_markdown

        lines += ["Audited with `scissorhands audit` before release; the full report is in "
                  f"[{AUDIT_FOLDER}/report.md]({AUDIT_FOLDER}/report.md).", ""]
        lines += [f"**Published with --force despite:** {p}" for p in problems] + ([""] if problems else [])
        # the report's headings move two levels down, so that none of them ends this section
        lines += [f"##{line}" if line.startswith("#") else line for line in report_markdown(report).splitlines()]
        lines += [""]
    card.text = (before if found else card.text + "\n\n") + "\n".join(lines) + (f"\n## {rest}" if rest else "")
    return str(card)


def push_to_hub(folder: Path, repo_id: str, token: str | None = None, private: bool = False,
                revision: str | None = None, commit_message: str = "Upload model erased with scissorhands",
                api: Any | None = None) -> str:
    """Create (or reuse) ``repo_id`` and upload ``folder`` without `RELEASE_IGNORE`. Returns the URL."""
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    api.create_repo(repo_id, exist_ok=True, private=private)
    if revision is not None:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), ignore_patterns=RELEASE_IGNORE,
                             commit_message=commit_message, revision=revision)
    logger.info("pushed %s to the Hub as %s", folder, repo_id)
    return str(getattr(info, "commit_url", info))


@dataclass
class PushConfig:
    """Options of `scissorhands push`."""

    folder: str = ""  # the export of `scissorhands erase` (positional)
    repo_id: str = ""  # the Hub repo, e.g. your-name/sd-v1-4-erased-nudity
    audit: str | None = None  # report.json (or --out folder) of `scissorhands audit --model FOLDER`
    force: bool = False  # publish even when the audit is of other weights or its gate failed
    private: bool = False  # create the repo private
    revision: str | None = None  # the branch to push to (created if missing); None: main
    token: str | None = None  # default: the token of `huggingface-cli login`; never written anywhere
    commit_message: str = "Upload model erased with scissorhands"
    dry_run: bool = False  # write the card and the audit files into the folder, list what would upload

    def __post_init__(self) -> None:
        if not self.folder:
            raise ValueError("give the export folder: scissorhands push FOLDER --repo_id ID")
        parts = self.repo_id.split("/")
        if len(parts) != 2 or not all(parts) or any(c.isspace() for c in self.repo_id):
            raise ValueError(f"repo_id={self.repo_id!r} must be a Hub id 'owner/name'")


def push(config: PushConfig, api: Any | None = None) -> dict[str, Any]:
    """Check the export (and its audit), write the release card, upload. Returns what was done.

    Raises:
        ValueError / FileNotFoundError: bad input, or an audit that does not clear the folder
            (without ``force``); nothing is written or uploaded then.
    """
    folder = Path(config.folder)
    kind = check_export(folder)
    fingerprint = folder_fingerprint(folder)
    report, problems, report_path = None, [], None
    if config.audit is not None:
        report_path, report = read_audit(config.audit)
        problems = audit_problems(report, fingerprint, folder)
        if problems and not config.force:
            raise ValueError(f"audit={str(report_path)!r} does not clear {folder} for release: "
                             f"{'; '.join(problems)} (--force publishes anyway, and says so in the card)")
    card_path = folder / CARD
    card_text = card_path.read_text(encoding="utf-8") if card_path.is_file() else "---\nlibrary_name: diffusers\n---\n"
    write_text_atomic(card_path, release_card(card_text, config.repo_id, report, problems))
    if report_path is not None:
        (folder / AUDIT_FOLDER).mkdir(exist_ok=True)
        for name in ("report.json", "report.md", "counts.png"):
            if (report_path.parent / name).is_file():
                shutil.copyfile(report_path.parent / name, folder / AUDIT_FOLDER / name)
    result = {"folder": str(folder), "export": kind, "repo_id": config.repo_id, "fingerprint": fingerprint,
              "audit": str(report_path) if report_path else None, "forced_over": problems,
              "files": release_files(folder), "url": None}
    if config.dry_run:
        logger.info("dry run: %d files would be uploaded to %s:\n  %s", len(result["files"]), config.repo_id,
                    "\n  ".join(result["files"]))
        return result
    result["url"] = push_to_hub(folder, config.repo_id, config.token, config.private, config.revision,
                                config.commit_message, api)
    return result


def main(argv: Sequence[str] | None = None, api: Any | None = None) -> dict[str, Any]:
    """``scissorhands push FOLDER --repo_id ID [--audit report.json] [--force] [--private] [--dry_run]``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="the export of `scissorhands erase`")
    (config,) = jobconfig.parse((PushConfig,), argv, parser=parser)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return push(config, api)


if __name__ == "__main__":
    jobconfig.run_cli(main)
