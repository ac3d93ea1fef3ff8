"""A data-parallel job's end, as the jobs end it: the worker of test_teardown.py.

    accelerate launch --multi_gpu --num_processes 2 ... tests/erasure/teardown_worker.py OUT

``erasure.launch.make_accelerator``, a model prepared (DDP over gloo), a step, then
``erasure.launch.finish`` with the model still referenced; the model goes when ``job`` returns, and
the interpreter ends right after. The switch interval is raised so that this thread keeps the GIL
until it blocks: a gloo thread still letting go of a collective's work waits for it into the
interpreter's end (and aborts the process there) or into the group's destructor (which then never
returns), where with the default interval it mostly gets it in time. Each rank writes
``OUT/rank<r>.json`` last.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from erasure.launch import finish, make_accelerator  # noqa: E402


def job() -> int:
    accelerator = make_accelerator()
    model = accelerator.prepare(torch.nn.Linear(4, 4))
    accelerator.backward(model(torch.randn(2, 4)).square().sum())
    sys.setswitchinterval(1000.0)
    finish(accelerator)  # the model is still referenced here, as in the jobs
    return accelerator.process_index


if __name__ == "__main__":
    out = Path(sys.argv[1])
    rank = job()
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{rank}.json").write_text(json.dumps({"rank": rank, "finished": True}))
