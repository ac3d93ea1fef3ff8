"""FID and class accuracy over image folders, the optional metrics of `eval.audit`.

FID uses `eval.fid.FrechetDistance` with Inception-v3 features (needs torch-fidelity) or the
penultimate features of the offline digits judge (`eval.digits_classifier`). Class accuracy
groups a folder's images by the class label `eval.sample` records for class prompt sets
(`metadata.jsonl` rows: `extra.label`, class name in `categories`) and runs `eval.classes`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from pipelines.images import open_rgb

from .classes import Classifier, class_accuracy

FID_FEATURES = ("inception", "digits")
CLASSIFIERS = ("digits", "imagenette")


def load_image_tensor(path: str | Path) -> Tensor:
    """An image file as uint8 [3, H, W] RGB.

    Raises:
        FileNotFoundError / ValueError: a missing, unreadable or decompression-bomb file, naming it.
    """
    return torch.from_numpy(np.array(open_rgb(path))).permute(2, 0, 1).contiguous()


def image_batches(paths: Sequence[str | Path], batch_size: int = 32, desc: str = "") -> Iterator[Tensor]:
    """uint8 [N, 3, H, W] batches of consecutive same-size images (a size change starts a new batch)."""
    batch: list[Tensor] = []
    for path in tqdm(paths, desc=desc or "loading images", unit="img", leave=False):
        image = load_image_tensor(path)
        if batch and (len(batch) == batch_size or image.shape != batch[0].shape):
            yield torch.stack(batch)
            batch = []
        batch.append(image)
    if batch:
        yield torch.stack(batch)


class JudgeFeatures(nn.Module):
    """The digits judge's penultimate features as an FID extractor (float [0, 1] images in)."""

    name = "digits-judge"

    def __init__(self, judge: nn.Module) -> None:
        super().__init__()
        self.judge = judge.eval()
        self.num_features = judge.config.channels[-1]

    def forward(self, images: Tensor) -> Tensor:
        return self.judge.features(images)


def fid_extractor(features: str, judge: str | None) -> nn.Module | None:
    """The FID feature module: None (Inception, checked to be installed) or the judge's features.

    Raises:
        ValueError: unknown `features`, Inception without torch-fidelity, or digits without a judge.
        FileNotFoundError: a judge folder without its files.
    """
    if features not in FID_FEATURES:
        raise ValueError(f"fid_features={features!r} is not known; choose one of {FID_FEATURES}")
    if features == "inception":
        if importlib.util.find_spec("torch_fidelity") is None:
            raise ValueError("fid_features='inception' needs torch-fidelity (pip install scissorhands[fid-inception]); "
                             "without it use --fid_features digits --judge <digits judge folder>")
        return None
    if not judge:
        raise ValueError("fid_features='digits' needs --judge <folder of build_digits_judge>")
    from .digits_classifier import load_digits_judge

    return JudgeFeatures(load_digits_judge(judge))


def folder_fid(extractor: nn.Module | None, reference: str, reference_paths: Sequence[str],
               generated: Mapping[str, Sequence[str]], cache_dir: str | None = None) -> dict[str, Any]:
    """FID of each generated set (role -> image paths) against one reference image set.

    Returns:
        {"features", "reference", "reference_sha256", "num_reference", "value", "num_images"}, plus
        "baseline_value" / "baseline_num_images" when `generated` has a "baseline".

    Raises:
        ValueError: fewer than 2 images on either side.
    """
    from .fid import FrechetDistance, reference_set_hash

    for role, paths in {"fid_reference": reference_paths, **generated}.items():
        if len(paths) < 2:
            raise ValueError(f"FID needs at least 2 images per set; {role} has {len(paths)}")
    metric = FrechetDistance(extractor)
    reference_id = reference_set_hash(reference_paths)
    stats = metric.prepare_reference(reference_id, image_batches(reference_paths, desc="FID reference"), cache_dir)
    result: dict[str, Any] = {"features": metric.extractor_name, "reference": reference,
                              "reference_sha256": reference_id, "num_reference": stats.num_samples}
    for role, paths in generated.items():
        metric.reset()  # keeps the reference statistics (set_reference_stats pins them)
        for batch in image_batches(paths, desc=f"FID {role}"):
            metric.update(batch, real=False)
        prefix = "" if role == "model" else f"{role}_"
        result.update({f"{prefix}value": float(metric.compute()), f"{prefix}num_images": len(paths)})
    return result


def load_classifier(name: str, judge: str | None, classifier_model: str) -> Classifier:
    """The digits judge (`judge` folder) or an `ImagenetteClassifier` (`classifier_model`).

    Raises:
        ValueError: unknown name, digits without a judge, or a model that cannot be loaded.
    """
    if name not in CLASSIFIERS:
        raise ValueError(f"classifier={name!r} is not known; choose one of {CLASSIFIERS}")
    if name == "digits":
        if not judge:
            raise ValueError("classifier='digits' needs --judge <folder of build_digits_judge>")
        from .digits_classifier import load_digits_judge

        return load_digits_judge(judge)
    from .classes import ImagenetteClassifier

    try:
        return ImagenetteClassifier(classifier_model)
    except OSError as err:
        raise ValueError(f"classifier_model={classifier_model!r} could not be loaded: {err}") from err


def class_images(rows: Sequence[Mapping[str, Any]]) -> tuple[dict[int, Tensor], dict[int, str]]:
    """Images float [N, 3, H, W] in [0, 1] per class label, and each label's class name.

    Raises:
        ValueError: a row without a class label (naming its file).
    """
    images: dict[int, list[Tensor]] = {}
    names: dict[int, str] = {}
    for row in rows:
        label = (row.get("extra") or {}).get("label")
        if label is None:
            raise ValueError(f"classes: {row['file_name']} has no class label (metadata extra.label); audit a class "
                             "prompt set (digits, imagenette) sampled with eval.sample")
        images.setdefault(int(label), []).append(load_image_tensor(row["path"]).float() / 255.0)
        names[int(label)] = (row.get("categories") or [str(label)])[0]
    return {label: torch.stack(images[label]) for label in sorted(images)}, names


def erased_labels(erased_classes: Sequence[str], names: Mapping[int, str]) -> list[int]:
    """Class names (or label numbers) -> labels.

    Raises:
        ValueError: a class the folder does not have (listing those it has).
    """
    by_name = {name.lower(): label for label, name in names.items()}
    labels = []
    for wanted in erased_classes:
        label = int(wanted) if wanted.isdigit() and int(wanted) in names else by_name.get(wanted.lower())
        if label is None:
            raise ValueError(f"erased_classes: {wanted!r} is not a class of the audited images; "
                             f"classes: {sorted(names.values())}")
        labels.append(label)
    return labels


@torch.no_grad()
def folder_class_accuracy(rows: Sequence[Mapping[str, Any]], classifier: Classifier,
                          erased_classes: Sequence[str]) -> dict[str, Any]:
    """Per-class accuracy (by class name), the erased classes' mean and the others' mean."""
    images, names = class_images(rows)
    result = class_accuracy(images, classifier, erased_labels(erased_classes, names))
    result["per_class"] = {names[label]: accuracy for label, accuracy in result["per_class"].items()}
    return result
