"""Which parameters a method may score, trim or train.

The default scope is the weights (and biases) of convolution and linear layers, which in a
diffusers UNet includes every attention projection; norm layers and embeddings are left out
(a norm's scale re-initialised to kaiming values is no fresh start). This is a choice of this
toolkit: the public SD code scores every UNet parameter and re-initialises selected entries of
a few self-attention layers only (see `erasure.sensitivity`). Name patterns (``fnmatch`` globs
on parameter names, e.g. ``"*attn2*"``) narrow the scope further.
"""

from __future__ import annotations

import fnmatch
from typing import Iterator, Sequence

from torch import nn

from erasure.sharding import resharded

TRIMMABLE_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def named_scope(
    model: nn.Module,
    include: Sequence[str] = ("*",),
    exclude: Sequence[str] = (),
    module_types: tuple[type[nn.Module], ...] | None = TRIMMABLE_MODULES,
    with_bias: bool = True,
) -> Iterator[tuple[str, nn.Parameter]]:
    """Yield ``(name, parameter)`` pairs in the scope, in ``named_parameters`` order.

    Args:
        model: any module (a DDP wrapper is looked through).
        include: globs a parameter name must match (any of them).
        exclude: globs that remove a parameter (any of them).
        module_types: only parameters owned by these module types; ``None`` for all.
        with_bias: also yield the biases of those modules.

    Returns:
        An iterator; parameters with ``requires_grad=False`` are skipped.
    """
    # FSDP2 leaves the root's parameters unsharded after a forward without backward (LoReUn's reference
    # fit): reshard so the scope holds the sharded parameters the optimiser steps
    model = resharded(getattr(model, "module", model))
    for module_name, module in model.named_modules():
        if module_types is not None and not isinstance(module, module_types):
            continue
        for local_name, param in module.named_parameters(recurse=False):
            if local_name == "bias" and not with_bias:
                continue
            name = f"{module_name}.{local_name}" if module_name else local_name
            if not param.requires_grad or not _matches(name, include) or _matches(name, exclude):
                continue
            yield name, param


def scope_parameters(model: nn.Module, include: Sequence[str] = ("*",), exclude: Sequence[str] = (),
                     module_types: tuple[type[nn.Module], ...] | None = TRIMMABLE_MODULES) -> dict[str, nn.Parameter]:
    """The scope as an ordered ``{name: parameter}`` dict; raises if it is empty.

    Raises:
        ValueError: when no parameter matches (names the patterns).
    """
    params = dict(named_scope(model, include, exclude, module_types))
    if not params:
        raise ValueError(
            f"the parameter scope is empty: include={list(include)} exclude={list(exclude)} "
            f"matched no {'/'.join(t.__name__ for t in module_types or ())} parameter of "
            f"{type(getattr(model, 'module', model)).__name__}; loosen the patterns"
        )
    return params
