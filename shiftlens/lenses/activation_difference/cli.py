"""``shiftlens adl``: the activation difference lens and diff mining on a pair, from the shell."""

from __future__ import annotations

import argparse
from pathlib import Path

from shiftlens import cliargs as A

__all__ = ["add_commands", "run_adl", "model_ref"]


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``shiftlens adl`` to the ``shiftlens`` parser (argparse only, no torch).

    Example:
        >>> p = A.Parser(prog="shiftlens"); add_commands(p.add_subparsers())
    """
    c = sub.add_parser(
        "adl", parents=[A.debug_parent()],
        help="activation difference lens + diff mining: a fine-tune's trace as tokens",
        description="Mean tuned - base residual difference on the first tokens of unrelated "
                    "text, read through each model's logit lens and Patchscope, with steering "
                    "(Minder et al. 2025), and diff mining (the tokens most often among the "
                    "largest logit rises).")
    c.add_argument("base", metavar="BASE", help="model directory, .gguf, hub id, toy:base")
    c.add_argument("tuned", metavar="TUNED",
                   help="model directory, .gguf, hub id, toy:tuned or organism:NAME (topic, "
                        "zorbish, template, control)")
    c.add_argument("--texts", metavar="FILE", default=None,
                   help="unrelated text, one per line (default: held-out grammar text for the "
                        "embedded models, else the shipped prompts' texts)")
    c.add_argument("--layer", type=A.nonneg, default=None, metavar="N",
                   help="lens layer (default n_layers // 2)")
    c.add_argument("--positions", type=A.positive("--positions"), default=5, metavar="N",
                   help="first positions read (default 5)")
    c.add_argument("--show", type=A.positive("--show"), default=20, metavar="N",
                   help="tokens printed per ranking (default 20)")
    c.add_argument("--out", default=None, metavar="DIR", help="save both Results under DIR")
    A.model_options(c)
    c.set_defaults(handler="shiftlens.lenses.activation_difference.cli:run_adl")


def model_ref(ref: str) -> str:
    """``organism:NAME`` -> the organism's cached directory; anything else as
    :func:`shiftlens.cliargs.model_ref`.

    Example:
        >>> model_ref("toy:base").endswith("base")
        True
    """
    if ref.startswith("organism:"):
        from shiftlens.zoo.organisms import organism_dir

        return str(organism_dir(ref.split(":", 1)[1]))
    return A.model_ref(ref)


def _texts(args: argparse.Namespace) -> list[str]:
    if args.texts:
        lines = [s for s in Path(args.texts).read_text(encoding="utf-8").splitlines() if s.strip()]
        if not lines:
            raise A.error(f"--texts {args.texts!r} holds no text")
        return lines
    if any(r.startswith(("toy:", "organism:")) for r in (args.base, args.tuned)):
        from shiftlens.zoo.organisms import neutral_texts

        return neutral_texts()
    from shiftlens.prompts import default_prompts

    return [p.text for p in default_prompts()]


def run_adl(args: argparse.Namespace) -> int:
    """``shiftlens adl``: print both rankings and their sentences; save with ``--out``.

    Example:
        >>> from shiftlens.cli import main  # doctest: +SKIP
        >>> main(["adl", "toy:base", "organism:topic", "--positions", "3"])  # doctest: +SKIP
    """
    from shiftlens.lenses.activation_difference.compare import activation_difference
    from shiftlens.lenses.activation_difference.mining import diff_mining
    from shiftlens.pair import ModelPair
    from shiftlens.tokens import display_token

    pair = ModelPair.from_pretrained(model_ref(args.base), model_ref(args.tuned),
                                     **A.load_kwargs(args))
    texts = _texts(args)
    adl = activation_difference(pair, texts, lens_layer=args.layer, n_positions=args.positions,
                                n_tokens=max(50, args.show))
    mining = diff_mining(pair, texts, n_tokens=max(100, args.show))
    for source in ("logit_lens", "patchscope"):
        g = adl.ranking(source).head(args.show)
        print(f"{source} (tuned model, layer {adl.lens_layer}): "
              + " ".join(display_token(t) for t in g.token))
    print("diff mining: " + " ".join(display_token(t) for t in mining.tokens.token[: args.show]))
    print("\n" + adl.summary()["sentence"] + "\n\n" + mining.summary()["sentence"])
    if args.out:
        out = Path(args.out)
        adl.save(out / "activation_difference")
        mining.save(out / "diff_mining")
        print(f"\nsaved: {out}/activation_difference, {out}/diff_mining")
    return 0
