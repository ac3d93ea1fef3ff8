"""EraseConfig bounds and flag combinations, checked before any work; --revision and the folder prompts reach the loaders."""

import types

import pytest
import torch

from pipelines import erase
from pipelines.erase import EraseConfig


@pytest.fixture
def dirs(tmp_path):
    for name in ("forget", "retain"):
        (tmp_path / name).mkdir()
    return tmp_path


@pytest.mark.parametrize("changes,message", [
    ({"max_train_steps": 0}, r"max_train_steps=0 is out of range; allowed: \[1, inf\]"),
    ({"max_train_steps": -3}, r"max_train_steps=-3 is out of range"),
    ({"max_grad_norm": -1.0}, r"max_grad_norm=-1.0 is out of range; allowed: \[0, inf\]"),
    ({"checkpointing_steps": 0}, r"checkpointing_steps=0 is out of range"),
    ({"checkpoints_total_limit": -1}, r"checkpoints_total_limit=-1 is out of range"),
    ({"seed": -1}, r"seed=-1 is out of range; allowed: \[0, 4294967295\]"),
    ({"resolution": 0}, r"resolution=0 is out of range; allowed: \[8, 4096\]"),
    ({"resolution": 200000}, r"resolution=200000 is out of range; allowed: \[8, 4096\]"),
    ({"resolution": 100}, r"resolution=100 must be a multiple of 8"),
    ({"learning_rate": float("nan")}, r"learning_rate=nan must be a finite number"),
    ({"negative_guidance": float("inf")}, r"negative_guidance=inf must be a finite number"),
    ({"forget_dir": "{d}/forget"}, r"data_dir=.* excludes --forget_dir/--retain_dir"),
    ({"forget_prompt": "a cat"}, r"forget_prompt='a cat' needs --forget_dir/--retain_dir"),
    ({"substitute_word": "light blue"}, r"substitute_word='light blue' must be a single word"),
    ({"substitute_word": "blue,"}, r"substitute_word='blue,' must be a single word"),
    ({"substitute_ties": "first"}, r"substitute_ties='first' is unknown; choose one of \['nearest', 'farthest', 'rotate'\]"),
    ({"substitute_word": "blue", "substitute_prompt": "a person"},
     r"substitute_word='blue' and substitute_prompt='a person' exclude each other; give one"),
    ({"substitute_rewrite": True, "substitute_prompt": "a person"}, r"substitute_rewrite=True .* needs substitute_word"),
    ({"substitute_rewrite": True, "substitute_ties": "rotate"}, r"substitute_ties='rotate'"),
])
def test_out_of_bounds_options_are_refused(dirs, changes, message):
    changes = {k: v.format(d=dirs) if isinstance(v, str) else v for k, v in changes.items()}
    with pytest.raises(ValueError, match=message):
        EraseConfig(data_dir=str(dirs), **changes)


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is allowed with a GPU")
def test_fp16_without_cuda_is_refused(dirs):
    with pytest.raises(ValueError, match="mixed_precision='fp16' needs a CUDA GPU"):
        EraseConfig(data_dir=str(dirs), mixed_precision="fp16")


def test_revision_and_folder_prompts_reach_the_loaders(dirs, tiny_pipeline_dir, monkeypatch, tmp_path):
    seen = {}

    def load_pipeline(name, **kwargs):
        seen["revision"] = kwargs.get("revision")
        from pipelines.sampling import load_pipeline as real

        return real(name)

    def load(folder, vae=None, resolution=None, prompt=None, sdxl=False):
        seen.setdefault("prompts", []).append(prompt)
        raise ValueError("stop here")

    monkeypatch.setattr(erase, "load_pipeline", load_pipeline)
    monkeypatch.setattr(erase.ConceptImageSet, "load", load)
    with pytest.raises(ValueError, match="stop here"):
        erase.main(["--pretrained_model_name_or_path", str(tiny_pipeline_dir), "--revision", "v2",
                    "--forget_dir", str(dirs / "forget"), "--retain_dir", str(dirs / "retain"),
                    "--forget_prompt", "a cat", "--output_dir", str(tmp_path / "out")])
    assert seen == {"revision": "v2", "prompts": ["a cat"]}


def test_neutral_prompts_come_from_the_retain_rows_and_reach_the_objective():
    """A retain row's ``extra["neutral"]`` (pipelines.generate writes it for a colour concept) maps its
    prompt to the neutral one in the objective; method configs with neutral_weight 0 map nothing."""

    from erasure.config import MethodConfig
    from pipelines.erase import build_objective, neutral_prompts
    from pipelines.tiny import build_tiny_pipeline

    rows = lambda *neutrals: [{"extra": {"neutral": n}} if n else {} for n in neutrals]
    data = lambda prompts, metadata: types.SimpleNamespace(prompts=prompts, metadata=metadata,
                                                           latents=torch.zeros(len(prompts), 4, 16, 16))
    forget = data(["a red handwritten digit two"], [{}])
    retain = data(["a blue handwritten digit two", "a green handwritten digit one", "a blue handwritten digit two"],
                  rows("a handwritten digit two", None, "a handwritten digit two"))
    assert neutral_prompts(retain, forget) == {"a blue handwritten digit two": ("a handwritten digit two",)}
    config = types.SimpleNamespace(substitute_prompt=None, substitute_word=None, substitute_ties="nearest",
                                   substitute_rewrite=False,
                                   relabel_target="prediction", negative_guidance=1.0, seed=0)
    pipe = build_tiny_pipeline(seed=0)
    objective, _, retain_ids = build_objective(pipe, config, forget, retain, "cpu", MethodConfig(retain_loss="distill"))
    neutral = objective.neutral_ids[retain_ids, 0]
    assert neutral[1] == -1 and neutral[0] == neutral[2] and neutral[0] not in retain_ids.tolist()
    listed = data(retain.prompts, [{"extra": {"neutral": ["a handwritten digit two", "the number two"]}}, {},
                                   {"extra": {"neutral": ["a handwritten digit two", "the number two"]}}])
    several, _, ids = build_objective(pipe, config, forget, listed, "cpu", MethodConfig(retain_loss="distill"))
    assert several.neutral_ids.shape[1] == 2 and (several.neutral_ids[ids[0]] >= 0).all()
    assert (several.neutral_ids[ids[1]] == -1).all()
    off, _, _ = build_objective(pipe, config, forget, retain, "cpu", MethodConfig(retain_loss="distill", neutral_weight=0))
    assert off.neutral_ids is None and off.uncond_weight == MethodConfig.uncond_weight
    held, _, _ = build_objective(pipe, config, forget, retain, "cpu", MethodConfig(retain_loss="distill", uncond_weight=2))
    assert held.uncond_weight == 2
    # substitute_word: the forget prompt's substitute is the retain prompt holding the word (read back by embedding)
    from pipelines.conditioning import encode_prompt_table
    for word, expected in (("blue", "a blue handwritten digit two"), ("green", "a green handwritten digit one")):
        named, forget_ids, _ = build_objective(pipe, types.SimpleNamespace(**{**vars(config), "substitute_word": word}),
                                               forget, retain, "cpu", MethodConfig(retain_loss="distill"))
        torch.testing.assert_close(named.embeddings[named.relabel_ids[forget_ids[0]]],
                                   encode_prompt_table(pipe, [expected], "cpu").hidden[0])
    # the term's id is the empty prompt's row of the table (what classifier-free guidance samples with)
    empty = encode_prompt_table(pipe, [""], "cpu").hidden[0]
    torch.testing.assert_close(held.embeddings[held.uncond_id], empty)
    assert not torch.allclose(held.embeddings[held.uncond_id], held.embeddings[retain_ids[0]])
    with pytest.raises(ValueError, match="two sets of neutral prompts"):
        neutral_prompts(data(retain.prompts, rows("a handwritten digit two", None, "the number two")), forget)
    with pytest.raises(ValueError, match="is a forget prompt"):
        neutral_prompts(retain, data(["a handwritten digit two"], [{}]))


def test_a_substitute_that_the_method_never_trains_toward_is_warned(dirs, caplog):
    from erasure.config import MethodConfig
    from pipelines.erase import warn_unused_substitute

    config = EraseConfig(data_dir=str(dirs), substitute_word="blue")
    assert warn_unused_substitute(config, MethodConfig(method="esd"))
    assert "substitute_word='blue'" in caplog.text and "method 'esd'" in caplog.text
    assert warn_unused_substitute(config, MethodConfig(method="scissorhands", forget_loss="ascent"))
    for used in (MethodConfig(method="salun"), MethodConfig(method="random_label"),
                 MethodConfig(method="scissorhands", forget_loss="substitute"),
                 MethodConfig(method="scissorhands_minmax", forget_loss="substitute")):
        assert not warn_unused_substitute(config, used)
    assert not warn_unused_substitute(EraseConfig(data_dir=str(dirs)), MethodConfig(method="esd"))  # none named
    assert warn_unused_substitute(EraseConfig(data_dir=str(dirs), substitute_rewrite=True), MethodConfig(method="esd"))


def test_tied_substitutes_share_one_word_the_base_model_is_nearest_to():
    from erasure.config import MethodConfig
    from pipelines.conditioning import encode_prompt_table
    from pipelines.erase import build_objective, choose_replacement
    from pipelines.tiny import build_tiny_pipeline
    from prompts.base import replacement_words

    generator = torch.Generator().manual_seed(0)
    data = lambda prompts: types.SimpleNamespace(prompts=prompts, metadata=[{}] * len(prompts),
                                                 latents=torch.randn(len(prompts), 4, 16, 16, generator=generator))
    forget = data(["a red handwritten digit two", "a red handwritten digit three"] * 2)
    retain = data([f"a {c} handwritten digit {d}" for c in ("blue", "green", "white") for d in ("two", "three")])
    # the choice reads the objective's gaps: here a candidate's gap is its prompt id, so the smallest id wins
    ids = {p: i for i, p in enumerate(sorted({*forget.prompts, *retain.prompts}))}
    retain_prompts = sorted(set(retain.prompts))
    words = replacement_words(sorted(set(forget.prompts)), retain_prompts)
    by_id = types.SimpleNamespace(prediction_gap=lambda unet, batch, other: other.double())
    word, gaps = choose_replacement(by_id, torch.nn.Linear(1, 1), forget, ids, retain_prompts, words, "cpu")
    assert word == "blue" and gaps["blue"] < gaps["green"] < gaps["white"]
    negated = types.SimpleNamespace(prediction_gap=lambda unet, batch, other: -other.double())
    assert choose_replacement(negated, torch.nn.Linear(1, 1), forget, ids, retain_prompts, words, "cpu")[0] == "white"
    assert choose_replacement(by_id, torch.nn.Linear(1, 1), forget, ids, retain_prompts, words, "cpu",
                              rule="farthest") == ("white", gaps)

    pipe = build_tiny_pipeline(seed=0)
    config = types.SimpleNamespace(substitute_prompt=None, substitute_word=None, substitute_ties="nearest",
                                   substitute_rewrite=False,
                                   relabel_target="prediction", negative_guidance=1.0, seed=0)
    objective, forget_ids, _ = build_objective(pipe, config, forget, retain, "cpu", MethodConfig(retain_loss="distill", forget_loss="substitute"))
    choice = objective.substitute_choice
    assert choice["rule"] == "nearest" and set(choice["prediction_gaps"]) == {"blue", "green", "white"}
    assert choice["word"] == min(choice["prediction_gaps"], key=choice["prediction_gaps"].get)
    assert len(set(choice["prediction_gaps"].values())) == 3  # the tiny random UNet tells the words apart
    far = build_objective(pipe, types.SimpleNamespace(**{**vars(config), "substitute_ties": "farthest"}), forget,
                          retain, "cpu", MethodConfig(retain_loss="distill", forget_loss="substitute"))[0]
    assert far.substitute_choice["rule"] == "farthest" and far.substitute_choice["prediction_gaps"] == choice["prediction_gaps"]
    assert far.substitute_choice["word"] == max(choice["prediction_gaps"], key=choice["prediction_gaps"].get)
    # the substitute's own retain images hold the forget prompt too (the anchor term): each retain prompt holding the
    # word lists the one forget prompt it replaces, every other retain prompt none
    prompt_ids = {p: i for i, p in enumerate(sorted({*forget.prompts, *retain.prompts, ""}))}
    for prompt in sorted(set(retain.prompts)):
        listed = objective.anchor_ids[prompt_ids[prompt]].tolist()
        expected = [prompt_ids[prompt.replace(choice["word"], "red")]] if choice["word"] in prompt else [-1]
        assert listed == expected, prompt
    for off in (MethodConfig(retain_loss="distill", forget_loss="substitute", anchor_weight=0),
                MethodConfig(retain_loss="data", forget_loss="substitute")):
        assert build_objective(pipe, config, forget, retain, "cpu", off)[0].anchor_ids is None
    # every forget prompt is taught the one word (read back by embedding)
    expected = encode_prompt_table(pipe, [p.replace("red", choice["word"]) for p in forget.prompts], "cpu").hidden
    torch.testing.assert_close(objective.embeddings[objective.relabel_ids[forget_ids]], expected)
    # the gap is zero to the prompt itself and grows with a different one
    batch = {"x": forget.latents[:2], "y": forget_ids[:2], "index": torch.arange(2)}
    assert objective.prediction_gap(pipe.unet, batch, forget_ids[:2]).abs().max() == 0
    substituted = objective.relabel_ids[forget_ids[:2]]
    assert (objective.prediction_gap(pipe.unet, batch, substituted) > 0).all()
    # K alternatives at once: one row each, as K separate calls
    both = objective.prediction_gap(pipe.unet, batch, torch.stack([forget_ids[:2], substituted]))
    assert both.shape == (2, 2) and both[0].abs().max() == 0
    torch.testing.assert_close(both[1], objective.prediction_gap(pipe.unet, batch, substituted))
    # rotate: nothing is chosen and the two prompts get the tied colours in turn (sorted: "three" blue, "two"
    # green); a method without a substitute term skips the choice (and its forward passes) and rotates too
    rotating = types.SimpleNamespace(**{**vars(config), "substitute_ties": "rotate"})
    for rotated, rotated_ids, _ in (
            build_objective(pipe, rotating, forget, retain, "cpu", MethodConfig(retain_loss="distill", forget_loss="substitute")),
            build_objective(pipe, config, forget, retain, "cpu", MethodConfig(method="esd"))):
        assert rotated.substitute_choice is None
        expected = encode_prompt_table(pipe, [{"a red handwritten digit three": "a blue handwritten digit three",
                                               "a red handwritten digit two": "a green handwritten digit two"}[p]
                                              for p in forget.prompts[:2]], "cpu").hidden
        torch.testing.assert_close(rotated.embeddings[rotated.relabel_ids[rotated_ids[:2]]], expected)


def test_ties_without_a_one_word_replacement_are_said_not_rotated_silently(caplog):
    from erasure.config import MethodConfig
    from pipelines.erase import build_objective
    from pipelines.tiny import build_tiny_pipeline

    data = lambda prompts: types.SimpleNamespace(prompts=prompts, metadata=[{}] * len(prompts),
                                                 latents=torch.zeros(len(prompts), 4, 16, 16))
    forget, retain = data(["an image of a tench"]), data(["an image of a garbage truck", "an image of a french horn"])
    config = types.SimpleNamespace(substitute_prompt=None, substitute_word=None, substitute_ties="nearest",
                                   substitute_rewrite=False,
                                   relabel_target="prediction", negative_guidance=1.0, seed=0)
    pipe = build_tiny_pipeline(seed=0)
    substitute = MethodConfig(retain_loss="distill", forget_loss="substitute")
    assert build_objective(pipe, config, forget, retain, "cpu", substitute)[0].substitute_choice is None
    assert "no one word replaces the concept" in caplog.text
    caplog.clear()  # asked to rotate, or a method without a substitute term: nothing to say
    build_objective(pipe, types.SimpleNamespace(**{**vars(config), "substitute_ties": "rotate"}), forget, retain, "cpu",
                    substitute)
    build_objective(pipe, config, forget, retain, "cpu", MethodConfig(method="esd"))
    assert "no one word replaces the concept" not in caplog.text


def test_anchor_table_lists_the_forget_prompts_each_retained_substitute_replaces():
    from pipelines.erase import anchor_table

    ids = {p: i for i, p in enumerate(["a", "b", "c", "x", "y"])}
    table = anchor_table({"a": "x", "b": "x", "c": "y"}, ids, {"x", "y"})
    assert table.tolist() == [[-1, -1], [-1, -1], [-1, -1], [0, 1], [2, -1]]
    assert anchor_table({"a": "x"}, ids, {"y"}) is None  # no retain image is drawn from the substitute


def test_rewritten_substitutes_keep_the_colour_the_retain_set_lacks():
    """substitute_rewrite: the forget prompt with its digit replaced, encoded apart and appended to the table."""
    from erasure.config import MethodConfig
    from pipelines.conditioning import encode_prompt_table
    from pipelines.erase import build_objective
    from pipelines.tiny import build_tiny_pipeline

    generator = torch.Generator().manual_seed(0)
    data = lambda prompts: types.SimpleNamespace(prompts=prompts, metadata=[{}] * len(prompts),
                                                 latents=torch.randn(len(prompts), 4, 16, 16, generator=generator))
    forget = data(["a blue handwritten digit two", "a handwritten digit two in red"])
    retain = data(["a blue handwritten digit three", "a handwritten digit three", "a red handwritten digit five"])
    config = types.SimpleNamespace(substitute_prompt=None, substitute_word="three", substitute_ties="nearest",
                                   substitute_rewrite=False, relabel_target="prediction", negative_guidance=1.0, seed=0)
    pipe = build_tiny_pipeline(seed=0)
    method = MethodConfig(retain_loss="distill", forget_loss="substitute")
    closest, forget_ids, _ = build_objective(pipe, config, forget, retain, "cpu", method)
    rewriting = types.SimpleNamespace(**{**vars(config), "substitute_rewrite": True})
    rewritten, rewritten_ids, _ = build_objective(pipe, rewriting, forget, retain, "cpu", method)
    # the closest retain prompt drops the red; the rewrite keeps it (read back by embedding)
    drawn = lambda o, i: o.embeddings[o.relabel_ids[i]]
    for objective, ids, second in ((closest, forget_ids, "a handwritten digit three"),
                                   (rewritten, rewritten_ids, "a handwritten digit three in red")):
        torch.testing.assert_close(drawn(objective, ids), encode_prompt_table(
            pipe, ["a blue handwritten digit three", second], "cpu").hidden)
    # one row appended, the others bit-equal to the run without it (one encode call per table)
    assert len(rewritten.embeddings) == len(closest.embeddings) + 1
    assert torch.equal(rewritten.embeddings[:len(closest.embeddings)], closest.embeddings)
    # the anchor term holds only the substitute that has retain images ("a blue ... three")
    anchored = rewritten.anchor_ids[(rewritten.anchor_ids >= 0).any(1)]
    assert anchored.shape[0] == 1 and closest.anchor_ids[(closest.anchor_ids >= 0).any(1)].shape[0] == 2


def test_added_prompts_pad_the_listed_ids():
    from diffusers import DDPMScheduler

    from pipelines.objective import DiffusionObjective

    listed = torch.tensor([[1], [-1]])
    objective = DiffusionObjective(DDPMScheduler(), torch.zeros(2, 3, 4), torch.arange(2), 1, neutral_ids=listed,
                                   anchor_ids=listed)
    assert objective.add_prompts(torch.ones(2, 3, 4)).tolist() == [2, 3]
    assert objective.relabel_ids.tolist() == [0, 1, 2, 3] and objective.embeddings[2:].eq(1).all()
    assert objective.neutral_ids.tolist() == objective.anchor_ids.tolist() == [[1], [-1], [-1], [-1]]
    with pytest.raises(ValueError, match=r"add_prompts: rows of shape \(3, 5\)"):
        objective.add_prompts(torch.ones(1, 3, 5))
