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
