"""``shiftlens run`` and ``shiftlens merge``: the runner on the command line.

``shiftlens run LENS BASE TUNED --prompts FILE --out DIR`` computes a lens record by record into
a run directory (:func:`shiftlens.runner.run_lens`); ``--resume`` continues one, ``--shard i/N``
computes every N-th prompt (``--shard slurm`` reads a Slurm job array), ``--executor ray
--workers N`` spreads the records over Ray actors. ``shiftlens merge DIR --out RESULT_DIR``
assembles and saves the Result (:func:`shiftlens.runner.load_run`). Importing this module
imports neither torch nor the runner (``shiftlens --help`` stays fast).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from shiftlens import cliargs as A

__all__ = ["add_commands", "parse_params", "cmd_run", "cmd_merge"]

_PKG = "shiftlens.runner.cli"


def parse_params(items: list[str] | None) -> dict[str, Any]:
    """``["k=v", ...]`` -> ``{k: v}``; a value is read as JSON when it parses, else as text.

    So ``max_new_tokens=12`` is the integer 12, ``p=4.5`` a float, ``response=reference`` the
    text ``"reference"``, ``layers=[0,2]`` a list; quote JSON strings that look like numbers
    (``name="12"``).

    Example:
        >>> parse_params(["max_new_tokens=12", "response=reference", "layers=[0, 2]"])
        {'max_new_tokens': 12, 'response': 'reference', 'layers': [0, 2]}
    """
    out: dict[str, Any] = {}
    for it in items or []:
        key, sep, raw = it.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise A.error(f"--param takes KEY=VALUE with a parameter name as KEY, got {it!r}")
        if key in out:
            raise A.error(f"--param {key} given twice")
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


def _load_options(args: argparse.Namespace) -> dict[str, Any]:
    """dtype, device or device map, offload folder (:func:`shiftlens.cliargs.load_kwargs`)."""
    if args.executor == "inprocess" or getattr(args, "device_map", None):
        return A.load_kwargs(args)
    d = args.device.strip().lower()  # Ray workers may have GPUs the driver lacks: syntax only
    if d not in ("cpu", "cuda", "mps") and not (d.startswith("cuda:") and d[5:].isdigit()):
        raise A.error(f"unknown device {args.device!r}; use cpu or cuda")
    if getattr(args, "offload_folder", None):
        raise A.error("--offload-folder only applies with --device-map")
    return {"dtype": A.dtype(args.dtype), "device": d}


def cmd_run(args: argparse.Namespace) -> int:
    """Handler of ``shiftlens run``: compute the records, print what was done.

    Example:
        >>> cmd_run(build_args(["run", "attribution", "toy:base", "toy:tuned", ...]))  # doctest: +SKIP
        0
    """
    from shiftlens.runner import run_lens

    params = parse_params(args.param)
    base, tuned = A.model_ref(args.base), A.model_ref(args.tuned)
    if not Path(args.prompts).exists():
        raise A.error(f"prompt file {args.prompts!r} does not exist")
    prompts = A.prompts_from_args(args)  # any format load_prompts reads (--format, --column)
    summary = run_lens(
        args.lens, (base, tuned), prompts, args.out, params=params, resume=args.resume,
        shard=args.shard, executor=args.executor, workers=args.workers,
        gpus_per_worker=args.gpus_per_worker, cpus_per_worker=args.cpus_per_worker,
        max_restarts=args.max_restarts, ray_address=args.ray_address,
        processing=args.processing, progress=not args.no_progress, **_load_options(args))
    print(summary)
    if summary.complete:
        print(f"next: shiftlens merge {args.out} --out RESULT_DIR")
    elif summary.shard:
        print(f"the other shards compute the rest; then: shiftlens merge {args.out}")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    """Handler of ``shiftlens merge``: assemble and save the Result (or print ``--status``).

    Example:
        >>> cmd_merge(build_args(["merge", "runs/sens", "--out", "results/sens"]))  # doctest: +SKIP
        0
    """
    from shiftlens.runner import load_run, run_status

    if args.status:
        st = run_status(args.run_dir)
        print(f"{st['units']}: {st['done']} of {st['total']} records done "
              f"({', '.join(f'{r} {n}' for r, n in st['by_role'].items())}); "
              f"{len(st['missing'])} missing, {len(st['damaged'])} damaged")
        for (pid, role), why in list(st["damaged"].items())[:5]:
            print(f"  damaged: {pid} ({role}): {why}")
        return 0
    res = load_run(args.run_dir)
    out = Path(args.out) if args.out else Path(args.run_dir) / "result"
    res.save(out)
    print(repr(res))
    try:
        print(res.summary()["sentence"])
    except Exception as e:  # noqa: BLE001 - the saved result matters, not the sentence
        print(f"(no summary: {type(e).__name__}: {e})", file=sys.stderr)
    print(f"saved: {out}  (shiftlens.load({str(out)!r}))")
    return 0


def add_commands(sub: Any) -> None:
    """Add ``run`` and ``merge`` to the ``shiftlens`` subcommands (argparse only).

    Example:
        >>> p = A.Parser(prog="shiftlens")
        >>> add_commands(p.add_subparsers(dest="cmd", parser_class=A.Parser))
        >>> p.parse_args(["merge", "runs/x"]).handler
        'shiftlens.runner.cli:cmd_merge'
    """
    debug = A.debug_parent()
    r = sub.add_parser(
        "run", parents=[debug], help="compute a lens record by record (resume, shards, Ray)",
        description="Compute LENS on BASE and TUNED one (prompt, model) record at a time into "
                    "the run directory --out: each record is written atomically as soon as it "
                    "is computed, with run.json recording the parameters, the prompts and "
                    "fingerprints of both models. Per-model lenses keep one model in memory at "
                    "a time. 'shiftlens merge DIR' assembles the result.",
        epilog="Examples: shiftlens run attribution toy:base toy:tuned --prompts p.jsonl --out "
               "runs/sens --param max_new_tokens=12 | Slurm: sbatch --array=0-7 with "
               "'--shard slurm' | Ray: --executor ray --workers 8 --gpus-per-worker 1 "
               "--device cuda. See docs/scale.md.")
    r.add_argument("lens", metavar="LENS",
                   help="a lens with per-prompt units (attribution; LENS.FUNCTION for a lens "
                        "with several, e.g. residual.output_shift), or module:object")
    r.add_argument("base", metavar="BASE", help="the pre-trained model (path, hub id, .gguf)")
    r.add_argument("tuned", metavar="TUNED", help="its instruction-tuned twin")
    A.prompt_options(r, required=True)
    r.add_argument("--out", required=True, metavar="DIR", help="the run directory")
    r.add_argument("--param", action="append", metavar="KEY=VALUE",
                   help="a lens parameter (VALUE read as JSON, else text), e.g. "
                        "max_new_tokens=12; repeatable")
    r.add_argument("--resume", action="store_true",
                   help="continue the run in DIR (refused if it was made with other "
                        "parameters, prompts or models)")
    r.add_argument("--shard", metavar="I/N",
                   help="compute prompts with index %% N == I only (0 <= I < N), joining the "
                        "run in DIR; 'slurm' reads SLURM_ARRAY_TASK_ID/_MIN/_COUNT")
    r.add_argument("--executor", choices=("inprocess", "ray"), default="inprocess",
                   help="inprocess (default) or ray (pip install 'shiftlens[ray]')")
    r.add_argument("--workers", type=A.positive("--workers"), default=1, metavar="N",
                   help="Ray actors, each holding one model at a time (default 1)")
    r.add_argument("--gpus-per-worker", type=float, default=0.0, metavar="G",
                   help="GPUs per Ray actor (with --device cuda; fractions share a GPU)")
    r.add_argument("--cpus-per-worker", type=float, default=1.0, metavar="C",
                   help="CPUs per Ray actor, also its torch threads (default 1)")
    r.add_argument("--max-restarts", type=A.nonneg, default=3, metavar="R",
                   help="Ray restarts of a dead actor; its unfinished record is retried "
                        "(default 3)")
    r.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="Ray cluster to join (default: RAY_ADDRESS, else a local cluster)")
    r.add_argument("--processing", choices=("raw", "compat"), default="raw",
                   help="raw checkpoint weights (default) or TransformerLens-processed")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    A.model_options(r)
    r.set_defaults(handler=f"{_PKG}:cmd_run")

    m = sub.add_parser(
        "merge", parents=[debug], help="assemble a run directory's result",
        description="Check every record of the run directory DIR and assemble the lens's "
                    "Result, equal to the in-process function's; save it to --out.")
    m.add_argument("run_dir", metavar="DIR", help="the run directory ('shiftlens run --out')")
    m.add_argument("--out", metavar="RESULT_DIR", default=None,
                   help="where to save the Result (default: DIR/result)")
    m.add_argument("--status", action="store_true",
                   help="only print how many records are done, missing or damaged")
    m.set_defaults(handler=f"{_PKG}:cmd_merge")
