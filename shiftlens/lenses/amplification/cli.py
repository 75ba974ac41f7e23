"""``shiftlens amplify``: greedy responses of base + a (tuned - base), from the shell."""

from __future__ import annotations

import argparse

from shiftlens import cliargs as A

__all__ = ["add_commands", "run_amplify"]


def _alphas(s: str) -> list[float]:
    try:
        return [float(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--alphas takes numbers like 0,1,2,4; got {s!r}") \
            from None


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``shiftlens amplify`` to the ``shiftlens`` parser (argparse only, no torch).

    Example:
        >>> p = A.Parser(prog="shiftlens"); add_commands(p.add_subparsers())
    """
    c = sub.add_parser(
        "amplify", parents=[A.debug_parent()],
        help="greedy responses from base + a (tuned - base)",
        description="Decode greedily from the amplified logits base + a (tuned - base): a = 0 "
                    "is the base model, 1 the tuned one, larger a exaggerates the fine-tuning.")
    c.add_argument("base", metavar="BASE", help="model directory, .gguf, hub id or toy:base")
    c.add_argument("tuned", metavar="TUNED",
                   help="model directory, .gguf, hub id, toy:tuned or organism:NAME")
    c.add_argument("prompt", metavar="PROMPT", nargs="+", help="prompt text(s)")
    c.add_argument("--alphas", type=_alphas, default=[0.0, 1.0, 2.0, 4.0], metavar="A,B,...",
                   help="amplifications (default 0,1,2,4)")
    c.add_argument("--max-new-tokens", type=A.positive("--max-new-tokens"), default=24,
                   metavar="N", help="longest response (default 24)")
    A.model_options(c)
    c.set_defaults(handler="shiftlens.lenses.amplification.cli:run_amplify")


def run_amplify(args: argparse.Namespace) -> int:
    """``shiftlens amplify``: one line per (prompt, a).

    Example:
        >>> from shiftlens.cli import main  # doctest: +SKIP
        >>> main(["amplify", "toy:base", "organism:topic", "the cat sleeps."])  # doctest: +SKIP
    """
    from shiftlens.lenses.amplification.compare import amplification
    from shiftlens.pair import ModelPair

    def ref(r: str) -> str:
        if r.startswith("organism:"):
            from shiftlens.zoo.organisms import organism_dir

            return str(organism_dir(r.split(":", 1)[1]))
        return A.model_ref(r)

    pair = ModelPair.from_pretrained(ref(args.base), ref(args.tuned), **A.load_kwargs(args))
    res = amplification(pair, args.prompt, alphas=args.alphas,
                        max_new_tokens=args.max_new_tokens)
    for r in res.to_frame().sort_values(["prompt_index", "alpha"]).itertuples():
        print(f"a={r.alpha:<5g} {r.prompt!r} -> {r.response!r}")
    print("\n" + res.summary()["sentence"])
    return 0
