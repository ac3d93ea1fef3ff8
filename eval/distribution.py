"""Distribution-level utility of generations: what a collapsed model cannot pass.

Class accuracy rewards a model that draws one perfect image per prompt. These figures do not:

- ``feature_diversity``: per prompt, the mean pairwise distance between the features of its
  generations on different seeds (0 when every seed gives the same image), averaged over prompts;
- ``feature_distances``: FID and KID between two image sets over a pluggable feature extractor
  (``eval.fid``'s wrappers of torchmetrics), e.g. generations against real digits, or an erased
  model's generations against the base model's on the same prompts and seeds;
- ``alignment``: the judge's mean probability of the prompted class (a soft accuracy that also
  drops when a model hedges between classes).

On the offline testbed the features are the digits judge's penultimate layer (``JudgeFeatures``:
it sees shape and colour); on SD they are Inception's pool3 features.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["alignment", "distances_of_features", "feature_distances", "feature_diversity", "reference_renders"]


def feature_diversity(features: Tensor, prompt_ids: Tensor, p: float = 2.0) -> float:
    """Mean over prompts of the mean pairwise distance (Minkowski ``p``; Euclidean by default)
    between same-prompt features.

    Args:
        features: ``[N, D]``, one row per generation.
        prompt_ids: ``[N]``; rows with the same id are generations of one prompt (different seeds).

    Raises:
        ValueError: mismatched lengths, or no prompt with at least two generations.
    """
    if features.ndim != 2 or prompt_ids.shape != (features.shape[0],):
        raise ValueError(f"features must be [N, D] and prompt_ids [N], got {tuple(features.shape)} and "
                         f"{tuple(prompt_ids.shape)}")
    per_prompt = []
    for prompt in prompt_ids.unique():
        group = features[prompt_ids == prompt].double()
        n = len(group)
        if n >= 2:
            per_prompt.append(torch.cdist(group, group, p=p).sum() / (n * (n - 1)))
    if not per_prompt:
        raise ValueError("feature_diversity needs a prompt with at least two generations")
    return float(torch.stack(per_prompt).mean())


def feature_distances(feature: nn.Module, generated: Tensor, reference: Tensor, batch_size: int = 256,
                      kid_subsets: int = 50, kid_subset_size: int = 100, kid_seed: int | None = 0) -> dict[str, float]:
    """FID and KID (x1000 is *not* applied: raw MMD^2) of ``generated`` against ``reference``.

    Args:
        feature: extractor with a ``num_features`` attribute, float [0, 1] images in.
        generated, reference: ``[N, 3, H, W]`` float in [0, 1] (or uint8).
        kid_subset_size: capped at the smaller set's size.
        kid_seed: the KID subsets' seed (see ``distances_of_features``).

    Returns:
        ``{"fid": ..., "kid": ..., "kid_std": ...}``.
    """
    from .fid import _canonical_images

    if len(generated) < 2 or len(reference) < 2:
        raise ValueError(f"FID needs at least 2 images per side, got {len(generated)} generated, {len(reference)} reference")
    with torch.no_grad():
        extract = lambda images: torch.cat([feature(_canonical_images(chunk, to_uint8=False)).float().cpu()
                                            for chunk in images.split(batch_size)])
        return distances_of_features(extract(generated), extract(reference), kid_subsets, kid_subset_size, kid_seed)


def distances_of_features(generated: Tensor, reference: Tensor, kid_subsets: int = 50,
                          kid_subset_size: int = 100, kid_seed: int | None = 0) -> dict[str, float]:
    """``feature_distances`` on features already extracted (``[N, D]`` each side), so that a caller
    holding the features of one image set compares it with several references without extracting
    them again. The arithmetic is torchmetrics': FID from float64 sums (``FrechetInceptionDistance``),
    KID as the mean and std of the polynomial-kernel MMD^2 over ``kid_subsets`` random subsets drawn
    in the same order as ``KernelInceptionDistance.compute``, from a generator of their own seeded with ``kid_seed``
    (the result is torchmetrics' after ``torch.manual_seed(kid_seed)``): the same features give the same KID
    whatever ran before in the process, and the global generator is not touched. ``kid_seed=None`` draws from
    the global generator as it stands (torchmetrics' own behaviour)."""
    from torchmetrics.image.fid import _compute_fid
    from torchmetrics.image.kid import poly_mmd

    if generated.ndim != 2 or reference.ndim != 2 or generated.shape[1] != reference.shape[1]:
        raise ValueError(f"features must be [N, D] on both sides, got {tuple(generated.shape)} and {tuple(reference.shape)}")
    if len(generated) < 2 or len(reference) < 2:
        raise ValueError(f"FID needs at least 2 images per side, got {len(generated)} generated, {len(reference)} reference")

    def gaussian(features: Tensor) -> tuple[Tensor, Tensor]:
        features = features.double()
        n = features.shape[0]
        mean = features.sum(dim=0) / n
        return mean, (features.t().mm(features) - n * torch.outer(mean, mean)) / (n - 1)

    fid = _compute_fid(*gaussian(reference), *gaussian(generated))
    subset = min(kid_subset_size, len(generated), len(reference))
    scores = []
    generator = None if kid_seed is None else torch.Generator().manual_seed(kid_seed)
    for _ in range(kid_subsets):
        real = reference[torch.randperm(len(reference), generator=generator)[:subset]]
        fake = generated[torch.randperm(len(generated), generator=generator)[:subset]]
        scores.append(poly_mmd(real.float(), fake.float()))
    kid = torch.stack(scores)
    return {"fid": float(fid.float()), "kid": float(kid.mean()), "kid_std": float(kid.std(unbiased=False))}


@torch.no_grad()
def alignment(judge: Any, images: Tensor, labels: Tensor, batch_size: int = 512) -> float:
    """Mean probability the judge gives the prompted class (``judge.probabilities`` [N, classes])."""
    probabilities = torch.cat([judge.probabilities(chunk).cpu() for chunk in images.split(batch_size)])
    return float(probabilities.gather(1, labels.view(-1, 1).long()).mean())


def reference_renders(digits: Tensor, colors: Tensor, seed: int, image_size: int = 32,
                      test_fraction: float = 0.2, split_seed: int = 0) -> Tensor:
    """Real held-out digits drawn as the testbed model's training images, one per requested label.

    Row k is a render of a held-out real digit of class ``digits[k]`` in colour ``colors[k]``
    (``-1``: a colour drawn uniformly, as the training data does for colour-free prompts), with
    the training augmentation (``split_seed``: the default model's build seed). The reference then has the label mix of the generations it is
    compared with, so FID measures how each class is drawn rather than which classes were asked.

    Returns:
        ``[N, 3, image_size, image_size]`` in [0, 1].
    """
    from pipelines.testbed_data import AugmentConfig, color_table, render_digits, split_digits

    split = split_digits(image_size, test_fraction, seed=split_seed)  # the judges' held-out split
    generator = torch.Generator().manual_seed(seed)
    picks = torch.empty(len(digits), dtype=torch.long)
    for d in digits.unique().tolist():
        rows = (digits == d).nonzero().flatten()
        pool = (split.test_labels == d).nonzero().flatten()
        picks[rows] = pool[torch.randint(len(pool), (len(rows),), generator=generator)]
    random_colors = torch.randint(len(color_table()), (len(digits),), generator=generator)
    colors = torch.where(colors >= 0, colors, random_colors)
    return render_digits(split.test_strokes[picks], colors, generator, AugmentConfig())
