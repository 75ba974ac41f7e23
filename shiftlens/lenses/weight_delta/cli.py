"""``shiftlens weight-delta``: every matrix's change between two checkpoints, from the shell."""

from __future__ import annotations

import argparse
from pathlib import Path

from shiftlens import cliargs as A

__all__ = ["add_commands", "run_weight_delta"]


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``shiftlens weight-delta`` to the ``shiftlens`` parser (argparse only, no torch).

    Example:
        >>> p = A.Parser(prog="shiftlens"); add_commands(p.add_subparsers())
    """
    c = sub.add_parser(
        "weight-delta", parents=[A.debug_parent()],
        help="per layer and matrix: size, spectrum and tokens of the weight change",
        description="Reads both checkpoints' safetensors files one tensor at a time (no model "
                    "is loaded) and reports, per matrix, the relative norm of W_tuned - W_base, "
                    "its effective rank and top-r energy share, and the tokens its leading "
                    "singular directions point to.")
    c.add_argument("base", metavar="BASE", help="checkpoint directory, .gguf or toy:base")
    c.add_argument("tuned", metavar="TUNED",
                   help="checkpoint directory, .gguf, toy:tuned or organism:NAME")
    c.add_argument("--rank", type=A.positive("--rank"), default=8, metavar="R",
                   help="directions read per matrix (default 8)")
    c.add_argument("--show", type=A.positive("--show"), default=20, metavar="N",
                   help="tokens printed per ranking (default 20)")
    c.add_argument("--out", default=None, metavar="DIR", help="save the Result under DIR")
    c.set_defaults(handler="shiftlens.lenses.weight_delta.cli:run_weight_delta")


def _ref(ref: str) -> str:
    if ref.startswith("organism:"):
        from shiftlens.zoo.organisms import organism_dir

        return str(organism_dir(ref.split(":", 1)[1]))
    return A.model_ref(ref)


def run_weight_delta(args: argparse.Namespace) -> int:
    """``shiftlens weight-delta``: the largest changes, then each ranking's tokens.

    Example:
        >>> from shiftlens.cli import main  # doctest: +SKIP
        >>> main(["weight-delta", "toy:base", "organism:topic"])  # doctest: +SKIP
    """
    from shiftlens.lenses.weight_delta.compare import weight_delta
    from shiftlens.lenses.weight_delta.results import SOURCES
    from shiftlens.tokens import display_token

    res = weight_delta(_ref(args.base), _ref(args.tuned), r=args.rank,
                       n_tokens=max(20, args.show))
    m = res.to_frame().sort_values("relative_norm", ascending=False)
    print(m.head(12)[["name", "relative_norm", "effective_rank", "energy_top_r"]]
          .to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    for s in SOURCES:
        try:
            tf = res.token_frame(s, args.show)
        except Exception:  # noqa: BLE001 - e.g. a tied unembedding
            continue
        print(f"{s}: " + " ".join(display_token(t) for t in tf.token))
    print("\n" + res.summary()["sentence"])
    if args.out:
        res.save(Path(args.out))
        print(f"\nsaved: {args.out}")
    return 0
