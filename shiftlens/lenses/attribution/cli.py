"""``shiftlens attribute``: the attribution lens on one model and one prompt."""

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
    a = sub.add_parser("attribute", parents=[A.debug_parent()],
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
    a.add_argument("--max-new-tokens", type=A.positive("--max-new-tokens"), default=32,
                   metavar="N", help="generation limit (default 32)")
    a.add_argument("--mode", choices=("auto", "forward", "reverse"), default="auto",
                   help="autodiff mode (default auto)")
    a.add_argument("--out", default=None, metavar="DIR",
                   help="also write attribution.html, .csv, .png/.svg and the result here")
    a.add_argument("--no-progress", action="store_true", help="no progress bars")
    A.model_options(a)
    a.set_defaults(handler="shiftlens.lenses.attribution.cli:run_attribute")


def run_attribute(args: argparse.Namespace) -> int:
    """``shiftlens attribute``: importance density of one prompt for one model."""
    from shiftlens.bridge import load_bridge
    from shiftlens.lenses.attribution.core import attribute
    from shiftlens.prompts import InstructionPrompt

    prompt = InstructionPrompt(args.prompt, instruction=args.instruction or (),
                               context=args.context or (), id="cli")
    model = load_bridge(A.model_ref(args.model), **A.load_kwargs(args))
    if args.chat_template:  # the user text becomes the user turn; spans move with it
        prompt = prompt.with_chat_template(model.tokenizer, system=args.system)
    att = attribute(model, prompt, args.response, max_new_tokens=args.max_new_tokens,
                    mode=args.mode, progress=not args.no_progress, model_name=args.model)
    from shiftlens.tokens import display_token

    strings = list(att.token_strings)  # shiftlens.tokens.token_strings: the text each adds
    dens = att.density().tolist()
    from shiftlens.prompts import SEGMENTS

    print(f"model: {args.model}\nresponse ({'generated' if att.generated else 'given'}, "
          f"{att.n_output} tokens): {att.response!r}\n")
    print(f"{'pos':>4}  {'segment':11s} {'density':>7}  token")
    for k, pos in enumerate(att.input_positions.tolist()):
        bar = "#" * round(20 * dens[k])
        print(f"{pos:4d}  {SEGMENTS[int(att.segments[pos])]:11s} {dens[k]:7.3f}  "
              f"{display_token(strings[pos])!r:20s} {bar}")
    if bool(att.instruction_mask.any()):
        print(f"\ninstruction score: {att.score():.4f} (Wu et al. 2024, §3)")
    else:
        print("\ninstruction score: n/a (mark the instruction with --instruction SPAN)")
    if args.out:
        from shiftlens.viz.circuits import token_rows
        from shiftlens.viz.style import pyplot

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        att.to_frame().to_csv(out / "attribution.csv", index=False)
        att.save(out / "result")
        toks = [strings[int(i)] for i in att.input_positions]
        vis = token_rows(toks, {"importance density": dens},
                         title=f"Importance density, {args.model}",
                         segments=att.input_segments.tolist())
        vis.save(out / "attribution.html")
        pyplot().close(att.show(out / "attribution"))
        print(f"files: {out}/attribution.html, attribution.csv, attribution.png/.svg, result/")
    return 0
