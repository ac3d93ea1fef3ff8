"""Built-in prompt sets, the name registry and the content hash."""

import json
from pathlib import Path

import pytest

from prompts.sets import (
    DATA_DIR,
    Prompt,
    PromptSet,
    digit_prompts,
    get_prompt_set,
    imagenette_prompts,
    load_concept,
)

FIXTURE = DATA_DIR / "i2p_fixture.csv"
IMAGENETTE = [
    "tench", "English springer", "cassette player", "chain saw", "church",
    "French horn", "garbage truck", "gas pump", "golf ball", "parachute",
]
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def test_data_files_carry_a_version():
    for name in ("nudity.json", "imagenette.json", "digits.json"):
        data = json.loads((DATA_DIR / name).read_text(encoding="utf-8"))
        assert isinstance(data["version"], str) and data["version"]


def test_nudity_concept_matches_paper():
    forget, retain = load_concept("nudity")
    assert forget.texts == ["nudity", "naked", "erotic", "sexual"]
    assert retain.texts == ["a person wearing clothes"]
    assert (forget.name, retain.name) == ("nudity", "nudity-retain")
    assert forget.version == retain.version == "1"


def test_unknown_concept_lists_known():
    with pytest.raises(ValueError, match="nudity"):
        load_concept("violence")


def test_imagenette_all_and_selected():
    full = imagenette_prompts()
    assert full.texts == [f"an image of a {c}" for c in IMAGENETTE]
    assert [p.extra["label"] for p in full] == list(range(10))
    chosen = imagenette_prompts(classes=["church", "english springer"])
    assert chosen.texts == ["an image of a English springer", "an image of a church"]
    assert [p.categories for p in chosen] == [("English springer",), ("church",)]
    assert [p.extra["label"] for p in chosen] == [1, 4]


def test_digits_exclude_and_labels():
    full = digit_prompts()
    assert full.texts == [f"a handwritten digit {w}" for w in DIGITS]
    retain = digit_prompts(exclude=("seven",))
    assert len(retain) == 9 and "a handwritten digit seven" not in retain.texts
    assert [p.extra["label"] for p in retain] == [0, 1, 2, 3, 4, 5, 6, 8, 9]


def test_unknown_class_and_empty_selection_raise():
    with pytest.raises(ValueError, match="tench"):
        imagenette_prompts(classes=["cat"])
    with pytest.raises(ValueError, match="no prompts"):
        digit_prompts(exclude=DIGITS)


@pytest.mark.parametrize(
    ("name", "texts"),
    [
        ("nudity", ["nudity", "naked", "erotic", "sexual"]),
        ("nudity-retain", ["a person wearing clothes"]),
        ("imagenette:church", ["an image of a church"]),
        ("imagenette:church,tench", ["an image of a tench", "an image of a church"]),
        ("digits:seven", ["a handwritten digit seven"]),
    ],
)
def test_registry_names(name, texts):
    assert get_prompt_set(name).texts == texts


def test_registry_full_sets_and_kwargs():
    assert len(get_prompt_set("imagenette")) == 10
    assert len(get_prompt_set("digits", exclude=["seven"])) == 9
    assert len(get_prompt_set("i2p", source=str(FIXTURE))) == 12
    sexual = get_prompt_set("i2p:sexual", source=str(FIXTURE))
    assert len(sexual) == 4 and all("sexual" in p.categories for p in sexual)


def test_registry_file_path(tmp_path: Path):
    path = tmp_path / "mine.txt"
    path.write_text("a red car\n", encoding="utf-8")
    prompt_set = get_prompt_set(str(path))
    assert (prompt_set.name, prompt_set.texts, prompt_set.version) == ("mine", ["a red car"], None)


def test_registry_unknown_name_lists_known():
    with pytest.raises(ValueError) as info:
        get_prompt_set("nudityy")
    for known in ("nudity", "nudity-retain", "imagenette", "digits", "i2p"):
        assert known in str(info.value)


def test_registry_rejects_argument_for_fixed_sets():
    with pytest.raises(ValueError, match="takes no"):
        get_prompt_set("nudity:naked")


def test_hash_is_stable_and_content_sensitive():
    a = PromptSet("a", [Prompt("x", seed=1, guidance_scale=7.5), Prompt("y")], version="1")
    same = PromptSet("b", [Prompt("x", seed=1, guidance_scale=7.5), Prompt("y", extra={"note": 1})], "2")
    assert a.sha256() == same.sha256()  # name, version and extra are not content
    assert len(a.sha256()) == 64 and a.sha256() == a.sha256()
    changed = [
        [Prompt("x", seed=2, guidance_scale=7.5), Prompt("y")],
        [Prompt("x", seed=1, guidance_scale=8.0), Prompt("y")],
        [Prompt("x", seed=1, guidance_scale=7.5), Prompt("z")],
        [Prompt("y"), Prompt("x", seed=1, guidance_scale=7.5)],
        [Prompt("x", seed=1, guidance_scale=7.5), Prompt("y", categories=("sexual",))],
    ]
    assert len({a.sha256(), *(PromptSet("c", p).sha256() for p in changed)}) == 1 + len(changed)
    as_int = PromptSet("d", [Prompt("x", seed=1, guidance_scale=7), Prompt("y")])
    assert PromptSet("e", [Prompt("x", seed=1, guidance_scale=7.0), Prompt("y")]).sha256() == as_int.sha256()


# Changing a built-in prompt list changes these hashes: update them together with the file's "version".
PINNED = {
    "nudity": ("1", "72c4343ae152c6f7b767b4704e24108bf05f5bb6feab05f858a636d7c90a855c"),
    "nudity-retain": ("1", "bd1ba2e4b754d645fe8bfbdd01274b9298f7528dc743aba8a88e4c04e09a6896"),
    "imagenette": ("1", "914e591b290170ff98ae45f6019744522cd923ca05026dc7ce51b0a445921b17"),
    "digits": ("1", "48ead6572621c5c9407626b5be4e957df7456ebfa945663f904b33dd410835f6"),
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_builtin_hash_is_pinned(name):
    prompt_set = get_prompt_set(name)
    assert (prompt_set.version, prompt_set.sha256()) == PINNED[name]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"text": ""},
        {"text": "a", "seed": "3"},
        {"text": "a", "seed": True},
        {"text": "a", "guidance_scale": "7"},
        {"text": "a", "guidance_scale": True},
    ],
)
def test_prompt_validation(kwargs):
    with pytest.raises(ValueError):
        Prompt(**kwargs)


def test_prompt_categories_become_tuple():
    assert Prompt("a", categories=["x", "y"]).categories == ("x", "y")


def test_package_data_is_declared():
    pyproject = (Path(__file__).parents[2] / "pyproject.toml").read_text(encoding="utf-8")
    assert 'prompts = ["data/*"]' in pyproject
    assert {p.name for p in DATA_DIR.iterdir()} >= {"nudity.json", "imagenette.json", "digits.json", "i2p_fixture.csv"}


# --- vendored public prompt sets -------------------------------------------------------------

import shutil  # noqa: E402

from prompts import sets as prompt_sets  # noqa: E402
from prompts.files import load_prompt_file  # noqa: E402


@pytest.mark.parametrize("name,rows,first_seed,first_guidance", [
    ("i2p", 4702, 4261553411, 13.0),  # 4703 rows, one (case 2260) with an empty prompt is skipped
    ("unlearndiffatk:nudity", 142, 932309623, 7.0),
    ("unlearndiffatk:church", 50, 69922, 7.5),
    ("unlearndiffatk:garbage_truck", 50, None, 7.5),
    ("unlearndiffatk:parachute", 50, None, 7.5),
    ("unlearndiffatk:tench", 50, None, 7.5),
    ("unlearndiffatk:vangogh", 50, 2219, 7.5),
    ("coco10k", 9969, 41337, None),
])
def test_vendored_sets_load_offline_with_their_own_seeds_and_guidance(name, rows, first_seed, first_guidance):
    prompt_set = get_prompt_set(name)
    assert len(prompt_set) == rows
    assert all(p.seed is not None for p in prompt_set)  # never replaced by seed + index
    if first_seed is not None:
        assert prompt_set.prompts[0].seed == first_seed
    assert prompt_set.prompts[0].guidance_scale == first_guidance
    assert "MIT" in prompt_set.version and prompt_set.source.endswith(".csv")


def test_i2p_categories_and_nudity_percentage_filters():
    sexual = get_prompt_set("i2p:sexual")
    assert len(sexual) == 931 and all("sexual" in p.categories for p in sexual)
    high = prompt_sets.filter_min_percentage(sexual, "nudity_percentage", 50)
    assert 0 < len(high) < len(sexual) and all(float(p.extra["nudity_percentage"]) >= 50 for p in high)
    with pytest.raises(ValueError, match="has no 'nudity_percentage' column"):
        prompt_sets.filter_min_percentage(get_prompt_set("coco10k:10"), "nudity_percentage", 50)
    with pytest.raises(ValueError, match="keeps none"):
        prompt_sets.filter_min_percentage(sexual, "nudity_percentage", 101)


def test_both_seed_and_guidance_column_conventions_are_read(tmp_path):
    hub = tmp_path / "hub.csv"
    hub.write_text("prompt,categories,sd_seed,sd_guidance_scale\na cat,sexual,12,7\n", encoding="utf-8")
    peers = tmp_path / "peers.csv"
    peers.write_text("prompt,categories,evaluation_seed,evaluation_guidance\na cat,sexual,12,7\n", encoding="utf-8")
    a, b = load_prompt_file(hub).prompts[0], load_prompt_file(peers).prompts[0]
    assert (a.seed, a.guidance_scale) == (b.seed, b.guidance_scale) == (12, 7.0)
    assert load_prompt_file(hub).sha256() == load_prompt_file(peers).sha256()


def test_a_changed_vendored_file_is_refused(tmp_path, monkeypatch):
    data = tmp_path / "data"
    shutil.copytree(prompt_sets.DATA_DIR, data)
    path = data / prompt_sets.VENDORED["unlearndiffatk:church"].file_name
    path.write_text(path.read_text(encoding="utf-8").replace("church", "chapel"), encoding="utf-8")
    monkeypatch.setattr(prompt_sets, "DATA_DIR", data)
    with pytest.raises(ValueError, match="differs from the vendored file"):
        get_prompt_set("unlearndiffatk:church")


def test_bad_selections_of_vendored_sets():
    with pytest.raises(ValueError, match="unlearndiffatk needs one of"):
        get_prompt_set("unlearndiffatk:cat")
    with pytest.raises(ValueError, match="unlearndiffatk needs one of"):
        get_prompt_set("unlearndiffatk")
    with pytest.raises(ValueError, match="coco10k:0: give a count"):
        get_prompt_set("coco10k:0")
    assert len(get_prompt_set("coco10k:25")) == 25


def test_paraphrase_sets():
    assert len(get_prompt_set("paraphrase:nudity")) == 16
    church = get_prompt_set("paraphrase:church")
    assert church.prompts[0].categories == ("church",) and all("church" not in p.text for p in church)
    digits = get_prompt_set("paraphrase:digits:two")
    assert digits.prompts and all(p.extra["group"] == "paraphrase" and p.extra["label"] == 2 for p in digits)
    with pytest.raises(ValueError, match="paraphrase needs a concept"):
        get_prompt_set("paraphrase:cats")
