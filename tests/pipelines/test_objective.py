"""DiffusionObjective: epsilon / v targets, both relabel modes, ESD, shared noise and the LoReUn fit,
against hand-written targets; only `prediction` relabelling puts the forget prompt into the loss."""

import math
import types

import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import DDPMScheduler, UNet2DConditionModel  # noqa: E402

from erasure.config import MethodConfig  # noqa: E402
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
    objective = DiffusionObjective(DDPMScheduler(), embeddings, relabel_ids=torch.tensor([1, 1]), uncond_id=1,
                                   uncond_weight=0.0)
    batch = {"x": torch.randn(3, 4, 8, 8), "y": torch.tensor([0, 0, 1]), "index": torch.arange(3)}
    student, original = tiny_unet(), tiny_unet().requires_grad_(False)
    assert torch.allclose(objective.distilled_loss(student, original, batch), torch.zeros(3), atol=1e-10)
    with torch.no_grad():
        student.conv_out.bias.add_(0.5)  # every prediction moves by 0.5: MSE 0.25 per sample
    losses = objective.distilled_loss(student, original, batch)
    assert torch.allclose(losses, torch.full((3,), 0.25), atol=1e-5)
    # the default also holds the empty prompt's prediction, which moved by 0.5 too
    default = DiffusionObjective(DDPMScheduler(), embeddings, relabel_ids=torch.tensor([1, 1]), uncond_id=1)
    assert default.uncond_weight == MethodConfig.uncond_weight > 0
    expected = 0.25 * (1 + MethodConfig.uncond_weight)
    assert torch.allclose(default.distilled_loss(student, original, batch), torch.full((3,), expected), atol=1e-5)
    losses.sum().backward()
    assert student.conv_out.bias.grad.abs().sum() > 0
    assert all(p.grad is None for p in original.parameters())


class ConstantUNet(torch.nn.Module):
    """Predicts ``scale * noisy + the prompt embedding's mean`` (per sample): every target below
    can be written out by hand."""

    def __init__(self, scale=0.5):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(scale))

    def forward(self, noisy, t, embeddings):
        return types.SimpleNamespace(sample=self.scale * noisy + embeddings.mean((1, 2)).view(-1, 1, 1, 1))



def hand_batch():
    gen = torch.Generator().manual_seed(3)
    return {"x": torch.randn(2, 4, 8, 8, generator=gen), "y": torch.tensor([0, 1]), "index": torch.arange(2),
            "noise": torch.randn(2, 4, 8, 8, generator=gen), "timesteps": torch.tensor([10, 900])}


def hand_noisy(scheduler, batch):
    alpha = scheduler.alphas_cumprod[batch["timesteps"]].view(-1, 1, 1, 1)
    return alpha.sqrt() * batch["x"] + (1 - alpha).sqrt() * batch["noise"], alpha


def mse(a, b):
    return ((a - b) ** 2).flatten(1).mean(1)


EMBEDDINGS = torch.stack([torch.full((5, 8), v) for v in (1.0, -2.0, 0.0)])  # forget, substitute, empty


def test_neutral_prompts_are_pulled_to_the_originals_prediction_under_the_retain_prompt():
    """Prompt 1 names prompt 2 as its neutral: sample 1 adds w * MSE(student | prompt 2, original | prompt 1);
    the constant UNets differ only by the prompt embedding's mean (-2 against 0): MSE 4."""
    batch, scheduler = hand_batch(), DDPMScheduler()
    student, original = ConstantUNet(), ConstantUNet().requires_grad_(False)
    neutral = torch.tensor([[-1], [2], [-1]])
    for weight, expected in ((1.0, [0.0, 4.0]), (0.5, [0.0, 2.0]), (0.0, [0.0, 0.0])):
        objective = DiffusionObjective(scheduler, EMBEDDINGS, torch.tensor([1, 1, 2]), 2, neutral_ids=neutral,
                                       neutral_weight=weight)
        losses = objective.distilled_loss(student, original, batch)
        torch.testing.assert_close(losses, torch.tensor(expected))
    losses.sum().backward()  # weight 0: nothing but the plain distillation, which is 0 here
    assert student.scale.grad == 0
    objective = DiffusionObjective(scheduler, EMBEDDINGS, torch.tensor([1, 1, 2]), 2, neutral_ids=neutral, neutral_weight=1.0)
    objective.distilled_loss(student, original, batch).sum().backward()
    assert student.scale.grad != 0 and original.scale.grad is None
    # several neutral prompts per prompt: one per sample, by its timestep (10 and 900: both even -> the first)
    two = torch.tensor([[-1, -1], [2, 0], [-1, -1]])
    objective = DiffusionObjective(scheduler, EMBEDDINGS, torch.tensor([1, 1, 2]), 2, neutral_ids=two, neutral_weight=1.0)
    torch.testing.assert_close(objective.distilled_loss(student, original, batch), torch.tensor([0.0, 4.0]))
    odd = {**batch, "timesteps": torch.tensor([10, 901])}  # prompt 0's embedding (1.0) against -2: MSE 9
    torch.testing.assert_close(objective.distilled_loss(student, original, odd)[1], torch.tensor(9.0))
    # a sample without a neutral prompt runs the second forward too (FSDP2 needs the same forwards on every
    # rank) but adds nothing: its loss is the plain distillation's
    moved = ConstantUNet(scale=0.7)
    plain = DiffusionObjective(scheduler, EMBEDDINGS, torch.tensor([1, 1, 2]), 2).distilled_loss(moved, original, batch)
    with_neutral = objective.distilled_loss(moved, original, batch)
    torch.testing.assert_close(with_neutral[0], plain[0])
    assert with_neutral[1] > plain[1]
    with pytest.raises(ValueError, match="first and pad with -1"):
        DiffusionObjective(scheduler, EMBEDDINGS, torch.tensor([1, 1, 2]), 2, neutral_ids=torch.tensor([[-1, 2]] * 3))
    for wrong in (torch.tensor([[-1], [2]]), torch.tensor([-1, 2, -1])):  # too few prompts; not [P, K]
        with pytest.raises(ValueError, match=r"neutral_ids must be \[prompts, K\] for 3 prompts"):
            DiffusionObjective(scheduler, EMBEDDINGS, torch.tensor([1, 1, 2]), 2, neutral_ids=wrong)


def test_a_substitute_sample_pulls_the_forget_prompt_to_the_originals_prediction_under_the_substitute():
    """Prompt 1 is prompt 0's substitute: sample 1 (a substitute image) adds w * MSE(student | prompt 0,
    original | prompt 1); the embeddings' means 1 against -2: MSE 9. With prompt 2 as its neutral too: 9 + 4."""
    batch, scheduler = hand_batch(), DDPMScheduler()
    student, original = ConstantUNet(), ConstantUNet().requires_grad_(False)
    anchors = torch.tensor([[-1], [0], [-1]])
    for weight, expected in ((1.0, [0.0, 9.0]), (0.5, [0.0, 4.5]), (0.0, [0.0, 0.0])):
        objective = DiffusionObjective(scheduler, EMBEDDINGS, torch.tensor([1, 1, 2]), 2, anchor_ids=anchors,
                                       anchor_weight=weight)
        torch.testing.assert_close(objective.distilled_loss(student, original, batch), torch.tensor(expected))
    both = DiffusionObjective(scheduler, EMBEDDINGS, torch.tensor([1, 1, 2]), 2, anchor_ids=anchors, anchor_weight=1.0,
                              neutral_ids=torch.tensor([[-1], [2], [-1]]), neutral_weight=1.0)
    torch.testing.assert_close(both.distilled_loss(student, original, batch), torch.tensor([0.0, 13.0]))
    losses = both.distilled_loss(student, original, batch)
    losses.sum().backward()
    assert student.scale.grad != 0 and original.scale.grad is None
    with pytest.raises(ValueError, match=r"anchor_ids must be \[prompts, K\] for 3 prompts"):
        DiffusionObjective(scheduler, EMBEDDINGS, torch.tensor([1, 1, 2]), 2, anchor_ids=torch.tensor([[-1], [0]]))
    with pytest.raises(ValueError, match="anchor_ids must list each prompt's ids first"):  # set after construction
        both.hold_anchors(torch.tensor([[-1, 0], [-1, -1], [-1, -1]]))
    both.hold_anchors(None)
    assert both.anchor_ids is None


class AffineUNet(torch.nn.Module):
    """Predicts ``a * noisy + b * the prompt embedding's mean``."""

    def __init__(self, a=0.5, b=1.0):
        super().__init__()
        self.a, self.b = torch.nn.Parameter(torch.tensor(a)), torch.nn.Parameter(torch.tensor(b))

    def forward(self, noisy, t, embeddings):
        return types.SimpleNamespace(sample=self.a * noisy + self.b * embeddings.mean((1, 2)).view(-1, 1, 1, 1))


def test_the_unconditional_term_holds_the_empty_prompts_prediction():
    """uncond_weight w adds w * MSE(student | empty, original | empty) to every sample, whatever its prompt."""
    batch, scheduler = hand_batch(), DDPMScheduler()
    noisy, _ = hand_noisy(scheduler, batch)
    original = AffineUNet().requires_grad_(False)
    # b moved: the prompts' predictions differ by (2 - 1) * their embedding's mean (1 and -2: MSE 1 and 4); the
    # empty prompt's mean is 0, so its term adds nothing, and taking prompt 0 as "empty" adds w * 1
    moved_b = AffineUNet(b=2.0)
    for weight in (0.0, 1.0, 3.0):
        on_empty = DiffusionObjective(scheduler, EMBEDDINGS, torch.tensor([1, 1, 2]), 2, uncond_weight=weight)
        torch.testing.assert_close(on_empty.distilled_loss(moved_b, original, batch), torch.tensor([1.0, 4.0]))
        on_zero = DiffusionObjective(scheduler, EMBEDDINGS, torch.tensor([1, 1, 2]), 0, uncond_weight=weight)
        torch.testing.assert_close(on_zero.distilled_loss(moved_b, original, batch), torch.tensor([1.0, 4.0]) + weight)
    # a moved: every prompt's prediction, the empty one's too, is off by 0.2 * noisy
    moved_a = AffineUNet(a=0.7)
    plain = mse(0.7 * noisy, 0.5 * noisy)
    held = DiffusionObjective(scheduler, EMBEDDINGS, torch.tensor([1, 1, 2]), 2, uncond_weight=0.5)
    losses = held.distilled_loss(moved_a, original, batch)
    torch.testing.assert_close(losses, 1.5 * plain)
    losses.sum().backward()
    assert moved_a.a.grad > 0 and original.a.grad is None
    with pytest.raises(ValueError, match="uncond_weight=-1.0 must be a finite number >= 0"):
        MethodConfig(uncond_weight=-1.0)


def test_epsilon_and_v_prediction_targets_by_hand():
    batch, unet = hand_batch(), ConstantUNet()
    for kind in ("epsilon", "v_prediction"):
        scheduler = DDPMScheduler(prediction_type=kind)
        objective = DiffusionObjective(scheduler, EMBEDDINGS, torch.tensor([1, 1, 2]), uncond_id=2)
        noisy, alpha = hand_noisy(scheduler, batch)
        target = batch["noise"] if kind == "epsilon" else alpha.sqrt() * batch["noise"] - (1 - alpha).sqrt() * batch["x"]
        pred = 0.5 * noisy + torch.tensor([1.0, -2.0]).view(-1, 1, 1, 1)
        torch.testing.assert_close(objective.loss(unet, batch), mse(pred, target))


def test_both_relabel_modes_by_hand():
    batch, unet, scheduler = hand_batch(), ConstantUNet(), DDPMScheduler()
    noisy, _ = hand_noisy(scheduler, batch)
    forget_pred = 0.5 * noisy + torch.tensor([1.0, -2.0]).view(-1, 1, 1, 1)  # prompts 0 and 1
    substitute_pred = 0.5 * noisy + torch.tensor([-2.0, -2.0]).view(-1, 1, 1, 1)  # both -> prompt 1
    prediction = DiffusionObjective(scheduler, EMBEDDINGS, torch.tensor([1, 1, 2]), 2, relabel_target="prediction")
    noise = DiffusionObjective(scheduler, EMBEDDINGS, torch.tensor([1, 1, 2]), 2, relabel_target="noise")
    torch.testing.assert_close(prediction.relabeled_loss(unet, batch), mse(forget_pred, substitute_pred))
    torch.testing.assert_close(noise.relabeled_loss(unet, batch), mse(substitute_pred, batch["noise"]))


def test_esd_target_by_hand():
    """ESD: eps(x_t, c) -> eps*(x_t) - eta (eps*(x_t, c) - eps*(x_t)), the frozen model's guidance reversed."""
    batch, scheduler = hand_batch(), DDPMScheduler()
    objective = DiffusionObjective(scheduler, EMBEDDINGS, torch.tensor([1, 1, 2]), uncond_id=2, negative_guidance=2.0)
    student, frozen = ConstantUNet(0.3), ConstantUNet(0.5)
    noisy, _ = hand_noisy(scheduler, batch)
    uncond = 0.5 * noisy  # the empty prompt's embedding is 0
    cond = 0.5 * noisy + torch.tensor([1.0, -2.0]).view(-1, 1, 1, 1)
    target = uncond - 2.0 * (cond - uncond)
    pred = 0.3 * noisy + torch.tensor([1.0, -2.0]).view(-1, 1, 1, 1)
    losses = objective.guided_loss(student, frozen, batch)
    torch.testing.assert_close(losses, mse(pred, target))
    losses.sum().backward()
    assert student.scale.grad is not None and frozen.scale.grad is None


def test_noise_and_timesteps_without_a_hook_are_per_sample_and_shared_by_every_loss():
    """One-off passes (sensitivity, saliency) draw noise from each sample's index and the seed:
    the same sample gets the same noise in any batch, on any process, for every loss."""
    objective = DiffusionObjective(DDPMScheduler(), EMBEDDINGS, torch.tensor([1, 1, 2]), 2, seed=7)
    x = torch.randn(3, 4, 8, 8)
    whole = objective._with_noise({"x": x, "y": torch.tensor([0, 0, 1]), "index": torch.tensor([4, 5, 6])})
    alone = objective._with_noise({"x": x[1:2], "y": torch.tensor([0]), "index": torch.tensor([5])})
    torch.testing.assert_close(whole["noise"][1:2], alone["noise"])
    assert whole["timesteps"][1] == alone["timesteps"][0]
    other_seed = DiffusionObjective(DDPMScheduler(), EMBEDDINGS, torch.tensor([1, 1, 2]), 2, seed=8)
    assert not torch.equal(other_seed._with_noise({"x": x[1:2], "y": torch.tensor([0]),
                                                   "index": torch.tensor([5])})["noise"], alone["noise"])
    unet = ConstantUNet()
    batch = {"x": x, "y": torch.tensor([0, 0, 1]), "index": torch.tensor([4, 5, 6])}
    torch.testing.assert_close(objective.loss(unet, batch), objective.loss(unet, whole))  # same draw each call


def test_loreun_reference_is_the_exponential_fit_of_the_mean_loss_per_timestep():
    """fit_reference: mean loss at fixed timesteps -> a exp(b t); reference_loss evaluates it at a batch's t."""
    scheduler = DDPMScheduler()
    objective = DiffusionObjective(scheduler, EMBEDDINGS, torch.tensor([1, 1, 2]), 2)
    unet = ConstantUNet()
    batches = [{"x": torch.randn(3, 4, 8, 8), "y": torch.tensor([0, 1, 0]), "index": torch.arange(3) + 3 * i}
               for i in range(2)]
    timesteps = (50, 300, 600, 950)
    reference = objective.fit_reference(unet, batches, timesteps=timesteps)
    from erasure.loreun import fit_exponential

    gen = torch.Generator().manual_seed(0)  # fit_reference's own noise, drawn batch by batch, step by step
    sums = dict.fromkeys(timesteps, 0.0)
    for batch in batches:
        for t in timesteps:
            noise = torch.randn(batch["x"].shape, generator=gen)
            steps = torch.full((3,), t)
            sums[t] += float(objective.loss(unet, {**batch, "noise": noise, "timesteps": steps}).sum())
    curve = fit_exponential(list(timesteps), [v / 6 for v in sums.values()])
    assert reference == pytest.approx({"a": curve.a, "b": curve.b})
    l0 = objective.reference_loss(reference, {"timesteps": torch.tensor([0, 500])})
    torch.testing.assert_close(l0, torch.tensor([curve.a, curve.a * math.exp(curve.b * 500)]), rtol=1e-5, atol=0)



def test_relabel_target_comes_from_the_reference_model_when_given():
    """Scissorhands' substitute target is the frozen original's prediction, not the trained model's."""
    embeddings = torch.randn(3, 5, 8)
    objective = DiffusionObjective(DDPMScheduler(), embeddings, relabel_ids=torch.tensor([1, 1, 2]), uncond_id=2)
    batch = {"x": torch.randn(2, 4, 8, 8), "y": torch.tensor([0, 0]), "index": torch.arange(2),
             "noise": torch.randn(2, 4, 8, 8), "timesteps": torch.tensor([100, 700])}
    student, original = tiny_unet(), tiny_unet().requires_grad_(False)
    with torch.no_grad():
        student.conv_out.bias.add_(0.5)  # every prediction of the student moves by 0.5
    # against itself the shift cancels; against the original it costs 0.25 more per sample
    own = objective.relabeled_loss(student, batch)
    against_original = objective.relabeled_loss(student, batch, reference=original)
    unshifted = objective.relabeled_loss(original, batch)
    torch.testing.assert_close(own, unshifted, atol=1e-5, rtol=1e-5)
    assert (against_original > own + 0.2).all()


def test_the_prompt_table_moves_to_the_device_once():
    """Issue 11: the table of text embeddings (4.7k prompts x 77 x 768 on I2P, ~1.1 GB) was copied
    to the UNet's device on every call; it moves once ('meta' stands in for CUDA)."""
    objective = DiffusionObjective(DDPMScheduler(), torch.randn(3, 4, 8), torch.tensor([1, 1, 2]), uncond_id=2)
    like = torch.empty(2, 4, 8, 8, device="meta")
    first = objective._embed(torch.tensor([0, 2]), like)
    table = objective.embeddings
    second = objective._embed(torch.tensor([1]), like)
    assert table.device.type == "meta" and objective.embeddings is table
    assert first.shape == (2, 4, 8) and second.device.type == "meta"
    on_cpu = DiffusionObjective(DDPMScheduler(), torch.randn(3, 4, 8), torch.tensor([1, 1, 2]), uncond_id=2)
    assert torch.equal(on_cpu._embed(torch.tensor([2, 0]), torch.empty(1)), on_cpu.embeddings[[2, 0]])


@pytest.mark.parametrize("method", ["esd", "scissorhands"])
def test_frozen_copies_in_the_compute_dtype_give_the_float32_loss_within_bf16_rounding(method):
    """ESD's frozen copy and the distill original are kept in the job's compute dtype (bf16: half the
    memory); the objective feeds them inputs of their dtype, and the loss stays the float32 one."""
    from erasure.config import MethodConfig
    from erasure.methods import build_method

    embeddings = torch.randn(3, 5, 8)
    objective = DiffusionObjective(DDPMScheduler(), embeddings, relabel_ids=torch.tensor([1, 1, 2]), uncond_id=2)
    batch = {"x": torch.randn(2, 4, 8, 8), "y": torch.tensor([0, 0]), "index": torch.arange(2),
             "noise": torch.randn(2, 4, 8, 8), "timesteps": torch.tensor([100, 700])}
    losses = {}
    for dtype in (None, torch.bfloat16):
        unet = tiny_unet()
        config = MethodConfig(method=method, retain_loss="distill", forget_loss="substitute") if method != "esd" \
            else MethodConfig(method="esd")
        m = build_method(config, objective)
        m.frozen_dtype = dtype
        if method == "esd":
            m.prepare(unet, [], [])
            frozen = m.frozen
            losses[dtype] = objective.guided_loss(unet, frozen, batch)
        else:
            m.snapshot(unet)
            frozen = m.original
            losses[dtype] = objective.distilled_loss(unet, frozen, batch) + objective.relabeled_loss(unet, batch, frozen)
        assert {p.dtype for p in frozen.parameters()} == {dtype or torch.float32}
        assert {p.dtype for p in unet.parameters()} == {torch.float32}  # the trained model is untouched
    torch.testing.assert_close(losses[torch.bfloat16], losses[None], rtol=5e-2, atol=1e-3)
    assert not torch.equal(losses[torch.bfloat16], losses[None])  # the bf16 copy did run


def test_compute_dtype_follows_mixed_precision():
    from erasure.launch import compute_dtype

    assert [compute_dtype(types.SimpleNamespace(mixed_precision=m)) for m in ("no", "bf16", "fp16")] == \
        [torch.float32, torch.bfloat16, torch.float16]


def test_prompt_encoding_returns_the_text_encoder_where_it_was():
    from pipelines.conditioning import encode_prompt_table
    from pipelines.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline(seed=0)
    moves = []
    original_to = pipe.text_encoder.to
    pipe.text_encoder.to = lambda *a, **k: (moves.append(str(a[0]) if a else str(k)), original_to(*a, **k))[1]
    table = encode_prompt_table(pipe, ["a photo of a church", ""], torch.device("cpu"))
    assert table.hidden.shape[0] == 2 and table.pooled is None and moves == ["cpu", "cpu"]  # to the device for the table, then back home
