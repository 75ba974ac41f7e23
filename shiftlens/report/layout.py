"""The report page's fixed parts: the header (models, prompts, self-check, run), the Log section
and the page's CSS (helpers of :mod:`shiftlens.report.core`, split out to keep it short).
"""

from __future__ import annotations

import html as _html
import re
from collections.abc import Mapping
from typing import Any

from shiftlens.lenses.registry import Section

__all__: list[str] = []


def _log_html(entries: list[dict[str, Any]]) -> str:
    """The Log section: every warning and dependency log record of the run, once each."""
    e = _html.escape
    out = ['<section id="log"><h2>Log</h2>']
    if not entries:
        out.append('<p class="sl-muted">No warnings or dependency log messages were raised '
                   "while this report was made.</p></section>")
        return "".join(out)
    ours = [x for x in entries if x.get("origin") == "shiftlens"]
    deps = [x for x in entries if x.get("origin") != "shiftlens"]
    out.append(f'<p class="sl-muted">{len(entries)} distinct warning'
               f'{"s" if len(entries) != 1 else ""} and log message'
               f'{"s" if len(entries) != 1 else ""} were raised while this report was made '
               f"({len(ours)} by shiftlens, {len(deps)} by its dependencies); each is listed "
               "once, with the number of times it was raised. They are not printed on the "
               "terminal (the command line shows them with --verbose).</p>")
    for label, group in (("From shiftlens", ours), ("From dependencies", deps)):
        if not group:
            continue
        out.append(f"<h3>{label}</h3><ul class=\"sl-log\">")
        for x in group:
            times = f" <span class=\"sl-muted\">(&times;{x['count']})</span>" if x.get("count", 1) > 1 else ""
            out.append(f"<li><b>{e(str(x.get('category', '')))}</b> "
                       f"<code>{e(str(x.get('source', '')))}</code>: {e(str(x.get('message', '')))}"
                       f"{times}</li>")
        out.append("</ul>")
    out.append("</section>")
    return "".join(out)


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
.sl-lede { font-size: 1.1em; margin: 0.2em 0 0.6em; }
table.sl-meta { border-collapse: collapse; font-size: 0.92em; margin: 6px 0 10px; width: 100%; }
table.sl-meta th { text-align: left; vertical-align: top; padding: 3px 14px 3px 0;
                   color: var(--muted); font-weight: 600; white-space: nowrap; width: 1%; }
table.sl-meta td { padding: 3px 0; vertical-align: top; overflow-wrap: anywhere; }
.sl-path { font-family: "DejaVu Sans Mono", Menlo, monospace; font-size: 0.85em; }
.sl-ok { color: #1a7f37; font-weight: 600; } .sl-bad { color: #b42318; font-weight: 600; }
.sl-key a.sl-lens { font-size: 0.85em; font-weight: 600; text-decoration: none; color: #1f4fa0;
                    margin-right: 4px; }
.sl-key a.sl-lens::after { content: " \\00b7"; color: var(--muted); }
ul.sl-log li { margin: 3px 0; overflow-wrap: anywhere; }
footer { margin-top: 40px; border-top: 1px solid var(--line); padding-top: 10px; }
@media (max-width: 800px) { .sl-finding { grid-template-columns: 1fr; } }
"""


def _selfcheck_html(sc: Mapping[str, Any]) -> str:
    """The self-check in one sentence per kind of check (both models' checks together)."""
    e = _html.escape
    if sc.get("skipped"):
        return ('<span class="sl-bad">skipped on request</span> (--skip-checks): decoding and the '
                "models were not verified before measuring")
    checks = sc.get("checks") or []
    if not checks:
        return "not recorded"
    groups: dict[str, list[dict[str, Any]]] = {}
    for c in checks:
        groups.setdefault(c["name"].split("/")[0], []).append(c)
    words = {
        "decoding": "greedy decoding equals a no-cache argmax loop",
        "kv_cache": "decoding with the key/value cache agrees with it",
        "embedded_manifest": "the embedded pair reproduces its manifest",
    }
    parts = []
    for kind, cs in groups.items():
        roles = [c["name"].split("/", 1)[1] for c in cs if "/" in c["name"]]
        who = f" ({' and '.join(roles)})" if roles else ""
        ok = all(c["ok"] for c in cs)
        detail = cs[0]["detail"]
        if kind == "decoding":
            m = re.search(r"on (\d+ prompts x \d+ tokens)", detail)
            detail = m.group(1).replace(" x ", " × ") if m else ""
        elif kind == "kv_cache":
            detail = ""
        text = words.get(kind, kind) + who + (f": {detail}" if detail else "")
        parts.append(e(text) if ok else f'<span class="sl-bad">FAILED: {e(text)}</span>')
    state = ('<span class="sl-ok">passed</span>' if sc.get("passed")
             else '<span class="sl-bad">failed</span>')
    return f"{state} before measuring ({len(checks)} checks): " + "; ".join(parts) + "."


def _header_html(pair: Any, n_all: int, sections: list[Section], metrics: dict[str, Any]) -> str:
    """What was compared, on which prompts, how (settings, versions) and whether it was checked."""
    e = _html.escape
    names = pair.names
    src = metrics.get("model_sources") or {}
    arch = metrics.get("architecture") or {}

    def model(role: str) -> str:
        full = src.get(role)
        extra = (f' <span class="sl-muted sl-path" title="{e(str(full))}">{e(str(full))}</span>'
                 if full and full != names[role] else "")
        return f"{role} <b>{e(names[role])}</b>{extra}"

    shape = ", ".join(f"{v} {k.removeprefix('n_').replace('_', ' ')}" for k, v in arch.items()
                      if v is not None and k in ("n_layers", "n_heads"))
    dims = ", ".join(f"{k} {v}" for k, v in arch.items()
                     if v is not None and k in ("d_model", "d_mlp", "d_vocab"))
    kind = metrics.get("architecture_name") or ""
    weights = {"raw": "raw checkpoint weights", "compat": "TransformerLens-processed weights "
               "(norms folded, centred)"}.get(metrics.get("processing") or "", "")
    cats = metrics["categories"]
    n = metrics["n_prompts"]
    prompts = (f"{n} prompts" + (f" (a balanced subset of the {n_all} given)" if n_all != n else "")
               + (": " + ", ".join(f"{k} {v}" for k, v in cats.items()) if cats else "")
               + ". Each section says which of them it used.")
    vers = (metrics.get("selfcheck") or {}).get("versions") or {}
    run = (f"{metrics['device']}, {str(metrics['dtype']).removeprefix('torch.')}, seed "
           f"{metrics['seed']}; " + ", ".join(f"{k} {v}" for k, v in vers.items())
           + f"; {metrics['created'].replace('T', ' ').replace('+00:00', ' UTC')}; the lenses "
           f"took {metrics['seconds']:.0f} s")
    est = metrics.get("estimate")
    if est:
        run += f" (estimated {est['seconds']:.0f} s before the run)"
    log = metrics.get("log") or []
    log_txt = (f'<a href="#log">{len(log)} warning{"s" if len(log) != 1 else ""}</a> raised '
               "while it ran, listed at the end" if log else "no warnings were raised while it ran")
    rows = [
        ("Models", f"{model('base')}; {model('tuned')}"
                   + (f"; {e(kind)}" if kind else "") + (f", {e(shape)}" if shape else "")
                   + (f" ({e(dims)})" if dims else "") + (f"; {e(weights)}" if weights else "")),
        ("Prompts", e(prompts)),
        ("Self-check", _selfcheck_html(metrics.get("selfcheck") or {})),
        ("Run", e(run)),
        ("Log", log_txt),
        ("Method", "after Wu et al. (2024), <i>From Language Modeling to Instruction Following: "
                   "Understanding the Behavior Shift in LLMs after Instruction Tuning</i> (NAACL)"),
    ]
    out = [f'<p class="sl-lede">What did instruction tuning change inside '
           f'<b>{e(names["tuned"])}</b> relative to <b>{e(names["base"])}</b>?</p>',
           '<table class="sl-meta">']
    out += [f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows]
    out.append("</table>")
    if (metrics.get("selfcheck") or {}).get("skipped"):
        out.append('<div class="sl-error">The instrument self-check was skipped on request '
                   "(--skip-checks): decoding and the models were not verified before measuring."
                   "</div>")
    return "\n".join(out)
