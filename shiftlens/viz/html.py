"""Self-contained HTML for circuitsvis components: the JavaScript bundle inlined, no network.

circuitsvis renders a component (``AttentionHeads``, ``ColoredTokens``, ...) with React from a
JavaScript bundle. ``str(circuitsvis.attention.attention_heads(...))`` imports that bundle from a
CDN (a blank page offline); ``RenderedHTML.local_src`` inlines the bundle, 1.3 MB for every
component. :class:`Visualization` keeps a list of components (name + props) and plain HTML
blocks and writes the bundle **once** per page (or once per notebook cell output), followed by
one small render call per component. Each render call is guarded: if the bundle is missing or
a component throws, the component's ``div`` says so instead of staying silently blank.
"""

from __future__ import annotations

import functools
import html as _html
import json
import math
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shiftlens.errors import ShiftlensError

__all__ = ["Visualization", "circuitsvis_js", "props_json", "page", "CSS"]

#: CSS shared by visualizations and the report.
CSS = """
:root { --fg:#1d2330; --muted:#5b6475; --line:#d9dde5; --base:#6b7280; --tuned:#1f6feb; }
body { font-family: -apple-system, "Segoe UI", Roboto, "DejaVu Sans", Arial, sans-serif;
       color: var(--fg); margin: 24px auto; max-width: 1280px; padding: 0 18px; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { border-bottom: 1px solid var(--line);
       padding-bottom: 4px; margin-top: 1.8em; } h3 { margin-bottom: 0.3em; }
.sl-muted { color: var(--muted); font-size: 0.92em; }
.sl-vis { margin: 10px 0 22px; }
.sl-vis-title { font-weight: 600; margin: 6px 0; }
.sl-row { display: flex; flex-wrap: wrap; gap: 18px; align-items: flex-start; }
.sl-col { flex: 1 1 420px; min-width: 320px; max-width: 640px; overflow-x: auto; }
.sl-col-title { font-weight: 600; font-size: 0.95em; margin-bottom: 2px; }
.sl-cv { min-height: 20px; }
.sl-cv-error { color: #b42318; font-family: monospace; white-space: pre-wrap; }
.sl-label { display: inline-block; min-width: 150px; font-size: 0.9em; color: var(--muted);
            vertical-align: top; }
table.sl-table { border-collapse: collapse; font-size: 0.86em; margin: 6px 0 14px; }
table.sl-table th, table.sl-table td { border: 1px solid var(--line); padding: 3px 6px;
            vertical-align: top; text-align: left; }
table.sl-table th { background: #f3f5f8; }
.sl-word { display: inline-block; padding: 0 3px; margin: 1px; border-radius: 3px;
           font-family: "DejaVu Sans Mono", Menlo, monospace; font-size: 0.92em; }
.sl-segments { overflow-wrap: anywhere; line-height: 1.9; }
.sl-tok { font-family: "DejaVu Sans Mono", Menlo, monospace; white-space: pre-wrap; padding: 0 1px;
          border-bottom: 3px solid transparent; }
.sl-seg-instruction { border-bottom-color: #d62728; }
.sl-seg-context { border-bottom-color: #1f77b4; }
.sl-seg-template { border-bottom-color: #c7c7c7; }
.sl-seg-bos, .sl-seg-response { border-bottom-color: #9467bd; }
"""


@functools.lru_cache(maxsize=1)
def circuitsvis_js() -> str:
    """The circuitsvis browser bundle (``dist/cdn/iife.js``), safe to inline in a ``<script>``.

    It defines the global ``CircuitsVis`` (``CircuitsVis.render(id, CircuitsVis.Name, props)``).
    ``</script>`` sequences are escaped and the source-map comment dropped (nothing is fetched).

    Returns:
        The JavaScript source.

    Raises:
        ShiftlensError: circuitsvis is not installed or its bundle is missing.

    Example:
        >>> "CircuitsVis" in circuitsvis_js()[:200]
        True
    """
    try:
        import circuitsvis
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise ShiftlensError("circuitsvis is not installed (pip install circuitsvis)") from e
    path = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"
    if not path.exists():
        raise ShiftlensError(f"circuitsvis bundle {path} is missing; reinstall circuitsvis")
    js = path.read_text(encoding="utf-8")
    lines = [ln for ln in js.splitlines() if not ln.startswith("//# sourceMappingURL")]
    return "\n".join(lines).replace("</script", "<\\/script")


def _plain(x: Any) -> Any:
    """Tensors/arrays -> lists; NaN/inf -> None; numpy scalars -> Python."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        if x.dtype.kind == "f":
            x = np.round(x.astype(np.float64), 5)
            return _plain(x.tolist())
        return x.tolist()
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def props_json(props: Mapping[str, Any]) -> str:
    """Props as a JSON object literal that is safe inside an HTML ``<script>`` element.

    Tensors and arrays become lists (floats rounded to 5 decimals), NaN/inf become ``null``,
    ``None`` values are dropped (the component's default), and ``</`` / ``<!--`` are escaped
    so a token such as ``"</s>"`` cannot close the script.

    Example:
        >>> props_json({"tokens": ["</s>", "a"], "values": [1.0, float("nan")], "x": None})
        '{"tokens": ["<\\\\/s>", "a"], "values": [1.0, null]}'
    """
    clean = {k: _plain(v) for k, v in props.items() if v is not None}
    s = json.dumps(clean, ensure_ascii=False, allow_nan=False)
    return s.replace("</", "<\\/").replace("<!--", "<\\!--")


def _render_call(div_id: str, component: str, props: Mapping[str, Any]) -> str:
    return (
        "(function(){var id=" + json.dumps(div_id) + ";var el=document.getElementById(id);"
        "try{if(typeof CircuitsVis==='undefined'){throw new Error('circuitsvis bundle not loaded');}"
        f"CircuitsVis.render(id,CircuitsVis.{component}," + props_json(props) + ");"
        "el.setAttribute('data-rendered','1');}"
        "catch(e){el.className+=' sl-cv-error';el.textContent='visualization failed: '+e;}})();"
    )


@dataclass
class _Part:
    kind: str  # "html" or "cv"
    html: str = ""
    component: str = ""
    props: dict[str, Any] = field(default_factory=dict)
    label: str = ""


@dataclass
class Visualization:
    """A self-contained HTML visualization: circuitsvis components and plain HTML blocks.

    Build one with the functions of :mod:`shiftlens.viz` (:func:`attention_patterns`,
    :func:`importance_tokens`, :func:`concept_table`) or by hand with :meth:`add_html`,
    :meth:`add_component`, :meth:`row`. In a notebook the object renders itself
    (``_repr_html_``, the bundle inlined once per output); :meth:`to_html` / :meth:`save` write a
    complete page that renders with no network.

    Attributes:
        title: Heading shown above the visualization.
        parts: The blocks in order (internal; use :attr:`components` to inspect).
        data: The numbers shown, for programmatic use and tests (e.g. ``data["patterns"]``).

    Example:
        >>> vis = Visualization("demo")
        >>> vis.add_component("ColoredTokens", {"tokens": ["a", "b"], "values": [0.1, 0.9]})
        >>> vis.components[0][0]
        'ColoredTokens'
        >>> "CircuitsVis.render" in vis.to_html()
        True
    """

    title: str = ""
    parts: list[_Part] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ building
    def add_html(self, html: str) -> None:
        """Append a plain HTML block (trusted: escape user text yourself).

        Example:
            >>> Visualization().add_html("<p>note</p>")
        """
        self.parts.append(_Part("html", html=html))

    def add_component(self, component: str, props: Mapping[str, Any], label: str = "") -> None:
        """Append a circuitsvis component (``"AttentionHeads"``, ``"ColoredTokens"``, ...).

        Args:
            component: The React element name exported by circuitsvis' bundle.
            props: Its props (camelCase keys, as circuitsvis' Python wrappers pass them).
            label: Optional caption shown above it.

        Example:
            >>> Visualization().add_component("ColoredTokens", {"tokens": ["x"], "values": [1]})
        """
        self.parts.append(_Part("cv", component=component, props=dict(props), label=label))

    def row(self, columns: Sequence[tuple[str, Visualization]]) -> None:
        """Append visualizations side by side (one flex column each, wrapping when narrow).

        Args:
            columns: ``(column title, visualization)`` pairs; their parts are nested.

        Example:
            >>> a, b = Visualization(), Visualization()
            >>> Visualization().row([("base", a), ("tuned", b)])
        """
        self.parts.append(_Part("row", props={"columns": [(t, v) for t, v in columns]}))

    def extend(self, other: Visualization) -> None:
        """Append another visualization's blocks (and merge its data under its title).

        Example:
            >>> v = Visualization("a"); v.extend(Visualization("b"))
        """
        if other.title:
            self.add_html(f'<div class="sl-vis-title">{_html.escape(other.title)}</div>')
        self.parts.extend(other.parts)
        if other.data:
            self.data.setdefault("parts", []).append(other.data)

    # ------------------------------------------------------------------ inspection
    @property
    def components(self) -> list[tuple[str, dict[str, Any]]]:
        """Every circuitsvis component as ``(name, props)``, nested rows flattened, in order.

        Example:
            >>> Visualization().components
            []
        """
        out: list[tuple[str, dict[str, Any]]] = []

        def walk(parts: Iterable[_Part]) -> None:
            for p in parts:
                if p.kind == "cv":
                    out.append((p.component, p.props))
                elif p.kind == "row":
                    for _, v in p.props["columns"]:
                        walk(v.parts)

        walk(self.parts)
        return out

    # ------------------------------------------------------------------ rendering
    def _body(self, calls: list[str]) -> str:
        out: list[str] = []

        def walk(parts: Iterable[_Part]) -> None:
            for p in parts:
                if p.kind == "html":
                    out.append(p.html)
                elif p.kind == "cv":
                    div_id = "sl-cv-" + uuid.uuid4().hex[:12]
                    if p.label:
                        out.append(f'<div class="sl-col-title">{_html.escape(p.label)}</div>')
                    out.append(
                        f'<div id="{div_id}" class="sl-cv sl-circuitsvis" '
                        f'data-component="{_html.escape(p.component)}"></div>'
                    )
                    calls.append(_render_call(div_id, p.component, p.props))
                else:  # row
                    out.append('<div class="sl-row">')
                    for title, v in p.props["columns"]:
                        out.append('<div class="sl-col">')
                        if title:
                            out.append(f'<div class="sl-col-title">{_html.escape(title)}</div>')
                        walk(v.parts)
                        out.append("</div>")
                    out.append("</div>")

        walk(self.parts)
        return "\n".join(out)

    def fragment(self, *, include_js: bool = True, with_title: bool = True) -> str:
        """An HTML fragment: the blocks, then (optionally) the bundle, then the render calls.

        Args:
            include_js: Inline the circuitsvis bundle (set False when the page already has it,
                as the report does: one bundle for many visualizations).
            with_title: Start with :attr:`title` as a heading.

        Example:
            >>> "<script>" in Visualization("x").fragment(include_js=False)
            False
        """
        calls: list[str] = []
        body = self._body(calls)
        head = (f'<div class="sl-vis-title">{_html.escape(self.title)}</div>'
                if with_title and self.title else "")
        scripts = ""
        if calls:
            js = f"<script>{circuitsvis_js()}</script>\n" if include_js else ""
            scripts = js + "<script>\n" + "\n".join(calls) + "\n</script>"
        return f'<div class="sl-vis">{head}\n{body}\n{scripts}</div>'

    def to_html(self) -> str:
        """A complete HTML page (inline CSS and JavaScript; renders offline).

        Example:
            >>> Visualization("t").to_html().startswith("<!DOCTYPE html>")
            True
        """
        return page(self.title or "shiftlens visualization", self.fragment(with_title=True))

    def save(self, path: str | Path) -> Path:
        """Write :meth:`to_html` to ``path`` (``.html``); returns the path.

        Example:
            >>> vis.save("out/attention.html")  # doctest: +SKIP
        """
        path = Path(path)
        if path.suffix.lower() not in (".html", ".htm"):
            raise ShiftlensError(f"save a visualization as .html, not {path.name!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_html(), encoding="utf-8")
        return path

    def _repr_html_(self) -> str:
        """Notebook display: the fragment with the bundle inlined (works offline)."""
        return f"<style>{CSS}</style>" + self.fragment(include_js=True)

    def __repr__(self) -> str:
        names = [c for c, _ in self.components]
        return f"Visualization(title={self.title!r}, components={names})"


def page(title: str, body: str, *, head_extra: str = "") -> str:
    """Wrap a body in a complete HTML document with the shared CSS.

    Example:
        >>> "<title>x</title>" in page("x", "<p>hi</p>")
        True
    """
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{_html.escape(title)}</title>\n<style>{CSS}</style>\n{head_extra}</head>\n"
        f"<body>\n{body}\n</body>\n</html>\n"
    )
