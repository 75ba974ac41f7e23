"""``shiftlens`` command line.

Commands: ``demo`` (the embedded pair -> report), ``report``/``compare`` (any pair -> report),
``attribute`` (one model, one prompt: importance density), ``concepts`` (one model, one layer:
W_out principal components in words), ``lenses`` (which lenses are available).

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
from pathlib import Path
from typing import Any

__all__ = ["main", "build_parser"]

DTYPES = ("float32", "float16", "bfloat16", "float64")
#: Prompt caps of ``shiftlens demo`` (the toy pair is small: 4 prompts per task for the
#: attributions, 20 for attention; about a minute on a 2-core CPU).
DEMO_LIMITS = {"attribution": 28, "attention": 140, "residual": 28, "patching": 14}
LENS_HELP = ("comma-separated lenses: attribution, attention, ffn, residual, or 'all' "
             "(default); 'list' prints which are available now and exits. Unavailable lenses "
             "are skipped with a note in the report")


class UsageError(Exception):
    """Bad command-line usage (argparse's complaint), reported in one line with exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see '{self.prog} --help')")


# ----------------------------------------------------------------------------- helpers
def _err(msg: str) -> Exception:
    from shiftlens.errors import ShiftlensError

    return ShiftlensError(msg)


def _dtype(name: str) -> Any:
    import torch

    return getattr(torch, name)


def _device(name: str) -> str:
    import torch

    d = name.strip().lower()
    if d == "cpu":
        return d
    if d.startswith("cuda"):
        if not torch.cuda.is_available():
            raise _err(f"device {name!r} requested but CUDA is not available (torch "
                       f"{torch.__version__}); use --device cpu")
        if ":" in d:
            idx = d.split(":", 1)[1]
            if not idx.isdigit() or int(idx) >= torch.cuda.device_count():
                raise _err(f"device {name!r}: no such CUDA device "
                           f"({torch.cuda.device_count()} available)")
        return d
    if d == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise _err("device 'mps' requested but it is not available; use --device cpu")
        return d
    raise _err(f"unknown device {name!r}; use cpu, cuda, cuda:N or mps")


def _model_ref(ref: str) -> str:
    """``toy:base`` / ``toy:tuned`` -> the embedded pair's directory; a path must exist."""
    if ref in ("toy:base", "toy:tuned"):
        from shiftlens.zoo import pair_dirs

        base, tuned = pair_dirs()
        return str(base if ref == "toy:base" else tuned)
    p = Path(ref).expanduser()
    if p.exists():
        if not p.is_dir() and p.suffix != ".gguf":
            raise _err(f"model {ref!r} is a file, not a Hugging Face model directory or .gguf")
        return str(p)
    if ref.startswith(("/", "./", "../", "~")) or ref.endswith(".gguf") or os.sep + os.sep in ref:
        raise _err(f"model path {ref!r} does not exist")
    return ref  # a hub id


def _quiet_hf() -> None:
    """No Hugging Face download/loading progress bars (shiftlens shows its own)."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except Exception:  # noqa: BLE001 - cosmetic
        pass
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except Exception:  # noqa: BLE001 - cosmetic
        pass


def _positive(name: str) -> Any:
    def conv(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {s!r}") from None
        if v < 1:
            raise argparse.ArgumentTypeError(f"{name} must be >= 1, got {v}")
        return v

    return conv


def _nonneg(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {s!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {v}")
    return v


def _limits(items: list[str] | None) -> dict[str, int | None]:
    from shiftlens.report import DEFAULT_LIMITS

    out: dict[str, int | None] = {}
    for it in items or []:
        if "=" not in it:
            raise _err(f"--lens-prompts takes KEY=N (e.g. attribution=40), got {it!r}")
        k, v = (x.strip() for x in it.split("=", 1))
        if k not in DEFAULT_LIMITS:
            raise _err(f"--lens-prompts: unknown key {k!r}; choose from {', '.join(DEFAULT_LIMITS)}")
        if not v.isdigit():
            raise _err(f"--lens-prompts {k}: N must be an integer >= 0 (0 = no cap), got {v!r}")
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
def _demo_pair(device: str = "cpu", dtype: Any = None) -> tuple[Any, list[Any], str]:
    """The embedded pair and its held-out prompts; a tiny random pair until the pair ships."""
    import torch

    dtype = dtype or torch.float32
    try:
        from shiftlens.zoo import pair_dirs, toy_pair, toy_prompts

        pair_dirs()  # raises when the shipped pair is missing
    except Exception:  # noqa: BLE001 - the embedded pair is optional until it ships
        from shiftlens import default_prompts
        from shiftlens.testing import tiny_pair

        print("note: the embedded pair (shiftlens/zoo/pair) is not installed; using a tiny "
              "random Llama pair and the shipped prompt set instead", file=sys.stderr)
        return tiny_pair("llama"), default_prompts(), "tiny random pair"
    return toy_pair(device=device, dtype=dtype), toy_prompts(), "embedded toy pair"


def cmd_demo(args: argparse.Namespace) -> int:
    if args.lenses == "list":
        return _print_lenses()
    from shiftlens.report import resolve_lenses

    resolve_lenses(args.lenses)  # fail fast on a bad name, before loading anything
    _limits(args.lens_prompts)
    device = _device(args.device)
    pair, prompts, what = _demo_pair(device, _dtype(args.dtype))
    # the toy tasks answer in at most 6 tokens + EOS: 12 generated tokens are enough
    toy = what == "embedded toy pair"
    return _run_report(args, pair, prompts, f"shiftlens demo: {what}",
                       options={"attribution_tokens": 12} if toy else None,
                       limits=DEMO_LIMITS if toy else None)


def cmd_report(args: argparse.Namespace) -> int:
    if args.lenses == "list":
        return _print_lenses()
    from shiftlens import ModelPair, default_prompts, load_prompts
    from shiftlens.report import resolve_lenses

    resolve_lenses(args.lenses)
    _limits(args.lens_prompts)
    base, tuned = _model_ref(args.base), _model_ref(args.tuned)
    prompts = load_prompts(args.prompts) if args.prompts else default_prompts()
    if not prompts:
        raise _err(f"prompt file {args.prompts!r} holds no prompts")
    device = _device(args.device)
    pair = ModelPair.from_pretrained(base, tuned, device=device, dtype=_dtype(args.dtype),
                                     processing=args.processing)
    return _run_report(args, pair, prompts, args.title or "shiftlens report")


def cmd_attribute(args: argparse.Namespace) -> int:
    from shiftlens import InstructionPrompt
    from shiftlens.attribution import attribute
    from shiftlens.pair import load_bridge

    prompt = InstructionPrompt(args.prompt, instruction=args.instruction or (),
                               context=args.context or (), id="cli")
    device = _device(args.device)
    model = load_bridge(_model_ref(args.model), device=device, dtype=_dtype(args.dtype))
    if args.chat_template:  # the user text becomes the user turn; spans move with it
        prompt = prompt.with_chat_template(model.tokenizer, system=args.system)
    att = attribute(model, prompt, args.response, max_new_tokens=args.max_new_tokens,
                    mode=args.mode, progress=not args.no_progress, model_name=args.model)
    from shiftlens.viz.circuits import token_strings

    strings = token_strings(model.tokenizer, att.tokens)
    dens = att.density().tolist()
    from shiftlens.prompts import SEGMENTS

    print(f"model: {args.model}\nresponse ({'generated' if att.generated else 'given'}, "
          f"{att.n_output} tokens): {att.response!r}\n")
    print(f"{'pos':>4}  {'segment':11s} {'density':>7}  token")
    for k, pos in enumerate(att.input_positions.tolist()):
        bar = "#" * round(20 * dens[k])
        print(f"{pos:4d}  {SEGMENTS[int(att.segments[pos])]:11s} {dens[k]:7.3f}  "
              f"{strings[pos]!r:20s} {bar}")
    if bool(att.instruction_mask.any()):
        print(f"\ninstruction score: {att.score():.4f} (Wu et al. 2024, §3)")
    else:
        print("\ninstruction score: n/a (mark the instruction with --instruction SPAN)")
    if args.out:
        from shiftlens.viz.circuits import token_rows
        from shiftlens.viz.figures import pyplot, save_figure

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        att.to_frame().to_csv(out / "attribution.csv", index=False)
        att.save(out / "result")
        toks = [strings[int(i)] for i in att.input_positions]
        vis = token_rows(toks, {"importance density": dens},
                         title=f"Importance density, {args.model}",
                         segments=att.input_segments.tolist())
        vis.save(out / "attribution.html")
        fig = att.show()
        save_figure(fig, out / "attribution")
        pyplot().close(fig)
        print(f"files: {out}/attribution.html, attribution.csv, attribution.png/.svg, result/")
    return 0


def cmd_concepts(args: argparse.Namespace) -> int:
    from shiftlens.ffn import LexiconAnnotator, concept_words
    from shiftlens.pair import load_bridge
    from shiftlens.weights import check_layer

    device = _device(args.device)
    model = load_bridge(_model_ref(args.model), device=device, dtype=_dtype(args.dtype))
    check_layer(model, args.layer)
    cw = concept_words(model, args.layer, k=args.k, top_words=args.top_words)
    df = cw.to_frame()
    ann = LexiconAnnotator()
    tasks, levels = [], []
    for words in cw.words:
        a = ann.annotate(list(words))
        tasks.append(a.task)
        levels.append(a.level if a.explainable else "-")
    df["task"], df["level"] = tasks, levels
    df["explainable"] = [lv != "-" for lv in levels]
    print(f"model: {args.model}, layer {args.layer}: W_out principal components read in words "
          "(cosine with the unembedding, sign kept; lexicon annotation)\n")
    for i, row in df.iterrows():
        shown = [f"{w}{'+' if s.startswith('+') else '-'}" for w, s in
                 zip(row["words"].split("|")[: args.show], row["scores"].split("|"))]
        print(f"#{i:<3d} {row['explained_variance_ratio']:6.1%}  {row['task']:11s} "
              f"{row['level']:10s} {' '.join(shown)}")
    if args.out:
        from shiftlens.viz.circuits import concept_table

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        df.to_csv(out / "concepts.csv", index=False)
        concept_table(df, n_components=len(df), n_words=args.show,
                      title=f"W_out principal components of {args.model}, layer {args.layer}"
                      ).save(out / "concepts.html")
        print(f"\nfiles: {out}/concepts.csv, concepts.html")
    return 0


def cmd_lenses(args: argparse.Namespace) -> int:
    return _print_lenses()


# ----------------------------------------------------------------------------- parser
def _run_options(p: argparse.ArgumentParser, default_out: str) -> None:
    p.add_argument("--out", default=default_out, metavar="DIR",
                   help=f"output directory (default: {default_out})")
    p.add_argument("--lenses", default="all", metavar="LIST", help=LENS_HELP)
    p.add_argument("--max-prompts", type=_positive("--max-prompts"), default=None, metavar="N",
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


def _model_options(p: argparse.ArgumentParser, threads: int | None = None) -> None:
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or mps")
    p.add_argument("--dtype", default="float32", choices=DTYPES,
                   help="weight dtype (default float32; bfloat16 for large models on GPU)")
    default = (f"{threads}: the toy model is tiny, more threads only contend" if threads
               else "torch's default")
    p.add_argument("--threads", type=_positive("--threads"), default=threads, metavar="N",
                   help=f"CPU threads for torch (default {default})")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (``shiftlens --help``).

    Example:
        >>> build_parser().prog
        'shiftlens'
    """
    debug = _Parser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show tracebacks and stop on the first failing lens")
    p = _Parser(
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
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=_Parser)

    d = sub.add_parser("demo", parents=[debug], help="the embedded pair -> HTML report",
                       description="Analyse the embedded toy pair (a 4-layer Llama and its "
                                   "instruction-tuned twin, shipped in shiftlens/zoo) on its "
                                   "held-out prompts and write the HTML report, metrics.json "
                                   "and CSVs into --out.")
    _run_options(d, "shiftlens-demo")
    _model_options(d, threads=1)
    d.set_defaults(func="demo")

    for name in ("report", "compare"):
        r = sub.add_parser(
            name, parents=[debug],
            help="base + tuned model -> HTML report" + (" (same as report)" if name == "compare" else ""),
            description="Load BASE and TUNED, run the lenses on the prompts and write the "
                        "HTML report, metrics.json and CSVs into --out.")
        r.add_argument("base", metavar="BASE", help="the pre-trained model")
        r.add_argument("tuned", metavar="TUNED", help="its instruction-tuned twin")
        r.add_argument("--prompts", metavar="FILE",
                       help="JSONL prompt file (docs/prompts.md); default: the shipped set")
        r.add_argument("--processing", choices=("raw", "compat"), default="raw",
                       help="raw checkpoint weights (default) or TransformerLens-processed")
        r.add_argument("--title", default=None, help="report title")
        _run_options(r, "shiftlens-report")
        _model_options(r)
        r.set_defaults(func="report")

    a = sub.add_parser("attribute", parents=[debug],
                       help="importance density of one prompt's tokens for one model",
                       description="Gradient input->output attribution of MODEL's response to "
                                   "the prompt (Wu et al. 2024, §3): importance density per "
                                   "prompt token and the instruction score.")
    a.add_argument("model", metavar="MODEL", help="model directory, .gguf, hub id or toy:tuned")
    a.add_argument("--prompt", required=True, metavar="TEXT", help="the prompt text")
    a.add_argument("--instruction", action="append", metavar="SPAN",
                   help="a substring of the prompt that is the instruction (repeatable)")
    a.add_argument("--context", action="append", metavar="SPAN",
                   help="a substring of the prompt that is the input/context (repeatable)")
    a.add_argument("--chat-template", action="store_true",
                   help="wrap the prompt in the model's chat template (instruct models)")
    a.add_argument("--system", default=None, metavar="TEXT",
                   help="system message for --chat-template")
    a.add_argument("--response", default=None, metavar="TEXT",
                   help="response to attribute (default: the model's greedy response)")
    a.add_argument("--max-new-tokens", type=_positive("--max-new-tokens"), default=32,
                   metavar="N", help="generation limit (default 32)")
    a.add_argument("--mode", choices=("auto", "forward", "reverse"), default="auto",
                   help="autodiff mode (default auto)")
    a.add_argument("--out", default=None, metavar="DIR",
                   help="also write attribution.html, .csv, .png/.svg and the result here")
    a.add_argument("--no-progress", action="store_true", help="no progress bars")
    _model_options(a)
    a.set_defaults(func="attribute")

    c = sub.add_parser("concepts", parents=[debug],
                       help="a layer's W_out principal components read as words",
                       description="PCA of MODEL's MLP output weights at --layer, each component "
                                   "read as the words whose unembedding it aligns with, "
                                   "annotated with a task and linguistic level (Wu et al. "
                                   "2024, §5).")
    c.add_argument("model", metavar="MODEL", help="model directory, .gguf, hub id or toy:tuned")
    c.add_argument("--layer", type=_nonneg, required=True, metavar="N", help="layer index")
    c.add_argument("--k", type=_positive("--k"), default=10, metavar="K",
                   help="components (default 10)")
    c.add_argument("--top-words", type=_positive("--top-words"), default=15, metavar="N",
                   help="words read per component (default 15)")
    c.add_argument("--show", type=_positive("--show"), default=10, metavar="N",
                   help="words printed per component (default 10)")
    c.add_argument("--out", default=None, metavar="DIR", help="also write concepts.csv and .html")
    _model_options(c)
    c.set_defaults(func="concepts")

    ls = sub.add_parser("lenses", help="which lenses are available",
                        description="List the lenses the report can run and whether each is "
                                    "available in this installation.")
    ls.set_defaults(func="lenses")
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
    except UsageError as e:
        print(f"shiftlens: error: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:  # --help
        return int(e.code or 0)
    args._argv = argv
    if args.version:
        from shiftlens import __version__

        print(__version__)
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from shiftlens.errors import SelfCheckError, ShiftlensError

    try:
        if args.func != "lenses":
            _quiet_hf()
        if getattr(args, "threads", None):
            import torch

            torch.set_num_threads(args.threads)
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
