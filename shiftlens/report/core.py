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
import warnings
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
from shiftlens.report.layout import REPORT_CSS, _header_html, _log_html
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
    "ReportPlan",
    "plan_report",
    "check_output_dir",
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
        ShiftlensError: an unknown lens name (the message lists the known ones), or an empty
            selection (``""``, ``"attention,"``, ``[]``): nothing is run silently.

    Example:
        >>> resolve_lenses("attention, ffn")
        ['attention', 'ffn']
    """
    if lenses is None:
        return list(LENSES)
    given = lenses
    if isinstance(lenses, str):
        lenses = [x.strip() for x in lenses.split(",")]
    names = list(dict.fromkeys(lenses))
    if not names or any(not isinstance(n, str) or not n.strip() for n in names):
        raise ShiftlensError(f"no lens selected in {given!r}: name lenses separated by commas "
                             f"({', '.join(LENSES)}) or 'all'")
    if names == ["all"]:
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
        try:
            return fn()  # its warnings go to the report's log (build_report captures them)
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
        log: The warnings and dependency log records of the run
            (:class:`~shiftlens.report.log.LogEntry`), as the page's Log section lists them.

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
    log: list[Any] = dataclasses.field(default_factory=list)

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


@dataclass
class ReportPlan:
    """What a report will run, validated before anything is loaded, measured or written.

    Attributes:
        lenses: The lenses, in report order.
        prompts: The prompts after ``max_prompts`` (balanced over categories).
        n_given: How many prompts were given.
        limits: The prompt cap of every key (defaults overridden by ``limits``).
        counts: Per lens, how many prompts each of its cap keys will use.

    Example:
        >>> from shiftlens import default_prompts
        >>> plan = plan_report(default_prompts(), lenses="attention", limits={"attention": 10})
        >>> plan.counts
        {'attention': {'attention': 10}}
    """

    lenses: list[str]
    prompts: list[InstructionPrompt]
    n_given: int
    limits: dict[str, int | None]
    counts: dict[str, dict[str, int]]


def plan_report(
    prompts: Sequence[Any],
    *,
    lenses: str | Sequence[str] | None = None,
    max_prompts: int | None = None,
    limits: Mapping[str, int | None] | None = None,
) -> ReportPlan:
    """Validate a report's inputs and work out what it will run (the checks of :func:`build_report`).

    Raises:
        ShiftlensError: no prompts, a non-``InstructionPrompt``, a bad ``max_prompts``, an
            unknown or empty lens selection, an unknown cap key or a bad cap.

    Example:
        >>> from shiftlens import default_prompts
        >>> plan_report(default_prompts(), lenses="residual",
        ...             limits={"residual": 10, "patching": 4}).counts
        {'residual': {'residual': 10, 'patching': 4}}
    """
    prompts = list(prompts)
    if not prompts:
        raise ShiftlensError("build_report: no prompts given")
    for i, p in enumerate(prompts):
        if not isinstance(p, InstructionPrompt):
            raise ShiftlensError(f"build_report: prompt #{i} is a {type(p).__name__}, not an "
                                 "InstructionPrompt")
    if max_prompts is not None and (isinstance(max_prompts, bool) or not isinstance(max_prompts, int)
                                    or max_prompts < 1):
        raise ShiftlensError(f"max_prompts must be a positive integer, got {max_prompts!r}")
    names = resolve_lenses(lenses)
    lim: dict[str, int | None] = dict(DEFAULT_LIMITS)
    for k, v in (limits or {}).items():
        if k not in DEFAULT_LIMITS:
            raise ShiftlensError(f"unknown prompt-cap key {k!r}; choose from {', '.join(DEFAULT_LIMITS)}")
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise ShiftlensError(f"prompt cap for {k!r} must be an integer >= 0, got {v!r}")
        lim[k] = v or None
    chosen = select_prompts(prompts, max_prompts)
    counts = {n: {k: len(select_prompts(chosen, lim.get(k))) for k in LENSES[n].limits}
              for n in names}
    return ReportPlan(names, chosen, len(prompts), lim, counts)


def check_output_dir(out: str | Path, *, create: bool = False) -> Path:
    """Refuse an output directory that cannot be written, before any work is done.

    Without ``create`` nothing is created: the nearest existing ancestor must be a writable
    directory (so a bad ``--out`` fails before models load, leaving nothing behind). With
    ``create`` the directory is made and a probe file written and removed.

    Raises:
        ShiftlensError: ``out`` (or an ancestor) is a file, or it cannot be created or written.

    Example:
        >>> check_output_dir("/tmp/shiftlens-doc-report")
        PosixPath('/tmp/shiftlens-doc-report')
    """
    import os
    import tempfile

    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise ShiftlensError(f"output directory {str(out)!r} is a file, not a directory")
    if not create:
        anc = out
        while not anc.exists() and anc != anc.parent:
            anc = anc.parent
        if not anc.is_dir():
            raise ShiftlensError(f"cannot create output directory {str(out)!r}: {str(anc)!r} is "
                                 "a file, not a directory")
        if not os.access(anc, os.W_OK | os.X_OK):
            raise ShiftlensError(f"output directory {str(out)!r} is not writable (no write "
                                 f"permission on {str(anc)!r})")
        return out
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".shiftlens-probe-", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ShiftlensError(f"output directory {str(out)!r} cannot be written: "
                             f"{e.strerror or e}") from e
    return out


#: What a report writes into its directory (removed first when rewriting an earlier report).
REPORT_FILES = ("report.html", "metrics.json")
REPORT_DIRS = ("figures", "csv", "results", "errors")


def _clear_previous(out: Path) -> None:
    """Remove an earlier report's files from ``out`` (only when its metrics.json is ours)."""
    import shutil

    mp = out / "metrics.json"
    if not mp.exists():
        return
    try:
        old = json.loads(mp.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if not (isinstance(old, dict) and "shiftlens_version" in old):
        return
    for f in REPORT_FILES:
        (out / f).unlink(missing_ok=True)
    for d in REPORT_DIRS:
        if (out / d).is_dir():
            shutil.rmtree(out / d)


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
    log: Sequence[Any] = (),
    estimate: Any = None,
) -> Report:
    """Run the chosen lenses on ``pair`` and ``prompts`` and write the report into ``out``.

    Every input is checked before anything is measured or written (:func:`plan_report`,
    :func:`check_output_dir`). Warnings raised while the report runs (shiftlens' own and the
    dependencies', and the dependencies' log records) are captured, listed once in the page's
    **Log** section and in ``metrics.json["log"]``, not printed; shiftlens' own warnings are
    also re-issued once after the report is written (unless a caller, such as the command line,
    captures them itself).

    Args:
        pair: A :class:`shiftlens.ModelPair` (its device and dtype are used as they are).
        prompts: The prompt set (instruction spans are needed by the attribution and attention
            lenses).
        out: Output directory (created). An earlier report in it is replaced (its
            ``report.html``, ``metrics.json``, ``figures/``, ``csv/``, ``results/``,
            ``errors/``); other files are left alone.
        lenses: Lens names (list or comma-separated) or None for all; unavailable ones are
            skipped with a note. An empty selection is an error.
        max_prompts: Use at most this many prompts (balanced over categories).
        limits: Per-lens prompt caps overriding :data:`DEFAULT_LIMITS` (0/None = no cap).
        title: Page title.
        seed: Seed passed to every lens (bootstrap, solvers), recorded.
        progress: Progress bars (tqdm, on stderr).
        figure_formats: Figure files written next to the report.
        debug: Re-raise a failing lens's exception instead of reporting it.
        command: The command line that made the report (shown in the footer).
        options: Extra lens options (e.g. ``{"concept_k": 32}``; see each lens's section).
        selfcheck: ``"run"`` (default): check the instrument first with
            :func:`shiftlens.selfcheck` and refuse (:class:`~shiftlens.errors.SelfCheckError`) on
            a failed check; ``"skip"``: measure unchecked, recorded in the report; or a
            :class:`shiftlens.instrument.SelfCheck` already run. Its record goes into
            ``metrics.json`` (``"selfcheck"``) and the page's header.
        log: :class:`~shiftlens.report.log.LogEntry` records captured before the report (e.g.
            while the pair loaded), listed first in the Log section.
        estimate: The :class:`~shiftlens.report.estimate.Estimate` made before the run, recorded
            in ``metrics.json`` next to the measured times.

    Returns:
        The :class:`Report`.

    Raises:
        ShiftlensError: no prompts, an unknown or empty lens selection, a bad cap, an output
            directory that cannot be written.

    Example:
        >>> from shiftlens.zoo import toy_pair, toy_prompts
        >>> rep = build_report(toy_pair(), toy_prompts(28), "out/report")  # doctest: +SKIP
        >>> print("\\n".join(rep.headlines))  # doctest: +SKIP
    """
    from shiftlens.report.log import CapturedLog, capture_warnings, nested

    plan = plan_report(prompts, lenses=lenses, max_prompts=max_prompts, limits=limits)
    out = check_output_dir(out)
    from shiftlens.instrument import SelfCheck

    if not (isinstance(selfcheck, SelfCheck) or selfcheck in ("run", "skip")):
        raise ShiftlensError(f"selfcheck must be 'run', 'skip' or a SelfCheck, got {selfcheck!r}")
    outer = nested()
    record = CapturedLog()
    record.extend(list(log))
    with capture_warnings() as captured:
        rep = _build(pair, plan, out, title=title, seed=seed, progress=progress,
                     figure_formats=figure_formats, debug=debug, command=command,
                     options=options, selfcheck=selfcheck, record=record, captured=captured,
                     estimate=estimate)
    if not outer:
        from shiftlens.errors import ShiftlensWarning

        for e in rep.log:
            if e.origin == "shiftlens":
                warnings.warn(f"{e.message} (listed in the report's log)", ShiftlensWarning,
                              stacklevel=2)
    return rep


def _build(pair: Any, plan: ReportPlan, out: Path, *, title: str | None, seed: int,
           progress: bool, figure_formats: Sequence[str], debug: bool, command: str | None,
           options: Mapping[str, Any] | None, selfcheck: Any, record: Any, captured: Any,
           estimate: Any) -> Report:
    from tqdm.auto import tqdm

    from shiftlens.instrument import SelfCheck
    from shiftlens.instrument import selfcheck as run_selfcheck

    if isinstance(selfcheck, SelfCheck):
        check = selfcheck
    elif selfcheck == "skip":
        check = SelfCheck.skipped_on_request()
    else:
        check = run_selfcheck(pair)
    check.raise_if_failed()
    out = check_output_dir(out, create=True)
    _clear_previous(out)
    prompts = plan.prompts
    ctx = _Context(pair=pair, prompts=prompts, out=out, limits=plan.limits, progress=progress,
                   seed=seed, figure_formats=tuple(figure_formats), debug=debug,
                   options=dict(options or {}))
    avail = available_lenses()
    sections: list[Section] = []
    t_start = time.perf_counter()
    bar = tqdm(plan.lenses, desc="report", disable=not progress, unit="lens")
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
    record.extend(captured.entries)
    metrics = _metrics(pair, prompts, plan.n_given, sections, ctx, total, seed, command)
    metrics["selfcheck"] = check.to_dict()
    metrics["estimate"] = estimate.to_dict() if estimate is not None else None
    metrics["log"] = [e.to_dict() for e in record.entries]
    from shiftlens.io import atomic_write_text

    metrics_path = out / "metrics.json"
    atomic_write_text(metrics_path, json.dumps(_jsonable(metrics), indent=1, ensure_ascii=False,
                                               allow_nan=False))
    html_path = out / "report.html"
    atomic_write_text(html_path, _render(pair, prompts, plan.n_given, sections, metrics, title,
                                         command))
    return Report(out, sections, metrics, html_path, metrics_path, list(record.entries))


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
        "model_sources": dict(getattr(pair, "sources", None) or pair.names),
        "processing": getattr(pair, "processing", None),
        "architecture": {k: getattr(cfg, k, None) for k in
                         ("n_layers", "n_heads", "d_model", "d_mlp", "d_vocab")},
        "architecture_name": getattr(cfg, "architecture", None),
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


def _render(pair: Any, prompts: list[InstructionPrompt], n_all: int, sections: list[Section],
            metrics: dict[str, Any], title: str | None, command: str | None) -> str:
    e = _html.escape
    title = title or "shiftlens report"
    body = [f"<h1>{e(title)}</h1>", _header_html(pair, n_all, sections, metrics)]
    heads = [(s, f) for s in sections for f in s.findings if f.headline]
    body.append("<h2>Key findings</h2>")
    if heads:
        body.append('<p class="sl-muted">One line per headline finding: the direction (rose, '
                    "fell), the values for base and tuned, the difference with its 95% CI, the "
                    "test and whether it is significant at 0.05. The sections below say which "
                    "prompts and responses each rests on.</p>")
        body.append('<ul class="sl-key">' + "".join(
            f'<li><a class="sl-lens" href="#lens-{s.name}">{e(s.title.split(":")[0])}</a> '
            f"{e(f.key)}</li>" for s, f in heads) + "</ul>")
    else:
        body.append('<p class="sl-note">No lens produced a finding (see the sections below).</p>')
    body.append('<nav class="sl-toc">Sections: ' + "".join(
        f'<a href="#lens-{s.name}">{e(s.title)}</a>' for s in sections)
        + '<a href="#log">Log</a></nav>')
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
                f"{v} ({e(k)})" for k, v in s.n_prompts.items()) + f" &middot; {s.seconds:.1f} s</p>")
        elif s.status != "skipped":
            body.append(f'<p class="sl-muted">{s.seconds:.1f} s</p>')
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
    body.append(_log_html(metrics.get("log") or []))
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
