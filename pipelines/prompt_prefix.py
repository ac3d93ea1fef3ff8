"""Prompt prefixes in token-embedding space: the plumbing of prefix attacks and of adversarial repair.

UnlearnDiffAtk (`eval.attack`) and AdvUnlearn-style adversarial training
(:class:`AdversarialPrefixes`) both put ``k`` tokens after the start token of a prompt
(the public codes' ``prefix_k``) and run the text encoder's own forward on embeddings that
are differentiable in those ``k`` rows: the token-embedding lookup is hooked
(`token_embeddings_replaced`), so position embeddings, the causal mask and the final norm are
the encoder's.

:class:`AdversarialPrefixes` is the inner maximisation of AdvUnlearn (Zhang et al., NeurIPS
2024, "Defensive Unlearning with Adversarial Training"; public code
``train-scripts/utils/attack_util.py``): one continuous prefix per prompt, ``k`` word
embeddings, started from random vocabulary tokens and kept between calls (their
``attack_init="latest"``); each call takes ``steps`` signed-gradient steps (their
``fast_at``) that make the model being erased predict what the *original* model predicts
under the plain prompt, at fresh noise and timesteps on the prompt's images. The repair then
asks the model to give, under the prefixed prompt too, the substitute prompt's prediction.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from erasure.replicas import sum_tensor_across_processes
from erasure.scaling import grad_at_job_scale
from erasure.text_relaxation import draw_rows, project_simplex


def with_prefix(input_ids: Tensor, prefix_ids: Tensor, pad_id: int) -> Tensor:
    """``[sot, prefix..., prompt tokens..., eot, pad...]``: the prefix after the start token,
    truncated to the original length (the public code's ``prefix_k`` insertion)."""
    length = input_ids.shape[-1]
    joined = torch.cat([input_ids[..., :1], prefix_ids.to(input_ids), input_ids[..., 1:]], dim=-1)[..., :length]
    if joined.shape[-1] < length:
        joined = F.pad(joined, (0, length - joined.shape[-1]), value=pad_id)
    return joined


def insert_prefix(token_embeddings: Tensor, prefix: Tensor) -> Tensor:
    """[B, L, D] embeddings of ``[sot, prefix, prompt...]`` from the prompt's [B, L, D] and the
    prefix's [B, k, D], truncated to ``L`` (the embedding-space twin of :func:`with_prefix`)."""
    length = token_embeddings.shape[1]
    return torch.cat([token_embeddings[:, :1], prefix.to(token_embeddings), token_embeddings[:, 1:]], dim=1)[:, :length]


def prefixed_hidden(text_encoder: nn.Module, input_ids: Tensor, prefixes: Tensor, pad_id: int) -> Tensor:
    """[B, L, D] float last hidden states of the prompts ``input_ids`` [B, L] behind the prefix
    embeddings ``prefixes`` [B, k, D] (differentiable in them): the encoder's own forward on
    ``[sot, prefix, prompt...]``, as both adversaries of the repair run it."""
    matrix = text_encoder.get_input_embeddings().weight
    tokens = input_ids.to(matrix.device)
    embeds = insert_prefix(matrix[tokens], prefixes.to(matrix.device, matrix.dtype))
    joined = with_prefix(tokens, torch.full((len(tokens), prefixes.shape[1]), pad_id), pad_id)
    with token_embeddings_replaced(text_encoder, embeds):
        return text_encoder(joined)[0].float()


@contextlib.contextmanager
def token_embeddings_replaced(text_encoder: nn.Module, replace: Tensor) -> Iterator[None]:
    """Within the block, ``text_encoder``'s token-embedding lookup returns ``replace`` [B, L, D]
    instead: the encoder's own forward (position embeddings, causal mask, final norm) then runs
    on embeddings that are differentiable in the prefix."""
    module = text_encoder.get_input_embeddings()
    handle = module.register_forward_hook(lambda _module, _inputs, _output: replace)
    try:
        yield
    finally:
        handle.remove()


def prefixed_embeddings(embedding_matrix: Tensor, input_ids: Tensor, prefix_one_hot: Tensor) -> Tensor:
    """[1, L, D] token embeddings of ``[sot, prefix, prompt...]`` with the prefix as ``one_hot @ E``
    (gradients reach the one-hot rows) and the rest looked up, truncated to ``L``."""
    prefix = prefix_one_hot.to(embedding_matrix) @ embedding_matrix
    return insert_prefix(embedding_matrix[input_ids[:1]], prefix.unsqueeze(0))


class AdversarialPrefixes:
    """One adversarial ``k``-token prefix per prompt id, in word-embedding space (AdvUnlearn).

    Args:
        text_encoder: the pipeline's frozen CLIP text encoder (SD 1.x / 2.x).
        input_ids: [P, L] token ids of every prompt id of the objective's table.
        k: prefix tokens (UnlearnDiffAtk attacks with 5).
        steps: signed-gradient steps per call (AdvUnlearn's ``attack_step``).
        step_size: each step moves every coordinate by ``step_size`` times the vocabulary's RMS
            coordinate (scale-free: CLIP's embeddings and the testbed's differ 50-fold in scale).
        seed: the random start tokens and each call's noise.
        pad_id: the tokenizer's padding id (the ids beside the replaced embeddings).
        restart: the share of each call's prompts whose prefix starts again from random vocabulary
            tokens before the steps (AdvUnlearn's ``attack_init``: 0 ``"latest"``, 1 ``"random"``).
            A kept prefix settles in one mode per prompt, while the discrete attack (`eval.attack`)
            searches from random tokens; on the testbed restarts made the adversary weaker rather
            than wider (more prompts broken, README "Robustness", round 23), so the job keeps 0.
            The draw is a function of the seed, the call and the prompt id: every rank (and a
            resumed job) restarts the same prompts to the same tokens.
        population: prefixes kept per prompt id. A call attacks, and the repair then trains under,
            slot ``(call + prompt id) % population`` of each prompt, so every slot carries on from
            its own last state (unlike a restart) and the repair sees ``population`` modes of a
            prompt instead of the one a single kept prefix settles in. 1: one prefix (AdvUnlearn).

    Every prefix row stays within the largest token embedding's norm: the attacks it stands
    for (`eval.attack`) choose vocabulary tokens, not arbitrary vectors.
    """

    def __init__(self, text_encoder: nn.Module, input_ids: Tensor, k: int, steps: int, step_size: float,
                 seed: int, pad_id: int, restart: float = 0.0, population: int = 1) -> None:
        if k < 1 or steps < 1 or not step_size > 0 or not 0 <= restart <= 1 or population < 1:
            raise ValueError(f"need k >= 1, steps >= 1, step_size > 0, restart in [0, 1] and population >= 1, got "
                             f"k={k}, steps={steps}, step_size={step_size}, restart={restart}, population={population}")
        self.text_encoder = text_encoder.requires_grad_(False).eval()
        matrix = text_encoder.get_input_embeddings().weight.detach().float()
        self.input_ids, self.k, self.steps, self.pad_id, self.seed = input_ids.long(), k, steps, pad_id, seed
        self.restart, self.population = restart, population
        self.step = step_size * float(matrix.pow(2).mean().sqrt())
        self.max_norm = float(matrix.norm(dim=-1).max())
        # [P * population, k, D]: row id * population + slot (population 1: row = prompt id)
        self.prefixes = self.random_rows(len(input_ids) * population, torch.Generator().manual_seed(seed))
        self.calls = 0

    def rows_of(self, ids: Tensor, call: int) -> Tensor:
        """Table rows of the prompt ids ``ids`` at attack call ``call``: each id's slot
        ``(call + id) % population``."""
        ids = ids.cpu().long()
        return ids * self.population + (call + ids) % self.population

    def random_rows(self, count: int, generator: torch.Generator) -> Tensor:
        """[count, k, D] float CPU embeddings of random vocabulary tokens: the prefixes' starts."""
        vocabulary = self.text_encoder.get_input_embeddings().weight.detach()
        return vocabulary[torch.randint(len(vocabulary), (count, self.k), generator=generator)].float().cpu()

    def hidden(self, ids: Tensor, prefixes: Tensor | None = None) -> Tensor:
        """[B, L, D] last hidden states of the prompts ``ids`` behind their prefixes: the slots the
        last attack call moved (``prefixes`` [B, k, D] instead of the stored ones: differentiable in them)."""
        ids = ids.cpu()
        prefixes = self.prefixes[self.rows_of(ids, self.calls - 1)] if prefixes is None else prefixes
        return prefixed_hidden(self.text_encoder, self.input_ids[ids], prefixes, self.pad_id)

    def attack(self, ids: Tensor, loss_of: Callable[[Tensor, torch.Generator], Tensor], scaler: Any = None) -> float:
        """``steps`` signed-gradient steps on the prefixes of ``ids`` lowering ``loss_of(hidden,
        generator)`` (a scalar; ``generator`` draws the step's noise and timesteps); returns the
        last loss. Prompts that occur twice in ``ids`` share one prefix (their slot of this call).
        ``scaler``: the job's fp16 GradScaler, whose scale the gradient is taken at
        (``erasure.scaling.grad_at_job_scale``)."""
        unique, inverse = torch.unique(self.rows_of(ids, self.calls), return_inverse=True)
        rows = self.prefixes[unique].clone()
        if self.restart:
            rows = self._restarted(unique, rows)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.calls)
        self.calls += 1
        loss = torch.tensor(float("nan"))
        for _ in range(self.steps):
            rows.requires_grad_(True)
            (grad,), loss = grad_at_job_scale(lambda: loss_of(self.hidden(ids, rows[inverse]), generator), [rows],
                                              scaler, "adversarial prefix step")
            with torch.no_grad():
                rows = rows - self.step * grad.sign()
                norms = rows.norm(dim=-1, keepdim=True)
                rows = rows * (self.max_norm / norms).clamp(max=1.0)
        self._merge(unique, rows.detach())
        return float(loss.detach())

    def _restarted(self, unique: Tensor, rows: Tensor) -> Tensor:
        """``rows`` [U, k, D] of the table rows ``unique`` with the call's restarted share replaced by
        random vocabulary tokens. The whole table's draw is made (one generator per call, apart from
        the steps' noise), so a prompt's restart does not depend on which prompts the batch holds."""
        generator = torch.Generator().manual_seed(-(self.seed * 1_000_003 + self.calls) - 1)  # not a steps' seed
        chosen = (torch.rand(len(self.prefixes), generator=generator) < self.restart)[unique]
        rows[chosen] = self.random_rows(len(self.prefixes), generator)[unique][chosen]
        return rows

    def _merge(self, unique: Tensor, rows: Tensor) -> None:
        """Store the moved rows; under data parallelism every rank applies the mean move of each
        prompt over the ranks that attacked it, so all ranks (and a checkpoint) hold one table."""
        device = next(self.text_encoder.parameters()).device
        moves = torch.zeros_like(self.prefixes)
        moves[unique] = rows.cpu() - self.prefixes[unique]
        counts = torch.zeros(len(self.prefixes))
        counts[unique] = 1.0
        moves, counts = sum_tensor_across_processes(moves, device), sum_tensor_across_processes(counts, device)
        touched = counts > 0
        self.prefixes[touched] += moves[touched] / counts[touched, None, None]

    def state_dict(self) -> dict:
        return {"prefixes": self.prefixes, "calls": self.calls}

    def load_state_dict(self, state: dict) -> None:
        if state["prefixes"].shape != self.prefixes.shape:
            raise ValueError(f"adversarial prefixes of shape {tuple(state['prefixes'].shape)} in the checkpoint, "
                             f"{tuple(self.prefixes.shape)} for this job's prompts: resume with the same data, k and "
                             f"population ({self.population})")
        self.prefixes, self.calls = state["prefixes"].float(), int(state["calls"])


class TokenPrefixes:
    """One adversarial ``k``-token prefix per forget prompt, searched in the space the attack searches.

    `AdversarialPrefixes` moves word embeddings anywhere within the vocabulary's norm; the attack that
    measures the erasure (`eval.attack`, UnlearnDiffAtk) chooses vocabulary tokens. Here each prefix
    token is a distribution over the vocabulary, as in the attack (`erasure.text_relaxation`): every
    step draws one-hot tokens from it with a straight-through gradient, takes an Adam step (the
    attack's ``lr`` and weight decay) and projects back onto the simplex. The distributions start
    uniform, as the attack's, and carry on between calls. The repair then trains under the argmax
    tokens: the discrete prompt the attack would judge.

    Args:
        text_encoder: the pipeline's frozen CLIP text encoder (SD 1.x / 2.x).
        input_ids: [P, L] token ids of every prompt id of the objective's table.
        attacked: the prompt ids that get a prefix (the forget prompts): the table holds only those.
        k: prefix tokens.
        steps: Adam steps per call.
        learning_rate, weight_decay: the steps' Adam (the attack's 0.01 and 0.1).
        seed: each call's token draws and noise.
        pad_id: the tokenizer's padding id.

    Under data parallelism each step's gradient is averaged over the ranks that attacked a prompt
    before any rank steps, so every rank (and a checkpoint) holds one table, Adam moments included.
    """

    betas = (0.9, 0.999)
    eps = 1e-8

    def __init__(self, text_encoder: nn.Module, input_ids: Tensor, attacked: Tensor, k: int, steps: int,
                 learning_rate: float, weight_decay: float, seed: int, pad_id: int) -> None:
        if k < 1 or steps < 1 or not learning_rate > 0 or weight_decay < 0 or len(attacked) == 0:
            raise ValueError(f"need k >= 1, steps >= 1, learning_rate > 0, weight_decay >= 0 and a prompt to attack, "
                             f"got k={k}, steps={steps}, learning_rate={learning_rate}, weight_decay={weight_decay}, "
                             f"{len(attacked)} attacked prompts")
        self.text_encoder = text_encoder.requires_grad_(False).eval()
        self.input_ids, self.k, self.steps, self.pad_id, self.seed = input_ids.long(), k, steps, pad_id, seed
        self.learning_rate, self.weight_decay = learning_rate, weight_decay
        self.row = torch.full((len(input_ids),), -1, dtype=torch.long)  # prompt id -> table row (-1: none)
        attacked = torch.unique(attacked.long().cpu())
        self.row[attacked] = torch.arange(len(attacked))
        vocabulary = text_encoder.get_input_embeddings().num_embeddings
        self.prefixes = project_simplex(torch.full((len(attacked), k, vocabulary), 1.0 / vocabulary))  # [R, k, V]
        self.first = torch.zeros_like(self.prefixes)  # Adam's moments and step count, per row
        self.second = torch.zeros_like(self.prefixes)
        self.counts = torch.zeros(len(attacked))
        self.calls = 0

    def rows_of(self, ids: Tensor) -> Tensor:
        rows = self.row[ids.cpu().long()]
        if (rows < 0).any():
            raise ValueError(f"prompt ids {sorted(set(ids[rows.to(ids.device) < 0].tolist()))} have no adversarial "
                             "prefix: only the forget prompts are attacked")
        return rows

    def attacked(self) -> Tensor:
        """The prompt ids that hold a prefix, in table order."""
        return (self.row >= 0).nonzero().view(-1)

    def tokens(self, ids: Tensor) -> Tensor:
        """[B, L] the prompts ``ids`` behind their argmax prefix tokens."""
        return with_prefix(self.input_ids[ids.cpu()], self.prefixes[self.rows_of(ids)].argmax(-1), self.pad_id)

    def hidden(self, ids: Tensor) -> Tensor:
        """[B, L, D] last hidden states of the prompts ``ids`` behind their argmax prefix tokens."""
        device = next(self.text_encoder.parameters()).device
        return self.text_encoder(self.tokens(ids).to(device))[0].float()

    def attack(self, ids: Tensor, loss_of: Callable[[Tensor, torch.Generator], Tensor], scaler: Any = None) -> float:
        """``steps`` Adam steps on the token distributions of ``ids`` lowering ``loss_of(hidden,
        generator)``; returns the last loss. Prompts that occur twice share one prefix."""
        unique, inverse = torch.unique(self.rows_of(ids), return_inverse=True)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.calls)
        self.calls += 1
        matrix = self.text_encoder.get_input_embeddings().weight
        tokens = self.input_ids[ids.cpu()]
        loss = torch.tensor(float("nan"))
        for _ in range(self.steps):
            rows = self.prefixes[unique]
            picks = draw_rows(rows.flatten(0, 1), generator).view(rows.shape[:2])
            one_hot = F.one_hot(picks, rows.shape[-1]).float().requires_grad_(True)  # [U, k, V]

            def prefixed_loss() -> Tensor:
                prefix = one_hot[inverse].to(matrix.device, matrix.dtype) @ matrix  # [B, k, D]
                return loss_of(prefixed_hidden(self.text_encoder, tokens, prefix, self.pad_id), generator)

            (grad,), loss = grad_at_job_scale(prefixed_loss, [one_hot], scaler, "adversarial token step")
            # straight through to the distributions, clipped after unscaling (the attack's STERandSelect)
            self._step(unique, F.hardtanh(grad.float().cpu()))
        return float(loss.detach())

    @torch.no_grad()
    def _step(self, unique: Tensor, grad: Tensor) -> None:
        """Adam (L2 weight decay, as torch's) on the rows every rank attacked, from their mean gradient."""
        device = next(self.text_encoder.parameters()).device
        total = torch.zeros_like(self.prefixes)
        total[unique] = grad
        hits = torch.zeros(len(self.prefixes))
        hits[unique] = 1.0
        total, hits = sum_tensor_across_processes(total, device), sum_tensor_across_processes(hits, device)
        rows = (hits > 0).nonzero().view(-1)
        g = total[rows] / hits[rows, None, None] + self.weight_decay * self.prefixes[rows]
        self.counts[rows] += 1
        b1, b2 = self.betas
        self.first[rows] = b1 * self.first[rows] + (1 - b1) * g
        self.second[rows] = b2 * self.second[rows] + (1 - b2) * g * g
        c = self.counts[rows, None, None]
        moved = self.prefixes[rows] - self.learning_rate * (self.first[rows] / (1 - b1 ** c)) / (
            (self.second[rows] / (1 - b2 ** c)).sqrt() + self.eps)
        self.prefixes[rows] = project_simplex(moved)

    def state_dict(self) -> dict:
        return {"prefixes": self.prefixes, "first": self.first, "second": self.second, "counts": self.counts,
                "calls": self.calls}

    def load_state_dict(self, state: dict) -> None:
        if state["prefixes"].shape != self.prefixes.shape or "first" not in state:
            raise ValueError(f"adversarial token prefixes of shape {tuple(state['prefixes'].shape)} in the checkpoint, "
                             f"{tuple(self.prefixes.shape)} for this job's prompts: resume with the same data, k and "
                             "adversarial_space")
        self.prefixes, self.first, self.second = (state[key].float() for key in ("prefixes", "first", "second"))
        self.counts, self.calls = state["counts"].float(), int(state["calls"])
