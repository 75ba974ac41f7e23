"""Model-diff amplification: greedy responses from ``base + a (tuned - base)`` (model diffing;
not in Wu et al. 2024).

Registered as ``"amplification"``. The layers of the lens:

* :mod:`.core` - tensors and models: ``amplified_logits``, ``AmplifiedModel`` (decoded by the
  one greedy decoding of :mod:`shiftlens.generate`), ``amplified_generations``;
* :mod:`.compare` - a pair: ``amplification``;
* :mod:`.results` - ``AmplificationResult`` (a diffing Result: ``top_tokens(k)``);
* :mod:`.plots` - its figure; :mod:`.section` - the report section and contract examples;
  :mod:`.cli` - ``shiftlens amplify``.

Example:
    >>> from shiftlens.lenses.amplification import SPEC
    >>> SPEC.name
    'amplification'
"""

from __future__ import annotations

from shiftlens.lenses.registry import LensSpec, lazy_api, register_lens

_PKG = "shiftlens.lenses.amplification"

SPEC = register_lens(LensSpec(
    name="amplification",
    title="Amplification: what does the fine-tune do when exaggerated?",
    about="Greedy responses decoded from the logits base + a (tuned - base) for a = 0 (base), 1 "
          "(tuned), 2, 4 (model-diff amplification; the diffing-toolkit's amplification method), "
          "and the tokens whose use rises with a. Not in Wu et al.",
    section=f"{_PKG}.section:section",
    results=(f"{_PKG}.results:AmplificationResult",),
    cli=f"{_PKG}.cli:add_commands",
    limits={"amplification": 4},
    requires=(f"{_PKG}.compare:amplification",),
    examples=f"{_PKG}.section:examples",
    order=60,
))

#: Public name -> the module of this package that defines it (loaded on first access).
_API: dict[str, str] = {
    **dict.fromkeys(("amplified_logits", "AmplifiedModel", "amplified_generations"), "core"),
    "amplification": "compare",
    "AmplificationResult": "results",
    "amplification_figure": "plots",
}

__all__ = ["SPEC", *_API]


__getattr__, __dir__ = lazy_api(__name__, _API)
