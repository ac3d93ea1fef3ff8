"""The end of a distributed job over gloo (``erasure.launch.drain_gloo``, ``end_process_group``, ``finish``).

A gloo thread lets go of a finished collective's work after the caller has its result, and that
takes the GIL. Left to the interpreter's end it aborted the process ("terminate called without an
active exception": core dump of the 2-rank FSDP2 test); left to a group destructor running under the
GIL it would never return. ``drain_gloo`` waits until gloo has let go of every work. The jobs'
own 2-process DDP launches (test_unlearn_job, test_erase) end through ``finish`` and so through it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Rank 1 joins the collective late, so rank 0 drops its handle first and gloo's thread holds the last
# reference; rank 0 keeps the GIL (pure Python, a switch interval of 1000 s) until it calls drain_gloo:
# the thread, done, waits for the GIL with the tensor in hand.
TWO_RANKS = textwrap.dedent("""
    import json, sys, time, weakref
    import torch
    from erasure.launch import drain_gloo, end_process_group

    rank, init, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    record = {"drained_without_a_group": drain_gloo()}
    torch.distributed.init_process_group("gloo", init_method="file://" + init, rank=rank, world_size=2)
    tensor = torch.ones(3)
    held = weakref.ref(tensor)
    if rank == 1:
        time.sleep(0.5)
        torch.distributed.all_reduce(tensor)
        del tensor
    else:
        sys.setswitchinterval(1000.0)
        work = torch.distributed.all_reduce(tensor, async_op=True)
        del work, tensor
        end = time.perf_counter() + 3.0
        while time.perf_counter() < end:  # no call that releases the GIL; rank 1 joins at 0.5 s
            pass
        record["held_before"] = held() is not None
    record["drained"] = drain_gloo()
    record["held_after"] = held() is not None
    end_process_group()
    record["initialized"] = torch.distributed.is_initialized()
    open(out, "w").write(json.dumps(record))
""")


def test_drain_gloo_waits_until_gloo_lets_go_of_the_last_work(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", TWO_RANKS, str(rank), str(tmp_path / "init"),
                               str(tmp_path / f"rank{rank}.json")], env=env, stderr=subprocess.PIPE, text=True)
             for rank in range(2)]
    try:
        for proc in procs:
            _, stderr = proc.communicate(timeout=120)
            assert proc.returncode == 0, stderr[-3000:]
    finally:  # a rank left waiting in a collective would wait for gloo's 30-minute timeout
        for proc in procs:
            proc.kill()
    rank0, rank1 = (json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2))
    assert rank0["held_before"]  # the case is set up: only gloo's work holds the tensor (done and waiting for the
    # GIL to let go of it, or at worst not done yet when rank 1 is slow to start)
    assert rank0 == {"drained_without_a_group": True, "held_before": True, "drained": True, "held_after": False,
                     "initialized": False}
    assert rank1 == {"drained_without_a_group": True, "drained": True, "held_after": False, "initialized": False}

