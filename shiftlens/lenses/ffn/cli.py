"""``shiftlens concepts``: one layer's W_out principal components read as words.

A local checkpoint (a directory, a ``.gguf`` file, ``toy:base``/``toy:tuned``) is read from its
files, that layer's output projection and the unembedding only
(:class:`shiftlens.weights.CheckpointWeights`: no model is loaded, so a model that does not fit
in memory can be read); a hub id, or ``--device-map``, loads a bridge.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from shiftlens import cliargs as A

__all__ = ["add_commands"]


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add this lens's subcommands to the ``shiftlens`` parser (argparse only, no torch).

    Example:
        >>> p = A.Parser(prog="shiftlens"); add_commands(p.add_subparsers())
    """
    c = sub.add_parser("concepts", parents=[A.debug_parent()],
                       help="a layer's W_out principal components read as words",
                       description="PCA of MODEL's MLP output weights at --layer, each component "
                                   "read as the words whose unembedding it aligns with, "
                                   "annotated with a task and linguistic level (Wu et al. "
                                   "2024, §5).")
    c.add_argument("model", metavar="MODEL", help="model directory, .gguf, hub id or toy:tuned")
    c.add_argument("--layer", type=A.nonneg, required=True, metavar="N", help="layer index")
    c.add_argument("--k", type=A.positive("--k"), default=10, metavar="K",
                   help="components (default 10)")
    c.add_argument("--top-words", type=A.positive("--top-words"), default=15, metavar="N",
                   help="words read per component (default 15)")
    c.add_argument("--show", type=A.positive("--show"), default=10, metavar="N",
                   help="words printed per component (default 10)")
    c.add_argument("--out", default=None, metavar="DIR", help="also write concepts.csv and .html")
    A.model_options(c)
    c.set_defaults(handler="shiftlens.lenses.ffn.cli:run_concepts")


def run_concepts(args: argparse.Namespace) -> int:
    """``shiftlens concepts``: a layer's W_out principal components read as words."""
    from shiftlens.checks import check_layer
    from shiftlens.lenses.ffn.core import concept_words
    from shiftlens.lenses.ffn.lexicon import LexiconAnnotator
    from shiftlens.tokens import display_token

    ref = A.model_ref(args.model)
    kw = A.load_kwargs(args)
    if Path(ref).exists() and not kw.get("device_map"):
        from shiftlens.weights import CheckpointWeights

        model = CheckpointWeights(ref, dtype=kw["dtype"])  # this layer's W_out and W_U only
    else:
        from shiftlens.bridge import load_bridge

        model = load_bridge(ref, **kw)
    check_layer(model, args.layer)
    cw = concept_words(model, args.layer, k=args.k, top_words=args.top_words,
                       device=kw.get("device"))
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
        shown = [f"{display_token(w)}{'+' if s.startswith('+') else '-'}" for w, s in
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
