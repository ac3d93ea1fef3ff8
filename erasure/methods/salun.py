"""SalUn: random-label unlearning restricted to salient weights (Fan et al., ICLR 2024).

The saliency mask keeps the top ``saliency_fraction`` of |sum_batches grad L_f| over all
trainable parameters; gradients outside it are zeroed before every step.
"""

from __future__ import annotations

import torch

from erasure.methods.base import unwrap
from erasure.methods.random_label import RandomLabel
from erasure.scope import scope_parameters
from erasure.sensitivity import accumulate_gradients
from erasure.sharding import all_reduce_, gathered_like, is_sharded, local, local_part, shard_groups
from erasure.topk import topk_masks


class SalUn(RandomLabel):
    """Under FSDP2 ``masks`` hold each rank's part (the local shard's entries); ``state_dict``
    gathers them whole (every rank calls it, as the checkpointer does) and a loaded whole mask is
    cut to the local shard at its first use, so a checkpoint resumes on any sharding."""

    name = "salun"

    def __init__(self, config, objective):
        super().__init__(config, objective)
        self.masks: dict[str, torch.Tensor] = {}
        self._layout: dict[str, torch.Tensor] = {}  # name -> the (DTensor) parameter whose shard each mask covers

    def prepare(self, model, forget_loader, retain_loader, backward=torch.Tensor.backward):
        summary = super().prepare(model, forget_loader, retain_loader, backward)
        params = scope_parameters(model, self.config.trim_include, self.config.trim_exclude, module_types=None)
        self._layout = dict(params)
        if self.config.saliency_fraction >= 1.0:  # every scoped weight may change: no saliency pass
            self.masks = {name: torch.ones_like(local(p.detach()), dtype=torch.bool) for name, p in params.items()}
        else:
            grads = accumulate_gradients(model, self.objective.loss, forget_loader, params, backward,
                                         self.config.sensitivity_batches, desc="saliency", scaler=self.loss_scaler)
            self.masks = topk_masks({name: g.abs_() for name, g in grads.items()}, 1.0 - self.config.saliency_fraction,
                                    shard_groups(params.values()))
        counts = torch.tensor([sum(int(m.sum()) for m in self.masks.values()),
                               sum(m.numel() for m in self.masks.values())], dtype=torch.int64,
                              device=next(iter(self.masks.values())).device)
        salient, total = all_reduce_(counts, shard_groups(params.values())).tolist()  # FSDP2: over every shard
        return {**summary, "salient": salient, "salient_fraction": salient / total}

    @torch.no_grad()
    def finalize_gradients(self, model):
        logs = super().finalize_gradients(model)
        for name, param in unwrap(model).named_parameters():
            if param.grad is None:
                continue
            mask = self.masks.get(name)
            grad = local(param.grad)  # FSDP2: the masks are of the local shards
            if mask is None:
                grad.zero_()
                continue
            if is_sharded(param) and mask.shape != grad.shape:  # a whole mask from a checkpoint: take our part
                mask = self.masks[name] = local_part(mask.to(grad.device), param)
            if mask.device != grad.device:  # masks resumed from a checkpoint load on the CPU: move once
                mask = self.masks[name] = mask.to(grad.device)
            if name not in self._layout:  # a resumed run: state_dict needs each mask's shard layout
                self._layout[name] = param
            grad.mul_(mask)
        return logs

    def state_dict(self):
        """The whole masks (FSDP2: gathered from every rank's part; every rank must call this)."""
        masks = {}
        for name, mask in self.masks.items():
            like = self._layout.get(name)
            whole = like is None or mask.shape == like.shape  # unsharded, or a loaded mask not yet cut
            masks[name] = mask if whole else gathered_like(mask.to(torch.uint8), like).bool()
        return {**super().state_dict(), "masks": masks}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.masks = dict(state["masks"])  # (whole masks are cut to the local shard in place at first use)
