"""Static figures: any Result's own figure labelled with its models (:func:`lens_figure`),
and the figure I/O of :mod:`shiftlens.viz.style` re-exported.

Each lens draws its figures in its own ``plots.py`` (e.g.
:func:`shiftlens.lenses.attribution.plots.instruction_score_figure`); this module no longer
holds lens-specific figures.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shiftlens.errors import ShiftlensError
from shiftlens.viz.style import (  # noqa: F401 - the one implementation, re-exported
    BASE_COLOR,
    FORMATS,
    TUNED_COLOR,
    figure_html,
    label_models,
    pyplot,
    save_figure,
)

__all__ = [
    "pyplot",
    "save_figure",
    "figure_html",
    "label_models",
    "lens_figure",
    "FORMATS",
]


def _names_of(result: Any) -> dict[str, str] | None:
    for attr in ("model_names",):
        v = getattr(result, attr, None)
        if isinstance(v, Mapping):
            return dict(v)
    meta = getattr(result, "meta", None)
    if isinstance(meta, Mapping):
        for key in ("model_names", "models"):
            v = meta.get(key)
            if isinstance(v, Mapping):
                return dict(v)
    return None


def lens_figure(result: Any, *args: Any, names: Mapping[str, str] | None = None, **kwargs: Any) -> Any:
    """A Result's own figure (``result.show(...)``), labelled with the model names.

    Args:
        result: Any lens Result with ``.show()``.
        *args, **kwargs: Passed to ``show``.
        names: Model names (default: read from the result).

    Raises:
        ShiftlensError: the object has no ``show``.

    Example:
        >>> fig = lens_figure(res)  # doctest: +SKIP
    """
    show = getattr(result, "show", None)
    if not callable(show):
        raise ShiftlensError(f"{type(result).__name__} has no show() method to draw")
    fig = show(*args, **kwargs)
    return label_models(fig, names or _names_of(result))
