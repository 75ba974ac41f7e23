"""The activation difference lens and diff mining: what a fine-tune wrote into the residual stream
and the logits, read as tokens (model diffing; not in Wu et al. 2024).

Registered as ``"activation_difference"``. Definitions from Minder et al. 2025 ("Narrow finetuning
leaves clearly readable traces in activation differences", arXiv 2510.13900) and their
diffing-toolkit; Patchscope from Ghandeharioun et al. 2024. The layers of the lens:

* :mod:`.core` - one model and tensors: ``first_position_residuals``, ``logit_lens``,
  ``lens_probabilities``, ``patchscope``, ``steered_generations``, ``topk_counts``,
  ``relevance``, ``poisson_weights``;
* :mod:`.compare` - a pair: ``activation_difference``; :mod:`.mining` - ``diff_mining``;
* :mod:`.results` - ``ActivationDifferenceResult``, ``DiffMiningResult`` (both with
  ``top_tokens(k)``: diffing Results, scored on the organisms by ``benchmarks/diffing_table.py``);
* :mod:`.plots` - their figures; :mod:`.section` - the report section and contract examples.

The public names load on first use (importing this package imports no torch).

Example:
    >>> from shiftlens.lenses.activation_difference import SPEC
    >>> SPEC.name
    'activation_difference'
"""

from __future__ import annotations

from shiftlens.lenses.registry import LensSpec, lazy_api, register_lens

_PKG = "shiftlens.lenses.activation_difference"

SPEC = register_lens(LensSpec(
    name="activation_difference",
    title="Activation differences: what did the fine-tune write into the residual stream?",
    about="The mean tuned - base residual difference on the first tokens of unrelated text, per "
          "layer, read through each model's logit lens and a Patchscope, with each model steered "
          "by it (Minder et al. 2025, arXiv 2510.13900); and diff mining: the tokens most often "
          "among the largest logit rises (their diffing-toolkit). Not in Wu et al.",
    section=f"{_PKG}.section:section",
    results=(f"{_PKG}.results:ActivationDifferenceResult", f"{_PKG}.results:DiffMiningResult"),
    cli=f"{_PKG}.cli:add_commands",
    limits={"activation_difference": 64},
    requires=(f"{_PKG}.compare:activation_difference", f"{_PKG}.mining:diff_mining"),
    examples=f"{_PKG}.section:examples",
    order=50,
))

#: Public name -> the module of this package that defines it (loaded on first access).
_API: dict[str, str] = {
    **dict.fromkeys(("DEFAULT_PATCH_PROMPT", "resid_hook", "first_position_residuals",
                     "logit_lens", "lens_probabilities", "patchscope", "steered_generations",
                     "topk_counts", "relevance", "poisson_weights"), "core"),
    "activation_difference": "compare",
    "diff_mining": "mining",
    **dict.fromkeys(("ActivationDifferenceResult", "DiffMiningResult"), "results"),
    **dict.fromkeys(("activation_difference_figure", "diff_mining_figure"), "plots"),
}

__all__ = ["SPEC", *_API]


__getattr__, __dir__ = lazy_api(__name__, _API)
