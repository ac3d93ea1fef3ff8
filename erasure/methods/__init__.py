"""Unlearning methods, one small class per file, chosen by name.

Add a method: write ``erasure/methods/<name>.py`` with a subclass of
:class:`~erasure.methods.base.UnlearningMethod` and list it in ``_CLASSES`` below.
"""

from __future__ import annotations

from erasure.config import MethodConfig
from erasure.methods.base import UnlearningMethod
from erasure.methods.esd import ESD
from erasure.methods.finetune import Finetune
from erasure.methods.grad_ascent import GradAscent
from erasure.methods.l1_sparse import L1Sparse
from erasure.methods.random_label import RandomLabel
from erasure.methods.retrain import Retrain
from erasure.methods.salun import SalUn
from erasure.methods.scissorhands import Scissorhands
from erasure.methods.scissorhands_minmax import ScissorhandsMinMax
from erasure.objective import Objective

_CLASSES = (Scissorhands, ScissorhandsMinMax, Finetune, GradAscent, RandomLabel, SalUn, L1Sparse, Retrain, ESD)
METHODS: dict[str, type[UnlearningMethod]] = {cls.name: cls for cls in _CLASSES}


def register_method(cls: type[UnlearningMethod]) -> type[UnlearningMethod]:
    """Class decorator adding a method defined outside this package (e.g. a domain's ESD)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a non-empty `name`")
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> type[UnlearningMethod]:
    """The method class registered as ``name``.

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"method='{name}' is unknown; known methods: {', '.join(sorted(METHODS))}") from None


def validate_method(config: MethodConfig) -> type[UnlearningMethod]:
    """Check the method name and plug-in choice before any work is done."""
    cls = get_method(config.method)
    plug_in = cls.unsupported(config)
    if plug_in is not None:
        raise ValueError(f"{plug_in.field}={getattr(config, plug_in.field)} does not apply to method '{cls.name}'; "
                         f"{plug_in.what} works with: "
                         f"{', '.join(sorted(n for n, c in METHODS.items() if getattr(c, plug_in.flag)))}")
    return cls


def build_method(config: MethodConfig, objective: Objective) -> UnlearningMethod:
    """Instantiate ``config.method`` for ``objective``."""
    return get_method(config.method)(config, objective)


__all__ = ["METHODS", "MethodConfig", "UnlearningMethod", "build_method", "get_method", "register_method", "validate_method"]
