"""``shiftlens`` command line.

Commands: ``demo`` (the embedded pair -> report), ``report``/``compare`` (any pair -> report),
``lenses`` (which lenses are available), plus each registered lens's own subcommands
(:attr:`shiftlens.lenses.LensSpec.cli`): ``attribute`` (one model, one prompt: importance
density), ``concepts`` (one model, one layer: W_out principal components in words), ...; and
the runner's ``run`` (a lens record by record into a run directory: resume, shards, Ray) and
``merge`` (a run directory -> its Result), from :mod:`shiftlens.runner.cli`.

Streams: stdout carries what a command found (the pair, the self-check, the findings, where
the report is, a count of the warnings captured); stderr carries errors, and progress (bars and
the run-time estimate) only when it goes to a terminal or ``--progress`` asks for it. Warnings
raised while a command runs are captured (:mod:`shiftlens.report.log`): a report lists them in
its Log section, ``--verbose`` also prints each on stderr as it is raised.

Exit codes: 0 ok; 1 an internal failure (a bug, or the report was written but a lens failed);
2 bad input (one line on stderr, no traceback unless ``--debug``): every
:class:`~shiftlens.errors.ShiftlensError`, and every ``OSError`` on a path the user gave; 3 the
instrument failed its self-check (:func:`shiftlens.selfcheck`) and nothing was measured.
"""

from __future__ import annotations

import argparse
import errno
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from shiftlens import cliargs as A

__all__ = ["main", "build_parser", "DEMO_LIMITS", "DEMO_OPTIONS"]

#: Prompt caps of ``shiftlens demo`` (the toy pair is small: 4 prompts per task for the
#: attributions, 20 per task for attention).
DEMO_LIMITS = {"attribution": 28, "attention": 140, "residual": 28, "patching": 14}
#: Report options of ``shiftlens demo``: the toy tasks answer in at most 6 tokens + EOS, so 12
#: generated tokens are enough for the attributed responses.
DEMO_OPTIONS = {"attribution_tokens": 12}
LENS_HELP = ("comma-separated lens names (see 'shiftlens lenses'), or 'all' (default); 'list' "
             "prints which are available now and exits. Unavailable lenses are skipped with a "
             "note in the report")


def _default_limits() -> dict[str, int | None]:
    """The registered lenses' default prompt caps (read from the registry: no torch)."""
    from shiftlens.lenses import registered_lenses

    out: dict[str, int | None] = {}
    for spec in registered_lenses().values():
        out.update(spec.limits)
    return out


def _caps_text(limits: dict[str, int | None]) -> str:
    return ", ".join(f"{k} [{v if v else 'no cap'}]" for k, v in limits.items())


def _limits(items: list[str] | None) -> dict[str, int | None]:
    DEFAULT_LIMITS = _default_limits()
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


def _defined_statically(ref: str) -> str | None:
    """Why ``"module:attribute"`` would not import, judged without importing the module.

    The module must be found (its parent packages are imported: the lens packages are light)
    and bind the name at its top level (a def, class, assignment or import). Returns None when
    both hold, else the reason.
    """
    import ast
    import importlib.util

    mod, _, attr = ref.partition(":")
    try:
        spec = importlib.util.find_spec(mod)
    except (ImportError, ValueError) as e:
        return f"{ref} cannot be imported ({type(e).__name__}: {e})"
    if spec is None:
        return f"{ref} cannot be imported (no module named {mod!r})"
    origin = getattr(spec, "origin", None)
    if not origin or not str(origin).endswith(".py"):
        return None  # an extension or namespace module: trust it
    try:
        tree = ast.parse(Path(origin).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError) as e:
        return f"{ref} cannot be imported ({type(e).__name__}: {e})"
    top = attr.split(".")[0]
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names = [node.name]
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [(a.asname or a.name).split(".")[0] for a in node.names]
        elif isinstance(node, ast.Assign):
            names = [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names = [node.target.id]
        else:
            continue
        if top in names:
            return None
    if any(isinstance(n, ast.FunctionDef) and n.name == "__getattr__" for n in tree.body):
        return None  # resolved lazily by the module's __getattr__: checked on import only
    return f"{ref} cannot be imported ({mod} does not define {top!r})"


def _print_lenses(check: bool = False) -> int:
    """One line per lens. By default judged from the source (fast, imports no torch); with
    ``check`` each lens is imported, as a report would."""
    from shiftlens.lenses import available_lenses, registered_lenses

    specs = registered_lenses()
    if check:
        av = available_lenses()
    else:
        av = {}
        for name, spec in specs.items():
            why = next((w for w in (_defined_statically(r) for r in (spec.section, *spec.requires))
                        if w), None)
            av[name] = (why is None, why or "available")
    w = max((len(n) for n in specs), default=0)  # one column for the names
    for name, spec in specs.items():
        ok, why = av[name]
        print(f"{name:{w}s}  {'available' if ok else 'NOT AVAILABLE'}  {spec.title}"
              + ("" if ok else f"\n{'':{w}s}  ({why})"))
    if not check:
        print("(judged from the source without importing; 'shiftlens lenses --check' imports "
              "each lens)")
    return 0


def _say(msg: str, *, progress: bool = False) -> None:
    """A progress message: on stderr when progress is shown, else on stdout."""
    print(msg, file=sys.stderr if progress else sys.stdout, flush=True)


def _names(text: str | None) -> tuple[str, str] | None:
    if text is None:
        return None
    parts = [x.strip() for x in text.split(",")]
    if len(parts) != 2 or not all(parts):
        raise A.error(f"--names takes BASE,TUNED (two names separated by one comma), got {text!r}")
    if parts[0] == parts[1]:
        raise A.error(f"--names: the base and tuned names must differ, got {parts[0]!r} twice")
    return parts[0], parts[1]


def _prepare(args: argparse.Namespace) -> None:
    """Every check that needs no model, before anything is loaded (fail fast, write nothing)."""
    from shiftlens.report.core import check_output_dir, resolve_lenses

    resolve_lenses(args.lenses)
    _limits(args.lens_prompts)
    _names(args.names)
    check_output_dir(args.out)


def _run_report(args: argparse.Namespace, pair: Any, prompts: list[Any], title: str,
                options: dict[str, Any] | None = None,
                limits: dict[str, int | None] | None = None) -> int:
    from shiftlens.instrument import SelfCheck, selfcheck
    from shiftlens.report.core import build_report, plan_report
    from shiftlens.report.estimate import estimate_report

    limits = {**(limits or {}), **_limits(args.lens_prompts)}
    plan = plan_report(prompts, lenses=args.lenses, max_prompts=args.max_prompts, limits=limits)
    command = "shiftlens " + " ".join(shlex.quote(a) for a in args._argv)
    t0 = time.perf_counter()
    print(pair)
    if args.skip_checks:
        check = SelfCheck.skipped_on_request()
        print("warning: self-check skipped (--skip-checks); the report says so in red")
    else:
        check = selfcheck(pair)
        check.raise_if_failed()
        print(check.message())
    est = None
    if args.estimate:
        est = estimate_report(pair, plan.prompts, lenses=plan.lenses, counts=plan.counts,
                              options=options)
        if est.seconds > args.estimate_threshold:
            _say(f"shiftlens: {est.message()}", progress=args.progress)
    rep = build_report(
        pair, prompts, args.out, lenses=plan.lenses, max_prompts=args.max_prompts,
        limits=limits, title=title, seed=args.seed, progress=args.progress, debug=args.debug,
        command=command, options=options, selfcheck=check, log=args._log.entries,
        estimate=est,
    )
    dt = time.perf_counter() - t0
    print()
    width = max([12, *(len(s.name) for s in rep.sections)])
    for s in rep.sections:
        extra = f" - {s.note}" if s.status == "skipped" else ""
        print(f"  {s.name:{width}s} {s.status:8s} {s.seconds:6.1f} s{extra}")
    if rep.headlines:
        print("\nKey findings:")
        for h in rep.headlines:
            print(f"  - {h}")
    if rep.log:
        ours = sum(e.origin == "shiftlens" for e in rep.log)
        print(f"\nlog: {len(rep.log)} warning(s) ({ours} from shiftlens, {len(rep.log) - ours} from "
              "dependencies), listed in the report's Log section" +
              ("" if args.verbose else "; --verbose prints them"))
    print(f"\nreport: {rep.html_path}  ({dt:.0f} s; metrics.json, csv/, figures/ beside it)")
    args._report_log = True
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
              "random Llama pair and the shipped prompt set instead")
        pair = tiny_pair("llama")
        if load.get("names"):
            pair.names = dict(zip(("base", "tuned"), load["names"]))
        return pair, default_prompts(), "tiny random pair"
    return toy_pair(**load), toy_prompts(), "embedded toy pair"


def cmd_demo(args: argparse.Namespace) -> int:
    if args.lenses == "list":
        return _print_lenses()
    _prepare(args)
    names = _names(args.names)
    pair, prompts, what = _demo_pair(**A.load_kwargs(args), **({"names": names} if names else {}))
    toy = what == "embedded toy pair"
    return _run_report(args, pair, prompts, f"shiftlens demo: {what}",
                       options=dict(DEMO_OPTIONS) if toy else None,
                       limits=DEMO_LIMITS if toy else None)


def cmd_report(args: argparse.Namespace) -> int:
    if args.lenses == "list":
        return _print_lenses()
    from shiftlens import ModelPair

    _prepare(args)
    base, tuned = A.model_ref(args.base), A.model_ref(args.tuned)
    prompts = A.prompts_from_args(args)
    pair = ModelPair.from_pretrained(base, tuned, **A.load_kwargs(args),
                                     processing=args.processing, names=_names(args.names))
    return _run_report(args, pair, prompts, args.title or "shiftlens report")


def cmd_lenses(args: argparse.Namespace) -> int:
    return _print_lenses(check=getattr(args, "check", False))


# ----------------------------------------------------------------------------- parser
def _run_options(p: argparse.ArgumentParser, default_out: str,
                 limits: dict[str, int | None]) -> None:
    from shiftlens.report.estimate import ESTIMATE_THRESHOLD_S

    p.add_argument("--out", default=default_out, metavar="DIR",
                   help=f"output directory (default: {default_out})")
    p.add_argument("--lenses", default="all", metavar="LIST", help=LENS_HELP)
    p.add_argument("--names", default=None, metavar="BASE,TUNED",
                   help="names of the two models in the report (default: a hub id as it is, a "
                        "local directory's name, e.g. pair/base)")
    p.add_argument("--max-prompts", type=A.positive("--max-prompts"), default=None, metavar="N",
                   help="use at most N prompts (balanced over categories)")
    p.add_argument("--lens-prompts", action="append", metavar="KEY=N",
                   help=f"prompt cap of one lens (keys and defaults: {_caps_text(limits)}; "
                        "0 = no cap); repeatable")
    p.add_argument("--seed", type=int, default=0, help="seed for bootstraps and solvers (0)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--progress", dest="progress", action="store_true", default=None,
                   help="progress bars and the time estimate on stderr (default: only when "
                        "stderr is a terminal)")
    g.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bars")
    p.add_argument("--no-estimate", dest="estimate", action="store_false",
                   help=f"do not time a calibration pass to estimate the run time (printed "
                        f"before runs expected to take over {ESTIMATE_THRESHOLD_S:.0f} s)")
    p.add_argument("--estimate-threshold", type=float, default=ESTIMATE_THRESHOLD_S,
                   help=argparse.SUPPRESS)
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
    from shiftlens.report.estimate import ESTIMATE_THRESHOLD_S

    common = A.debug_parent()
    p = A.Parser(
        prog="shiftlens",
        description="What did instruction tuning change inside this model? Compare a base "
                    "model with its instruction-tuned twin (Wu et al., NAACL 2024).",
        epilog="Start with 'shiftlens demo --out shiftlens-demo' (offline; it prints an "
               f"estimate first when the run will take over {ESTIMATE_THRESHOLD_S:.0f} s). "
               "Models are local Hugging "
               "Face directories, .gguf files, hub ids (set HF_HUB_OFFLINE=1 to stay offline) "
               "or toy:base / toy:tuned (the embedded pair). Exit codes: 0 ok, 1 internal "
               "failure, 2 bad input, 3 self-check failed (nothing measured).",
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--verbose", action="store_true",
                   help="also print every warning on stderr as it is raised")
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=A.Parser)
    defaults = _default_limits()

    d = sub.add_parser("demo", parents=[common], help="the embedded pair -> HTML report",
                       description="Analyse the embedded toy pair (a small Llama and its "
                                   "instruction-tuned twin, shipped in shiftlens/zoo) on its "
                                   "held-out prompts and write the HTML report, metrics.json "
                                   "and CSVs into --out. Attributed responses are capped at "
                                   f"{DEMO_OPTIONS['attribution_tokens']} tokens.")
    _run_options(d, "shiftlens-demo", {**defaults, **DEMO_LIMITS})
    A.model_options(d, threads=1)
    d.set_defaults(func="demo")

    for name in ("report", "compare"):
        r = sub.add_parser(
            name, parents=[common],
            help="base + tuned model -> HTML report" + (" (same as report)" if name == "compare" else ""),
            description="Load BASE and TUNED, run the lenses on the prompts and write the "
                        "HTML report, metrics.json and CSVs into --out.")
        r.add_argument("base", metavar="BASE", help="the pre-trained model")
        r.add_argument("tuned", metavar="TUNED", help="its instruction-tuned twin")
        A.prompt_options(r)
        r.add_argument("--processing", choices=("raw", "compat"), default="raw",
                       help="raw checkpoint weights (default) or TransformerLens-processed")
        r.add_argument("--title", default=None, help="report title")
        _run_options(r, "shiftlens-report", defaults)
        A.model_options(r)
        r.set_defaults(func="report")

    ls = sub.add_parser("lenses", parents=[common], help="which lenses are available",
                        description="List the lenses the report can run and whether each is "
                                    "available in this installation (judged from the source; "
                                    "--check imports each lens).")
    ls.add_argument("--check", action="store_true",
                    help="import each lens to check it (slower: loads torch)")
    ls.set_defaults(func="lenses")
    # each registered lens may add its own subcommands (LensSpec.cli)
    from shiftlens.lenses import registered_lenses, resolve_ref

    for spec in registered_lenses().values():
        if spec.cli:
            resolve_ref(spec.cli)(sub)
    # the runner: `run` (a lens record by record: resume, shards, Ray) and `merge`; its module
    # is argparse only (torch and the runner load when a command runs)
    from shiftlens.runner.cli import add_commands as runner_commands

    runner_commands(sub)
    return p


#: errno values that mean the user's environment, not a bug, even without a file name.
_ENV_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def _user_paths(args: argparse.Namespace) -> list[Path]:
    out = []
    for k, v in vars(args).items():
        if k.startswith("_") or not isinstance(v, str) or not v or v.startswith("toy:"):
            continue
        try:
            out.append(Path(v.lstrip("@")).expanduser().resolve())
        except (OSError, RuntimeError, ValueError):
            continue
    return out


def _on_user_path(e: OSError, args: argparse.Namespace) -> bool:
    """Whether an OSError concerns a path the user named (or the environment): bad input."""
    files = [f for f in (e.filename, e.filename2) if f]
    if not files:
        return e.errno in _ENV_ERRNOS
    user = _user_paths(args)
    for f in files:
        try:
            fp = Path(os.fsdecode(f)).expanduser().resolve()
        except (OSError, RuntimeError, ValueError, TypeError):
            continue
        if any(fp == u or u in fp.parents for u in user):
            return True
    return False


def _os_message(e: OSError) -> str:
    what = e.strerror or str(e)
    files = " -> ".join(repr(os.fsdecode(f)) for f in (e.filename, e.filename2) if f)
    return f"{what}: {files}" if files else what


def _echo(entry: Any) -> None:
    print(f"shiftlens: warning: {entry.line()}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return the exit code (0 ok, 1 internal failure, 2 bad input, 3 failed
    self-check).

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
    if "progress" in vars(args) and args.progress is None:
        args.progress = sys.stderr.isatty()
    if getattr(args, "func", None) != "lenses":  # listing lenses loads no transformers
        A.quiet_hf(progress=bool(getattr(args, "progress", False)))
    from shiftlens.report.log import capture_warnings

    with capture_warnings(echo=_echo if args.verbose else None) as log:
        args._log = log
        rc = _dispatch(args)
    if not getattr(args, "_report_log", False) and len(log) and not args.verbose:
        for entry in log.ours:
            print(f"warning: {entry.message}")
        if log.dependencies:
            print(f"note: {len(log.dependencies)} warning(s) from dependencies were captured; "
                  "--verbose prints them")
    return rc


def _dispatch(args: argparse.Namespace) -> int:
    from shiftlens.errors import SelfCheckError, ShiftlensError

    try:
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
    except OSError as e:
        if args.debug:
            raise
        if _on_user_path(e, args):
            print(f"shiftlens: error: {' '.join(_os_message(e).split())}", file=sys.stderr)
            return 2
        msg = " ".join(str(e).split())
        print(f"shiftlens: internal error: {type(e).__name__}: {msg} (run with --debug for the "
              "traceback)", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - one line, not a traceback, unless --debug
        if args.debug:
            raise
        msg = " ".join(str(e).split())
        print(f"shiftlens: internal error: {type(e).__name__}: {msg} (run with --debug for the "
              "traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
