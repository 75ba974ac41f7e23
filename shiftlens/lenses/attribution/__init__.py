"""Lens 1, attribution: does the response rest on the instruction? (Wu et al. 2024, §3).

Registered as ``"attribution"``. The public functions load on first use (importing this
package imports nothing heavy).
"""

from __future__ import annotations

from typing import Any

from shiftlens.lenses.registry import LensSpec, register_lens

SPEC = register_lens(LensSpec(
    name="attribution",
    title="Attribution: does the response rest on the instruction?",
    about="Gradient input->output attribution of each model's response, sparsified into the "
          "importance density of every prompt token; the instruction score sums the density of "
          "the instruction tokens (Wu et al. 2024, §3).",
    section="shiftlens.report.lenses:_run_attribution",
    results=("shiftlens.attribution:Attribution", "shiftlens.attribution:SensitivityResult",
             "shiftlens.attribution:FollowedResult", "shiftlens.attribution:PositionResult"),
    cli="shiftlens.lenses.attribution.cli:add_commands",
    limits={"attribution": 12},
    requires=("shiftlens.attribution:instruction_sensitivity",),
    order=10,
))


def __getattr__(name: str) -> Any:  # the lens's public API, loaded on first use
    import shiftlens.attribution as _impl

    try:
        return getattr(_impl, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
