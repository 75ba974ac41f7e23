"""The lenses: one package per lens, each registered (:func:`register_lens`).

Every lens package has the same layers: ``core.py`` (explain one model: pure functions on a
TransformerBridge and tensors), ``compare.py`` (compare a pair: validate / accumulate /
assemble), ``results.py`` (its :class:`shiftlens.result.Result` classes), ``plots.py`` (its
figures) and ``section.py`` (its part of the report). A lens never imports another lens;
shared needs live in the core modules below (import-linter holds this in CI).

Importing this package imports nothing heavy; the lens functions load on first use.

Example:
    >>> from shiftlens.lenses import registered_lenses
    >>> "ffn" in registered_lenses()
    True
"""

from __future__ import annotations

from typing import Any

from shiftlens.lenses.registry import (
    Finding,
    LensSpec,
    ReportContext,
    Section,
    available_lenses,
    get_lens,
    register_lens,
    registered_lenses,
    resolve_ref,
    unregister_lens,
)

__all__ = [
    "BUILTIN_LENSES",
    "Finding",
    "LensSpec",
    "ReportContext",
    "Section",
    "available_lenses",
    "get_lens",
    "import_results",
    "load",
    "register_lens",
    "registered_lenses",
    "resolve_ref",
    "unregister_lens",
]

#: The lens packages shipped with shiftlens, in report order.
BUILTIN_LENSES: tuple[str, ...] = (
    "attribution", "attention", "ffn", "residual",
    "activation_difference", "weight_delta", "amplification", "crosscoder",
)


def import_results() -> None:
    """Import every registered lens's Result classes (so saved results of any kind load).

    Example:
        >>> import_results()
    """
    for spec in registered_lenses().values():
        for ref in spec.results:
            try:
                resolve_ref(ref)
            except Exception:  # noqa: BLE001 - an unavailable lens cannot have saved results
                pass


def load(directory: Any) -> Any:
    """Load any saved shiftlens result; its class comes from the saved kind.

    Every registered lens's Result classes are imported first, so any kind loads. Also
    available as ``shiftlens.load``.

    Raises:
        ShiftlensError: naming the directory and the first inconsistency (see
            :meth:`shiftlens.result.Result.load`).

    Example:
        >>> import shiftlens
        >>> res = shiftlens.load("out/sensitivity")  # doctest: +SKIP
    """
    from shiftlens.result import Result

    import_results()
    return Result.load(directory)
