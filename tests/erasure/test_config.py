from pathlib import Path

import pytest

from erasure.config import MethodConfig


@pytest.mark.parametrize("field,value", [("kept_fraction", 1.0), ("kept_fraction", 0.0), ("lam", -0.1),
                                         ("retain_fraction", 0.0), ("saliency_fraction", 1.5),
                                         ("forget_loss", "other"), ("projection", "half"), ("init", "xavier"), ("sensitivity_batches", 0)])
def test_bad_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field if field != "init" else "init='xavier'"):
        MethodConfig(**{field: value})


def test_retain_loss_choices_and_the_loreun_clash():
    from erasure.config import MethodConfig

    assert MethodConfig().retain_loss == "data"
    with pytest.raises(ValueError, match="retain_loss='kl' is unknown; choose one of \\['data', 'distill'\\]"):
        MethodConfig(retain_loss="kl")
    with pytest.raises(ValueError, match="loreun=True .* retain_loss='distill'"):
        MethodConfig(retain_loss="distill", loreun=True)


def test_adversarial_prefix_needs_the_substitute_term_and_a_method_that_has_one():
    from erasure.methods import build_method, validate_method

    for field, value in (("adversarial_prefix", -1), ("adversarial_steps", 0), ("adversarial_step_size", 0.0),
                         ("adversarial_weight", -1.0), ("adversarial_restart", 1.5),
                         ("adversarial_population", 0)):
        with pytest.raises(ValueError, match=field):
            MethodConfig(forget_loss="substitute", **{field: value})
    with pytest.raises(ValueError, match="adversarial_space='words' is unknown; choose one of \\['embedding', 'tokens'\\]"):
        MethodConfig(forget_loss="substitute", adversarial_space="words")
    with pytest.raises(ValueError, match="adversarial_token_lr=0"):
        MethodConfig(forget_loss="substitute", adversarial_token_lr=0)
    with pytest.raises(ValueError, match="apply to adversarial_space='embedding'"):
        MethodConfig(forget_loss="substitute", adversarial_space="tokens", adversarial_population=2)
    with pytest.raises(ValueError, match="adversarial_prefix=5 .* forget_loss='substitute' \\(got 'ascent'\\)"):
        MethodConfig(adversarial_prefix=5)
    salun = MethodConfig(method="salun", forget_loss="substitute", adversarial_prefix=5)
    with pytest.raises(ValueError, match="adversarial_prefix=5 does not apply to method 'salun'.*scissorhands"):
        validate_method(salun)
    with pytest.raises(ValueError, match="does not apply to method 'salun'"):
        build_method(salun, None)
    validate_method(MethodConfig(forget_loss="substitute", adversarial_prefix=5))
    from torch import nn

    from erasure.objective import Objective

    scissorhands = build_method(MethodConfig(forget_loss="substitute", adversarial_prefix=5), Objective())
    with pytest.raises(ValueError, match="adversarial_prefix=5 needs prompts to attack.*Objective has none"):
        scissorhands.prepare(nn.Linear(2, 2), [], [])  # before any trimming: a classifier has no prompts


DISTILL_TERMS = ("neutral_weight", "uncond_weight", "anchor_weight")  # MethodConfig defaults that are tuned values


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[2] / "configs").glob("erase_*.yaml")),
                         ids=lambda p: p.name)
def test_configs_with_recorded_figures_name_every_tuned_distill_term(path):
    """The distilled retain terms' defaults are the testbed's tuned weights: a config that leaves one out
    runs whatever a later round tunes, not what its recorded figures measured (round 9's adversarial
    variant named no anchor weight and picked up round 15's)."""
    from erasure.jobconfig import load_yaml

    config = load_yaml(path)
    if config.get("retain_loss") == "distill":
        assert [t for t in DISTILL_TERMS if t not in config] == [], path.name
