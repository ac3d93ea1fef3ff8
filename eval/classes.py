"""Class-erasure accuracy (paper 004 Table 2 layout): classify generations of each class prompt.

UA is the accuracy on the erased class (lower is better), the others' mean accuracy measures
what was kept. Any classifier with ``predict(images [N,3,H,W] in [0,1]) -> labels`` works: the
offline digits judge, or :class:`ImagenetteClassifier` (an ImageNet model from transformers,
ImageNet labels mapped to the ten Imagenette classes).
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

import torch
from torch import Tensor

from prompts.base import Prompt, PromptSet

# ImageNet-1k indices of the ten Imagenette classes, in Imagenette order
IMAGENETTE_IMAGENET_IDS = (0, 217, 482, 491, 497, 566, 569, 571, 574, 701)


class Classifier(Protocol):
    def predict(self, images: Tensor) -> Tensor: ...


def generate_class_images(pipe: Any, prompts: PromptSet, per_class: int, seed: int, steps: int,
                          guidance_scale: float, batch_size: int = 16) -> dict[int, Tensor]:
    """``per_class`` images [N,3,H,W] in [0,1] per prompt, seeds ``seed + k`` (same for every class)."""
    from pipelines.sampling import SampleItem, generate

    items = [SampleItem(index=c * per_class + k, prompt=Prompt(p.text), seed=seed + k, guidance_scale=guidance_scale)
             for c, p in enumerate(prompts) for k in range(per_class)]
    images: dict[int, list[Tensor]] = {c: [] for c in range(len(prompts))}
    for item, image, _ in generate(pipe, items, batch_size, steps, output_type="pt"):
        images[item.index // per_class].append(image.float().cpu())
    return {c: torch.stack(v) for c, v in images.items()}


def class_accuracy(images: dict[int, Tensor], classifier: Classifier, erased: Sequence[int]) -> dict[str, Any]:
    """Per-class accuracy, the erased classes' mean (``erased``) and the others' mean (``others``)."""
    per_class = {c: float((classifier.predict(x) == c).float().mean()) for c, x in images.items()}
    kept = [a for c, a in per_class.items() if c not in erased]
    gone = [a for c, a in per_class.items() if c in erased]
    return {"erased": sum(gone) / len(gone) if gone else None, "others": sum(kept) / len(kept) if kept else None,
            "per_class": per_class}


class ImagenetteClassifier:
    """An ImageNet classifier from transformers restricted to the ten Imagenette classes.

    Args:
        model_id: e.g. ``microsoft/resnet-50`` (a hub id or a local folder; needs transformers).
    """

    def __init__(self, model_id: str = "microsoft/resnet-50", device: str | torch.device = "cpu") -> None:
        try:
            from transformers import AutoImageProcessor, AutoModelForImageClassification
        except ImportError as err:
            raise ImportError("ImagenetteClassifier needs transformers: pip install scissorhands[diffusion]") from err
        self.processor = AutoImageProcessor.from_pretrained(model_id)
        self.model = AutoModelForImageClassification.from_pretrained(model_id).to(device).eval()
        self.device = device

    @torch.no_grad()
    def predict_imagenet(self, images: Tensor) -> Tensor:
        """The 1000-way ImageNet class of each image (the attack's success criterion: the public
        UnlearnDiffAtk code asks for the class's own ImageNet label, not the best of ten)."""
        inputs = self.processor(images=list(images.clamp(0, 1)), return_tensors="pt", do_rescale=False).to(self.device)
        return self.model(**inputs).logits.argmax(dim=1).cpu()

    @torch.no_grad()
    def predict(self, images: Tensor) -> Tensor:
        inputs = self.processor(images=list(images.clamp(0, 1)), return_tensors="pt", do_rescale=False).to(self.device)
        logits = self.model(**inputs).logits[:, list(IMAGENETTE_IMAGENET_IDS)]
        return logits.argmax(dim=1).cpu()
