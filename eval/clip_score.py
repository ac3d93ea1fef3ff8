"""CLIP score of generations against their own prompts (torchmetrics ``CLIPScore``), an audit metric.

The field reports it beside FID on benign prompts (COCO captions: ``--prompts coco10k:1000``):
an erasure that keeps FID but draws off-prompt images loses CLIP score. Score = 100 x the
cosine similarity of CLIP's image and text embeddings, floored at 0 (torchmetrics), averaged
over images. The CLIP model is pluggable: a Hub id (``openai/clip-vit-large-patch14``, as in
the papers) or any local folder that ``transformers.CLIPModel`` / ``CLIPProcessor`` load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import torch

DEFAULT_CLIP = "openai/clip-vit-large-patch14"


def clip_loader(name_or_path: str) -> Callable[[], tuple[Any, Any]]:
    """A ``() -> (CLIPModel, CLIPProcessor)`` loader for torchmetrics' ``CLIPScore``.

    Raises (when called):
        ValueError: the model cannot be loaded (offline without a local copy, no such folder).
    """

    def load() -> tuple[Any, Any]:
        from transformers import CLIPModel, CLIPProcessor

        try:
            model = CLIPModel.from_pretrained(name_or_path)
            processor = CLIPProcessor.from_pretrained(name_or_path)
        except (OSError, ValueError) as err:
            where = "folder" if Path(name_or_path).exists() else "Hub id (offline? give a local folder)"
            raise ValueError(f"clip_model={name_or_path!r}: cannot load a CLIP model from this {where}: "
                             f"{' '.join(str(err).split())[:200]}") from None
        return ProjectedFeatures(model.eval()), processor

    return load


class ProjectedFeatures(torch.nn.Module):
    """A ``CLIPModel`` whose ``get_image_features`` / ``get_text_features`` return the projected
    embeddings as tensors, as torchmetrics 1.9 reads them: transformers 5 returns an output
    object with the embeddings in ``pooler_output``."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model, self.config = model, model.config

    @staticmethod
    def _tensor(output: Any) -> torch.Tensor:
        return output if isinstance(output, torch.Tensor) else output.pooler_output

    def get_image_features(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self._tensor(self.model.get_image_features(*args, **kwargs))

    def get_text_features(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self._tensor(self.model.get_text_features(*args, **kwargs))


def load_clip_score(name_or_path: str = DEFAULT_CLIP) -> Any:
    """torchmetrics ``CLIPScore`` over the CLIP model at ``name_or_path`` (loaded now)."""
    from torchmetrics.multimodal.clip_score import CLIPScore

    return CLIPScore(model_name_or_path=clip_loader(name_or_path))


def check_prompted(rows: Sequence[dict[str, Any]]) -> None:
    """Raise a ValueError naming a file when an image folder row has no prompt to score against."""
    unprompted = [row["file_name"] for row in rows if not row.get("prompt")]
    if unprompted:
        raise ValueError(f"the 'clip' metric needs each image's prompt (metadata.jsonl from eval.sample); "
                         f"{len(unprompted)} images have none, e.g. {unprompted[0]!r}")


def folder_clip_score(metric: Any, rows: Sequence[dict[str, Any]], batch_size: int = 16,
                      desc: str = "CLIP score") -> dict[str, Any]:
    """Mean CLIP score of an image folder's images (``read_image_folder`` rows) against their prompts.

    Raises:
        ValueError: a row without its prompt (plain image folders have none), naming the file.
    """
    from tqdm.auto import tqdm

    from .audit_metrics import load_image_tensor

    check_prompted(rows)
    metric.reset()
    with torch.no_grad():
        for start in tqdm(range(0, len(rows), batch_size), desc=desc, unit="batch", leave=False):
            batch = rows[start:start + batch_size]
            metric.update([load_image_tensor(row["path"]) for row in batch], [row["prompt"] for row in batch])
    return {"value": float(metric.compute()), "num_images": len(rows)}
