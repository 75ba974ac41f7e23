"""The report: run the lenses on a pair and a prompt set, write HTML + metrics.json + CSVs.

``build_report(pair, prompts, out)`` runs each chosen lens (:data:`LENSES`), turns its Results
into findings stated in words with their numbers and statistics, figures (PNG + SVG files, the
PNG embedded) and circuitsvis views, and writes into ``out``:

- ``report.html`` - one self-contained page (figures as base64 PNG, circuitsvis' JavaScript
  inlined once; opens offline),
- ``metrics.json`` - settings, timings and every lens's ``summary()``,
- ``csv/*.csv`` - the Results' frames, ``figures/*.png|svg``, ``results/<lens>/`` (each Result's
  ``save()``, reloadable with ``Result.load``).

A lens whose module or function is missing (not installed, not written yet) is skipped with a
note; a lens that fails is reported as failed (with the error) and the others still run.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import html as _html
import json
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from shiftlens.errors import ShiftlensError
from shiftlens.io import to_jsonable
from shiftlens.lenses.registry import (
    Finding,
    LensSpec,
    Section,
    available_lenses,
    registered_lenses,
)
from shiftlens.prompts import InstructionPrompt
from shiftlens.stats import change_sentence
from shiftlens.viz.figures import figure_html, label_models, pyplot, save_figure
from shiftlens.viz.html import circuitsvis_js, page

__all__ = [
    "LensSpec",
    "LENSES",
    "DEFAULT_LIMITS",
    "available_lenses",
    "resolve_lenses",
    "select_prompts",
    "Finding",
    "Section",
    "Report",
    "build_report",
    "change_sentence",
]

class _Limits(Mapping):
    """Default prompt caps per lens key, gathered from the registered lenses' ``limits``."""

    def _t(self) -> dict[str, int | None]:
        out: dict[str, int | None] = {}
        for spec in registered_lenses().values():
            out.update(spec.limits)
        return out

    def __getitem__(self, k: str) -> int | None:
        return self._t()[k]

    def __iter__(self):
        return iter(self._t())

    def __len__(self) -> int:
        return len(self._t())


#: Default prompt caps per lens key (the expensive lenses), from each lens's
#: :attr:`~shiftlens.lenses.LensSpec.limits`; 0 or None = no cap. ``max_prompts`` caps the
#: whole set first.
DEFAULT_LIMITS: Mapping[str, int | None] = _Limits()


class _Lenses(Mapping):
    """Live mapping name -> :class:`~shiftlens.lenses.LensSpec` (the lens registry)."""

    def __getitem__(self, k: str) -> LensSpec:
        return registered_lenses()[k]

    def __iter__(self):
        return iter(registered_lenses())

    def __len__(self) -> int:
        return len(registered_lenses())


#: The registered lenses in report order (:func:`shiftlens.lenses.register_lens` adds more).
LENSES: Mapping[str, LensSpec] = _Lenses()


def resolve_lenses(lenses: str | Sequence[str] | None) -> list[str]:
    """Validate a lens selection (a list, or a comma-separated string; None/"all" = every lens).

    Raises:
        ShiftlensError: an unknown lens name (the message lists the known ones).

    Example:
        >>> resolve_lenses("attention, ffn")
        ['attention', 'ffn']
    """
    if lenses is None:
        return list(LENSES)
    if isinstance(lenses, str):
        lenses = [x.strip() for x in lenses.split(",") if x.strip()]
    names = list(dict.fromkeys(lenses))
    if not names or names == ["all"]:
        return list(LENSES)
    bad = [n for n in names if n not in LENSES]
    if bad:
        raise ShiftlensError(f"unknown lens {bad[0]!r}; choose from {', '.join(LENSES)} (or 'all')")
    return [n for n in LENSES if n in names]


def select_prompts(prompts: Sequence[InstructionPrompt], n: int | None) -> list[InstructionPrompt]:
    """A deterministic subset of ``n`` prompts balanced over categories (round robin, in order).

    Example:
        >>> ps = [InstructionPrompt(f"p{i}", id=str(i), category="ab"[i % 2 == 0]) for i in range(6)]
        >>> [p.id for p in select_prompts(ps, 3)]
        ['0', '1', '2']
    """
    prompts = list(prompts)
    if not n or n >= len(prompts):
        return prompts
    by_cat: dict[Any, list[InstructionPrompt]] = {}
    for p in prompts:
        by_cat.setdefault(p.category, []).append(p)
    queues = list(by_cat.values())
    picked: list[InstructionPrompt] = []
    i = 0
    while len(picked) < n:
        q = queues[i % len(queues)]
        k = i // len(queues)
        if k < len(q):
            picked.append(q[k])
        i += 1
    keep = {id(p) for p in picked}
    return [p for p in prompts if id(p) in keep]


@dataclass
class _Context:
    """What a lens runner gets (see :mod:`shiftlens.report.lenses`)."""

    pair: Any
    prompts: list[InstructionPrompt]
    out: Path
    limits: dict[str, int | None]
    progress: bool
    seed: int
    figure_formats: tuple[str, ...]
    debug: bool
    options: dict[str, Any]

    def prompts_for(self, key: str) -> list[InstructionPrompt]:
        return select_prompts(self.prompts, self.limits.get(key))

    def limit_note(self, key: str, used: int) -> str:
        total = len(self.prompts)
        if used < total:
            return (f"{used} of {total} prompts (balanced over categories; cap "
                    f"{self.limits.get(key)} for '{key}' keeps the run short, raise it with "
                    f"--lens-prompts {key}=N)")
        return f"all {total} prompts"

    def figure(self, sec: Section, fig: Any, name: str, text: str, *, key: str = "",
               alt: str = "") -> Finding:
        label_models(fig, self.pair.names)
        files = save_figure(fig, self.out / "figures" / f"{sec.name}_{name}", self.figure_formats)
        w, h = fig.get_size_inches()
        html = figure_html(fig, "png", alt=alt or name)
        pyplot().close(fig)
        f = Finding(text, html, key, [str(p.relative_to(self.out)) for p in files],
                    wide=bool(w / max(h, 1e-6) > 2.4))
        sec.findings.append(f)
        return f

    def csv(self, sec: Section, frame: pd.DataFrame, name: str) -> str:
        d = self.out / "csv"
        d.mkdir(parents=True, exist_ok=True)
        p = d / f"{sec.name}_{name}.csv"
        frame.to_csv(p, index=False)
        rel = str(p.relative_to(self.out))
        sec.tables.append(rel)
        return rel

    def attempt(self, sec: Section, what: str, fn: Any) -> Any:
        """Run one analysis of a section; on failure record the error and go on (unless debug)."""
        import warnings

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # lens warnings are reported by the findings
                return fn()
        except Exception as e:  # noqa: BLE001 - the other analyses still run
            if self.debug:
                raise
            sec.errors.append(f"{what}: {type(e).__name__}: {e}")
            return None

    def save_result(self, result: Any, name: str) -> None:
        try:
            result.save(self.out / "results" / name)
        except Exception as e:  # noqa: BLE001 - saving is a convenience; the report goes on
            if self.debug:
                raise
            (self.out / "results").mkdir(parents=True, exist_ok=True)
            (self.out / "results" / f"{name}.error.txt").write_text(f"{type(e).__name__}: {e}\n")


@dataclass
class Report:
    """A written report.

    Attributes:
        out: The output directory.
        sections: One :class:`Section` per lens (run, skipped or failed).
        metrics: What ``metrics.json`` holds.
        html_path, metrics_path: The files written.

    Example:
        >>> rep = build_report(pair, prompts, "out/report")  # doctest: +SKIP
        >>> rep.html_path  # doctest: +SKIP
        PosixPath('out/report/report.html')
    """

    out: Path
    sections: list[Section]
    metrics: dict[str, Any]
    html_path: Path
    metrics_path: Path

    @property
    def failed(self) -> list[str]:
        """Names of lenses that failed (entirely or partly)."""
        return [s.name for s in self.sections if s.status in ("failed", "partial")]

    @property
    def headlines(self) -> list[str]:
        """The key findings, one sentence per line.

        Example:
            >>> print("\\n".join(rep.headlines))  # doctest: +SKIP
        """
        return [f.key for s in self.sections for f in s.findings if f.key]


def _jsonable(x: Any) -> Any:
    if isinstance(x, pd.DataFrame):
        return _jsonable(x.to_dict("records"))
    if isinstance(x, pd.Series):
        return _jsonable(x.to_dict())
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return _jsonable(dataclasses.asdict(x))
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, set)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    x = to_jsonable(x)
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)


def build_report(
    pair: Any,
    prompts: Sequence[Any],
    out: str | Path,
    *,
    lenses: str | Sequence[str] | None = None,
    max_prompts: int | None = None,
    limits: Mapping[str, int | None] | None = None,
    title: str | None = None,
    seed: int = 0,
    progress: bool = True,
    figure_formats: Sequence[str] = ("png", "svg"),
    debug: bool = False,
    command: str | None = None,
    options: Mapping[str, Any] | None = None,
    selfcheck: Any = "run",
) -> Report:
    """Run the chosen lenses on ``pair`` and ``prompts`` and write the report into ``out``.

    Args:
        pair: A :class:`shiftlens.ModelPair` (its device and dtype are used as they are).
        prompts: The prompt set (instruction spans are needed by the attribution and attention
            lenses).
        out: Output directory (created; existing report files are overwritten).
        lenses: Lens names (list or comma-separated) or None for all; unavailable ones are
            skipped with a note.
        max_prompts: Use at most this many prompts (balanced over categories).
        limits: Per-lens prompt caps overriding :data:`DEFAULT_LIMITS` (0/None = no cap).
        title: Page title.
        seed: Seed passed to every lens (bootstrap, solvers), recorded.
        progress: Progress bars (tqdm, on stderr).
        figure_formats: Figure files written next to the report.
        debug: Re-raise a failing lens's exception instead of reporting it.
        command: The command line that made the report (shown in the footer).
        options: Extra lens options (e.g. ``{"concept_k": 32}``; see
            :mod:`shiftlens.report.lenses`).
        selfcheck: ``"run"`` (default): check the instrument first with
            :func:`shiftlens.selfcheck` and refuse (:class:`~shiftlens.errors.SelfCheckError`) on
            a failed check; ``"skip"``: measure unchecked, recorded in the report; or a
            :class:`shiftlens.instrument.SelfCheck` already run. Its record goes into
            ``metrics.json`` (``"selfcheck"``) and the page's header.

    Returns:
        The :class:`Report`.

    Raises:
        ShiftlensError: no prompts, an unknown lens, a bad cap.

    Example:
        >>> from shiftlens.zoo import toy_pair, toy_prompts
        >>> rep = build_report(toy_pair(), toy_prompts(28), "out/report")  # doctest: +SKIP
        >>> print("\\n".join(rep.headlines))  # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    prompts = list(prompts)
    if not prompts:
        raise ShiftlensError("build_report: no prompts given")
    for i, p in enumerate(prompts):
        if not isinstance(p, InstructionPrompt):
            raise ShiftlensError(f"build_report: prompt #{i} is a {type(p).__name__}, not an "
                                 "InstructionPrompt")
    if max_prompts is not None and (not isinstance(max_prompts, int) or max_prompts < 1):
        raise ShiftlensError(f"max_prompts must be a positive integer, got {max_prompts!r}")
    names = resolve_lenses(lenses)
    lim: dict[str, int | None] = dict(DEFAULT_LIMITS)
    for k, v in (limits or {}).items():
        if k not in DEFAULT_LIMITS:
            raise ShiftlensError(f"unknown prompt-cap key {k!r}; choose from {', '.join(DEFAULT_LIMITS)}")
        if v is not None and (not isinstance(v, int) or v < 0):
            raise ShiftlensError(f"prompt cap for {k!r} must be an integer >= 0, got {v!r}")
        lim[k] = v or None
    from shiftlens.instrument import SelfCheck
    from shiftlens.instrument import selfcheck as run_selfcheck

    if isinstance(selfcheck, str) and selfcheck == "run":
        check = run_selfcheck(pair)
    elif isinstance(selfcheck, str) and selfcheck == "skip":
        check = SelfCheck.skipped_on_request()
    elif isinstance(selfcheck, SelfCheck):
        check = selfcheck
    else:
        raise ShiftlensError(f"selfcheck must be 'run', 'skip' or a SelfCheck, got {selfcheck!r}")
    check.raise_if_failed()
    n_all = len(prompts)
    prompts = select_prompts(prompts, max_prompts)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ctx = _Context(pair=pair, prompts=prompts, out=out, limits=lim, progress=progress, seed=seed,
                   figure_formats=tuple(figure_formats), debug=debug, options=dict(options or {}))
    avail = available_lenses()
    sections: list[Section] = []
    t_start = time.perf_counter()
    bar = tqdm(names, desc="report", disable=not progress, unit="lens")
    for name in bar:
        spec = LENSES[name]
        bar.set_postfix_str(name)
        sec = Section(name=name, title=spec.title, about=spec.about)
        ok, why = avail[name]
        if not ok:
            sec.status, sec.note = "skipped", f"Lens not available: {why}."
            sections.append(sec)
            continue
        t0 = time.perf_counter()
        try:
            spec.run_section()(ctx, sec)
        except Exception as e:  # noqa: BLE001 - one lens failing must not lose the others
            if debug:
                raise
            sec.errors.append(f"{type(e).__name__}: {e}")
            (out / "errors").mkdir(exist_ok=True)
            (out / "errors" / f"{name}.txt").write_text(traceback.format_exc())
        sec.seconds = time.perf_counter() - t0
        if sec.errors:
            sec.status = "partial" if sec.findings else "failed"
        sections.append(sec)
    total = time.perf_counter() - t_start
    metrics = _metrics(pair, prompts, n_all, sections, ctx, total, seed, command)
    metrics["selfcheck"] = check.to_dict()
    metrics_path = out / "metrics.json"
    metrics_path.write_text(json.dumps(_jsonable(metrics), indent=1, ensure_ascii=False,
                                       allow_nan=False))
    html_path = out / "report.html"
    html_path.write_text(_render(pair, prompts, n_all, sections, metrics, title, command),
                         encoding="utf-8")
    return Report(out, sections, metrics, html_path, metrics_path)


def _metrics(pair: Any, prompts: list[InstructionPrompt], n_all: int, sections: list[Section],
             ctx: _Context, total: float, seed: int, command: str | None) -> dict[str, Any]:
    import torch

    from shiftlens import __version__

    cfg = pair.cfg
    cats: dict[str, int] = {}
    for p in prompts:
        cats[p.category or "(none)"] = cats.get(p.category or "(none)", 0) + 1
    return {
        "shiftlens_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "models": dict(pair.names),
        "processing": getattr(pair, "processing", None),
        "architecture": {k: getattr(cfg, k, None) for k in
                         ("n_layers", "n_heads", "d_model", "d_mlp", "d_vocab")},
        "device": str(getattr(cfg, "device", "cpu")),
        "dtype": str(getattr(cfg, "dtype", "")),
        "torch": torch.__version__,
        "seed": seed,
        "n_prompts": len(prompts),
        "n_prompts_given": n_all,
        "categories": cats,
        "prompt_ids": [p.id for p in prompts],
        "limits": ctx.limits,
        "seconds": round(total, 2),
        "lenses": {
            s.name: {
                "status": s.status, "note": s.note, "seconds": round(s.seconds, 2),
                "n_prompts": s.n_prompts, "findings": [f.text for f in s.findings],
                "errors": s.errors, "tables": s.tables,
                "figures": [p for f in s.findings for p in f.files],
                "summary": s.summaries,
            }
            for s in sections
        },
    }


REPORT_CSS = """
.sl-finding { display: grid; grid-template-columns: minmax(260px, 2fr) minmax(320px, 3fr);
              gap: 20px; align-items: start; margin: 14px 0 20px; }
.sl-finding-text { font-size: 0.98em; }
.sl-finding.sl-wide { grid-template-columns: 1fr; }
.sl-note { background: #fff8e6; border-left: 4px solid #e3a008; padding: 8px 12px; margin: 10px 0; }
.sl-error { background: #fdecec; border-left: 4px solid #b42318; padding: 8px 12px; margin: 10px 0;
            font-family: monospace; font-size: 0.9em; white-space: pre-wrap; }
.sl-key li { margin: 4px 0; }
.sl-badge { display: inline-block; font-size: 0.75em; padding: 1px 7px; border-radius: 10px;
            margin-left: 8px; vertical-align: middle; background: #e7f0ff; color: #1f4fa0; }
.sl-badge.skipped { background: #f1f1f1; color: #666; } .sl-badge.failed, .sl-badge.partial {
            background: #fdecec; color: #b42318; }
nav.sl-toc a { margin-right: 14px; }
footer { margin-top: 40px; border-top: 1px solid var(--line); padding-top: 10px; }
@media (max-width: 800px) { .sl-finding { grid-template-columns: 1fr; } }
"""


def _render(pair: Any, prompts: list[InstructionPrompt], n_all: int, sections: list[Section],
            metrics: dict[str, Any], title: str | None, command: str | None) -> str:
    e = _html.escape
    title = title or "shiftlens report"
    names = pair.names
    cats = metrics["categories"]
    cat_txt = ", ".join(f"{k} ({v})" for k, v in cats.items())
    body = [f"<h1>{e(title)}</h1>"]
    body.append(
        f'<p class="sl-muted">What did instruction tuning change inside <b>{e(names["tuned"])}</b> '
        f'relative to <b>{e(names["base"])}</b>? {metrics["n_prompts"]} prompts'
        + (f" (of {n_all} given)" if n_all != metrics["n_prompts"] else "")
        + f": {e(cat_txt)}. Device {e(metrics['device'])}, dtype {e(metrics['dtype'])}, "
        f"seed {metrics['seed']}, shiftlens {e(metrics['shiftlens_version'])}, "
        f"{e(metrics['created'])}, {metrics['seconds']:.0f} s. Methods after Wu et al. (2024), "
        "<i>From Language Modeling to Instruction Following: Understanding the Behavior Shift in "
        "LLMs after Instruction Tuning</i> (NAACL).</p>"
    )
    sc = metrics.get("selfcheck") or {}
    if sc.get("skipped"):
        body.append('<div class="sl-error">The instrument self-check was skipped on request '
                    "(--skip-checks): decoding and the models were not verified before measuring."
                    "</div>")
    elif sc.get("checks"):
        body.append('<p class="sl-muted">Self-check passed before measuring: ' + e("; ".join(
            c["detail"] for c in sc["checks"] if not c["name"].startswith("kv_cache/"))) + ".</p>")
    heads = [f for s in sections for f in s.findings if f.headline]
    body.append("<h2>Key findings</h2>")
    if heads:
        body.append('<ul class="sl-key">' + "".join(f"<li>{e(f.key)}</li>" for f in heads) + "</ul>")
    else:
        body.append('<p class="sl-note">No lens produced a finding (see the sections below).</p>')
    body.append('<nav class="sl-toc">Sections: ' + "".join(
        f'<a href="#lens-{s.name}">{e(s.title)}</a>' for s in sections) + "</nav>")
    for s in sections:
        badge = {"ok": "", "skipped": "skipped", "failed": "failed", "partial": "partly failed"}[s.status]
        body.append(f'<section id="lens-{s.name}"><h2>{e(s.title)}'
                    + (f'<span class="sl-badge {s.status}">{badge}</span>' if badge else "") + "</h2>")
        if s.about:
            body.append(f'<p class="sl-muted">{e(s.about)}</p>')
        if s.note:
            body.append(f'<div class="sl-note">{e(s.note)}</div>')
        if s.n_prompts:
            body.append('<p class="sl-muted">Prompts used: ' + "; ".join(
                f"{e(k)}: {v}" for k, v in s.n_prompts.items()) + f". Time {s.seconds:.1f} s.</p>")
        for f in s.findings:
            if f.figure:
                cls = "sl-finding sl-wide" if f.wide else "sl-finding"
                body.append(f'<div class="{cls}"><div class="sl-finding-text">{e(f.text)}'
                            + (f'<div class="sl-muted">Files: {e(", ".join(f.files))}</div>' if f.files else "")
                            + f"</div><div>{f.figure}</div></div>")
            else:
                body.append(f'<p class="sl-finding-text">{e(f.text)}</p>')
        for v in s.views:
            body.append(v.fragment(include_js=False))
        for err in s.errors:
            body.append(f'<div class="sl-error">This analysis failed: {e(err)} (traceback in '
                        f"errors/{e(s.name)}.txt; run with --debug to stop on it)</div>")
        if s.tables:
            body.append('<p class="sl-muted">Data: ' + ", ".join(
                f'<a href="{e(t)}">{e(t)}</a>' for t in s.tables) + "</p>")
        body.append("</section>")
    body.append(
        '<footer class="sl-muted">Files next to this page: metrics.json (settings, timings and '
        "every summary), csv/ (the Results' frames), figures/ (PNG and SVG), results/ (each "
        "Result, reload with Result.load)."
        + (f" Made with: <code>{e(command)}</code>." if command else "") + "</footer>"
    )
    any_views = any(v.components for s in sections for v in s.views)
    head = f"<style>{REPORT_CSS}</style>\n"
    if any_views:
        head += f"<script>{circuitsvis_js()}</script>\n"
    return page(title, "\n".join(body), head_extra=head)
