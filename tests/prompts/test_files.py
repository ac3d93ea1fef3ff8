"""Prompt files (.txt / .csv / .jsonl) and the I2P loader (local CSV and a stubbed Hub dataset)."""

import csv
import json
import sys
import types
from pathlib import Path

import pytest

from prompts.files import load_i2p, load_prompt_file
from prompts.sets import DATA_DIR

FIXTURE = DATA_DIR / "i2p_fixture.csv"
I2P_COLUMNS = [
    "prompt", "categories", "hard", "inappropriate_percentage", "nudity_percentage", "lexica_url",
    "sd_safety_percentage", "prompt_toxicity", "sd_seed", "sd_guidance_scale", "sd_image_width", "sd_image_height",
]


def test_txt_skips_blank_and_comment_lines(tmp_path: Path):
    path = tmp_path / "p.txt"
    path.write_text("# header\n\na cat\n  a dog  \n# another\n", encoding="utf-8")
    prompt_set = load_prompt_file(path)
    assert prompt_set.texts == ["a cat", "a dog"]
    assert all(p.seed is None and p.guidance_scale is None for p in prompt_set)
    assert prompt_set.source == str(path) and prompt_set.name == "p"


def test_csv_with_our_and_i2p_column_names(tmp_path: Path):
    ours, theirs = tmp_path / "ours.csv", tmp_path / "theirs.csv"
    ours.write_text("prompt,seed,guidance_scale,note\na cat,3,7.5,x\na dog,,,y\n", encoding="utf-8")
    theirs.write_text("prompt,sd_seed,sd_guidance_scale\na cat,3,7.5\n", encoding="utf-8")
    first, second = load_prompt_file(ours).prompts
    assert (first.text, first.seed, first.guidance_scale, first.extra) == ("a cat", 3, 7.5, {"note": "x"})
    assert (second.seed, second.guidance_scale) == (None, None)
    (only,) = load_prompt_file(theirs).prompts
    assert (only.seed, only.guidance_scale) == (3, 7.5)


def test_jsonl(tmp_path: Path):
    path = tmp_path / "p.jsonl"
    rows = [{"prompt": "a cat", "seed": 5, "guidance_scale": 6, "categories": ["animal"], "id": 1}, {"prompt": "a dog"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    first, second = load_prompt_file(path).prompts
    assert (first.seed, first.guidance_scale, first.categories, first.extra) == (5, 6, ("animal",), {"id": 1})
    assert second.text == "a dog"


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("empty.txt", "# only a comment\n\n", "empty.txt"),
        ("nocol.csv", "text\na cat\n", "'prompt' column"),
        ("badseed.csv", "prompt,seed\na cat,1.5\n", "badseed.csv:2"),
        ("badgs.jsonl", '{"prompt": "a", "guidance_scale": "high"}\n', "guidance_scale"),
        ("bad.jsonl", '{"prompt": "a"}\nnot json\n', "bad.jsonl:2"),
        ("list.jsonl", '["a"]\n', "JSON object"),
        ("noprompt.jsonl", '{"text": "a"}\n', "prompt"),
        ("p.json", "[]", r"\.txt"),
        ("nangs.jsonl", '{"prompt": "a"}\n{"prompt": "b", "guidance_scale": NaN}\n',
         r"nangs.jsonl:2: guidance_scale nan must be a finite number >= 0"),
        ("infgs.jsonl", '{"prompt": "a", "sd_guidance_scale": Infinity}\n', r"infgs.jsonl:1: guidance_scale inf"),
        ("neggs.csv", "prompt,guidance_scale\na cat,-3\n", r"neggs.csv:2: guidance_scale '-3' must be"),
        ("negseed.csv", "prompt,seed\na cat,-1\n", r"negseed.csv:2: seed '-1' must be >= 0"),
    ],
)
def test_bad_files_raise_with_location(tmp_path: Path, name: str, content: str, match: str):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=match):
        load_prompt_file(path)


def test_missing_file(tmp_path: Path):
    with pytest.raises(FileNotFoundError):
        load_prompt_file(tmp_path / "nope.txt")


def test_i2p_fixture_has_the_real_columns():
    with open(FIXTURE, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == I2P_COLUMNS
        assert len(list(reader)) == 12


def test_i2p_local_csv_parses_seed_and_guidance():
    i2p = load_i2p(FIXTURE)
    assert len(i2p) == 12
    first = i2p.prompts[0]
    assert (first.seed, first.guidance_scale, first.categories) == (1234, 7.0, ("sexual",))
    assert first.extra["sd_image_width"] == "512" and "lexica_url" in first.extra
    assert i2p.prompts[6].categories == ("hate", "harassment", "violence")


@pytest.mark.parametrize(
    ("categories", "expected"),
    [("sexual", 4), (["hate"], 2), (["harassment"], 2), (["violence", "shocking"], 6), ("self-harm", 1)],
)
def test_i2p_category_filter_matches_any(categories, expected):
    kept = load_i2p(FIXTURE, categories=categories)
    wanted = {categories} if isinstance(categories, str) else set(categories)
    assert len(kept) == expected
    assert all(set(p.categories) & wanted for p in kept)


def test_i2p_unknown_category_lists_present():
    with pytest.raises(ValueError) as info:
        load_i2p(FIXTURE, categories=["nudity"])
    message = str(info.value)
    assert "nudity" in message and "sexual" in message and "illegal activity" in message


def test_i2p_hub_without_datasets_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` raise ImportError
    with pytest.raises(ImportError, match=r"pip install scissorhands\[i2p\]"):
        load_i2p("AIML-TUDA/i2p")


def test_i2p_hub_path_uses_load_dataset(monkeypatch):
    calls = []
    rows = [
        {"prompt": "a knight", "categories": "violence", "sd_seed": 11, "sd_guidance_scale": 7.0},
        {"prompt": "a statue", "categories": "sexual, shocking", "sd_seed": 12, "sd_guidance_scale": 8.0},
    ]

    def load_dataset(name, split):
        calls.append((name, split))
        return rows

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    kept = load_i2p("AIML-TUDA/i2p", categories="sexual")
    assert calls == [("AIML-TUDA/i2p", "train")]
    assert kept.texts == ["a statue"] and kept.prompts[0].seed == 12


@pytest.mark.parametrize(("name", "content", "message"), [
    ("utf16.txt", "a cat\n".encode("utf-16"),
     "utf16.txt: byte offset 0 (0xff) is not UTF-8 (it starts with a UTF-16 byte-order mark); prompt files must be"),
    ("latin1.csv", "prompt\nun café\n".encode("latin-1"), "latin1.csv: byte offset 13 (0xe9) is not UTF-8;"),
    ("bom-latin1.txt", b"\xef\xbb\xbfab\xe9\n", "bom-latin1.txt: byte offset 5 (0xe9) is not UTF-8;"),
    ("image.jsonl", b"\x89PNG\r\n\x1a\n\0\0", "image.jsonl: byte offset 0 (0x89) is not UTF-8;"),
    ("zeros.txt", b"a cat\n\0\0\0", "zeros.txt: byte offset 6 is a NUL byte"),
])
def test_files_that_are_not_utf8_fail_with_file_and_byte_offset(tmp_path: Path, name: str, content: bytes,
                                                              message: str):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError) as caught:
        load_prompt_file(path)
    assert str(caught.value).startswith(str(tmp_path / message))
    assert "\n" not in str(caught.value)


def test_a_utf8_byte_order_mark_is_accepted(tmp_path: Path):
    path = tmp_path / "bom.csv"
    path.write_bytes("prompt,seed\nun café,3\n".encode("utf-8-sig"))
    (only,) = load_prompt_file(path).prompts
    assert (only.text, only.seed) == ("un café", 3)


@pytest.mark.parametrize("name", ["long.txt", "long.csv", "long.jsonl"])
def test_a_prompt_over_the_bound_is_refused_with_file_and_line(tmp_path: Path, name: str):
    from prompts.files import MAX_PROMPT_CHARS

    def write(prompt: str) -> int:
        lines = {"long.txt": ["a cat", prompt], "long.csv": ["prompt", "a cat", prompt],
                 "long.jsonl": [json.dumps({"prompt": "a cat"}), json.dumps({"prompt": prompt})]}[name]
        (tmp_path / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
        return len(lines)

    line = write("x" * (MAX_PROMPT_CHARS + 1))
    with pytest.raises(ValueError, match=f"{name}:{line}: prompt of {MAX_PROMPT_CHARS + 1} characters; at most"):
        load_prompt_file(tmp_path / name)
    write("x" * MAX_PROMPT_CHARS)
    assert len(load_prompt_file(tmp_path / name).prompts[-1].text) == MAX_PROMPT_CHARS


def test_a_csv_field_over_the_csv_module_limit_is_a_value_error(tmp_path: Path):
    path = tmp_path / "huge.csv"
    path.write_text("prompt\n" + "x" * (csv.field_size_limit() + 1) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="huge.csv:.*malformed CSV"):
        load_prompt_file(path)
