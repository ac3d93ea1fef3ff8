"""Scissorhands and SalUn on the tiny UNet, sharded with FSDP2 or not: the worker of test_fsdp2.py.

    torchrun --nproc_per_node 2 tests/erasure/fsdp2_worker.py --out DIR --cases CASES_JSON   # sharded
    python tests/erasure/fsdp2_worker.py --out DIR --cases CASES_JSON                         # one process

``CASES_JSON`` is a list of ``{"name", "method", "config"}`` (``config``: MethodConfig fields).
Both runs see the same data: a global batch of 4 samples per step, which the 2 ranks split in
halves (FSDP2 averages their gradients, as one process averages the 4). Rank 0 (or the single
process) writes, per case, the whole model after trimming and after repair, the whole masks and
the per-step logs to ``DIR/<name>``. Sharded, it also checks the global top-k with ties on random
scores split unevenly over the ranks (``DIR/topk.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import erasure.methods.scissorhands as scissorhands_module  # noqa: E402
from erasure.config import MethodConfig  # noqa: E402
from erasure.launch import end_process_group  # noqa: E402
from erasure.methods import build_method  # noqa: E402
from erasure.sharding import gathered_like, has_shards, is_sharded, local  # noqa: E402

STEPS = 3
GLOBAL_BATCH = 4


def _distributed() -> tuple[int, int]:
    if "RANK" not in os.environ:
        return 0, 1
    torch.distributed.init_process_group("gloo")
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def _batches(latents, ids, rank, world, with_noise, seed):
    """Per step, this rank's part of a global batch (noise and steps drawn for the global batch)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, len(latents), GLOBAL_BATCH):
        x, y = latents[start:start + GLOBAL_BATCH], ids[start:start + GLOBAL_BATCH]
        batch = {"x": x, "y": y, "index": torch.arange(start, start + len(x))}
        if with_noise:
            batch["noise"] = torch.randn(x.shape, generator=gen)
            batch["timesteps"] = torch.randint(0, 1000, (len(x),), generator=gen)
        part = len(x) // world
        out.append({k: v[rank * part:(rank + 1) * part] for k, v in batch.items()})
    return out


def _full(tensor):
    return tensor.full_tensor() if is_sharded(tensor) else tensor


def _resume_masks(method, config, objective, unet, forget_batch, retain_batch):
    """A method with masks (SalUn): its state_dict (every rank calls it, as the checkpointer does)
    and whether a fresh method loaded from that state masks the next step's gradients exactly as
    the running one (the checkpoint resume path). ({}, None) for methods without masks."""
    if not getattr(method, "masks", None):
        return {}, None
    state = method.state_dict()
    resumed = build_method(config, objective)
    resumed.load_state_dict(state)
    method.compute_gradients(unet, forget_batch, retain_batch)
    raw = {n: local(p.grad).clone() for n, p in unet.named_parameters() if p.grad is not None}
    method.finalize_gradients(unet)
    running = {n: local(p.grad).clone() for n, p in unet.named_parameters() if p.grad is not None}
    for n, p in unet.named_parameters():
        if p.grad is not None:
            local(p.grad).copy_(raw[n])
    resumed.finalize_gradients(unet)
    equal = all(torch.equal(local(p.grad), running[n]) for n, p in unet.named_parameters() if p.grad is not None)
    unet.zero_grad(set_to_none=True)
    return state["masks"], equal and any(not torch.equal(raw[n], running[n]) for n in raw)


def erase(case: dict, out: Path, rank: int, world: int, lr: float = 0.05) -> None:
    from diffusers import DDPMScheduler

    from pipelines.objective import DiffusionObjective
    from pipelines.tiny import build_tiny_pipeline

    unet = build_tiny_pipeline(seed=0).unet
    gen = torch.Generator().manual_seed(1)
    embeddings = torch.randn(4, 16, unet.config.cross_attention_dim, generator=gen)  # 0 empty, 1 forget, 2-3 retain
    config = MethodConfig(method=case["method"], **case.get("config", {}))
    objective = DiffusionObjective(DDPMScheduler(num_train_timesteps=1000), embeddings,
                                   relabel_ids=torch.tensor([0, 2, 2, 3]), uncond_id=0, seed=0,
                                   uncond_weight=config.uncond_weight,  # as pipelines.erase.build_objective
                                   # retain prompt 2 is forget prompt 1's substitute: the anchor term's extra
                                   # forward runs on every rank (anchor_table's layout)
                                   anchor_ids=torch.tensor([[-1], [-1], [1], [-1]]), anchor_weight=config.anchor_weight)
    latents = torch.randn(16, 4, 16, 16, generator=gen)
    forget = _batches(latents[:8], torch.full((8,), 1), rank, world, False, 2)
    forget_steps = _batches(latents[:8], torch.full((8,), 1), rank, world, True, 3)
    retain = _batches(latents[8:], torch.tensor([2, 3] * 4), rank, world, True, 4)
    method = build_method(config, objective)
    method.snapshot(unet)  # the frozen original (retain_loss="distill") is taken before sharding, as in the job
    if world > 1:
        from torch.distributed.fsdp import fully_shard

        for block in [*unet.down_blocks, unet.mid_block, *unet.up_blocks]:
            fully_shard(block)
        fully_shard(unet)
    snapshot_refused = minmax_refused = ""
    if world > 1:
        try:
            build_method(MethodConfig(method="scissorhands_minmax"), objective).ascend(unet, forget[0])
        except NotImplementedError as error:
            minmax_refused = str(error)
    if config.retain_loss == "distill" and world > 1:
        try:  # a copy of a sharded model would hold shards and no FSDP state
            build_method(config, objective).snapshot(unet)
        except ValueError as error:
            snapshot_refused = str(error)
    captured = {}
    trim = scissorhands_module.trim

    def capture(*a, **k):  # Scissorhands keeps no masks (a byte per weight): catch trim's
        masks, trim_summary = trim(*a, **k)
        captured.update(masks)
        return masks, trim_summary

    scissorhands_module.trim = capture
    try:
        summary = method.prepare(unet, forget, retain)
    finally:
        scissorhands_module.trim = trim
    trimmed = {n: _full(p.detach()).clone() for n, p in unet.named_parameters()}
    masks = getattr(method, "masks", None) or captured
    optimizer = torch.optim.SGD(unet.parameters(), lr=lr)
    logs = []
    for step in range(STEPS):
        step_logs = method.compute_gradients(unet, forget_steps[step % len(forget_steps)], retain[step % len(retain)])
        step_logs.update(method.finalize_gradients(unet))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        logs.append(step_logs)
    repaired = {n: _full(p.detach()).clone() for n, p in unet.named_parameters()}
    state_masks, resumed_masking_equal = _resume_masks(method, config, objective, unet, forget_steps[0], retain[0])
    from erasure.sharding import whole_module

    whole = whole_module(unet)  # what the erase job exports: an unsharded copy with the gathered weights
    whole_check = {"sharded": has_shards(whole), "same_object": whole is unet,
                   "max_difference": max(float((p.detach() - repaired[n]).abs().max()) for n, p in whole.named_parameters())}
    full_masks = {}
    params = dict(unet.named_parameters())
    for name, mask in masks.items():  # Scissorhands' trim masks are of the local shards too
        full_masks[name] = gathered_like(mask.to(torch.uint8), params[name]).bool()
    if rank == 0:
        from safetensors.torch import save_file

        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in trimmed.items()}, out / "trimmed.safetensors")
        save_file({k: v.contiguous() for k, v in repaired.items()}, out / "repaired.safetensors")
        if full_masks:
            save_file({k: v.to(torch.uint8).contiguous() for k, v in full_masks.items()}, out / "masks.safetensors")
        if state_masks:
            save_file({k: v.to(torch.uint8).contiguous() for k, v in state_masks.items()}, out / "state_masks.safetensors")
        (out / "logs.json").write_text(json.dumps({"summary": summary, "steps": logs, "world": world,
                                                   "whole_module": whole_check,
                                                   "resumed_masking_equal": resumed_masking_equal,
                                                   "snapshot_refused": snapshot_refused,
                                                   "minmax_refused": minmax_refused}))


def topk(out: Path, rank: int, world: int) -> None:
    from torch.distributed.tensor import Shard

    """Random scores with many ties, dim-0 shards of uneven sizes (torch.chunk's, as FSDP2's)."""
    from erasure.topk import global_threshold, topk_masks

    gen = torch.Generator().manual_seed(5)
    shapes = [(7, 3), (1,), (5,), (9, 2, 2), (3, 1)]
    full = {f"p{i}": torch.randint(0, 6, shape, generator=gen).float() for i, shape in enumerate(shapes)}
    reference = topk_masks(full, 0.8)
    mine = {}
    for name, s in full.items():
        chunks = s.chunk(world, 0)
        mine[name] = chunks[rank] if rank < len(chunks) else s[:0]
    masks = topk_masks(mine, 0.8, (torch.distributed.group.WORLD,))
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import distribute_tensor

    from erasure.sharding import shard_groups

    sharded = distribute_tensor(torch.zeros(4, 2), init_device_mesh("cpu", (world,)), [Shard(0)])
    try:
        shard_groups([sharded, torch.zeros(3)])
        mixed_refused = ""
    except ValueError as error:  # a plain tensor beside shards would be summed once per rank
        mixed_refused = str(error)
    gathered = [None] * world
    torch.distributed.all_gather_object(gathered, {n: m.tolist() for n, m in masks.items()})
    if rank == 0:
        joined = {n: torch.cat([torch.tensor(g[n], dtype=torch.bool).reshape(-1, *full[n].shape[1:])
                                for g in gathered]) for n in full}
        same = all(torch.equal(joined[n], reference[n]) for n in full)
        out.mkdir(parents=True, exist_ok=True)
        (out / "topk.json").write_text(json.dumps({
            "same": same, "selected": sum(int(m.sum()) for m in joined.values()),
            "expected": sum(int(m.sum()) for m in reference.values()),
            "ties": global_threshold(list(full.values()), 0.8).ties, "mixed_refused": mixed_refused}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--cases", required=True, help="JSON list of {name, method, config}")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rank, world = _distributed()
    try:
        for case in json.loads(args.cases):
            erase(case, Path(args.out) / case["name"], rank, world)
        if world > 1:
            topk(Path(args.out), rank, world)
    finally:
        if world > 1:
            torch.distributed.barrier()  # every rank waits for rank 0's files
            end_process_group()  # as the jobs end: gloo lets go of the last work before the interpreter ends


if __name__ == "__main__":
    main()
