"""``shiftlens crosscoder``: train a BatchTopK crosscoder on one layer of a pair and classify it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from shiftlens import cliargs as A

__all__ = ["add_commands", "read_texts", "resolve_model"]


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``shiftlens crosscoder`` to the ``shiftlens`` parser (argparse only, no torch).

    Example:
        >>> p = A.Parser(prog="shiftlens"); add_commands(p.add_subparsers())
    """
    c = sub.add_parser(
        "crosscoder", parents=[A.debug_parent()],
        help="BatchTopK crosscoder on one layer: shared / tuned-only / base-only latents",
        description="Collect BASE's and TUNED's residual stream at --layer over the texts of "
                    "--texts (streamed to DIR/activations), train a BatchTopK crosscoder "
                    "(checkpoints in DIR/checkpoints, the model in DIR/crosscoder), classify "
                    "its latents by decoder norms and Latent Scaling, and write the result to "
                    "DIR/result (docs/crosscoder.md).")
    c.add_argument("base", metavar="BASE",
                   help="the base model: directory, .gguf, hub id, toy:base")
    c.add_argument("tuned", metavar="TUNED",
                   help="the tuned model: directory, .gguf, hub id, toy:tuned, or "
                        "organism:NAME (a diffing organism; BASE is then ignored and the "
                        "embedded base is used)")
    c.add_argument("--layer", type=A.nonneg, required=True, metavar="L", help="layer index")
    c.add_argument("--hook", choices=("resid_pre", "resid_mid", "resid_post"),
                   default="resid_post", help="residual stream of the layer (default resid_post)")
    c.add_argument("--texts", required=True, metavar="FILE",
                   help="corpus: a .txt file (one text per line), a .jsonl file (a 'text' field "
                        "per line), or neutral:N (N held-out grammar texts of the organisms)")
    c.add_argument("--out", required=True, metavar="DIR", help="working and output directory")
    c.add_argument("--resume", action="store_true",
                   help="reuse DIR/activations and continue from the newest checkpoint")
    c.add_argument("--latents", type=A.positive("--latents"), default=None, metavar="N",
                   help="dictionary size (default 8 x d_model)")
    c.add_argument("--k", type=A.positive("--k"), default=16, metavar="K",
                   help="active latents per token on average (default 16)")
    c.add_argument("--steps", type=A.positive("--steps"), default=2000, metavar="N",
                   help="training steps (default 2000)")
    c.add_argument("--batch-size", type=A.positive("--batch-size"), default=512, metavar="N",
                   help="token positions per step (default 512)")
    c.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    c.add_argument("--checkpoint-every", type=A.nonneg, default=500, metavar="N",
                   help="steps between checkpoints (default 500; 0: none)")
    c.add_argument("--seed", type=A.nonneg, default=0, help="seed (default 0)")
    c.add_argument("--train-device", default=None, metavar="DEV",
                   help="device of the crosscoder (default: --device)")
    c.add_argument("--train-dtype", choices=A.DTYPES, default="float32",
                   help="dtype of the crosscoder (default float32)")
    c.add_argument("--store-dtype", choices=("float32", "float16", "bfloat16"),
                   default="float32", help="dtype of the stored activations (default float32)")
    c.add_argument("--shard-rows", type=A.positive("--shard-rows"), default=65536, metavar="N",
                   help="rows per activation shard (default 65536)")
    c.add_argument("--show", type=A.positive("--show"), default=10, metavar="N",
                   help="tuned-only latents printed (default 10)")
    c.add_argument("--no-progress", action="store_true", help="no progress bars")
    A.model_options(c)
    c.set_defaults(handler="shiftlens.lenses.crosscoder.cli:run_crosscoder")


def read_texts(spec: str) -> list[str]:
    """The corpus named by ``--texts``: a .txt file (one text per line, blank lines skipped), a
    .jsonl file (each line an object with a ``"text"`` string) or ``neutral:N``.

    Example:
        >>> len(read_texts("neutral:3"))
        3
    """
    if spec.startswith("neutral:"):
        n = spec.split(":", 1)[1]
        if not n.isdigit() or int(n) < 1:
            raise A.error(f"--texts neutral:N needs a positive N, got {spec!r}")
        from shiftlens.zoo.organisms import neutral_texts

        return neutral_texts(int(n))
    p = Path(spec).expanduser()
    if not p.is_file():
        raise A.error(f"--texts {spec!r}: no such file")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise A.error(f"--texts {spec!r}: cannot read ({e})") from e
    if p.suffix == ".jsonl":
        out = []
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError as e:
                raise A.error(f"--texts {spec!r}, line {i}: not JSON ({e})") from e
            if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
                raise A.error(f"--texts {spec!r}, line {i}: no 'text' string")
            out.append(rec["text"])
    else:
        out = [line for line in lines if line.strip()]
    if not out:
        raise A.error(f"--texts {spec!r} holds no texts")
    return out


def resolve_model(ref: str) -> str:
    """A model reference of ``--base``/``--tuned``: ``organism:NAME`` -> its built directory,
    anything else as :func:`shiftlens.cliargs.model_ref`.

    Example:
        >>> resolve_model("toy:base").endswith("base")
        True
    """
    if ref.startswith("organism:"):
        from shiftlens.zoo.organisms import NAMES, organism_dir

        name = ref.split(":", 1)[1]
        if name not in NAMES:
            raise A.error(f"unknown organism {name!r}; choose from {', '.join(NAMES)}")
        return str(organism_dir(name))
    return A.model_ref(ref)


def run_crosscoder(args: argparse.Namespace) -> int:
    """``shiftlens crosscoder``: collect, train, classify; print the tuned-only latents."""
    import torch

    from shiftlens.lenses.crosscoder.compare import crosscoder_diff
    from shiftlens.lenses.crosscoder.core import CrosscoderConfig
    from shiftlens.pair import ModelPair

    texts = read_texts(args.texts)
    if args.tuned.startswith("organism:"):
        from shiftlens.zoo import pair_dirs

        base = str(pair_dirs()[0])
    else:
        base = A.model_ref(args.base)
    pair = ModelPair.from_pretrained(base, resolve_model(args.tuned), **A.load_kwargs(args))
    d_model = int(pair.cfg.d_model)
    cfg = CrosscoderConfig(n_latents=args.latents or 8 * d_model, k=args.k, steps=args.steps,
                           batch_size=args.batch_size, lr=args.lr,
                           checkpoint_every=args.checkpoint_every, seed=args.seed)
    device = A.device(args.train_device) if args.train_device else (args.device or "cpu")
    res = crosscoder_diff(pair, texts, args.layer, hook=args.hook, config=cfg, out_dir=args.out,
                          device=device, dtype=A.dtype(args.train_dtype),
                          store_dtype=getattr(torch, args.store_dtype),
                          shard_rows=args.shard_rows, resume=args.resume,
                          progress=not args.no_progress)
    _print(res, args)
    return 0


def _print(res: Any, args: argparse.Namespace) -> None:
    s = res.summary()
    print(s["sentence"] + "\n")
    spec = res.model_specific("tuned_only").head(args.show)
    if len(spec):
        print(f"{'latent':>6} {'Δ':>5} {'ν_ε':>5} {'ν_r':>5} {'freq':>7}  tokens")
        for r in spec.itertuples():
            print(f"{r.latent:6d} {r.delta_norm:5.2f} {r.nu_err:5.2f} {r.nu_rec:5.2f} "
                  f"{r.frequency:7.4f}  {r.top_tokens}")
            ctx = res.contexts[(res.contexts.latent == r.latent)].head(2)
            for c in ctx.itertuples():
                print(f"{'':30s}{c.activation:7.2f}  {c.context}")
    print(f"\ntuned-only readout: {s['top_tokens'][:20]}")
    print(f"changed readout:    {s['changed_tokens'][:20]}")
    print(f"\nfiles: {args.out}/result (shiftlens.load), {args.out}/crosscoder, "
          f"{args.out}/activations")
