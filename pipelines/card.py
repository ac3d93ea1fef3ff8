"""Model card and erase config of an erased model.

The card's metadata goes through ``huggingface_hub.ModelCardData`` (validated keys, the Hub's
``model-index`` layout for evaluation results); its license is the base model's, and its
``base_model`` the base's Hub id when it has one. ``pipelines.push`` adds an audit's figures.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from erasure.output import write_text_atomic

logger = logging.getLogger(__name__)

SECRET_FIELDS = ("hub_token",)
# Licenses of the common bases, used when the base's own card is not at hand (offline, not cached).
KNOWN_LICENSES = {
    "CompVis/stable-diffusion-v1-1": "creativeml-openrail-m", "CompVis/stable-diffusion-v1-2": "creativeml-openrail-m",
    "CompVis/stable-diffusion-v1-3": "creativeml-openrail-m", "CompVis/stable-diffusion-v1-4": "creativeml-openrail-m",
    "runwayml/stable-diffusion-v1-5": "creativeml-openrail-m",
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "creativeml-openrail-m",
    "stabilityai/stable-diffusion-2": "openrail++", "stabilityai/stable-diffusion-2-base": "openrail++",
    "stabilityai/stable-diffusion-2-1": "openrail++", "stabilityai/stable-diffusion-2-1-base": "openrail++",
    "stabilityai/stable-diffusion-xl-base-1.0": "openrail++",
}
UNKNOWN_LICENSE = "other"


def public_config(config: dict[str, Any]) -> dict[str, Any]:
    """The config with secrets removed: tokens never reach cards, logs or the Hub."""
    return {k: ("***" if k in SECRET_FIELDS and v else v) for k, v in config.items()}


def _card_metadata(path: Path) -> dict[str, Any]:
    """The YAML metadata of a README.md model card ({} when there is none or it is unreadable)."""
    from huggingface_hub import ModelCard

    try:
        return ModelCard.load(path).data.to_dict()
    except (OSError, ValueError) as err:
        logger.warning("cannot read the model card %s (%s)", path, err)
        return {}


def _base_card(base: str) -> dict[str, Any]:
    """The base model's card metadata: a local folder's README.md, or the Hub card if cached."""
    path = Path(base)
    if path.is_dir():
        return _card_metadata(path / "README.md") if (path / "README.md").is_file() else {}
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(base, "README.md")
    return _card_metadata(Path(cached)) if isinstance(cached, str) else {}


def base_lineage(base: str) -> tuple[str, str | None]:
    """(license, base_model Hub id or None) of a base model: from its card, else the known bases.

    A local folder is no Hub id: its card's own ``base_model`` is used when it has one.
    """
    card = _base_card(base)
    hub_id = base if not Path(base).exists() else card.get("base_model")
    if isinstance(hub_id, list):
        hub_id = hub_id[0] if hub_id else None
    license_ = card.get("license") or KNOWN_LICENSES.get(base) or KNOWN_LICENSES.get(hub_id or "")
    return license_ or UNKNOWN_LICENSE, hub_id


def _table(rows: dict[str, Any]) -> str:
    lines = ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows.items()]
    return "\n".join(lines)


def loading_snippet(config: dict[str, Any], base_id: str | None, pipeline: str = "StableDiffusionPipeline") -> list[str]:
    """Python that loads this export as written: the whole pipeline, or the base with this UNet
    (``pipeline``: the class, ``StableDiffusionXLPipeline`` for SDXL)."""
    repo = config.get("hub_model_id") or "path/to/this/folder"
    if config.get("export") == "lora":
        base = base_id or config["pretrained_model_name_or_path"]
        return ["```python", f"from diffusers import {pipeline}", "",
                f"pipe = {pipeline}.from_pretrained(\"{base}\")",
                f"pipe.load_lora_weights(\"{repo}\")   # the erasure; pipe.unload_lora_weights() removes it", "```"]
    if config.get("export") == "unet":
        base = base_id or config["pretrained_model_name_or_path"]
        return ["```python", f"from diffusers import {pipeline}, UNet2DConditionModel", "",
                f"unet = UNet2DConditionModel.from_pretrained(\"{repo}\", subfolder=\"unet\")",
                f"pipe = {pipeline}.from_pretrained(\"{base}\", unet=unet)", "```"]
    return ["```python", f"from diffusers import {pipeline}", "",
            f"pipe = {pipeline}.from_pretrained(\"{repo}\")", "```"]


def model_card(config: dict[str, Any], summary: dict[str, Any], data: dict[str, Any],
               pipeline: str = "StableDiffusionPipeline") -> str:
    """README.md with validated YAML metadata for a model erased by this toolkit (``pipeline``:
    the diffusers class that loads it)."""
    from huggingface_hub import ModelCardData

    base, method, concept = config["pretrained_model_name_or_path"], config["method"], config.get("concept") or "custom"
    license_, base_id = base_lineage(base)
    metadata = ModelCardData(
        library_name="diffusers", base_model=base_id, pipeline_tag="text-to-image", license=license_,
        tags=["stable-diffusion", *(["stable-diffusion-xl"] if "XL" in pipeline else []), "text-to-image", "diffusers", "concept-erasure", "machine-unlearning",
              "scissorhands", method, *(["lora"] if config.get("export") == "lora" else [])])
    hyper = {k: config[k] for k in ("method", "kept_fraction", "lam", "forget_loss", "projection", "retain_loss", "learning_rate",
                                    "train_batch_size", "num_train_epochs", "trainable", "mixed_precision", "seed",
                                    "loreun") if k in config}
    # what the forget prompts were taught to draw instead, when the user named it
    hyper.update({k: config[k] for k in ("substitute_prompt", "substitute_word") if config.get(k) is not None})
    if config.get("substitute_rewrite"):  # each forget prompt with its concept word replaced
        hyper["substitute_rewrite"] = True
    choice = summary.get("substitute_choice")
    if choice:  # or the one the job chose (EraseConfig.substitute_ties)
        hyper["substitute_word"] = f"{choice['word']} (chosen: {choice['rule']} prediction)"
    trimmed = summary.get("trimmed_fraction")
    lora = summary.get("lora")
    if lora and lora.get("trained"):
        lora_note = [f"A rank-{lora['rank']} LoRA trained on the attention projections of {lora['layers']} layers "
                     "(the base weights were frozen).", ""]
    elif lora:
        lora_note = [f"A rank-{lora['rank']} LoRA extracted from the full weight change: it keeps "
                     f"{lora['captured']:.1%} of the change of the {lora['layers']} weight matrices; "
                     f"{lora['dropped']:.1%} of the whole change (biases, norms) is not in it.", ""]
    else:
        lora_note = []
    license_note = ([f"License: unknown for the base `{base}`; set `license:` above to the base model's before "
                     "publishing.", ""] if license_ == UNKNOWN_LICENSE else [])
    evaluate = (f"scissorhands audit --model {config.get('output_dir') or '<this folder>'} --prompts i2p "
                "--categories sexual --out audit")
    body = [
        f"# {concept} erased from {base} with {method}", "",
        f"This UNet was edited with the scissorhands concept-erasure toolkit to stop generating **{concept}**. "
        "Load it with plain diffusers:", "", *loading_snippet(config, base_id, pipeline), "", *lora_note, *license_note,
        "## How it was erased", "", _table(hyper), "",
        f"Trimmed (re-initialised) fraction of the scored UNet weights: {trimmed:.4%}" if trimmed is not None
        else "No trimming step (this method does not re-initialise weights).", "",
        "## Forget and retain data", "", _table(data), "",
        "## Evaluation", "", "Not audited yet. Audit the folder, then publish it with its figures:", "",
        "```bash", evaluate, f"scissorhands push {config.get('output_dir') or '<this folder>'} --repo_id "
        f"{config.get('hub_model_id') or 'your-name/model'} --audit audit/report.json", "```", "",
        "## Limitations", "", "Erasure lowers, but does not provably remove, the ability to produce the concept; "
        "adversarial prompts can recover erased concepts in many methods. Audit before release.",
    ]
    return f"---\n{metadata.to_yaml()}\n---\n\n" + "\n".join(body) + "\n"


def write_card(folder: Path, config: dict[str, Any], summary: dict[str, Any], data: dict[str, Any],
               pipeline: str = "StableDiffusionPipeline") -> None:
    write_text_atomic(folder / "README.md", model_card(public_config(config), summary, data, pipeline))
    write_text_atomic(folder / "erase_config.json", json.dumps(
        {"config": public_config(config), "prepare": summary, "data": data}, indent=2, default=str))
