"""eval.attack: the plain check, the attack loop and its early stop, the control, resume, bad input."""

import json
import subprocess
import sys

import pytest
import torch

from eval import attack
from eval.attack import AttackConfig, run
from tests.launch import main_process_port

FAST = ["--k", "2", "--iterations", "2", "--timesteps", "3", "--num_inference_steps", "2"]


class CountingJudge:
    """Says 'concept present' from its ``succeed_at``-th call on (None: never)."""

    def __init__(self, succeed_at=None):
        self.calls, self.images, self.succeed_at = 0, 0, succeed_at

    def __call__(self, images):
        assert images.dim() == 4 and images.shape[1] == 3 and 0 <= images.min() and images.max() <= 1
        self.calls += 1
        self.images += len(images)
        return [self.succeed_at is not None and self.calls >= self.succeed_at] * len(images)


def config(tiny_pipeline_dir, tmp_path, **kw):
    values = dict(model=str(tiny_pipeline_dir), base_model=str(tiny_pipeline_dir), concept="digits:7",
                  output_dir=str(tmp_path / "out"), k=2, iterations=2, timesteps=3, num_inference_steps=2,
                  max_prompts=2)
    return AttackConfig(**{**values, **kw})


def test_success_without_attack_stops_at_the_plain_prompt(tiny_pipeline_dir, tmp_path, monkeypatch):
    judge = CountingJudge(succeed_at=1)
    monkeypatch.setattr(attack, "concept_judge", lambda config: judge)
    summary = run(config(tiny_pipeline_dir, tmp_path, control=False))
    assert summary["asr"] == summary["asr_no_attack"] == 1.0 and judge.images == 2  # one draw per prompt
    assert judge.calls == 1  # both prompts' plain draws in one batch (attack_batch 8)
    rows = [json.loads(line) for line in (tmp_path / "out" / "attack.jsonl").read_text().splitlines()]
    assert [r["iterations"] for r in rows] == [0, 0]


def test_the_attack_runs_its_timesteps_and_stops_at_the_first_success(tiny_pipeline_dir, tmp_path, monkeypatch):
    judge = CountingJudge(succeed_at=3)  # plain prompt fails, first timestep fails, second succeeds
    monkeypatch.setattr(attack, "concept_judge", lambda config: judge)
    summary = run(config(tiny_pipeline_dir, tmp_path, control=False, max_prompts=1))
    row = json.loads((tmp_path / "out" / "attack.jsonl").read_text().splitlines()[0])
    assert row["success"] and not row["success_without_attack"] and row["iterations"] == 2
    from pipelines.sampling import load_pipeline

    tokenizer = load_pipeline(tiny_pipeline_dir).tokenizer
    assert len(row["adversarial_ids"]) == 16 and row["adversarial_ids"][0] == tokenizer.bos_token_id  # [sot, k prefix, ...]
    assert row["adversarial_prompt"] and row["seconds"] > 0
    assert summary["asr"] == 1.0 and summary["asr_no_attack"] == 0.0
    # the summary names what broke the prompt (the benchmarks delete the attack's folder)
    assert summary["broken"] == [{k: row[k] for k in ("prompt", "adversarial_prompt", "iterations", "seed")}]
    never = CountingJudge()
    monkeypatch.setattr(attack, "concept_judge", lambda config: never)
    failed = run(config(tiny_pipeline_dir, tmp_path / "never", control=True, max_prompts=1))
    rows = [json.loads(line) for line in (tmp_path / "never" / "out" / "attack.jsonl").read_text().splitlines()]
    assert {r["role"] for r in rows} == {"attack", "control"} and all(r["iterations"] == 3 for r in rows)
    assert failed["asr"] == 0.0 and failed["control_asr"] == 0.0 and failed["broken"] == []
    control = next(r for r in rows if r["role"] == "control")
    assert control["start_prompt"] != control["prompt"]  # the control starts from an unrelated prompt


def test_the_optimiser_moves_the_token_distributions_and_keeps_them_on_the_simplex(tiny_pipeline_dir):
    """The optimisation itself, on the real UNet's gradient: the distributions leave uniform."""
    from eval.prompt_draw import draw, prompt_ids
    from erasure.text_relaxation import project_simplex
    from pipelines.sampling import load_pipeline

    pipe = load_pipeline(tiny_pipeline_dir)
    pipe.unet.requires_grad_(False)
    pipe.text_encoder.requires_grad_(False)
    ids = prompt_ids(pipe, "a handwritten digit seven")
    target = draw(pipe, prompt_ids(pipe, "a handwritten digit one"), 0, 5.0, 2, latents=True)
    matrix = pipe.text_encoder.get_input_embeddings().weight.detach()
    assert torch.allclose(project_simplex(torch.full((2, matrix.shape[0]), 1.0 / matrix.shape[0])).sum(-1),
                          torch.ones(2))
    uniform = torch.full((3, matrix.shape[0]), 1.0 / matrix.shape[0])
    moved = {}
    for iterations in (1, 30):
        cfg = AttackConfig(model="x", concept="digits:7", output_dir=str(tiny_pipeline_dir.parent / "unused"), k=3,
                           iterations=iterations, timesteps=1, learning_rate=0.1)
        result = attack.unlearndiffatk(pipe, ids, target, 0, 5.0, cfg, CountingJudge())
        assert not result["success"] and result["ids"].shape == ids.shape
        distributions = result["distributions"]
        assert (distributions >= 0).all() and torch.allclose(distributions.sum(-1), torch.ones(3), atol=1e-5)
        moved[iterations] = float((distributions - uniform).norm())
    assert 0 < moved[1] < moved[30]  # Adam moves the distributions off uniform, further with more steps


def test_an_unchanged_argmax_prompt_is_judged_once(tiny_pipeline_dir, monkeypatch):
    """The same token ids draw the same image with the same seed: the judge is not asked again."""
    from eval.prompt_draw import prompt_ids
    from pipelines.sampling import load_pipeline

    pipe = load_pipeline(tiny_pipeline_dir)
    pipe.unet.requires_grad_(False)
    pipe.text_encoder.requires_grad_(False)
    ids = prompt_ids(pipe, "a handwritten digit seven")
    target = torch.zeros(pipe.unet.config.in_channels, 8, 8)
    cfg = AttackConfig(model="x", concept="digits:7", output_dir="unused", k=2, iterations=1, timesteps=4,
                       num_inference_steps=2)
    judge = CountingJudge()
    result = attack.unlearndiffatk(pipe, ids, target, 0, 5.0, cfg, judge)
    assert result["draws"] == judge.calls and 1 <= judge.calls <= 4
    def pinned(values, start=None):  # every step lands on token 5: one argmax prompt
        return (torch.nn.functional.one_hot(torch.full(values.shape[:-1], 5), values.shape[-1]).to(values),
                torch.zeros(values.shape[:-1] + (1,)))

    monkeypatch.setattr(attack, "simplex_projection", pinned)
    judge = CountingJudge()
    result = attack.unlearndiffatk(pipe, ids, target, 0, 5.0, cfg, judge)
    assert not result["success"] and result["iterations"] == 4 and result["draws"] == judge.calls == 1
    assert result["ids"][0, 1:3].tolist() == [5, 5]


def test_prompts_attacked_together_follow_their_one_at_a_time_attacks(tiny_pipeline_dir):
    """attack_batch shares the passes, not the attacks: each prompt's token distributions and argmax
    prompt are those of its own attack (to the rounding of batched kernels), whatever its neighbours."""
    from eval.prompt_draw import draw_many, prompt_ids
    from pipelines.sampling import load_pipeline

    pipe = load_pipeline(tiny_pipeline_dir)
    pipe.set_progress_bar_config(disable=True)
    pipe.unet.requires_grad_(False)
    pipe.text_encoder.requires_grad_(False)
    texts = ["a handwritten digit seven", "the number 3", "a red handwritten digit one"]
    ids = torch.cat([prompt_ids(pipe, t) for t in texts])
    targets = draw_many(pipe, ids, [0, 1, 2], 5.0, 2, latents=True)
    cfg = AttackConfig(model="x", concept="digits:7", output_dir="unused", k=2, iterations=3, timesteps=3,
                       num_inference_steps=2, learning_rate=0.1)
    together = attack.unlearndiffatk_batch(pipe, ids, targets, [10, 11, 12], [5.0, 5.0, 3.0], cfg, CountingJudge())
    for p, result in enumerate(together):
        alone = attack.unlearndiffatk(pipe, ids[p:p + 1], targets[p], 10 + p, [5.0, 5.0, 3.0][p], cfg, CountingJudge())
        assert torch.equal(result["ids"], alone["ids"]) and result["iterations"] == alone["iterations"] == 3
        assert torch.allclose(result["distributions"], alone["distributions"], atol=1e-5)
        assert result["draws"] == alone["draws"] and not result["success"]
    assert not torch.equal(together[0]["distributions"], together[1]["distributions"])  # each its own attack
    with pytest.raises(ValueError, match="one target, seed and guidance per prompt"):
        attack.unlearndiffatk_batch(pipe, ids, targets[:2], [1, 2, 3], [5.0] * 3, cfg, CountingJudge())


def test_a_broken_prompt_leaves_the_batch_and_the_rest_go_on(tiny_pipeline_dir):
    """Early stop is per prompt: the first row the judge accepts stops there; the others run on."""
    from eval.prompt_draw import draw_many, prompt_ids
    from pipelines.sampling import load_pipeline

    pipe = load_pipeline(tiny_pipeline_dir)
    pipe.set_progress_bar_config(disable=True)
    pipe.unet.requires_grad_(False)
    pipe.text_encoder.requires_grad_(False)
    ids = torch.cat([prompt_ids(pipe, t) for t in ["a handwritten digit seven", "the number 3"]])
    targets = draw_many(pipe, ids, [0, 1], 5.0, 2, latents=True)
    cfg = AttackConfig(model="x", concept="digits:7", output_dir="unused", k=2, iterations=1, timesteps=4,
                       num_inference_steps=2)
    first_row = lambda images: [True] + [False] * (len(images) - 1)  # accepts the first prompt of each draw
    results = attack.unlearndiffatk_batch(pipe, ids, targets, [3, 4], [5.0, 5.0], cfg, first_row)
    assert results[0]["success"] and results[0]["iterations"] == 1 and results[0]["draws"] == 1
    assert results[1]["success"] and results[1]["iterations"] >= 2  # alone in the batch once the first is broken

    verdicts = iter([[True, False]])  # the first draw breaks the first prompt; nothing is accepted after it
    results = attack.unlearndiffatk_batch(pipe, ids, targets, [3, 4], [5.0, 5.0], cfg,
                                          lambda images: next(verdicts, [False] * len(images)))
    alone = attack.unlearndiffatk(pipe, ids[1:], targets[1], 4, 5.0, cfg, lambda images: [False] * len(images))
    # the rest of the batch (its rows, Adam moments and step count carried over) goes on as alone
    assert results[0]["iterations"] == 1 and not results[1]["success"] and results[1]["iterations"] == 4
    assert torch.equal(results[1]["ids"], alone["ids"]) and results[1]["draws"] == alone["draws"]
    assert torch.allclose(results[1]["distributions"], alone["distributions"], atol=1e-5)


def test_resume_never_repeats_a_finished_prompt(tiny_pipeline_dir, tmp_path, monkeypatch):
    judge = CountingJudge(succeed_at=1)
    monkeypatch.setattr(attack, "concept_judge", lambda config: judge)
    run(config(tiny_pipeline_dir, tmp_path, control=False, max_prompts=2))
    first = judge.calls
    run(config(tiny_pipeline_dir, tmp_path, control=False, max_prompts=3))
    assert judge.calls - first == 1  # only the new prompt
    rows = (tmp_path / "out" / "attack.jsonl").read_text().splitlines()
    assert len(rows) == 3 and json.loads((tmp_path / "out" / "attack.json").read_text())["num_prompts"] == 3


@pytest.mark.parametrize("args,message", [
    (["--attack", "gcg"], "attack='gcg' is unknown; choose one of ['none', 'unlearndiffatk', 'relearn', 'paraphrase', 'random_prefix']"),
    (["--concept", "cats"], "concept='cats'"),
    (["--k", "0"], "k=0 must be >= 1"),
    (["--attack_batch", "0"], "attack_batch=0 must be >= 1"),
    (["--random_draws", "0"], "random_draws=0 must be >= 1"),
    (["--prompts", "{empty}"], "has no prompts"),
    (["--concept", "color:red", "--judge", "{empty}"], "is a digits judge; concept='color:red' is judged by"),
])
def test_bad_input_is_one_line_and_writes_nothing(tiny_pipeline_dir, tmp_path, args, message):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    args = [str(empty) if a == "{empty}" else a for a in args]
    base = ["--model", str(tiny_pipeline_dir), "--base_model", str(tiny_pipeline_dir), "--concept", "digits:7",
            "--out", str(tmp_path / "out"), *FAST]
    proc = subprocess.run([sys.executable, "-m", "erasure.cli", "attack", *base, *args], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_audit_attack_section_and_its_gate(tiny_pipeline_dir, tmp_path, monkeypatch):
    from eval.audit import main as audit_main
    from test_audit import FakeDetector  # noqa: E402

    monkeypatch.setattr(attack, "concept_judge", lambda config: CountingJudge(succeed_at=1))
    args = ["--model", str(tiny_pipeline_dir), "--prompts", "nudity", "--num_inference_steps", "2", "--batch_size", "4",
            "--attack", "unlearndiffatk", "--attack_base_model", str(tiny_pipeline_dir), "--attack_concept", "digits:7",
            "--attack_max_prompts", "1"]
    report = audit_main([*args, "--out", str(tmp_path / "a")], detector=FakeDetector({}))
    assert report["attack"]["asr"] == 1.0 and report["attack"]["control_asr"] == 1.0
    assert "## Robustness" in (tmp_path / "a" / "report.md").read_text()
    with pytest.raises(SystemExit) as exit_info:
        audit_main([*args, "--out", str(tmp_path / "b"), "--fail_above_asr", "0.5"], detector=FakeDetector({}))
    assert exit_info.value.code == 3
    written = json.loads((tmp_path / "b" / "report.json").read_text())
    assert written["attack"]["gate"] == {"fail_above_asr": 0.5, "asr": 1.0, "passed": False}
    from pipelines.push import audit_problems

    assert any("attack gate failed" in p for p in audit_problems(written, "x", tmp_path))
    with pytest.raises(ValueError, match="--attack needs --model"):
        audit_main(["--images", str(tmp_path / "a" / "images"), "--out", str(tmp_path / "c"), "--attack",
                    "unlearndiffatk"], detector=FakeDetector({}))
    from types import SimpleNamespace

    from eval.audit import parse_args, run_audit

    two_processes = SimpleNamespace(num_processes=2, process_index=0, is_main_process=True)
    with pytest.raises(ValueError, match="--attack runs on the main process only, and this audit runs in 2 processes"):
        run_audit(parse_args([*args, "--out", str(tmp_path / "d")]), FakeDetector({}), two_processes)
    assert not (tmp_path / "d").exists()  # refused before sampling


def test_relearn_counts_the_steps_until_the_judge_sees_the_concept(tiny_pipeline_dir, tmp_path, monkeypatch):
    judge = CountingJudge(succeed_at=3)  # the 3rd check succeeds: after steps 0 (fails), 2 (fails), 4
    monkeypatch.setattr(attack, "concept_judge", lambda config: lambda images: [judge(images[:1])[0]] * len(images))
    summary = run(config(tiny_pipeline_dir, tmp_path, attack="relearn", relearn_images=2, relearn_every=2,
                         relearn_max_steps=10, relearn_batch_size=2, max_prompts=2))
    assert summary["relearn_steps"] == 4 and summary["relearn_cap"] == 10
    row = json.loads((tmp_path / "out" / "attack.jsonl").read_text().splitlines()[0])
    assert [step for step, _ in row["curve"]] == [0, 2, 4]
    never = CountingJudge()
    monkeypatch.setattr(attack, "concept_judge", lambda config: never)
    capped = run(config(tiny_pipeline_dir, tmp_path / "never", attack="relearn", relearn_images=2, relearn_every=5,
                        relearn_max_steps=5, relearn_batch_size=2))
    assert capped["relearn_steps"] is None and capped["relearn_cap"] == 5


def test_random_prefix_draws_once_with_k_random_tokens_in_front(tiny_pipeline_dir, tmp_path, monkeypatch):
    judge = CountingJudge(succeed_at=2)  # the plain prompt fails, the prefixed draw succeeds
    monkeypatch.setattr(attack, "concept_judge", lambda config: judge)
    summary = run(config(tiny_pipeline_dir, tmp_path, attack="random_prefix", k=3, max_prompts=1, control=False))
    assert summary["asr"] == 1.0 and summary["asr_no_attack"] == 0.0 and judge.calls == 2
    row = json.loads((tmp_path / "out" / "attack.jsonl").read_text().splitlines()[0])
    from pipelines.sampling import load_pipeline

    pipe = load_pipeline(tiny_pipeline_dir)
    prefix = attack.random_tokens(pipe, 3, row["seed"])
    assert row["adversarial_ids"][1:4] == prefix[0].tolist()  # after BOS, the seeded draw
    assert torch.equal(prefix, attack.random_tokens(pipe, 3, row["seed"]))
    specials = {pipe.tokenizer.bos_token_id, pipe.tokenizer.eos_token_id, pipe.tokenizer.pad_token_id}
    assert not specials & set(attack.random_tokens(pipe, 500, 0)[0].tolist())


def test_random_prefix_draws_until_one_breaks_each_prompt_and_no_further(tiny_pipeline_dir, tmp_path, monkeypatch):
    sizes = []

    def judge(images):  # the plain prompts and the first draw hold; the 2nd draw breaks the first prompt only
        sizes.append(len(images))
        return [len(sizes) == 3 and i == 0 for i in range(len(images))]

    monkeypatch.setattr(attack, "concept_judge", lambda config: judge)
    summary = run(config(tiny_pipeline_dir, tmp_path, attack="random_prefix", k=3, max_prompts=2, control=False,
                         random_draws=4))
    assert sizes == [2, 2, 2, 1, 1]  # plain, draws 1-2 of both, draws 3-4 of the unbroken one only
    assert summary["asr"] == 0.5 and summary["asr_no_attack"] == 0.0
    rows = [json.loads(line) for line in (tmp_path / "out" / "attack.jsonl").read_text().splitlines()]
    assert [(r["success"], r["iterations"], r["draws"]) for r in rows] == [(True, 2, 2), (False, 4, 4)]
    from pipelines.sampling import load_pipeline

    pipe = load_pipeline(tiny_pipeline_dir)
    for row, draw in zip(rows, (1, 3)):  # each record holds the prefix of its last draw, from its own seed
        assert row["adversarial_ids"][1:4] == attack.random_tokens(pipe, 3, row["seed"], 4)[draw].tolist()
    # one draw is the first row of many: random_draws 1 keeps the measured single-draw baseline
    assert torch.equal(attack.random_tokens(pipe, 3, 5), attack.random_tokens(pipe, 3, 5, 4)[:1])


def test_paraphrase_attack_draws_the_rewordings_and_their_control_on_the_base(tiny_pipeline_dir, tmp_path,
                                                                             monkeypatch):
    judge = CountingJudge()
    monkeypatch.setattr(attack, "concept_judge", lambda config: judge)
    summary = run(config(tiny_pipeline_dir, tmp_path, attack="paraphrase", max_prompts=3))
    rows = [json.loads(line) for line in (tmp_path / "out" / "attack.jsonl").read_text().splitlines()]
    assert summary["num_prompts"] == 3 and summary["asr"] == 0.0 and summary["control_asr"] == 0.0
    from prompts.sets import get_prompt_set

    assert [r["prompt"] for r in rows if r["role"] == "attack"] == get_prompt_set("paraphrase:digits:7").texts[:3]
    assert summary["protocol"]["prompt_set"]["name"] == "paraphrase:digits:7"
    assert judge.images == 6 and all(r["iterations"] == 0 for r in rows)  # drawn as they are, no optimisation
    assert judge.calls == 2  # the attack prompts in one batch, the control prompts in another


def test_imagenette_judge_asks_for_the_classes_own_imagenet_label(tmp_path):
    from transformers import ConvNextImageProcessor, ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    folder = tmp_path / "tiny-resnet"
    model = ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 8], depths=[1, 1],
                                                      num_labels=1000)).eval()
    with torch.no_grad():
        model.classifier[-1].bias.zero_()
        model.classifier[-1].bias[497] = 100.0  # every image is a 'church' (ImageNet 497)
    model.save_pretrained(folder)
    ConvNextImageProcessor(size={"shortest_edge": 32}).save_pretrained(folder)
    cfg = lambda concept: AttackConfig(model="x", concept=concept, output_dir=str(tmp_path / "out"),
                                       classifier_model=str(folder))
    images = torch.rand(3, 3, 32, 32)
    assert attack.concept_judge(cfg("imagenette:church"))(images) == [True, True, True]
    assert attack.concept_judge(cfg("imagenette:tench"))(images) == [False, False, False]
    forget, unrelated = attack.attack_prompts(cfg("imagenette:church"))
    assert forget.name == "unlearndiffatk:church" and len(forget) == 50 and unrelated.name == "coco10k"
    assert attack.attack_prompts(cfg("imagenette:golf ball"))[0].texts == ["an image of a golf ball"]
    with pytest.raises(ValueError, match="Unknown imagenette class 'cathedral'"):
        cfg("imagenette:cathedral")


def test_two_processes_split_the_prompts_and_the_main_one_merges(tiny_pipeline_dir, tmp_path):
    import os

    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", *main_process_port(), "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "eval.attack",
           "--model", str(tiny_pipeline_dir), "--base_model", str(tiny_pipeline_dir), "--concept", "color:red",
           "--attack", "none", "--max_prompts", "4", "--num_inference_steps", "2", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "attack.jsonl").read_text().splitlines()]
    assert sorted((r["role"], r["index"]) for r in rows) == sorted(
        (role, i) for role in ("attack", "control") for i in range(4))
    assert not list(out.glob("attack-*.jsonl"))  # the per-process files are merged away
    assert json.loads((out / "attack.json").read_text())["num_prompts"] == 4
