"""A complete small lens, the worked example of docs/adding-a-lens.md: residual-stream norms.

Per layer, the mean L2 norm of the residual stream after the block (``hook_resid_post``) over
the prompt's tokens, in base and in tuned; their ratio tuned / base, and a paired Wilcoxon
signed-rank test per layer across prompts (:func:`scipy.stats.wilcoxon`). Instruction tuning
that rescales the residual stream shows as a ratio away from 1.

This one file is the whole lens: registering it (importing this module) gives it a report
section (``--lenses norms``), a subcommand (``shiftlens norms``), a line in ``shiftlens lenses``
and a Result that ``shiftlens.load`` reads back. Ship it in your own project with an entry point
(``[project.entry-points."shiftlens.lenses"] norms = "shiftlens_norms"``) or import it before
building a report.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from shiftlens.lenses import LensSpec, register_lens
from shiftlens.result import Result, make_meta

__all__ = ["NormsResult", "layer_norms", "norms"]


# ---------------------------------------------------------------- core: one model
@torch.no_grad()
def layer_norms(model: Any, tokens: Any) -> Float[Tensor, " layer"]:
    """Mean L2 norm of ``hook_resid_post`` over the positions of one sequence, per layer."""
    names = [f"blocks.{i}.hook_resid_post" for i in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(tokens[None], names_filter=lambda n: n in names)
    return torch.stack([cache[n][0].float().norm(dim=-1).mean() for n in names]).cpu()


# ---------------------------------------------------------------- Result
@dataclass(eq=False, repr=False)
class NormsResult(Result):
    """Per prompt and layer, the mean residual norm of each model (``base``/``tuned``
    tensors ``[prompt, layer]``)."""

    base: Float[Tensor, "prompt layer"]
    tuned: Float[Tensor, "prompt layer"]
    meta: dict[str, Any] = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        from scipy.stats import wilcoxon

        rows = []
        for layer in range(self.base.shape[1]):
            b, t = self.base[:, layer].numpy(), self.tuned[:, layer].numpy()
            p = float(wilcoxon(t, b).pvalue) if len(b) >= 2 and (t != b).any() else 1.0
            rows.append({"layer": layer, "base": float(b.mean()), "tuned": float(t.mean()),
                         "ratio": float(t.mean() / b.mean()), "p": p})
        return pd.DataFrame(rows)

    def summary(self) -> dict[str, Any]:
        df = self.to_frame()
        far = df.loc[(df.ratio - 1).abs().idxmax()]
        return {"layers": df.to_dict("records"), "sentence": (
            f"The residual stream's norm changes most at layer {int(far.layer)}: "
            f"{far.base:.3g} (base) -> {far.tuned:.3g} (tuned), ratio {far.ratio:.3f} "
            f"(Wilcoxon p={far.p:.2g}, {self.base.shape[0]} prompts).")}

    def plot(self, **opts: Any) -> Any:
        from shiftlens.viz.style import new_figure

        df = self.to_frame()
        fig, ax = new_figure(width=5, height=3)
        ax[0, 0].plot(df.layer, df.base, "o-", label="base")
        ax[0, 0].plot(df.layer, df.tuned, "s-", label="tuned")
        ax[0, 0].set(xlabel="layer", ylabel="mean ||resid_post||", title="Residual norms")
        ax[0, 0].legend()
        fig.tight_layout()
        return fig


# ---------------------------------------------------------------- compare: the pair
def norms(pair: Any, prompts: list[Any]) -> NormsResult:
    """Residual norms of both models on the same prompts (prompt tokens only)."""
    from shiftlens.checks import check_prompts

    prompts = check_prompts(prompts, who="norms")
    rows: dict[str, list[Tensor]] = {"base": [], "tuned": []}
    for p in prompts:
        tokens = pair.tokenize(p).tokens
        for role, model in pair:
            rows[role].append(layer_norms(model, tokens))
    return NormsResult(torch.stack(rows["base"]), torch.stack(rows["tuned"]),
                       meta=make_meta(pair, params={"n_prompts": len(prompts)}))


# ---------------------------------------------------------------- report section and CLI
def section(ctx: Any, sec: Any) -> None:
    """The report's section: the Result, its table, its figure and its finding."""
    ps = ctx.prompts_for("norms")
    sec.note = "On " + ctx.limit_note("norms", len(ps)) + "."

    def run() -> None:
        res = norms(ctx.pair, ps)
        s = sec.summaries["norms"] = res.summary()
        ctx.save_result(res, "norms")
        ctx.csv(sec, res.to_frame(), "norms")
        ctx.figure(sec, res.show(), "norms", s["sentence"], key=s["sentence"])

    ctx.attempt(sec, "norms", run)


def add_commands(sub: argparse._SubParsersAction) -> None:
    """``shiftlens norms PAIR``: print the per-layer table."""
    c = sub.add_parser("norms", help="residual-stream norms per layer, base vs tuned")
    c.add_argument("pair", help="'toy' (the embedded pair)")
    c.set_defaults(handler=f"{__name__}:run_norms")


def run_norms(args: argparse.Namespace) -> int:
    from shiftlens.zoo import toy_pair, toy_prompts

    print(norms(toy_pair(), toy_prompts()[:4]).to_frame().to_string(index=False))
    return 0


SPEC = register_lens(LensSpec(
    name="norms",
    title="Residual norms: did tuning rescale the residual stream?",
    about="Mean L2 norm of hook_resid_post per layer, base vs tuned, with a paired Wilcoxon "
          "test per layer (the worked example of docs/adding-a-lens.md).",
    section=f"{__name__}:section",
    results=(f"{__name__}:NormsResult",),
    cli=f"{__name__}:add_commands",
    limits={"norms": 8},
    order=90,
))
