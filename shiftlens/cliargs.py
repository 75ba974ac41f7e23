"""Argument helpers shared by the ``shiftlens`` CLI and each lens's own subcommands.

A lens's ``cli.py`` (registered through :attr:`shiftlens.lenses.LensSpec.cli`) builds its
subcommands with these, so every command parses devices, dtypes, model references and counts
the same way and reports bad input in one line (exit code 2). Importing this module imports
neither torch nor transformers.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

__all__ = [
    "DTYPES",
    "FORMAT_CHOICES",
    "UsageError",
    "Parser",
    "error",
    "dtype",
    "device",
    "model_ref",
    "quiet_hf",
    "positive",
    "nonneg",
    "model_options",
    "debug_parent",
    "prompt_options",
    "prompts_from_args",
    "load_kwargs",
]

#: Weight dtypes the commands accept (:data:`shiftlens.bridge.DTYPE_NAMES`, repeated here so
#: that building the parser imports no torch; a test keeps them equal).
DTYPES = ("float32", "float16", "bfloat16", "float64")
#: Prompt-file formats ``--format`` accepts (:data:`shiftlens.formats.FORMAT_CHOICES`, repeated
#: here so that building the parser imports no torch; a test keeps them equal).
FORMAT_CHOICES = ("auto", "jsonl", "alpaca", "messages", "sharegpt", "hf", "csv", "tsv", "wu2024")


class UsageError(Exception):
    """Bad command-line usage (argparse's complaint), reported in one line with exit code 2.

    Example:
        >>> isinstance(UsageError("x"), Exception)
        True
    """


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose complaints become :class:`UsageError` (one line, exit code 2).

    Example:
        >>> Parser(prog="x").prog
        'x'
    """

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see '{self.prog} --help')")


def error(msg: str) -> Exception:
    """A :class:`~shiftlens.ShiftlensError` to raise for bad command-line input (exit code 2).

    Example:
        >>> str(error("bad layer"))
        'bad layer'
    """
    from shiftlens.errors import ShiftlensError

    return ShiftlensError(msg)


def dtype(name: str) -> Any:
    """The torch dtype called ``name`` (one of :data:`DTYPES`).

    Example:
        >>> dtype("float32")  # doctest: +SKIP
        torch.float32
    """
    import torch

    return getattr(torch, name)


def device(name: str) -> str:
    """A checked device string: ``cpu``, ``cuda``, ``cuda:N`` (must exist) or ``mps``.

    The check is :func:`shiftlens.bridge.resolve_device`, the one the Python API applies.

    Example:
        >>> device("CPU")
        'cpu'
    """
    from shiftlens.bridge import resolve_device

    return str(resolve_device(name))


def model_ref(ref: str) -> str:
    """``toy:base`` / ``toy:tuned`` -> the embedded pair's directory; a path must exist.

    Example:
        >>> model_ref("toy:tuned").endswith("tuned")
        True
    """
    if ref in ("toy:base", "toy:tuned"):
        from shiftlens.zoo import pair_dirs

        base, tuned = pair_dirs()
        return str(base if ref == "toy:base" else tuned)
    p = Path(ref).expanduser()
    if p.exists():
        if not p.is_dir() and p.suffix != ".gguf":
            raise error(f"model {ref!r} is a file, not a Hugging Face model directory or .gguf")
        return str(p)
    if ref.startswith(("/", "./", "../", "~")) or ref.endswith(".gguf") or os.sep + os.sep in ref:
        raise error(f"model path {ref!r} does not exist")
    return ref  # a hub id


def quiet_hf(progress: bool = False) -> None:
    """No Hugging Face loading bars; download bars only when ``progress`` is on.

    Nothing else is silenced: warnings and log records are captured and listed by the command
    (:mod:`shiftlens.report.log`), not hidden.

    Example:
        >>> quiet_hf()  # doctest: +SKIP
    """
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except Exception:  # noqa: BLE001 - cosmetic
        pass
    try:
        from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

        (enable_progress_bars if progress else disable_progress_bars)()
    except Exception:  # noqa: BLE001 - cosmetic
        pass


def positive(name: str) -> Any:
    """An argparse ``type`` accepting integers >= 1 (the message names the option).

    Example:
        >>> positive("--k")("3")
        3
    """
    def conv(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {s!r}") from None
        if v < 1:
            raise argparse.ArgumentTypeError(f"{name} must be >= 1, got {v}")
        return v

    return conv


def nonneg(s: str) -> int:
    """An argparse ``type`` accepting integers >= 0.

    Example:
        >>> nonneg("0")
        0
    """
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {s!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {v}")
    return v




def model_options(p: argparse.ArgumentParser, threads: int | None = None) -> None:
    """Add ``--device``, ``--dtype`` and ``--threads`` to a (sub)command.

    Example:
        >>> p = Parser(prog="x"); model_options(p); p.parse_args([]).dtype
        'float32'
    """
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or mps")
    p.add_argument("--dtype", default="float32", choices=DTYPES,
                   help="weight dtype (default float32; bfloat16 for large models on GPU)")
    default = (f"{threads}: the toy model is tiny, more threads only contend" if threads
               else "torch's default")
    p.add_argument("--threads", type=positive("--threads"), default=threads, metavar="N",
                   help=f"CPU threads for torch (default {default})")
    p.add_argument("--device-map", default=None, metavar="MAP",
                   help="spread each model over devices (accelerate): auto, balanced, a JSON "
                        "object {module: device}, or @file.json; replaces --device "
                        "(docs/scale.md)")
    p.add_argument("--offload-folder", default=None, metavar="DIR",
                   help="folder for weights a --device-map puts on 'disk'")


def debug_parent() -> argparse.ArgumentParser:
    """A parent parser adding ``--debug`` (tracebacks) and ``--verbose`` (warnings on stderr) to
    a subcommand.

    Example:
        >>> Parser(prog="x", parents=[debug_parent()]).parse_args(["--debug"]).debug
        True
    """
    p = Parser(add_help=False)
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show tracebacks and stop on the first failing lens")
    p.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="also print every warning on stderr as it is raised")
    return p


def prompt_options(p: argparse.ArgumentParser, *, required: bool = False) -> None:
    """Add ``--prompts FILE``, ``--format``, ``--column KEY=COL`` and ``--skip-bad-records``.

    Example:
        >>> q = Parser(prog="x"); prompt_options(q)
        >>> q.parse_args(["--prompts", "a.json", "--format", "alpaca"]).format
        'alpaca'
    """
    p.add_argument("--prompts", metavar="FILE", required=required,
                   help="prompt file or dataset directory: native JSONL, Alpaca JSON/JSONL, "
                        "messages/ShareGPT conversations, CSV/TSV, a Hugging Face dataset, or "
                        "the Wu et al. (2024) release (docs/prompts.md); default: the shipped set")
    p.add_argument("--format", choices=FORMAT_CHOICES, default="auto",
                   help="format of --prompts (default auto: detected, and named in the output)")
    p.add_argument("--column", action="append", metavar="KEY=COL", default=[],
                   help="field mapping, e.g. instruction=question (keys: instruction, context, "
                        "reference, id, category, messages, conversations); repeatable")
    p.add_argument("--skip-bad-records", action="store_true",
                   help="skip malformed records (each one reported) instead of stopping")


def prompts_from_args(args: argparse.Namespace) -> list[Any]:
    """Load the prompts named by :func:`prompt_options` (the shipped set when none is given).

    Prints what the loader found (format, records, skipped ones) on stdout.

    Example:
        >>> prompts_from_args(args)  # doctest: +SKIP
    """

    from shiftlens.prompts import default_prompts, load_prompts

    if not getattr(args, "prompts", None):
        return default_prompts()
    mapping = {}
    for item in args.column or []:
        if "=" not in item:
            raise error(f"--column takes KEY=COL (e.g. instruction=question), got {item!r}")
        k, v = (x.strip() for x in item.split("=", 1))
        mapping[k] = v
    prompts = load_prompts(args.prompts, format=args.format,
                           on_error="skip" if args.skip_bad_records else "raise", **mapping)
    report = getattr(prompts, "report", None)
    if report is not None:
        print(f"prompts: {report}")
    if not prompts:
        raise error(f"prompt file {args.prompts!r} holds no prompts")
    return list(prompts)


def load_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Loading options from :func:`model_options`: device (or device map), dtype, offload.

    For ``load_bridge`` and ``ModelPair.from_pretrained``; with ``--device-map`` no single
    ``device`` is passed (TransformerLens refuses both together).

    Example:
        >>> p = Parser(prog="x"); model_options(p)
        >>> load_kwargs(p.parse_args(["--device-map", "auto"]))["device_map"]  # doctest: +SKIP
        'auto'
    """
    out: dict[str, Any] = {"dtype": dtype(args.dtype)}
    dm = getattr(args, "device_map", None)
    if dm:
        from shiftlens.bridge import parse_device_map

        if getattr(args, "device", "cpu") not in (None, "cpu"):
            raise error("give either --device or --device-map, not both")
        out["device"] = None
        out["device_map"] = parse_device_map(dm)
        if getattr(args, "offload_folder", None):
            out["offload_folder"] = args.offload_folder
    else:
        if getattr(args, "offload_folder", None):
            raise error("--offload-folder only applies with --device-map")
        out["device"] = device(args.device)
    return out

