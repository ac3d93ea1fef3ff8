"""DiffusionObjective's relabel modes: only `prediction` puts the forget prompt into the loss."""

import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import DDPMScheduler, UNet2DConditionModel  # noqa: E402

from pipelines.erase import EraseConfig  # noqa: E402
from pipelines.objective import DiffusionObjective  # noqa: E402


def tiny_unet():
    torch.manual_seed(0)
    return UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(8, 16), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=8,
                                attention_head_dim=4, norm_num_groups=4)


def forget_embedding_gradient(relabel_target):
    """Gradient of the relabelled loss w.r.t. the forget prompt's text embedding (prompt 0)."""
    embeddings = torch.randn(3, 5, 8, requires_grad=True)  # 0: forget, 1: substitute, 2: empty
    objective = DiffusionObjective(DDPMScheduler(), embeddings, relabel_ids=torch.tensor([1, 1, 2]), uncond_id=2,
                                   relabel_target=relabel_target)
    batch = {"x": torch.randn(2, 4, 8, 8), "y": torch.tensor([0, 0]), "index": torch.arange(2),
             "noise": torch.randn(2, 4, 8, 8), "timesteps": torch.tensor([100, 700])}
    objective.relabeled_loss(tiny_unet(), batch).sum().backward()
    return embeddings.grad


def test_prediction_relabel_depends_on_the_forget_prompt_and_noise_does_not():
    assert forget_embedding_gradient("prediction")[0].abs().sum() > 0
    assert forget_embedding_gradient("noise")[0].abs().sum() == 0  # the forget prompt never enters


def test_the_erase_job_defaults_to_prediction(tmp_path):
    (tmp_path / "forget").mkdir()
    (tmp_path / "retain").mkdir()
    assert EraseConfig(data_dir=str(tmp_path)).relabel_target == "prediction"


def test_distilled_loss_is_zero_for_the_original_and_trains_only_the_student():
    embeddings = torch.randn(2, 5, 8)
    objective = DiffusionObjective(DDPMScheduler(), embeddings, relabel_ids=torch.tensor([1, 1]), uncond_id=1)
    batch = {"x": torch.randn(3, 4, 8, 8), "y": torch.tensor([0, 0, 1]), "index": torch.arange(3)}
    student, original = tiny_unet(), tiny_unet().requires_grad_(False)
    assert torch.allclose(objective.distilled_loss(student, original, batch), torch.zeros(3), atol=1e-10)
    with torch.no_grad():
        student.conv_out.bias.add_(0.5)  # every prediction moves by 0.5: MSE 0.25 per sample
    losses = objective.distilled_loss(student, original, batch)
    assert torch.allclose(losses, torch.full((3,), 0.25), atol=1e-5)
    losses.sum().backward()
    assert student.conv_out.bias.grad.abs().sum() > 0
    assert all(p.grad is None for p in original.parameters())
