"""An erasure as a LoRA adapter in diffusers' format, extracted from the full weight change.

    from pipelines.lora import save_lora
    save_lora(erased_pipe, base_pipe.unet, "erased-lora", rank=16)
    base_pipe.load_lora_weights("erased-lora")       # the untouched base, now erased
    base_pipe.unload_lora_weights()                  # and back

Each linear and convolution weight that changed gets the best rank-r factors of its change
(`erasure.lowrank.low_rank_factors`, truncated SVD): ``lora_B @ lora_A``, with
``lora_alpha = r`` so diffusers applies it at scale 1. It works for any method, trimming
included, but a LoRA carries weight matrices only: changes of biases and norm layers (a
full-UNet repair changes both; trimming re-initialises biases) are dropped, and
`lora_from_delta` reports how much of the change that was, with the share of each matrix's
change the rank keeps. Written with diffusers' own ``save_lora_weights``
(``pytorch_lora_weights.safetensors`` plus the PEFT adapter metadata) so that
``pipe.load_lora_weights`` reads it; loading needs ``peft``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from erasure.lowrank import low_rank_factors

logger = logging.getLogger(__name__)

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
LORA_INFO = "lora_export.json"


def _unet(model: Any) -> nn.Module:
    return getattr(model, "unet", model)


def base_digest(unet: nn.Module) -> str:
    """sha256 of a UNet's own weights (names and bytes), PEFT adapter layers left out: what an
    adapter was made against, checked when it is loaded (`load_lora`)."""
    import hashlib

    digest = hashlib.sha256()
    for name, param in _unet(unet).named_parameters():
        if "lora_" in name:
            continue
        digest.update(name.replace(".base_layer", "").encode())
        digest.update(param.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load_lora(pipe: Any, path: str | Path, force: bool = False) -> Any:
    """``pipe.load_lora_weights(path)`` after checking that the adapter was made against this
    pipeline's UNet (the digest `save_lora` records in `LORA_INFO`).

    Raises:
        FileNotFoundError: no adapter in ``path``.
        ValueError: an adapter of another base (unless ``force``), naming both digests.
    """
    path = Path(path)
    if not (path / LORA_WEIGHTS).is_file():
        raise FileNotFoundError(f"{path}: no {LORA_WEIGHTS} (not a LoRA folder of scissorhands erase --export lora)")
    info = json.loads((path / LORA_INFO).read_text(encoding="utf-8")) if (path / LORA_INFO).is_file() else {}
    recorded = info.get("base_unet_sha256")
    if recorded is not None and not force:
        actual = base_digest(pipe.unet)
        if actual != recorded:
            raise ValueError(f"{path}: this LoRA was made against another base UNet (sha256 {recorded[:12]}…), this "
                             f"pipeline's is {actual[:12]}…; load it onto the model it was erased from "
                             "(force=True loads it anyway)")
    pipe.load_lora_weights(path)
    return pipe


def lora_from_delta(erased: Any, base: Any, rank: int) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """``(state_dict, adapter metadata, report)`` of the rank-``rank`` adapter taking ``base`` to ``erased``.

    Args:
        erased / base: UNets (or pipelines) of the same architecture.

    Returns:
        PEFT-named tensors (``<module>.lora_A.weight`` / ``.lora_B.weight``), the
        ``LoraConfig`` fields diffusers stores beside them, and a report: layers, the share of
        the matrices' change the rank keeps (``captured``, by squared norm), and the share of the
        whole change that no LoRA can carry (``dropped``: biases, norms, embeddings).

    Raises:
        ValueError: rank < 1, different architectures, or no weight matrix changed.
    """
    erased_unet, base_unet = _unet(erased), _unet(base)
    base_params = dict(base_unet.named_parameters())
    erased_params = dict(erased_unet.named_parameters())
    if base_params.keys() != erased_params.keys():
        raise ValueError("the erased UNet and the base UNet have different parameters: not the same architecture")
    state, ranks, kept, total_matrix = {}, {}, 0.0, 0.0
    carried: set[str] = set()
    for name, module in erased_unet.named_modules():
        if not isinstance(module, (nn.Linear, nn.Conv2d)) or getattr(module, "groups", 1) != 1:
            continue
        delta = (module.weight.detach().float() - base_params[f"{name}.weight"].detach().float().to(module.weight.device))
        carried.add(f"{name}.weight")
        energy = float((delta ** 2).sum())
        if energy == 0.0:
            continue
        lora_b, lora_a, captured = low_rank_factors(delta.cpu(), rank)
        if isinstance(module, nn.Conv2d):
            lora_b = lora_b[:, :, None, None]  # a 1x1 convolution after the kernel-sized lora_A
        state[f"{name}.lora_A.weight"] = lora_a.contiguous()
        state[f"{name}.lora_B.weight"] = lora_b.contiguous()
        ranks[name] = lora_a.shape[0]
        kept, total_matrix = kept + captured * energy, total_matrix + energy
    if not state:
        raise ValueError("no linear or convolution weight differs from the base: nothing to export as a LoRA")
    dropped = sum(float(((p.detach().float() - base_params[n].detach().float().to(p.device)) ** 2).sum())
                  for n, p in erased_params.items() if n not in carried)
    metadata = {"r": rank, "lora_alpha": rank, "target_modules": sorted(ranks), "init_lora_weights": True,
                "rank_pattern": {n: r for n, r in ranks.items() if r != rank},
                "alpha_pattern": {n: r for n, r in ranks.items() if r != rank}}
    report = {"rank": rank, "layers": len(ranks), "captured": kept / total_matrix,
              "dropped": dropped / (dropped + total_matrix), "parameters": sum(t.numel() for t in state.values())}
    return state, metadata, report


def save_trained_lora(unet: nn.Module, path: str | Path) -> dict[str, Any]:
    """Write the PEFT adapter a UNet was trained with (``--trainable lora``) as a diffusers LoRA folder."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(path, unet_lora_layers=state, safe_serialization=True)
    adapter = unet.peft_config["default"]
    base_bytes = sum(p.numel() * p.element_size() for n, p in unet.named_parameters() if "lora_" not in n)
    report = {"trained": True, "base_unet_sha256": base_digest(unet),
              "rank": adapter.r, "layers": sum(1 for k in state if k.endswith(("lora_A.weight", "lora.down.weight"))),
              "captured": 1.0, "dropped": 0.0, "parameters": sum(t.numel() for t in state.values()),
              "file_bytes": (path / LORA_WEIGHTS).stat().st_size, "unet_bytes": base_bytes}
    report["size_ratio"] = report["file_bytes"] / base_bytes
    (path / LORA_INFO).write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report


def save_lora(erased: Any, base: Any, path: str | Path, rank: int = 16) -> dict[str, Any]:
    """Write ``erased``'s change from ``base`` as a diffusers LoRA folder; returns the report.

    The folder holds `LORA_WEIGHTS` (what ``pipe.load_lora_weights(path)`` reads) and
    `LORA_INFO` (the report, with the file's size against the full UNet's).
    """
    from diffusers import StableDiffusionPipeline

    state, metadata, report = lora_from_delta(erased, base, rank)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(path, unet_lora_layers=state, unet_lora_adapter_metadata=metadata,
                                              safe_serialization=True)
    unet_bytes = sum(p.numel() * p.element_size() for p in _unet(erased).parameters())
    report = {**report, "file_bytes": (path / LORA_WEIGHTS).stat().st_size, "unet_bytes": unet_bytes,
              "base_unet_sha256": base_digest(base)}
    report["size_ratio"] = report["file_bytes"] / unet_bytes
    (path / LORA_INFO).write_text(json.dumps(report, indent=2), encoding="utf-8")
    logger.info("LoRA rank %d: %d layers, %.1f%% of the matrices' change kept, %.1f%% of the change not "
                "representable (biases, norms), %.2f MB (%.2f%% of the UNet)", rank, report["layers"],
                100 * report["captured"], 100 * report["dropped"], report["file_bytes"] / 1e6,
                100 * report["size_ratio"])
    return report
