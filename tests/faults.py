"""Fault injection shared by the tests and tools/reliability_probes.py: a save killed mid-write.

``save_killed_at(k, result, target)`` forks, saves ``result`` into ``target`` in the child and
SIGKILLs the child at write step ``k``; the caller then checks what a load sees.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any


def save_killed_at(k: int, result: Any, target: Path) -> int:
    """In a forked child, save ``result`` and SIGKILL the child at write step ``k`` (every write,
    fsync and the final exchange count as steps, before and after each); returns the status."""
    import shiftlens.io as sio
    import shiftlens.result as sres

    pid = os.fork()
    if pid == 0:  # child: never returns
        count = [0]

        def step(fn):
            def wrapped(*a, **kw):
                count[0] += 1
                if count[0] == k:
                    os.kill(os.getpid(), signal.SIGKILL)
                out = fn(*a, **kw)
                count[0] += 1
                if count[0] == k:
                    os.kill(os.getpid(), signal.SIGKILL)
                return out
            return wrapped

        try:
            for mod in (sio, sres):
                for name in ("write_json", "write_parquet", "write_tensors"):
                    if hasattr(mod, name):
                        setattr(mod, name, step(getattr(mod, name)))
            sio._fsync_dir = step(sio._fsync_dir)
            sio._exchange = step(sio._exchange)
            os.fsync = step(os.fsync)
            result.save(target)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return status
