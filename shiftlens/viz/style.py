"""The one pyplot getter, the house style and figure I/O, for every lens's plots and the report.

Lens packages draw their figures in ``plots.py`` with :func:`pyplot` and :func:`new_figure`;
:meth:`shiftlens.result.Result.show` labels them with the model names (:func:`label_models`) and
saves them (:func:`save_figure`); the report and notebooks embed them (:func:`figure_html`).
The style keeps every text at least :data:`MIN_FONT_PT` points at the saved size.
"""

from __future__ import annotations

import base64
import io
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from shiftlens.errors import ShiftlensError

__all__ = [
    "BASE_COLOR",
    "TUNED_COLOR",
    "ROLE_COLORS",
    "MIN_FONT_PT",
    "FORMATS",
    "pyplot",
    "new_figure",
    "integer_ticks",
    "label_models",
    "save_figure",
    "figure_html",
    "layout_problems",
]

#: Colours of the two models in every figure.
BASE_COLOR, TUNED_COLOR = "#8a8f98", "#1f6feb"
ROLE_COLORS = {"base": BASE_COLOR, "tuned": TUNED_COLOR}
#: Smallest font size (points) any text of a shiftlens figure uses.
MIN_FONT_PT = 9
#: File formats :func:`save_figure` writes by default.
FORMATS: tuple[str, ...] = ("png", "svg")

_STYLE = {
    "font.size": 10,
    "axes.titlesize": 10,
    "axes.labelsize": 10,
    "xtick.labelsize": MIN_FONT_PT,
    "ytick.labelsize": MIN_FONT_PT,
    "legend.fontsize": MIN_FONT_PT,
    "figure.titlesize": 11,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "savefig.bbox": "tight",
}


def pyplot() -> Any:
    """``matplotlib.pyplot`` with the house style, on the Agg backend when there is no display.

    Example:
        >>> plt = pyplot()
        >>> fig = plt.figure(); plt.close(fig)
    """
    import matplotlib

    if "matplotlib.pyplot" not in __import__("sys").modules and not (
            os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
            or os.environ.get("MPLBACKEND")):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(_STYLE)
    return plt


def new_figure(nrows: int = 1, ncols: int = 1, *, width: float | int = 6.0,
               height: float | int = 3.6,
               **kwargs: Any) -> tuple[Any, Any]:
    """A figure and a 2-D array of axes (``squeeze=False``), in the house style.

    Example:
        >>> fig, axes = new_figure(1, 2, width=8)
        >>> axes.shape
        (1, 2)
    """
    plt = pyplot()
    return plt.subplots(nrows, ncols, figsize=(width, height), squeeze=False, **kwargs)


def integer_ticks(ax: Any, axis: str = "x") -> None:
    """Integer-only ticks on ``axis`` (layers, heads).

    Example:
        >>> fig, axes = new_figure(); integer_ticks(axes[0, 0])
    """
    from matplotlib.ticker import MaxNLocator

    (ax.xaxis if axis == "x" else ax.yaxis).set_major_locator(MaxNLocator(integer=True))


def label_models(fig: Any, names: Mapping[str, str] | None) -> Any:
    """Write "base: ... | tuned: ..." at the foot of a figure (once), inside the figure.

    Room is made at the bottom (the axes are laid out again above the line), so the label never
    falls outside the figure or over an axis label. Single-model names (``{"model": name}``) are
    written as ``model: name``.

    Example:
        >>> fig = label_models(pyplot().figure(), {"base": "a", "tuned": "b"})
    """
    if not names:
        return fig
    if "base" in names or "tuned" in names:
        text = f"base: {names.get('base', '?')}   |   tuned: {names.get('tuned', '?')}"
    else:  # single-model results: {"model": name}
        text = "   |   ".join(f"{k}: {v}" for k, v in names.items())
    if getattr(fig, "_shiftlens_models", None) == text:
        return fig
    import warnings

    label = fig.text(0.5, 0.004, text, ha="center", va="bottom", fontsize=MIN_FONT_PT,
                     color="0.35")
    fig._shiftlens_models = text
    try:
        fig.canvas.draw()
        h = label.get_window_extent().height / max(fig.bbox.height, 1.0)
        # long names: shrink to the figure width rather than overflow it
        w = label.get_window_extent().width / max(fig.bbox.width, 1.0)
        if w > 0.98:
            label.set_text(_shorten(text, int(len(text) * 0.97 / w)))
        engine = fig.get_layout_engine() if hasattr(fig, "get_layout_engine") else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            if engine is not None and type(engine).__name__ == "ConstrainedLayoutEngine":
                engine.set(rect=(0, h + 0.01, 1, 1 - h - 0.01))
            else:
                fig.tight_layout(rect=(0, h + 0.01, 1, 1))
    except Exception:  # noqa: BLE001 - layout is cosmetic; the label is there either way
        pass
    return fig


def _shorten(text: str, n: int) -> str:
    if len(text) <= n or n < 8:
        return text
    keep = max(4, (n - 1) // 2)
    return text[:keep] + "…" + text[-keep:]


def _metadata(fmt: str) -> dict[str, Any] | None:
    # reproducible files: no creation date in SVG/PDF
    if fmt == "svg":
        return {"Date": None}
    if fmt == "pdf":
        return {"CreationDate": None}
    return None


def save_figure(fig: Any, stem: str | Path, formats: Sequence[str] = FORMATS, *,
                dpi: int = 120) -> list[Path]:
    """Save a figure as ``stem.png``, ``stem.svg`` (one file per format; a suffix in ``stem``
    that is a known format is used instead of ``formats``).

    Example:
        >>> paths = save_figure(fig, "out/figures/attention")  # doctest: +SKIP
        >>> [p.suffix for p in paths]  # doctest: +SKIP
        ['.png', '.svg']
    """
    stem = Path(stem)
    if stem.suffix.lstrip(".") in ("png", "svg", "pdf"):
        formats, stem = (stem.suffix.lstrip("."),), stem.with_suffix("")
    try:
        stem.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ShiftlensError(f"cannot create {str(stem.parent)!r}: {e.strerror or e}") from e
    out = []
    for fmt in formats:
        if fmt not in ("png", "svg", "pdf"):
            raise ShiftlensError(f"unknown figure format {fmt!r}; choose png, svg or pdf")
        p = stem.with_name(stem.name + "." + fmt)
        try:
            fig.savefig(p, dpi=dpi, bbox_inches="tight", metadata=_metadata(fmt))
        except OSError as e:
            raise ShiftlensError(f"cannot write {str(p)!r}: {e.strerror or e}") from e
        out.append(p)
    return out


def figure_html(fig: Any, fmt: str = "png", *, alt: str = "", dpi: int = 110) -> str:
    """A figure as self-contained HTML: a base64 PNG ``<img>`` or an inline ``<svg>``.

    Example:
        >>> plt = pyplot(); fig, ax = plt.subplots(); _ = ax.plot([0, 1])
        >>> figure_html(fig).startswith('<img class="sl-fig" src="data:image/png;base64,')
        True
        >>> figure_html(fig, "svg").startswith("<svg")
        True
    """
    buf = io.BytesIO()
    if fmt == "png":
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
        b64 = base64.b64encode(buf.getvalue()).decode("ascii")
        from html import escape

        return (f'<img class="sl-fig" src="data:image/png;base64,{b64}" alt="{escape(alt)}" '
                'style="max-width:100%;height:auto">')
    if fmt == "svg":
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
        svg = buf.getvalue().decode("utf-8")
        svg = svg[svg.index("<svg"):]  # drop the XML prolog and doctype
        return re.sub(r"<svg ", '<svg style="max-width:100%;height:auto" ', svg, count=1)
    raise ShiftlensError(f"figure_html: format must be 'png' or 'svg', got {fmt!r}")


def layout_problems(fig: Any, *, min_font_pt: float = MIN_FONT_PT) -> list[str]:
    """What makes a figure hard to read: text outside the figure, text that is too small.

    Draws the figure and checks every visible text artist (titles, labels, tick labels, legend
    entries, annotations, colorbar labels): its bounding box must lie inside the figure's
    bounding box (so nothing is cut off when saved without ``bbox_inches="tight"``, e.g. a legend
    pushed outside), and its font must be at least ``min_font_pt`` points at the rendered size.

    Args:
        fig: A matplotlib Figure.
        min_font_pt: Smallest acceptable font size in points.

    Returns:
        One sentence per problem (empty when the figure is fine).

    Example:
        >>> fig, axes = new_figure(); _ = axes[0, 0].set_title("ok")
        >>> layout_problems(fig)
        []
    """
    from matplotlib.text import Text

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    tol = 1.0  # pixels
    out = []
    tb = fig.get_tightbbox(renderer)  # inches, drawn artists only
    if tb is not None:
        tight = tb.transformed(fig.dpi_scale_trans)
        if (tight.x0 < box.x0 - tol or tight.y0 < box.y0 - tol or tight.x1 > box.x1 + tol
                or tight.y1 > box.y1 + tol):
            out.append("the figure's drawn content extends beyond the figure "
                       f"({tight.x0:.0f},{tight.y0:.0f})-({tight.x1:.0f},{tight.y1:.0f}) vs "
                       f"({box.x0:.0f},{box.y0:.0f})-({box.x1:.0f},{box.y1:.0f})")
    # tick labels matplotlib does not draw (ticks outside the view limits) are not text
    all_ticks, drawn = set(), set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                all_ticks.update((id(tick.label1), id(tick.label2)))
            for tick in axis._update_ticks():
                drawn.update((id(tick.label1), id(tick.label2)))
    for t in fig.findobj(Text):
        if not t.get_visible() or not t.get_text().strip():
            continue
        if id(t) in all_ticks and id(t) not in drawn:
            continue
        if t.get_fontsize() < min_font_pt - 1e-6:
            out.append(f"text {t.get_text()[:30]!r} is {t.get_fontsize():g} pt (< {min_font_pt:g})")
        bb = t.get_window_extent(renderer)
        if (bb.x0 < box.x0 - tol or bb.y0 < box.y0 - tol or bb.x1 > box.x1 + tol
                or bb.y1 > box.y1 + tol):
            out.append(f"text {t.get_text()[:30]!r} falls outside the figure "
                       f"({bb.x0:.0f},{bb.y0:.0f})-({bb.x1:.0f},{bb.y1:.0f}) vs "
                       f"({box.x0:.0f},{box.y0:.0f})-({box.x1:.0f},{box.y1:.0f})")
    return out
