"""The default model's text encoder pretraining: paraphrases of one digit come to mean the same."""

import pytest
import torch

pytest.importorskip("transformers")

from pipelines import _tiny_components as components  # noqa: E402
from pipelines._tiny_training import encode_prompts, pretrain_text_encoder  # noqa: E402
from pipelines.default_model import prompt_meanings  # noqa: E402
from prompts.colored_digits import grammar, grammar_prompts  # noqa: E402


def mean_states(tokenizer, encoder, prompts):
    return encode_prompts(tokenizer, encoder, prompts).mean(1)


def test_pretraining_puts_word_and_numeral_of_a_digit_together(tmp_path):
    torch.manual_seed(0)
    tokenizer = components.build_tokenizer(tmp_path, tuple(grammar().vocabulary()), 20)
    encoder = components.build_text_encoder(tokenizer, 32, 2, 4, 1.0)
    probe = ["a handwritten digit two", "the number 2", "the number 3"]
    states = mean_states(tokenizer, encoder, probe)
    cos = torch.nn.functional.cosine_similarity
    gap_before = cos(states[0], states[1], dim=0) - cos(states[0], states[2], dim=0)
    pretrain_text_encoder(encoder, tokenizer, grammar_prompts().texts, prompt_meanings(), [10, 7], steps=150,
                          batch_size=64, learning_rate=3e-3, generator=torch.Generator().manual_seed(0))
    states = mean_states(tokenizer, encoder, probe)
    gap_after = cos(states[0], states[1], dim=0) - cos(states[0], states[2], dim=0)
    assert gap_after > gap_before + 0.2  # "two" ~ "2" more than "two" ~ "3", unlike before
    assert not any(p.requires_grad for p in encoder.parameters()) and not encoder.training


def test_bad_pooling_and_label_shapes_fail(tmp_path):
    tokenizer = components.build_tokenizer(tmp_path, (), 20)
    encoder = components.build_text_encoder(tokenizer, 16, 1, 2, 1.0)
    with pytest.raises(ValueError, match="pooling='max' is unknown"):
        pretrain_text_encoder(encoder, tokenizer, ["a"], torch.zeros(1, 1, dtype=torch.long), [2], 1, 1, 1e-3,
                              torch.Generator(), pooling="max")
    with pytest.raises(ValueError, match="labels must be \\[1, 2\\]"):
        pretrain_text_encoder(encoder, tokenizer, ["a"], torch.zeros(1, 1, dtype=torch.long), [2, 2], 1, 1, 1e-3,
                              torch.Generator())
