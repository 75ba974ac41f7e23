"""The runner: a lens computed record by record, resumable, sharded or on a Ray cluster.

A lens that registers units (``LensSpec(units=...)``, :class:`LensUnits`) can be run prompt by
prompt: :func:`run_lens` (``shiftlens run``) writes one record per (prompt, role) into a run
directory as soon as it is computed (temporary file + rename), with ``run.json`` recording the
parameters, the prompts and fingerprints of both models. ``resume=True`` skips finished records
and refuses a directory made with other inputs; ``shard="i/N"`` computes every N-th prompt
(Slurm arrays, any scheduler); ``executor="ray"`` spreads records over Ray actors that each hold
one model at a time. :func:`load_run` (``shiftlens merge``) assembles the Result, equal to the
in-process function's.

Per-model units run role-major: base loaded, every base record, base freed, tuned loaded, ...,
so one model is resident at a time.

Modules: :mod:`~shiftlens.runner.units` (the protocol), :mod:`~shiftlens.runner.store` (the
run directory), :mod:`~shiftlens.runner.fingerprint` (model identities),
:mod:`~shiftlens.runner.execute` (in-process executor, shards, merge),
:mod:`~shiftlens.runner.distributed` (Ray), :mod:`~shiftlens.runner.cli` (``shiftlens run`` /
``shiftlens merge``). Importing this package imports nothing heavy.

Example:
    >>> from shiftlens.runner import run_lens, load_run
    >>> from shiftlens.zoo import pair_dirs, toy_prompts
    >>> s = run_lens("attribution", pair_dirs(), toy_prompts(12), "runs/sens")  # doctest: +SKIP
    >>> load_run("runs/sens").summary()["sentence"]  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

_API: dict[str, str] = {
    **dict.fromkeys(("LensUnits", "PairView", "MODEL_ROLES", "PAIR_ROLE", "resolve_units",
                     "bind_params", "unit_keys"), "units"),
    **dict.fromkeys(("RunStore", "encode_payload", "decode_payload", "prompts_fingerprint"),
                    "store"),
    "model_fingerprint": "fingerprint",
    **dict.fromkeys(("EXECUTORS", "RunSummary", "run_lens", "load_run", "run_status",
                     "parse_shard", "pair_signature", "pair_names", "check_signature",
                     "free_memory"),
                    "execute"),
}

__all__ = list(_API)


def __getattr__(name: str) -> Any:
    mod = _API.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
