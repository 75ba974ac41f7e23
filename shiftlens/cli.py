"""``shiftlens`` command line.

Commands: ``demo`` (the embedded pair -> report), ``report``/``compare`` (any pair -> report),
``lenses`` (which lenses are available), plus each registered lens's own subcommands
(:attr:`shiftlens.lenses.LensSpec.cli`): ``attribute`` (one model, one prompt: importance
density), ``concepts`` (one model, one layer: W_out principal components in words), ...

Exit codes: 0 ok; 1 an internal failure (a bug, or the report was written but a lens failed);
2 bad input (one line on stderr, no traceback unless ``--debug``); 3 the instrument failed its
self-check (:func:`shiftlens.selfcheck`) and nothing was measured.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from typing import Any

from shiftlens import cliargs as A

__all__ = ["main", "build_parser"]

#: Prompt caps of ``shiftlens demo`` (the toy pair is small: 4 prompts per task for the
#: attributions, 20 for attention; about a minute on a 2-core CPU).
DEMO_LIMITS = {"attribution": 28, "attention": 140, "residual": 28, "patching": 14}
LENS_HELP = ("comma-separated lens names (see 'shiftlens lenses'), or 'all' (default); 'list' "
             "prints which are available now and exits. Unavailable lenses are skipped with a "
             "note in the report")


def _limits(items: list[str] | None) -> dict[str, int | None]:
    from shiftlens.report import DEFAULT_LIMITS

    out: dict[str, int | None] = {}
    for it in items or []:
        if "=" not in it:
            raise A.error(f"--lens-prompts takes KEY=N (e.g. attribution=40), got {it!r}")
        k, v = (x.strip() for x in it.split("=", 1))
        if k not in DEFAULT_LIMITS:
            raise A.error(f"--lens-prompts: unknown key {k!r}; choose from {', '.join(DEFAULT_LIMITS)}")
        if not v.isdigit():
            raise A.error(f"--lens-prompts {k}: N must be an integer >= 0 (0 = no cap), got {v!r}")
        out[k] = int(v) or None
    return out


def _print_lenses() -> int:
    from shiftlens.report import LENSES, available_lenses

    av = available_lenses()
    for name, spec in LENSES.items():
        ok, why = av[name]
        print(f"{name:12s} {'available' if ok else 'NOT AVAILABLE'}  {spec.title}"
              + ("" if ok else f"\n{'':12s} ({why})"))
    return 0


def _run_report(args: argparse.Namespace, pair: Any, prompts: list[Any], title: str,
                options: dict[str, Any] | None = None,
                limits: dict[str, int | None] | None = None) -> int:
    from shiftlens.instrument import SelfCheck, selfcheck
    from shiftlens.report import build_report, resolve_lenses

    lenses = resolve_lenses(args.lenses)
    command = "shiftlens " + " ".join(shlex.quote(a) for a in args._argv)
    t0 = time.perf_counter()
    if args.skip_checks:
        check = SelfCheck.skipped_on_request()
        print("shiftlens: warning: self-check skipped (--skip-checks); the report says so",
              file=sys.stderr)
    else:
        check = selfcheck(pair)
        check.raise_if_failed()
        print(check.message(), file=sys.stderr)
    rep = build_report(
        pair, prompts, args.out, lenses=lenses, max_prompts=args.max_prompts,
        limits={**(limits or {}), **_limits(args.lens_prompts)}, title=title, seed=args.seed,
        progress=not args.no_progress, debug=args.debug, command=command, options=options,
        selfcheck=check,
    )
    dt = time.perf_counter() - t0
    print(f"\n{pair}")
    for s in rep.sections:
        extra = f" - {s.note}" if s.status == "skipped" else ""
        print(f"  {s.name:12s} {s.status:8s} {s.seconds:6.1f} s{extra}")
    if rep.headlines:
        print("\nKey findings:")
        for h in rep.headlines:
            print(f"  - {h}")
    print(f"\nreport: {rep.html_path}  ({dt:.0f} s; metrics.json, csv/, figures/ beside it)")
    if rep.failed:
        print(f"shiftlens: error: lens(es) {', '.join(rep.failed)} failed; the report says why "
              f"(see {args.out}/errors/)", file=sys.stderr)
        return 1
    return 0


# ----------------------------------------------------------------------------- commands
def _demo_pair(**load: Any) -> tuple[Any, list[Any], str]:
    """The embedded pair and its held-out prompts; a tiny random pair until the pair ships."""
    try:
        from shiftlens.zoo import pair_dirs, toy_pair, toy_prompts

        pair_dirs()  # raises when the shipped pair is missing
    except Exception:  # noqa: BLE001 - the embedded pair is optional until it ships
        from shiftlens import default_prompts
        from shiftlens.testing import tiny_pair

        print("note: the embedded pair (shiftlens/zoo/pair) is not installed; using a tiny "
              "random Llama pair and the shipped prompt set instead", file=sys.stderr)
        return tiny_pair("llama"), default_prompts(), "tiny random pair"
    return toy_pair(**load), toy_prompts(), "embedded toy pair"


def cmd_demo(args: argparse.Namespace) -> int:
    if args.lenses == "list":
        return _print_lenses()
    from shiftlens.report import resolve_lenses

    resolve_lenses(args.lenses)  # fail fast on a bad name, before loading anything
    _limits(args.lens_prompts)
    pair, prompts, what = _demo_pair(**A.load_kwargs(args))
    # the toy tasks answer in at most 6 tokens + EOS: 12 generated tokens are enough
    toy = what == "embedded toy pair"
    return _run_report(args, pair, prompts, f"shiftlens demo: {what}",
                       options={"attribution_tokens": 12} if toy else None,
                       limits=DEMO_LIMITS if toy else None)


def cmd_report(args: argparse.Namespace) -> int:
    if args.lenses == "list":
        return _print_lenses()
    from shiftlens import ModelPair
    from shiftlens.report import resolve_lenses

    resolve_lenses(args.lenses)
    _limits(args.lens_prompts)
    base, tuned = A.model_ref(args.base), A.model_ref(args.tuned)
    prompts = A.prompts_from_args(args)
    pair = ModelPair.from_pretrained(base, tuned, **A.load_kwargs(args),
                                     processing=args.processing)
    return _run_report(args, pair, prompts, args.title or "shiftlens report")


def cmd_lenses(args: argparse.Namespace) -> int:
    return _print_lenses()


# ----------------------------------------------------------------------------- parser
def _run_options(p: argparse.ArgumentParser, default_out: str) -> None:
    p.add_argument("--out", default=default_out, metavar="DIR",
                   help=f"output directory (default: {default_out})")
    p.add_argument("--lenses", default="all", metavar="LIST", help=LENS_HELP)
    p.add_argument("--max-prompts", type=A.positive("--max-prompts"), default=None, metavar="N",
                   help="use at most N prompts (balanced over categories)")
    p.add_argument("--lens-prompts", action="append", metavar="KEY=N",
                   help="prompt cap of one lens (keys: attribution [12], attention [64], "
                        "residual [16], patching [8]; 0 = no cap); repeatable")
    p.add_argument("--seed", type=int, default=0, help="seed for bootstraps and solvers (0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--skip-checks", action="store_true",
                   help="measure even if the instrument's self-check would fail (decoding with "
                        "and without the KV cache, the embedded pair's manifest); recorded in "
                        "the report")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (``shiftlens --help``).

    Example:
        >>> build_parser().prog
        'shiftlens'
    """
    debug = A.debug_parent()
    p = A.Parser(
        prog="shiftlens",
        description="What did instruction tuning change inside this model? Compare a base "
                    "model with its instruction-tuned twin (Wu et al., NAACL 2024).",
        epilog="Start with 'shiftlens demo --out shiftlens-demo' (offline, a few minutes on a "
               "laptop CPU). Models are local Hugging Face directories, .gguf files, hub ids "
               "(set HF_HUB_OFFLINE=1 to stay offline) or toy:base / toy:tuned (the embedded "
               "pair). Exit codes: 0 ok, 1 internal failure, 2 bad input, 3 self-check failed "
               "(nothing measured).",
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=A.Parser)

    d = sub.add_parser("demo", parents=[debug], help="the embedded pair -> HTML report",
                       description="Analyse the embedded toy pair (a 4-layer Llama and its "
                                   "instruction-tuned twin, shipped in shiftlens/zoo) on its "
                                   "held-out prompts and write the HTML report, metrics.json "
                                   "and CSVs into --out.")
    _run_options(d, "shiftlens-demo")
    A.model_options(d, threads=1)
    d.set_defaults(func="demo")

    for name in ("report", "compare"):
        r = sub.add_parser(
            name, parents=[debug],
            help="base + tuned model -> HTML report" + (" (same as report)" if name == "compare" else ""),
            description="Load BASE and TUNED, run the lenses on the prompts and write the "
                        "HTML report, metrics.json and CSVs into --out.")
        r.add_argument("base", metavar="BASE", help="the pre-trained model")
        r.add_argument("tuned", metavar="TUNED", help="its instruction-tuned twin")
        A.prompt_options(r)
        r.add_argument("--processing", choices=("raw", "compat"), default="raw",
                       help="raw checkpoint weights (default) or TransformerLens-processed")
        r.add_argument("--title", default=None, help="report title")
        _run_options(r, "shiftlens-report")
        A.model_options(r)
        r.set_defaults(func="report")

    ls = sub.add_parser("lenses", help="which lenses are available",
                        description="List the lenses the report can run and whether each is "
                                    "available in this installation.")
    ls.set_defaults(func="lenses")
    # each registered lens may add its own subcommands (LensSpec.cli)
    from shiftlens.lenses import registered_lenses, resolve_ref

    for spec in registered_lenses().values():
        if spec.cli:
            resolve_ref(spec.cli)(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return the exit code (0 ok, 1 internal failure, 2 bad input).

    Example:
        >>> main(["--version"])  # doctest: +SKIP
        0.2.0.dev0
        0
    """
    os.environ.setdefault("MPLBACKEND", "Agg")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except A.UsageError as e:
        print(f"shiftlens: error: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:  # --help
        return int(e.code or 0)
    args._argv = argv
    if args.version:
        from shiftlens import __version__

        print(__version__)
        return 0
    if not getattr(args, "func", None) and not getattr(args, "handler", None):
        parser.print_help()
        return 2
    from shiftlens.errors import SelfCheckError, ShiftlensError

    try:
        if getattr(args, "func", None) != "lenses":
            A.quiet_hf()
        if getattr(args, "threads", None):
            import torch

            torch.set_num_threads(args.threads)
        handler = getattr(args, "handler", None)
        if handler is not None:
            from shiftlens.lenses import resolve_ref

            return int(resolve_ref(handler)(args))
        return int(globals()[f"cmd_{args.func}"](args))
    except SelfCheckError as e:
        if args.debug:
            raise
        print(f"shiftlens: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 3
    except ShiftlensError as e:
        if args.debug:
            raise
        msg = " ".join(str(e).split())
        print(f"shiftlens: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("shiftlens: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - one line, not a traceback, unless --debug
        if args.debug:
            raise
        msg = " ".join(str(e).split())
        print(f"shiftlens: internal error: {type(e).__name__}: {msg} (run with --debug for the "
              "traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
