"""Regenerate every number the docs quote from one run, and check the docs against it.

    python tools/regen_docs.py                # run the demo and the benchmark, rewrite
                                              # docs/numbers.json and every marked number
    python tools/regen_docs.py --from-run DIR # use a demo output directory already written
    python tools/regen_docs.py --out DIR      # run the demo into DIR and keep it there
    python tools/regen_docs.py --no-bench     # keep the benchmark block of numbers.json
    python tools/regen_docs.py --bench-from F # benchmarks/generate.py --quick output saved in F
    python tools/regen_docs.py --examples     # also rerun every example, refresh its
                                              # docs/results/<example>.json and the figures
                                              # its page embeds (docs/figures/)
    python tools/regen_docs.py --results NAME # rerun the command docs/results/NAME.json names
    python tools/regen_docs.py --render       # run nothing: rewrite the docs' markers from
                                              # numbers.json and docs/results/
    python tools/regen_docs.py --all          # everything: demo, benchmark, examples, every
                                              # docs/results/ command (hours on a CPU)
    python tools/regen_docs.py --check        # change nothing: list every marked number or
                                              # block that differs from docs/numbers.json
    python tools/regen_docs.py --check --from-run DIR  # ... and every value of numbers.json
                                              # that the demo run in DIR gives otherwise

The docs mark what they quote, so a number can never drift from the run that produced it:

* ``<!-- n:KEY|FORMAT -->0.181<!-- /n -->``: the value ``KEY`` of ``docs/numbers.json``
  formatted with the Python format spec ``FORMAT`` (``.3f``, ``+.3f``, ``.0%``, ``.2g``, ``d``,
  ``,d``; ``s`` or nothing for text). ``KEY`` is a flattened path: ``demo.attention.summary.
  instruction_mass.mean_b`` is ``metrics.json["lenses"]["attention"]["summary"]
  ["instruction_mass"]["mean_b"]`` of the demo run; ``demo.n_prompts`` a top-level entry;
  ``zoo.evaluation.tuned.exact.overall`` the embedded pair's manifest;
  ``measured.demo.seconds`` a time measured in that run.
* ``<!-- generated:NAME -->`` ... ``<!-- /generated -->``: a whole block (a table, a list of
  sentences, a command's output) written by this script: ``demo-key-findings`` (the CLI's
  "Key findings:" lines), ``demo-lens-times`` (status, prompts and seconds per lens),
  ``demo-cli-output`` (what ``shiftlens demo`` printed), ``demo-<lens>-<result>`` (a Result's
  ``summary()["sentence"]``, e.g. ``demo-attribution-instruction-sensitivity``),
  ``zoo-evaluation`` (the embedded pair's manifest) and ``generate-benchmark``
  (``benchmarks/generate.py --quick``).

Nothing between markers is typed by hand: edit the words around them, run this script. A
marker right after a backtick (`` `<!-- n:KEY -->` `` in inline code) is an example, not a marker.

``docs/numbers.json`` holds ``values`` (deterministic for the seed: the slow test re-runs the
demo and compares), ``measured`` (times, sizes, benchmark ratios: recorded, never compared) and
``blocks``.

Examples and benchmarks add their own numbers without touching ``docs/numbers.json``: a file
``docs/results/NAME.json`` (``{"generated_by": COMMAND, "values": {...}, "measured": {...},
"blocks": {...}}``, written by :func:`write_results`, e.g. by ``examples/attention.py`` into
``OUT/numbers.json`` and copied here by ``--examples``) contributes its values as ``NAME.KEY``,
its measured entries as ``measured.NAME.KEY`` and its blocks as ``NAME-BLOCK``. The example tier
(``tests/toy/test_examples.py``) reruns every example and checks its fresh ``values`` against the
committed file; ``--results NAME`` reruns the command a file names and replaces it. ``tests/unit/test_docs_numbers.py`` checks on every run that each marked number and
block in README.md and docs/*.md equals ``docs/numbers.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NUMBERS = ROOT / "docs" / "numbers.json"
#: The demo run the numbers come from (deterministic: one thread, seed 0).
DEMO_ARGS = ["demo", "--threads", "1", "--seed", "0", "--no-progress", "--no-estimate"]

NUMBER_RE = re.compile(r"(?<!`)<!-- n:([A-Za-z0-9_.\-]+)(?:\|([^ ]*))? -->(.*?)<!-- /n -->", re.S)
BLOCK_RE = re.compile(r"(?<!`)(<!-- generated:([a-z0-9\-]+) -->\n)(.*?)(<!-- /generated -->)", re.S)
OPEN_RE = re.compile(r"(?<!`)<!-- (n:[^ ]+|generated:[a-z0-9\-]+) -->")


# ============================================================================ docs
def doc_files(root: Path = ROOT) -> list[Path]:
    """README.md and every page under docs/."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def fmt(value: Any, spec: str | None) -> str:
    """``value`` as a marker shows it (``spec``: a Python format spec; ``s``/empty for text)."""
    if spec in (None, "", "s"):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return "n/a"
    return format(value, spec)


def markers(text: str) -> Iterator[tuple[str, str | None, str]]:
    """Every ``(key, format, shown text)`` number marker in ``text``."""
    for m in NUMBER_RE.finditer(text):
        yield m.group(1), m.group(2), m.group(3)


def blocks(text: str) -> Iterator[tuple[str, str]]:
    """Every ``(name, content)`` generated block in ``text``."""
    for m in BLOCK_RE.finditer(text):
        yield m.group(2), m.group(3)


def lookup(numbers: Mapping[str, Any], key: str) -> Any:
    """The value of ``key`` (``measured.`` keys from ``measured``, others from ``values``)."""
    if key.startswith("measured."):
        return numbers["measured"][key[len("measured."):]]
    return numbers["values"][key]


def render(text: str, numbers: Mapping[str, Any]) -> str:
    """``text`` with every marked number and generated block rewritten from ``numbers``.

    Unknown keys and blocks, and values the format does not fit, are left as they are
    (``problems`` names them).
    """
    def number(m: re.Match) -> str:
        key, spec = m.group(1), m.group(2)
        try:
            shown = fmt(lookup(numbers, key), spec)
        except (KeyError, ValueError, TypeError):
            return m.group(0)
        return f"<!-- n:{key}{'|' + spec if spec else ''} -->{shown}<!-- /n -->"

    def block(m: re.Match) -> str:
        name = m.group(2)
        if name not in numbers.get("blocks", {}):
            return m.group(0)
        body = numbers["blocks"][name].rstrip("\n") + "\n"
        return m.group(1) + body + m.group(4)

    return BLOCK_RE.sub(block, NUMBER_RE.sub(number, text))


def problems(numbers: Mapping[str, Any], root: Path = ROOT) -> list[str]:
    """Every marked number or block in the docs that differs from ``numbers`` (empty: all agree).

    Also reports unknown keys, bad format specs and unclosed markers.
    """
    out = []
    for path in doc_files(root):
        text = path.read_text(encoding="utf-8")
        rel = path.relative_to(root)
        n_open = len(OPEN_RE.findall(text))
        n_closed = len(list(markers(text))) + len(list(blocks(text)))
        if n_open != n_closed:
            out.append(f"{rel}: {n_open - n_closed} marker(s) not closed or malformed")
        for key, spec, shown in markers(text):
            try:
                want = fmt(lookup(numbers, key), spec)
            except KeyError:
                out.append(f"{rel}: unknown number {key!r}")
                continue
            except (ValueError, TypeError) as e:
                out.append(f"{rel}: {key!r} cannot be formatted with {spec!r}: {e}")
                continue
            if shown != want:
                out.append(f"{rel}: {key} shows {shown!r}, the run gives {want!r}")
        for name, body in blocks(text):
            want = numbers.get("blocks", {}).get(name)
            if want is None:
                out.append(f"{rel}: unknown generated block {name!r}")
            elif body.rstrip("\n") != want.rstrip("\n"):
                out.append(f"{rel}: generated block {name!r} differs from docs/numbers.json")
    return out


# ============================================================================ collecting
def flatten(obj: Any, prefix: str, out: dict[str, Any]) -> None:
    """Scalars (numbers, strings, booleans) of a JSON object under dotted keys."""
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    elif isinstance(obj, list):
        if len(obj) <= 64:
            for i, v in enumerate(obj):
                flatten(v, f"{prefix}.{i}", out)
    elif isinstance(obj, (int, float, str, bool)) or obj is None:
        out[prefix] = float("nan") if obj == "NaN" else obj


#: metrics.json entries that change from run to run (times, dates, paths): kept as measured.
VOLATILE = ("created", "command", "seconds", "estimate", "log", "model_sources")


def collect_demo(metrics: Mapping[str, Any], values: dict[str, Any],
                 measured: dict[str, Any]) -> None:
    """The demo's metrics.json: deterministic entries to ``values``, times to ``measured``."""
    for k, v in metrics.items():
        if k == "lenses":
            for lens, rec in v.items():
                for kk, vv in rec.items():
                    if kk == "seconds":
                        measured[f"demo.{lens}.seconds"] = vv
                    elif kk not in ("tables", "figures", "errors"):
                        flatten(vv, f"demo.{lens}.{kk}", values)
        elif k == "selfcheck":
            for c in v.get("checks", []):
                values[f"demo.selfcheck.{c['name']}"] = c["detail"]
            values["demo.selfcheck.passed"] = v.get("passed")
        elif k in VOLATILE:
            if k == "seconds":
                measured["demo.report_seconds"] = v
        elif k not in ("prompt_ids", "torch", "shiftlens_version"):
            flatten(v, f"demo.{k}", values)


def key_findings(run_dir: Path, metrics: Mapping[str, Any]) -> list[str]:
    """The demo's key findings: the CLI's "Key findings:" lines (stdout.txt), else every finding."""
    stdout = run_dir / "stdout.txt"
    if stdout.exists():
        text = stdout.read_text(encoding="utf-8")
        if "\nKey findings:\n" in text:
            part = text.split("\nKey findings:\n", 1)[1].split("\n\n", 1)[0]
            return [ln.strip()[2:] for ln in part.splitlines() if ln.strip().startswith("- ")]
    return [t for rec in metrics["lenses"].values() for t in rec.get("findings", [])]


def key_findings_block(findings: list[str]) -> str:
    """The demo's key findings as a Markdown list (what the report's top lists)."""
    return "\n".join(f"- {t}" for t in findings)


def lens_times_block(metrics: Mapping[str, Any]) -> str:
    """Per lens: status, prompts used and seconds of the demo run, as a Markdown table."""
    rows = ["| lens | status | prompts | seconds |", "|---|---|---|---|"]
    for name, rec in metrics["lenses"].items():
        n = rec.get("n_prompts") or {}
        used = ", ".join(f"{k} {v}" for k, v in n.items()) if isinstance(n, Mapping) else str(n)
        rows.append(f"| `{name}` | {rec.get('status')} | {used or '-'} | {rec.get('seconds', 0):.0f} |")
    rows.append(f"| **report** | | {metrics.get('n_prompts')} given | {metrics.get('seconds', 0):.0f} |")
    return "\n".join(rows)


def sentence_block(text: str, width: int = 100) -> str:
    """One finding sentence in a fenced block, wrapped at ``width``."""
    return "```\n" + textwrap.fill(text, width, break_long_words=False,
                                   break_on_hyphens=False) + "\n```"


def zoo_block(manifest: Mapping[str, Any]) -> str:
    """The embedded pair's evaluation table from its manifest."""
    ev = manifest["evaluation"]
    tasks = list(ev["tuned"]["n"])
    rows = ["| task | n | base exact | base prefix | tuned exact | tuned prefix |",
            "|---|---|---|---|---|---|"]
    for t in [*tasks, "overall"]:
        n = ev["tuned"]["n"].get(t, ev.get("prompts"))
        rows.append(f"| {t} | {n} | {ev['base']['exact'][t]:.3f} | {ev['base']['prefix'][t]:.3f} "
                    f"| {ev['tuned']['exact'][t]:.3f} | {ev['tuned']['prefix'][t]:.3f} |")
    return "\n".join(rows)


#: benchmarks/generate.py columns shown in the docs' table (the others are constant).
BENCH_COLUMNS = ("model", "new_tokens", "method", "seconds", "ratio_vs_no_cache",
                 "verification_overhead")


def benchmark_block(lines: list[dict[str, Any]], note: str = "") -> str:
    """``benchmarks/generate.py`` JSON lines as a Markdown table (and a line on where it ran)."""
    if not lines:
        return "(no benchmark lines)"
    cols = [c for c in BENCH_COLUMNS if any(c in ln for ln in lines)]
    rows = ["| " + " | ".join(c.replace("_", " ") for c in cols) + " |", "|" + "---|" * len(cols)]
    for ln in lines:
        cells = []
        for c in cols:
            v = ln.get(c, "")
            cells.append(f"{v:.3g}" if isinstance(v, float) else str(v))
        rows.append("| " + " | ".join(cells) + " |")
    first = lines[0]
    head = (f"`python benchmarks/generate.py --quick`: {first.get('prompts')} prompts per row, "
            "best of 2 after a warm-up, one thread; seconds for all prompts")
    return head + (f" ({note})" if note else "") + ".\n\n" + "\n".join(rows)


def run_demo(out: Path) -> float:
    """Run the demo into ``out`` (in a subprocess, as a user would); returns the wall time."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONHASHSEED": "0"}
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "shiftlens", *DEMO_ARGS, "--out", str(out)],
                       capture_output=True, text=True, env=env, cwd=ROOT)
    if r.returncode != 0:
        raise SystemExit(f"the demo failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
    wall = time.perf_counter() - t0
    (out / "stdout.txt").write_text(r.stdout)
    (out / "regen_wall_seconds.txt").write_text(f"{wall:.1f}\n")
    (out / "regen_machine.txt").write_text(machine_note() + "\n")
    return wall


def machine_note() -> str:
    """Where and when a measurement ran: date, CPU cores, load average."""
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    return f"{time.strftime('%Y-%m-%d', time.gmtime())}, {os.cpu_count()} CPU core(s){load}"


def saved_note(note: Path, made: Path) -> str:
    """The ``machine_note()`` saved in ``note``; else the date ``made`` was written, no load."""
    if note.exists():
        return note.read_text(encoding="utf-8").strip()
    when = time.strftime("%Y-%m-%d", time.gmtime(made.stat().st_mtime))
    return f"{when}, {os.cpu_count()} CPU core(s), load not recorded"


def run_benchmark() -> tuple[list[dict[str, Any]], str]:
    """``benchmarks/generate.py --quick``: one dict per JSON line, and where it ran."""
    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "generate.py"), "--quick"],
                       capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if r.returncode != 0:
        raise SystemExit(f"benchmarks/generate.py failed:\n{r.stderr[-3000:]}")
    note = machine_note()
    if load0 is not None:
        note += f" at the end, {load0:.1f} at the start"
    return read_benchmark(r.stdout), note


def read_benchmark(text: str) -> list[dict[str, Any]]:
    """The JSON lines of ``benchmarks/generate.py``'s output."""
    return [json.loads(ln) for ln in text.splitlines() if ln.startswith("{")]


def cli_output_block(run_dir: Path) -> str | None:
    """What ``shiftlens demo`` printed (stdout.txt), the output directory written as the default."""
    stdout = run_dir / "stdout.txt"
    if not stdout.exists():
        return None
    text = stdout.read_text(encoding="utf-8").rstrip()
    text = text.replace(str(run_dir.resolve()), "shiftlens-demo").replace(str(run_dir),
                                                                         "shiftlens-demo")
    return "```\n$ shiftlens demo\n" + text + "\n```"


def collect(run_dir: Path, *, wall_s: float | None = None,
            bench: tuple[list[dict[str, Any]], str] | None = None,
            old: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``docs/numbers.json`` from a demo output directory (and benchmark lines with their note).

    Without ``bench`` the benchmark recorded in ``old`` is kept.
    """
    sys.path.insert(0, str(ROOT))
    from shiftlens import __version__
    from shiftlens.generate import installed_versions
    from shiftlens.zoo import manifest

    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    values: dict[str, Any] = {}
    measured: dict[str, Any] = {}
    collect_demo(metrics, values, measured)
    man = manifest()
    flatten({k: v for k, v in man.items() if k not in ("provenance", "timing_note")}, "zoo", values)
    pair_dir = ROOT / "shiftlens" / "zoo" / "pair"
    measured["zoo.pair_mib"] = round(sum(f.stat().st_size for f in pair_dir.rglob("*")
                                         if f.is_file()) / 2**20, 1)
    wall_file = run_dir / "regen_wall_seconds.txt"
    if wall_s is None and wall_file.exists():
        wall_s = float(wall_file.read_text())
    if wall_s is not None:
        measured["demo.wall_seconds"] = round(wall_s, 1)
    measured["demo.command"] = "shiftlens " + " ".join(DEMO_ARGS)
    measured["demo.report_bytes"] = (run_dir / "report.html").stat().st_size
    measured["demo.report_mb"] = round((run_dir / "report.html").stat().st_size / 1e6, 1)
    measured["demo.machine"] = saved_note(run_dir / "regen_machine.txt", run_dir / "metrics.json")
    blocks_ = {k: v for k, v in (old or {}).get("blocks", {}).items()
               if k == "generate-benchmark"}
    findings = key_findings(run_dir, metrics)
    blocks_["demo-key-findings"] = key_findings_block(findings)
    blocks_["demo-lens-times"] = lens_times_block(metrics)
    blocks_["zoo-evaluation"] = zoo_block(man)
    for lens, rec in metrics["lenses"].items():
        for name, summ in (rec.get("summary") or {}).items():
            if isinstance(summ, Mapping) and isinstance(summ.get("sentence"), str):
                blocks_[f"demo-{lens}-{name}".replace("_", "-")] = sentence_block(summ["sentence"])
    cli = cli_output_block(run_dir)
    if cli is not None:
        blocks_["demo-cli-output"] = cli
    if bench is not None:
        lines, note = bench
        blocks_["generate-benchmark"] = benchmark_block(lines, note)
        for i, ln in enumerate(lines):
            flatten(ln, f"bench.generate.{i}", measured)
        measured["bench.generate.machine"] = note
    elif old:  # keep the benchmark recorded before
        for k, v in old.get("measured", {}).items():
            if k.startswith("bench."):
                measured.setdefault(k, v)
    return {
        "generated_by": "tools/regen_docs.py",
        "demo": "shiftlens " + " ".join(DEMO_ARGS),
        "shiftlens": __version__,
        "versions": installed_versions(),
        "values": dict(sorted(values.items())),
        "measured": dict(sorted(measured.items())),
        "blocks": dict(sorted(blocks_.items())),
    }


_NUM_IN_TEXT = re.compile(r"[-+]?(?:\d[\d,]*)?\.?\d+(?:[eE][-+]?\d+)?")


def _shown_close(a: str, b: str) -> bool:
    """Two printed numbers agree to one unit of their last shown digit (``0.181`` vs ``0.182``,
    ``1.03e-26`` vs ``1.04e-26``): what a different BLAS summation order can do to a rounded
    number; integers must be equal."""
    try:
        x, y = float(a.replace(",", "")), float(b.replace(",", ""))
    except ValueError:
        return a == b
    mant = a.lower().split("e")[0]
    if "." not in mant and "e" not in a.lower():
        return x == y  # an integer (a count, a layer, a head) is exact
    decimals = len(mant.split(".")[1]) if "." in mant else 0
    exp = int(a.lower().split("e")[1]) if "e" in a.lower() else 0
    return abs(x - y) <= 1.0001 * 10.0 ** (exp - decimals)


def same_value(a: Any, b: Any, rel: float = 1e-9) -> bool:
    """``a`` and ``b`` agree: floats to ``rel`` (NaN equals NaN), text with the same words and
    its printed numbers within one unit of the last digit (:func:`_shown_close`), the rest
    exactly."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
            return True
        return math.isclose(a, b, rel_tol=rel, abs_tol=1e-12)
    if isinstance(a, str) and isinstance(b, str) and a != b:
        na, nb = _NUM_IN_TEXT.findall(a), _NUM_IN_TEXT.findall(b)
        return (_NUM_IN_TEXT.split(a) == _NUM_IN_TEXT.split(b) and len(na) == len(nb)
                and all(_shown_close(x, y) for x, y in zip(na, nb)))
    return a == b


def value_differences(numbers: Mapping[str, Any], fresh: Mapping[str, Any],
                      rel: float = 1e-9) -> list[str]:
    """Every deterministic value of ``numbers`` that a fresh collection ``fresh`` gives otherwise
    (:func:`same_value` with ``rel``)."""
    out = []
    want, got = numbers["values"], fresh["values"]
    for key in sorted(set(want) | set(got)):
        a, b = want.get(key, "<missing>"), got.get(key, "<missing>")
        if not same_value(a, b, rel):
            out.append(f"{key}: docs/numbers.json has {a!r}, the run gives {b!r}")
    return out


def write_numbers(numbers: Mapping[str, Any], path: Path = NUMBERS) -> None:
    def clean(x: Any) -> Any:
        if isinstance(x, float) and not math.isfinite(x):
            return "NaN"
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        return x

    path.write_text(json.dumps(clean(numbers), indent=1, ensure_ascii=False, allow_nan=False)
                    + "\n", encoding="utf-8")


RESULTS = ROOT / "docs" / "results"


def _nan(x: Any) -> Any:
    return float("nan") if x == "NaN" else x


def write_results(path: Path, *, generated_by: str, values: Mapping[str, Any] | None = None,
                  measured: Mapping[str, Any] | None = None,
                  blocks: Mapping[str, str] | None = None) -> None:
    """One results file (the format of ``docs/results/NAME.json``): nested dicts are flattened
    to dotted keys, NaN written as ``"NaN"``."""
    flat_v: dict[str, Any] = {}
    flat_m: dict[str, Any] = {}
    flatten(dict(values or {}), "", flat_v)
    flatten(dict(measured or {}), "", flat_m)
    data = {"generated_by": generated_by, "values": dict(sorted(flat_v.items())),
            "measured": dict(sorted(flat_m.items())), "blocks": dict(sorted((blocks or {}).items()))}
    write_numbers(data, path)


def read_results(path: Path) -> dict[str, Any]:
    """A results file as written by :func:`write_results` (``"NaN"`` read back as NaN)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    for part in ("values", "measured"):
        data[part] = {k: _nan(v) for k, v in data.get(part, {}).items()}
    data.setdefault("blocks", {})
    return data


def read_numbers(path: Path = NUMBERS, results: Path | None = RESULTS) -> dict[str, Any]:
    """``docs/numbers.json`` (``"NaN"`` read back as a float NaN), with every
    ``docs/results/NAME.json`` merged in under ``NAME.`` (values), ``measured.NAME.`` and
    ``NAME-`` (blocks)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    for part in ("values", "measured"):
        data[part] = {k: _nan(v) for k, v in data[part].items()}
    for f in sorted(results.glob("*.json")) if results is not None and results.is_dir() else []:
        name = f.stem
        r = read_results(f)
        data["values"].update({f"{name}.{k}": v for k, v in r["values"].items()})
        data["measured"].update({f"{name}.{k}": v for k, v in r["measured"].items()})
        data["blocks"].update({f"{name}-{k}": v for k, v in r["blocks"].items()})
    return data


def example_scripts() -> list[Path]:
    """Every example with a committed results file (``docs/results/<stem>.json``)."""
    return [ROOT / "examples" / f"{f.stem}.py" for f in sorted(RESULTS.glob("*.json"))
            if (ROOT / "examples" / f"{f.stem}.py").exists()]


def flat_results(path: Path) -> dict[str, Any]:
    """A results file's ``values`` / ``measured`` flattened to dotted keys (an example's
    ``OUT/numbers.json`` may nest them)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    out: dict[str, Any] = {"blocks": dict(data.get("blocks", {}))}
    for part in ("values", "measured"):
        flat: dict[str, Any] = {}
        flatten(data.get(part, {}), "", flat)
        out[part] = flat
    return out


def run_example(script: Path) -> None:
    """Run one example once in a temporary directory, as a user would (``--out OUT``), copy the
    ``numbers.json`` it writes to ``docs/results/<stem>.json`` when the docs quote it, and every
    PNG a page embeds from it ("Made by `python examples/X.py`") to ``docs/figures/``."""
    rel = f"examples/{script.name}"
    figures = [(path.name, folder, name) for path in doc_files()
               for made_by, figs in [page_figures(path.read_text(encoding="utf-8"))]
               if made_by == rel for folder, name in figs]
    with tempfile.TemporaryDirectory() as tmp:
        cmd = f"python {rel}"
        print(f"running {cmd} --out OUT", file=sys.stderr)
        subprocess.run([sys.executable, str(script), "--out", f"{tmp}/out"], check=True, cwd=tmp,
                       env={**os.environ, "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"})
        if (RESULTS / f"{script.stem}.json").exists():
            found = sorted(Path(tmp).rglob("numbers.json"))
            if len(found) != 1:
                raise SystemExit(f"{cmd} wrote {len(found)} numbers.json files, expected 1")
            r = flat_results(found[0])
            write_results(RESULTS / f"{script.stem}.json", generated_by=cmd, values=r["values"],
                          measured=r["measured"], blocks=r["blocks"])
        for page, folder, name in figures:
            src = Path(tmp) / "out" / name
            if not src.exists():
                raise SystemExit(f"{page} embeds figures/{folder}/{name}, which {cmd} did not "
                                 "write")
            (ROOT / "docs" / "figures" / folder).mkdir(parents=True, exist_ok=True)
            (ROOT / "docs" / "figures" / folder / name).write_bytes(src.read_bytes())


def rerun_results(name: str) -> None:
    """Rerun what ``docs/results/NAME.json`` came from: the example ``examples/NAME.py``, else
    the command the file names (which rewrites the file itself)."""
    path = RESULTS / f"{name}.json"
    if (ROOT / "examples" / f"{name}.py").exists():
        run_example(ROOT / "examples" / f"{name}.py")
        return
    if not path.exists():
        raise SystemExit(f"no results file {path.relative_to(ROOT)}")
    cmd = read_results(path)["generated_by"]
    print(f"running {cmd}", file=sys.stderr)
    subprocess.run(cmd, shell=True, check=True, cwd=ROOT,
                   env={**os.environ, "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"})


FIGURE_RE = re.compile(r"\]\(figures/([A-Za-z0-9_\-]+)/([A-Za-z0-9_.\-]+\.png)\)")
MADE_BY_RE = re.compile(r"Made by `python (examples/[A-Za-z0-9_]+\.py)(?: --out [^`]+)?`")


def page_figures(text: str) -> tuple[str | None, list[tuple[str, str]]]:
    """A page's example (``Made by `python examples/X.py ...```) and the ``(folder, file)`` of
    every figure it embeds from ``docs/figures/``."""
    m = MADE_BY_RE.search(text)
    return (m.group(1) if m else None), FIGURE_RE.findall(text)


def run_examples() -> None:
    """Rerun, once each, every example the docs quote (a results file) or whose figures a page
    embeds (:func:`run_example`)."""
    scripts = {s.name: s for s in example_scripts()}
    for path in doc_files():
        made_by, figs = page_figures(path.read_text(encoding="utf-8"))
        if made_by is not None and figs:
            scripts.setdefault(Path(made_by).name, ROOT / made_by)
    for _, script in sorted(scripts.items()):
        run_example(script)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true",
                    help="change nothing: compare the docs with docs/numbers.json (and, with "
                         "--from-run, numbers.json's values with that run)")
    ap.add_argument("--from-run", type=Path, default=None, metavar="DIR",
                    help="a demo output directory to read instead of running the demo")
    ap.add_argument("--out", type=Path, default=None, metavar="DIR",
                    help="run the demo into DIR and keep it (default: a temporary directory)")
    ap.add_argument("--no-bench", action="store_true", help="keep the recorded benchmark")
    ap.add_argument("--bench-from", type=Path, default=None, metavar="FILE",
                    help="read benchmarks/generate.py --quick output from FILE instead of "
                         "running it")
    ap.add_argument("--examples", action="store_true",
                    help="also rerun every example (refreshing docs/results/<example>.json) and "
                         "those whose figures the docs embed")
    ap.add_argument("--results", action="append", default=[], metavar="NAME",
                    help="rerun the command docs/results/NAME.json names (repeatable), then "
                         "rewrite the docs; with no demo run unless --demo")
    ap.add_argument("--demo", action="store_true", help="with --results: also rerun the demo")
    ap.add_argument("--all", action="store_true",
                    help="rerun everything the docs quote: the demo, the generate benchmark, "
                         "every example and every docs/results/ command (hours on a CPU; the "
                         "real-model ones need requirements/real.txt installed)")
    ap.add_argument("--render", action="store_true",
                    help="run nothing: rewrite every marker and block of the docs from "
                         "docs/numbers.json and docs/results/ (after editing the words)")
    args = ap.parse_args(argv)
    if args.render:
        return _render_all(read_numbers())
    if args.all:
        args.examples = True
        args.demo = True
        args.results = [f.stem for f in sorted(RESULTS.glob("*.json"))
                        if not (ROOT / "examples" / f"{f.stem}.py").exists()]
    if args.results:
        for name in args.results:
            rerun_results(name)
        if not args.demo:
            return _render_all(read_numbers())
    if args.check:
        numbers = read_numbers()
        bad = problems(numbers)
        if args.from_run is not None:
            bad += value_differences(read_numbers(results=None), collect(args.from_run))
        print("\n".join(bad) or "docs agree with docs/numbers.json")
        return 1 if bad else 0
    old = read_numbers() if NUMBERS.exists() else None
    wall = None
    if args.from_run is None:
        run_dir = args.out or Path(tempfile.mkdtemp(prefix="shiftlens-regen-")) / "demo"
        print(f"running the demo into {run_dir} (a few minutes) ...", file=sys.stderr)
        wall = run_demo(run_dir)
    else:
        run_dir = args.from_run
    if args.bench_from is not None:
        bench = (read_benchmark(args.bench_from.read_text()),
                 saved_note(args.bench_from.with_suffix(".machine"), args.bench_from))
    elif args.no_bench:
        bench = None
    else:
        print("running benchmarks/generate.py --quick ...", file=sys.stderr)
        bench = run_benchmark()
    numbers = collect(run_dir, wall_s=wall, bench=bench, old=old)
    write_numbers(numbers)
    if args.examples:
        run_examples()
    return _render_all(read_numbers())


def _render_all(numbers: Mapping[str, Any]) -> int:
    """Rewrite every marked number and block of the docs from ``numbers``; 1 if any problem
    remains."""
    for path in doc_files():
        text = path.read_text(encoding="utf-8")
        new = render(text, numbers)
        if new != text:
            path.write_text(new, encoding="utf-8")
            print(f"updated {path.relative_to(ROOT)}", file=sys.stderr)
    bad = problems(numbers)
    print("\n".join(bad) or "docs agree with docs/numbers.json", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
