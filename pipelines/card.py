"""Model card, erase config and Hub push of an erased model."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from erasure.output import write_text_atomic

logger = logging.getLogger(__name__)

SECRET_FIELDS = ("hub_token",)
HUB_IGNORE = ["checkpoint-*", "logs/*", "*.tmp", ".export-*", ".export.json", ".lock", ".checkpoint-*"]


def public_config(config: dict[str, Any]) -> dict[str, Any]:
    """The config with secrets removed: tokens never reach cards, logs or the Hub."""
    return {k: ("***" if k in SECRET_FIELDS and v else v) for k, v in config.items()}


def _table(rows: dict[str, Any]) -> str:
    lines = ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows.items()]
    return "\n".join(lines)


def model_card(config: dict[str, Any], summary: dict[str, Any], data: dict[str, Any],
               metrics: dict[str, Any] | None = None) -> str:
    """README.md with YAML metadata for a model erased by this toolkit."""
    base, method, concept = config["pretrained_model_name_or_path"], config["method"], config.get("concept") or "custom"
    header = {"library_name": "diffusers", "base_model": base, "pipeline_tag": "text-to-image",
              "tags": ["stable-diffusion", "text-to-image", "diffusers", "concept-erasure", "machine-unlearning",
                       "scissorhands", method], "license": config.get("license") or "creativeml-openrail-m"}
    yaml_lines = ["---"] + [f"{k}: {json.dumps(v)}" for k, v in header.items()] + ["---"]
    hyper = {k: config[k] for k in ("method", "kept_fraction", "lam", "forget_loss", "learning_rate", "train_batch_size",
                                    "num_train_epochs", "trainable", "mixed_precision", "seed", "loreun") if k in config}
    trimmed = summary.get("trimmed_fraction")
    body = [
        f"# {concept} erased from {base} with {method}", "",
        f"This UNet was edited with the [scissorhands]({config.get('homepage', 'https://github.com')}) toolkit to stop "
        f"generating **{concept}**. Load it with plain diffusers:", "",
        "```python", "from diffusers import StableDiffusionPipeline",
        f"pipe = StableDiffusionPipeline.from_pretrained(\"{config.get('hub_model_id') or '<this folder>'}\")", "```", "",
        "## How it was erased", "", _table(hyper), "",
        f"Trimmed (re-initialised) fraction of the scored UNet weights: {trimmed:.4%}" if trimmed is not None
        else "No trimming step (this method does not re-initialise weights).", "",
        "## Forget and retain data", "", _table(data), "",
    ]
    if metrics:
        body += ["## Evaluation", "", "```json", json.dumps(metrics, indent=2), "```", ""]
    else:
        body += ["## Evaluation", "", "Not evaluated yet: run `accelerate launch -m eval.audit --model <this folder>` "
                 "before releasing it.", ""]
    body += ["## Limitations", "", "Erasure lowers, but does not provably remove, the ability to produce the concept; "
             "adversarial prompts can recover erased concepts in many methods. Audit before release."]
    return "\n".join(yaml_lines + [""] + body) + "\n"


def write_card(folder: Path, config: dict[str, Any], summary: dict[str, Any], data: dict[str, Any],
               metrics: dict[str, Any] | None = None) -> None:
    write_text_atomic(folder / "README.md", model_card(public_config(config), summary, data, metrics))
    write_text_atomic(folder / "erase_config.json", json.dumps(
        {"config": public_config(config), "prepare": summary, "data": data}, indent=2, default=str))


def push_to_hub(folder: Path, repo_id: str, token: str | None = None, private: bool = False) -> str:
    """Create (or reuse) ``repo_id`` and upload the export, without checkpoints. Returns the URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, exist_ok=True, private=private)
    info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), ignore_patterns=HUB_IGNORE,
                             commit_message="Upload model erased with scissorhands")
    logger.info("pushed %s to the Hub as %s", folder, repo_id)
    return str(getattr(info, "commit_url", info))
