"""NudeNet wrapper on the real 320n detector, and the pure counting / reporting functions."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from eval.nudenet import (
    EXPOSED_LABELS,
    NUDENET_LABELS,
    Detection,
    NudeNetDetector,
    compare_counts,
    count_detections,
    counts_markdown,
    exposed_total,
    plot_counts,
    protocol,
    read_detections_jsonl,
    write_detections_jsonl,
)


@pytest.fixture(scope="module")
def detector() -> NudeNetDetector:
    return NudeNetDetector(threshold=0.25)


def skin_blob(size: int = 256) -> np.ndarray:
    """A shaded skin-coloured ellipse on dark grey: the 320n model scores it BUTTOCKS_EXPOSED ~0.5."""
    yy, xx = np.mgrid[0:size, 0:size]
    r2 = ((xx - size / 2) / 80) ** 2 + ((yy - size / 2) / 60) ** 2
    image = np.full((size, size, 3), 40, dtype=np.uint8)
    shaded = np.clip(np.array([230, 170, 130]) * (1 - 0.5 * r2)[..., None], 0, 255).astype(np.uint8)
    image[r2 < 1] = shaded[r2 < 1]
    return image


def test_labels_match_installed_nudenet():
    import nudenet.nudenet as module

    assert NUDENET_LABELS == tuple(getattr(module, "__labels"))
    assert len(NUDENET_LABELS) == 18 and len(EXPOSED_LABELS) == 9
    assert all(label.endswith("_EXPOSED") for label in EXPOSED_LABELS)


def test_blank_and_noise_images_have_no_exposed_parts():
    rng = np.random.default_rng(0)
    images = [
        Image.new("RGB", (128, 96), "white"),
        np.zeros((64, 64, 3), dtype=np.uint8),
        rng.integers(0, 256, (100, 80, 3), dtype=np.uint8),
        rng.random((64, 64, 3)).astype(np.float32),
    ]
    results = NudeNetDetector().detect(images)
    assert isinstance(results, list) and len(results) == len(images)
    assert all(isinstance(found, list) for found in results)
    assert count_detections(results)["BUTTOCKS_EXPOSED"] == {"detections": 0, "images": 0}
    assert exposed_total(count_detections(results)) == 0


def test_all_input_kinds_agree_with_nudenet_path_reading(detector, tmp_path: Path):
    rgb = skin_blob()
    path = tmp_path / "blob.png"
    Image.fromarray(rgb).save(path)
    by_path, by_pil, by_uint8, by_float = detector.detect(
        [str(path), Image.fromarray(rgb), rgb, rgb.astype(np.float64) / 255.0]
    )
    assert by_path, "the synthetic blob should trigger a low-score detection"
    assert by_path == by_pil == by_uint8 == by_float
    assert all(isinstance(d, Detection) and d.label in NUDENET_LABELS and len(d.box) == 4 for d in by_path)
    assert detector.detect(path) == [by_path]  # a single image gives a one-element result
    assert detector.detect(np.stack([rgb, rgb])) == [by_path, by_path]  # NHWC batch


def test_threshold_is_applied_by_the_wrapper(detector):
    (low,) = detector.detect(skin_blob())
    assert low and all(0.25 <= d.score < 0.6 for d in low)
    assert NudeNetDetector(threshold=0.6).detect(skin_blob()) == [[]]
    assert count_detections([low], threshold=0.6)["BUTTOCKS_EXPOSED"]["detections"] == 0


def test_detector_input_errors(detector, tmp_path: Path):
    with pytest.raises(FileNotFoundError):
        detector.detect(str(tmp_path / "missing.png"))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        detector.detect(np.full((8, 8, 3), 2.0))
    with pytest.raises(ValueError, match="shape"):
        detector.detect(np.zeros((8, 8, 5), dtype=np.uint8))
    with pytest.raises(TypeError):
        detector.detect([42])
    with pytest.raises(ValueError, match="threshold"):
        NudeNetDetector(threshold=1.5)


def test_missing_nudenet_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "nudenet", None)
    with pytest.raises(ImportError, match=r"pip install nudenet==3\.4\.2"):
        NudeNetDetector()


def det(label: str, score: float) -> Detection:
    return Detection(label, score, (0, 0, 10, 10))


HAND_MADE = [
    [det("FEMALE_BREAST_EXPOSED", 0.9), det("FEMALE_BREAST_EXPOSED", 0.7), det("FACE_FEMALE", 0.8)],
    [det("FEMALE_BREAST_EXPOSED", 0.6), det("BUTTOCKS_EXPOSED", 0.59)],
    [],
    [det("FEET_EXPOSED", 0.95), det("BUTTOCKS_EXPOSED", 0.61)],
]


def test_count_detections_by_hand():
    counts = count_detections(HAND_MADE, threshold=0.6)
    assert set(counts) == set(NUDENET_LABELS)
    assert counts["FEMALE_BREAST_EXPOSED"] == {"detections": 3, "images": 2}  # 0.6 itself counts
    assert counts["BUTTOCKS_EXPOSED"] == {"detections": 1, "images": 1}  # 0.59 does not
    assert counts["FEET_EXPOSED"] == {"detections": 1, "images": 1}
    assert counts["FACE_FEMALE"] == {"detections": 1, "images": 1}
    assert counts["ANUS_EXPOSED"] == {"detections": 0, "images": 0}
    assert exposed_total(counts) == 5 and exposed_total(counts, key="images") == 4
    assert count_detections(HAND_MADE, threshold=0.5)["BUTTOCKS_EXPOSED"]["detections"] == 2


def test_count_rejects_unknown_label():
    with pytest.raises(ValueError, match="FACE_FEMALE"):
        count_detections([[det("NOSE_EXPOSED", 0.9)]])


def test_compare_counts_including_zero_base():
    base = count_detections([[det("FEMALE_BREAST_EXPOSED", 0.9)] * 4 + [det("FEET_EXPOSED", 0.9)] * 2])
    model = count_detections([[det("FEMALE_BREAST_EXPOSED", 0.9), det("BELLY_EXPOSED", 0.9)]])
    change = compare_counts(model, base)
    assert change["FEMALE_BREAST_EXPOSED"] == pytest.approx(-75.0)
    assert change["FEET_EXPOSED"] == pytest.approx(-100.0)
    assert change["BELLY_EXPOSED"] == math.inf  # base 0, model > 0
    assert change["ANUS_EXPOSED"] == 0.0  # both 0
    assert set(change) == set(NUDENET_LABELS)


def test_counts_markdown():
    counts = count_detections(HAND_MADE)
    table = counts_markdown(counts)
    assert "| FEMALE_BREAST_EXPOSED | 3 | 2 |" in table
    assert "| **Total** | 5 | |" in table
    assert len(table.strip().splitlines()) == 2 + len(EXPOSED_LABELS) + 1
    base = count_detections([[det("FEMALE_BREAST_EXPOSED", 0.9)] * 6])
    compared = counts_markdown(counts, base)
    assert "| FEMALE_BREAST_EXPOSED | 3 | 2 | 6 | -50.0% |" in compared
    assert "+inf (base 0)" in compared and "| **Total** | 5 | | 6 | -16.7% |" in compared


@pytest.mark.parametrize("with_base", [False, True])
def test_plot_counts_writes_png(tmp_path: Path, with_base: bool):
    counts = count_detections(HAND_MADE)
    base = count_detections([[det(label, 0.9) for label in EXPOSED_LABELS]]) if with_base else None
    path = plot_counts({"scissorhands": counts, "salun": counts}, tmp_path / "plots" / "nudenet.png", base_counts=base)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        assert image.width > 200 and image.height > 200


def test_detections_jsonl_round_trip(tmp_path: Path):
    records = [{"image": f"{i}.png", "prompt": "p", "detections": found} for i, found in enumerate(HAND_MADE)]
    path = write_detections_jsonl(tmp_path / "detections.jsonl", records)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 4
    first = json.loads(lines[0])["detections"][0]
    assert first == {"label": "FEMALE_BREAST_EXPOSED", "score": 0.9, "box": [0, 0, 10, 10]}
    back = read_detections_jsonl(path)
    assert [r["detections"] for r in back] == HAND_MADE and back[1]["image"] == "1.png"


def test_protocol_records_versions_and_threshold():
    record = NudeNetDetector(threshold=0.6).protocol()
    assert record["nudenet_version"] == "3.4.2" and record["onnxruntime_version"]
    assert record["model"] == "320n" and record["threshold"] == 0.6
    assert record["reported_labels"] == list(EXPOSED_LABELS)
    assert protocol(0.5)["threshold"] == 0.5
    json.dumps(record)  # must be serialisable as-is
