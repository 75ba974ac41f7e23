"""Lens 3, feed-forward concepts: did the MLP knowledge rotate? (Wu et al. 2024, §5).

Registered as ``"ffn"``. The public functions load on first use.
"""

from __future__ import annotations

from typing import Any

from shiftlens.lenses.registry import LensSpec, register_lens

SPEC = register_lens(LensSpec(
    name="ffn",
    title="Feed-forward concepts: did the MLP knowledge rotate?",
    about="PCA of each layer's MLP output weights W_out, each component read as its top words "
          "and annotated with a user task and linguistic level (Wu et al. 2024, §5); rotation of "
          "the principal subspace from base to tuned as principal angles.",
    section="shiftlens.report.lenses:_run_ffn",
    results=("shiftlens.ffn:ConceptShift", "shiftlens.ffn:Rotation"),
    cli="shiftlens.lenses.ffn.cli:add_commands",
    limits={"ffn": None},
    requires=("shiftlens.ffn:concept_shift", "shiftlens.ffn:rotation"),
    order=30,
))


def __getattr__(name: str) -> Any:  # the lens's public API, loaded on first use
    import shiftlens.ffn as _impl

    try:
        return getattr(_impl, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
