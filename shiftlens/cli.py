"""``shiftlens`` command line. Exit codes: 0 ok, 2 bad input (one-line error; --debug for traceback)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["main"]


def _demo_pair() -> tuple[Any, list[Any]]:
    try:
        from shiftlens.zoo import toy_pair, toy_prompts

        return toy_pair(), toy_prompts()
    except Exception:  # noqa: BLE001 - the embedded pair is optional until it ships
        from shiftlens import default_prompts
        from shiftlens.testing import tiny_pair

        return tiny_pair("llama"), default_prompts()


def cmd_demo(args: argparse.Namespace) -> int:
    import pandas as pd

    from shiftlens.prompts import SEGMENTS

    pair, prompts = _demo_pair()
    prompts = prompts[: args.max_prompts] if args.max_prompts else prompts
    print(pair)
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(pair.cfg.n_layers)]
    cache = pair.run_with_cache(prompts, names, reduce="last", batch_size=16)
    rows = []
    ins = SEGMENTS.index("instruction")
    for role in ("base", "tuned"):
        for layer, name in enumerate(names):
            mass = cache.stack(role, name)[:, :, ins]  # [prompt, head]
            for head in range(mass.shape[1]):
                rows.append({"model": role, "layer": layer, "head": head,
                             "instruction_mass": float(mass[:, head].nanmean())})
    df = pd.DataFrame(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "instruction_attention.csv", index=False)
    summary = df.groupby("model")["instruction_mass"].mean().to_dict()
    (out / "metrics.json").write_text(json.dumps({"mean_instruction_mass_last_token": summary}, indent=1))
    print(f"attention mass on the instruction (last prompt token, mean over heads): "
          f"base {summary['base']:.3f} -> tuned {summary['tuned']:.3f}; files in {out}/")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="shiftlens", description="What did instruction tuning change inside this model?")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="cmd")
    d = sub.add_parser("demo", help="run the embedded pair and write results")
    d.add_argument("--out", default="shiftlens-demo", help="output directory")
    d.add_argument("--max-prompts", type=int, default=None)
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the CLI.

    Example:
        >>> main(["--version"])  # doctest: +SKIP
    """
    from shiftlens import __version__
    from shiftlens.errors import ShiftlensError

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        print(__version__)
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except ShiftlensError as e:
        if args.debug:
            raise
        print(f"shiftlens: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
