"""The weight-delta lens: per layer and matrix, how much the weights changed, in how many
directions, toward which tokens (model diffing; not in Wu et al. 2024).

Registered as ``"weight_delta"``. Reads both checkpoints' files one tensor at a time. The layers
of the lens:

* :mod:`.core` - one model's weights and tensors: ``WeightReader``, ``relative_norm``,
  ``delta_singular_values``, ``effective_rank``, ``energy_share``, ``top_directions``,
  ``vocab_zscores``, ``token_energy``;
* :mod:`.compare` - a pair: ``weight_delta``;
* :mod:`.results` - ``WeightDeltaResult`` (a diffing Result: ``top_tokens(k, source)``);
* :mod:`.plots` - its figure; :mod:`.section` - the report section and contract examples;
  :mod:`.cli` - ``shiftlens weight-delta``.

Example:
    >>> from shiftlens.lenses.weight_delta import SPEC
    >>> SPEC.name
    'weight_delta'
"""

from __future__ import annotations

from shiftlens.lenses.registry import LensSpec, lazy_api, register_lens

_PKG = "shiftlens.lenses.weight_delta"

SPEC = register_lens(LensSpec(
    name="weight_delta",
    title="Weight changes: how much did each matrix move, and toward which tokens?",
    about="Per layer and matrix, W_tuned - W_base read from the checkpoint files: its relative "
          "norm, singular values (effective rank, energy of the top r) and its leading singular "
          "directions read through the unembedding. Not in Wu et al.",
    section=f"{_PKG}.section:section",
    results=(f"{_PKG}.results:WeightDeltaResult",),
    cli=f"{_PKG}.cli:add_commands",
    requires=(f"{_PKG}.compare:weight_delta",),
    examples=f"{_PKG}.section:examples",
    order=55,
))

#: Public name -> the module of this package that defines it (loaded on first access).
_API: dict[str, str] = {
    **dict.fromkeys(("WRITE_PATTERN", "WeightReader", "relative_norm", "delta_singular_values",
                     "effective_rank", "energy_share", "top_directions", "vocab_zscores",
                     "token_energy"), "core"),
    "weight_delta": "compare",
    **dict.fromkeys(("WeightDeltaResult", "SOURCES"), "results"),
    "weight_delta_figure": "plots",
}

__all__ = ["SPEC", *_API]


__getattr__, __dir__ = lazy_api(__name__, _API)
