"""Adversarial prompt prefixes (AdvUnlearn's inner attack): the prefixed hidden states are the text
encoder's own, the attack lowers its loss and keeps to the vocabulary's norm, the state round-trips,
and the diffusion objective trains under the attacked prompt."""

import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import DDPMScheduler  # noqa: E402

from pipelines.prompt_prefix import (AdversarialPrefixes, TokenPrefixes, prefixed_embeddings,  # noqa: E402
                                     token_embeddings_replaced, with_prefix)


@pytest.fixture(scope="module")
def encoder_and_ids(tiny_pipeline_dir):
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tiny_pipeline_dir, subfolder="tokenizer")
    encoder = CLIPTextModel.from_pretrained(tiny_pipeline_dir, subfolder="text_encoder").eval()
    ids = tokenizer(["a handwritten digit seven", "a handwritten digit two", ""], padding="max_length",
                    max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
    return encoder, ids, tokenizer.pad_token_id


def test_prefixes_of_vocabulary_tokens_give_the_encoders_output_on_those_tokens(encoder_and_ids):
    encoder, ids, pad = encoder_and_ids
    adversary = AdversarialPrefixes(encoder, ids, k=2, steps=1, step_size=0.1, seed=0, pad_id=pad)
    tokens = torch.tensor([[5, 9], [11, 3], [4, 4]])
    adversary.prefixes = encoder.get_input_embeddings().weight.detach()[tokens].clone()
    with torch.no_grad():
        expected = encoder(with_prefix(ids[[1, 0]], tokens[[1, 0]], pad))[0]
        got = adversary.hidden(torch.tensor([1, 0]))
    torch.testing.assert_close(got, expected)


def test_attack_lowers_its_loss_keeps_the_norm_and_moves_only_the_batchs_prompts(encoder_and_ids):
    encoder, ids, pad = encoder_and_ids
    adversary = AdversarialPrefixes(encoder, ids, k=3, steps=20, step_size=0.2, seed=0, pad_id=pad)
    before = adversary.prefixes.clone()
    with torch.no_grad():
        goal = encoder(ids[[2]])[0]  # pull "seven"'s prefixed states toward the empty prompt's
    loss_of = lambda hidden, _generator: (hidden - goal).pow(2).mean()
    batch = torch.tensor([0, 0])  # twice the same prompt: one prefix
    with torch.no_grad():
        start = float(loss_of(adversary.hidden(batch), None))
    last = adversary.attack(batch, loss_of)
    assert last < start
    assert not torch.equal(adversary.prefixes[0], before[0])
    assert torch.equal(adversary.prefixes[1:], before[1:])
    assert adversary.prefixes.norm(dim=-1).max() <= adversary.max_norm * (1 + 1e-5)
    assert all(not p.requires_grad and p.grad is None for p in encoder.parameters())


@pytest.mark.parametrize("scale", [65536.0, 2.0**60])  # 2**60 overflows fp16: backed off
def test_attack_steps_at_the_jobs_fp16_loss_scale(encoder_and_ids, scale):
    """Under fp16 compute the prefix gradient is taken at the job's loss scale (as the tamper steps' and
    the min-max ascent's): unscaled, these gradients flush to zero and the signed step never moves."""
    encoder, ids, pad = encoder_and_ids
    with torch.no_grad():
        goal = encoder(ids[[2]])[0].half()
    loss_of = lambda hidden, _generator: 1e-6 * (hidden.half() - goal).float().pow(2).mean()  # noqa: E731
    for scaler, moves in ((None, False), (torch.amp.GradScaler("cpu", init_scale=scale), True)):
        adversary = AdversarialPrefixes(encoder, ids, k=2, steps=1, step_size=0.1, seed=0, pad_id=pad)
        if scaler is not None:
            scaler.scale(torch.ones(()))  # accelerate's backward has run once: the scale exists
        before = adversary.prefixes.clone()
        adversary.attack(torch.tensor([0]), loss_of, scaler)
        assert (not torch.equal(adversary.prefixes[0], before[0])) == moves


def test_restart_draws_fresh_vocabulary_tokens_whatever_the_batch_holds(encoder_and_ids):
    """restart 1.0: a call starts every attacked prefix again from random vocabulary tokens (its result
    does not depend on the kept prefix), and a prompt's draw does not depend on the other prompts in
    the batch (ranks attacking different batches restart it alike); restart 0.0 carries on."""
    encoder, ids, pad = encoder_and_ids
    loss_of = lambda hidden, _generator: hidden.pow(2).mean()  # noqa: E731 (separable: a row's sign is its own)

    def attacked(restart, batch, start):
        adversary = AdversarialPrefixes(encoder, ids, k=2, steps=1, step_size=0.1, seed=0, pad_id=pad,
                                        restart=restart)
        adversary.prefixes = start.clone()
        adversary.attack(torch.tensor(batch), loss_of)
        return adversary.prefixes

    start = AdversarialPrefixes(encoder, ids, k=2, steps=1, step_size=0.1, seed=5, pad_id=pad).prefixes
    other = start.flip(0)
    torch.testing.assert_close(attacked(1.0, [0], start)[0], attacked(1.0, [0], other)[0])
    torch.testing.assert_close(attacked(1.0, [0], start)[0], attacked(1.0, [0, 1], start)[0])
    assert torch.equal(attacked(1.0, [0], start)[1:], start[1:])  # only the batch's prompts
    assert not torch.allclose(attacked(0.0, [0], start)[0], attacked(0.0, [0], other)[0])
    with pytest.raises(ValueError, match="restart=1.5"):
        AdversarialPrefixes(encoder, ids, k=2, steps=1, step_size=0.1, seed=0, pad_id=pad, restart=1.5)


def test_a_population_attacks_each_prompts_slots_in_turn_and_trains_under_the_one_just_moved(encoder_and_ids):
    """population 3: calls 0, 1, 2 on prompt 1 move its slots 1, 2, 0 ((call + id) % 3), one each, nothing
    else; the repair's hidden states are those of the slot the call moved; the fourth call moves slot 1
    again. population 1 is the one-prefix table, draw for draw."""
    encoder, ids, pad = encoder_and_ids
    loss_of = lambda hidden, _generator: hidden.pow(2).mean()  # noqa: E731
    adversary = AdversarialPrefixes(encoder, ids, k=2, steps=1, step_size=0.1, seed=0, pad_id=pad, population=3)
    assert adversary.prefixes.shape[0] == 3 * len(ids)
    batch = torch.tensor([1])
    for call, slot in enumerate((1, 2, 0, 1)):
        before = adversary.prefixes.clone()
        adversary.attack(batch, loss_of)
        moved = [r for r in range(len(before)) if not torch.equal(before[r], adversary.prefixes[r])]
        assert moved == [3 * 1 + slot], (call, moved)
        with torch.no_grad():
            torch.testing.assert_close(adversary.hidden(batch), adversary.hidden(batch, adversary.prefixes[moved]))
    single = AdversarialPrefixes(encoder, ids, k=2, steps=1, step_size=0.1, seed=0, pad_id=pad)
    assert torch.equal(single.prefixes, AdversarialPrefixes(encoder, ids, k=2, steps=1, step_size=0.1, seed=0,
                                                            pad_id=pad, population=1).prefixes)
    assert single.prefixes.shape[0] == len(ids)
    with pytest.raises(ValueError, match="population=0"):
        AdversarialPrefixes(encoder, ids, k=2, steps=1, step_size=0.1, seed=0, pad_id=pad, population=0)


def test_token_prefixes_search_vocabulary_tokens_and_the_repair_sees_their_argmax(encoder_and_ids):
    """The token space: only the attacked prompts hold a distribution; the attack's Adam steps on the
    simplex find argmax tokens whose loss beats the best of 50 random token pairs; the repair's hidden
    states are the encoder's own output on the argmax tokens; the state round-trips, moments included."""
    encoder, ids, pad = encoder_and_ids
    matrix = encoder.get_input_embeddings().weight.detach()
    adversary = TokenPrefixes(encoder, ids, torch.tensor([0]), k=2, steps=30, learning_rate=0.05, weight_decay=0.0,
                              seed=0, pad_id=pad)
    assert adversary.prefixes.shape == (1, 2, matrix.shape[0])
    torch.testing.assert_close(adversary.prefixes.sum(-1), torch.ones(1, 2))
    goal_token = 7
    # the prefix's own hidden states, pulled toward those of a prompt that starts with token 7 twice
    with torch.no_grad():
        goal = encoder(with_prefix(ids[[0]], torch.tensor([[goal_token, goal_token]]), pad))[0]
    loss_of = lambda hidden, _generator: (hidden[:, 1:3] - goal[:, 1:3]).pow(2).mean()  # noqa: E731
    adversary.attack(torch.tensor([0, 0]), loss_of)
    with torch.no_grad():
        end = float(loss_of(adversary.hidden(torch.tensor([0])), None))
        generator = torch.Generator().manual_seed(0)  # the search beats chance: 50 random token pairs
        chance = [float(loss_of(encoder(with_prefix(ids[[0]], torch.randint(3, len(matrix), (1, 2), generator=generator),
                                                    pad))[0], None)) for _ in range(50)]
    assert end < min(chance)  # 0.106 against >= 0.126 (an ascent's tokens: 0.56)
    assert (adversary.prefixes >= 0).all() and torch.allclose(adversary.prefixes.sum(-1), torch.ones(1, 2))
    assert adversary.counts.tolist() == [30.0] and adversary.calls == 1
    tokens = adversary.prefixes.argmax(-1)
    with torch.no_grad():
        torch.testing.assert_close(adversary.hidden(torch.tensor([0])), encoder(with_prefix(ids[[0]], tokens, pad))[0])
    with pytest.raises(ValueError, match=r"prompt ids \[1\] have no adversarial prefix"):
        adversary.hidden(torch.tensor([1]))
    other = TokenPrefixes(encoder, ids, torch.tensor([0]), k=2, steps=1, learning_rate=0.05, weight_decay=0.0,
                          seed=1, pad_id=pad)
    other.load_state_dict(adversary.state_dict())
    assert torch.equal(other.second, adversary.second) and other.calls == 1
    with pytest.raises(ValueError, match="adversarial_space"):  # an embedding table is not a token one
        other.load_state_dict(AdversarialPrefixes(encoder, ids, k=2, steps=1, step_size=0.1, seed=0,
                                                  pad_id=pad).state_dict())


def test_state_round_trips_and_a_mismatched_table_is_refused(encoder_and_ids):
    encoder, ids, pad = encoder_and_ids
    adversary = AdversarialPrefixes(encoder, ids, k=2, steps=1, step_size=0.1, seed=0, pad_id=pad)
    adversary.attack(torch.tensor([1]), lambda hidden, _g: hidden.pow(2).mean())
    other = AdversarialPrefixes(encoder, ids, k=2, steps=1, step_size=0.1, seed=1, pad_id=pad)
    other.load_state_dict(adversary.state_dict())
    assert torch.equal(other.prefixes, adversary.prefixes) and other.calls == 1
    with pytest.raises(ValueError, match="resume with the same data, k and population"):
        AdversarialPrefixes(encoder, ids, k=3, steps=1, step_size=0.1, seed=0, pad_id=pad).load_state_dict(
            adversary.state_dict())
    with pytest.raises(ValueError, match="k=0"):
        AdversarialPrefixes(encoder, ids, k=0, steps=1, step_size=0.1, seed=0, pad_id=pad)


def test_adversarial_relabeled_loss_trains_the_unet_under_the_prefixed_prompt(encoder_and_ids, tiny_pipeline_dir):
    from diffusers import UNet2DConditionModel

    from pipelines.objective import DiffusionObjective

    encoder, ids, pad = encoder_and_ids
    unet = UNet2DConditionModel.from_pretrained(tiny_pipeline_dir, subfolder="unet")
    with torch.no_grad():
        table = encoder(ids)[0]
    objective = DiffusionObjective(DDPMScheduler(), table, relabel_ids=torch.tensor([1, 1, 2]), uncond_id=2)
    batch = {"x": torch.randn(2, 4, 16, 16), "y": torch.tensor([0, 0]), "index": torch.arange(2),
             "noise": torch.randn(2, 4, 16, 16), "timesteps": torch.tensor([100, 700])}
    with pytest.raises(ValueError, match="adversary"):
        objective.adversarial_relabeled_loss(unet, batch)
    objective.adversary = AdversarialPrefixes(encoder, ids, k=2, steps=2, step_size=0.1, seed=0, pad_id=pad)
    before = objective.adversary.prefixes.clone()
    plain, losses = objective.adversarial_relabeled_loss(unet, batch)
    assert losses.shape == (2,) and torch.isfinite(losses).all()
    # the plain term is relabeled_loss itself (its target drawn once for both terms)
    torch.testing.assert_close(plain, objective.relabeled_loss(unet, batch))
    assert not torch.equal(plain, losses)  # behind the prefix the prediction differs
    assert not torch.equal(objective.adversary.prefixes[0], before[0])  # the inner attack moved "seven"'s prefix
    assert all(p.grad is None for p in unet.parameters())  # the attack's gradients went to the prefix only
    losses.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in unet.parameters())


def test_prefix_goes_after_the_start_token_and_the_length_is_kept():
    ids = torch.tensor([[49406, 10, 11, 49407, 49407, 49407]])
    assert with_prefix(ids, torch.tensor([[7, 8]]), 49407).tolist() == [[49406, 7, 8, 10, 11, 49407]]


def test_replaced_token_embeddings_give_the_encoders_own_output(tiny_pipeline_dir):
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tiny_pipeline_dir, subfolder="tokenizer")
    encoder = CLIPTextModel.from_pretrained(tiny_pipeline_dir, subfolder="text_encoder").eval()
    ids = tokenizer(["a handwritten digit seven"], padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    matrix = encoder.get_input_embeddings().weight
    prefix_ids = torch.tensor([[5, 9]])
    one_hot = torch.nn.functional.one_hot(prefix_ids[0], matrix.shape[0]).float().requires_grad_(True)
    joined = with_prefix(ids, prefix_ids, tokenizer.pad_token_id)
    with torch.no_grad():
        expected = encoder(joined)[0]
    with token_embeddings_replaced(encoder, prefixed_embeddings(matrix, ids, one_hot)):
        got = encoder(joined)[0]
    torch.testing.assert_close(got, expected)
    got.sum().backward()
    assert one_hot.grad is not None and one_hot.grad.abs().sum() > 0
    with torch.no_grad():
        torch.testing.assert_close(encoder(joined)[0], expected)  # the hook is gone
