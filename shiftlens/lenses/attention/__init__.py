"""Lens 2, attention: do heads read the instruction more, and which word pairs do their Q/K
weights encode? (Wu et al. 2024, §4).

Registered as ``"attention"``. The public functions load on first use.
"""

from __future__ import annotations

from typing import Any

from shiftlens.lenses.registry import LensSpec, register_lens

SPEC = register_lens(LensSpec(
    name="attention",
    title="Attention: do heads read the instruction more?",
    about="Attention mass that response tokens put on the instruction, context and template, per "
          "layer and head, base vs tuned with a paired test per head; and the word pairs the "
          "heads' Q/K weights encode (Wu et al. 2024, §4).",
    section="shiftlens.report.lenses:_run_attention",
    results=("shiftlens.attention:InstructionAttentionResult",
             "shiftlens.attention:VerbShiftResult"),
    limits={"attention": 64},
    requires=("shiftlens.attention:instruction_attention",),
    order=20,
))


def __getattr__(name: str) -> Any:  # the lens's public API, loaded on first use
    import shiftlens.attention as _impl

    try:
        return getattr(_impl, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
