"""Benchmark: every registered diffing method scored on the organisms, the instruction pair and the
control (the table of docs/diffing.md, generated, not hand-made).

A *diffing method* is a Result class registered by a lens (``LensSpec.results``) that has a
``top_tokens(k, source=...)`` method; each of its ``diffing_sources`` is one column, computed by
its ``diffing_runner`` (``"module:function"``, called as ``function(pair, texts=...,
seed=..., progress=...)``: the pair first, then those of the keywords ``texts`` (or
``prompts``), ``seed`` and ``progress`` that its signature names; a weights-only method takes
none of the texts). Every lens package under
``shiftlens/lenses/`` is imported first, so a lens registers itself (e.g. the crosscoder's,
once its package registers a LensSpec) and its columns appear without editing this script. A
diffing Result without a ``diffing_runner`` is listed as "no runner" with empty cells.

Besides the registered methods the table has:

* ``residual KL (output shift)``: an adapter over the residual lens (read-only): its
  ``OutputShiftResult.top_tokens`` frame (tokens counted among each position's top
  contributions ``p_tuned (log p_tuned - log p_base)`` to KL) as a ranking;
* ``reference``: :func:`shiftlens.zoo.organisms.mean_logprob_diff`, the organisms' reference
  ranking;
* ``chance``: :func:`shiftlens.zoo.organisms.chance_score`.

Rows: the three organisms, the embedded instruction-tuned pair (``instruct``, scored against
the tokens its instruction data introduced) and the control (scored against the 41 organism
tokens: a false-positive rate). Cells: :func:`shiftlens.zoo.organisms.organism_score` of the top
20. Inputs: ``neutral_texts(64)`` (held-out grammar text, seed 0) for every method reading text;
amplification decodes ``neutral_texts(8, 1, seed=3)`` (single sentences); the ADL skips steering
(it does not change the ranking). Deterministic: seeds fixed, one torch thread.

Writes ``benchmarks/results/diffing_table.json`` (every cell with its top-20 tokens and the
method's run time) and ``.md``, and replaces the table between the markers in
``docs/diffing.md``. Prints one JSON line per cell. ``--results PATH`` also writes a results file
(``tools/regen_docs.py``'s ``write_results``: every cell's score and the chance levels as values,
the wall time as measured) whose numbers docs/diffing.md's prose quotes through markers; with
``--from-json`` it is written from a finished run.

    python benchmarks/diffing_table.py                   # the full table (about 15 minutes)
    python benchmarks/diffing_table.py --pairs topic,control --methods activation
    python benchmarks/diffing_table.py --results docs/results/bench-diffing-table.json
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import pkgutil
import platform
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- diffing-table:start -->", "<!-- diffing-table:end -->"
K = 20

#: Inputs and options for the runners this script knows (by Result class); others get
#: (pair, texts, seed, progress) only.
OPTIONS: dict[str, dict[str, Any]] = {
    "ActivationDifferenceResult": dict(steer_prompts=[]),
    "AmplificationResult": dict(texts="amplification"),
}


@dataclass
class Method:
    """One column: a diffing Result class and one of its sources."""

    label: str
    cls: Any
    source: str | None
    runner: str | None
    lens: str


def discover() -> list[Method]:
    """Every registered diffing method (lens packages imported first)."""
    import shiftlens.lenses as lenses_pkg
    from shiftlens.lenses import registered_lenses, resolve_ref

    for info in pkgutil.iter_modules(lenses_pkg.__path__):
        if info.ispkg:
            try:
                importlib.import_module(f"shiftlens.lenses.{info.name}")
            except Exception as e:  # noqa: BLE001 - a lens in progress must not stop the table
                print(f"# lens package {info.name!r} did not import: {type(e).__name__}: {e}",
                      file=sys.stderr)
    out = []
    for spec in registered_lenses().values():
        for ref in spec.results:
            try:
                cls = resolve_ref(ref)
            except Exception as e:  # noqa: BLE001
                print(f"# {ref} did not import: {type(e).__name__}: {e}", file=sys.stderr)
                continue
            if not callable(getattr(cls, "top_tokens", None)):
                continue
            runner = getattr(cls, "diffing_runner", None)
            sources = getattr(cls, "diffing_sources", None) or (None,)
            for source in sources:
                name = cls.__name__.removesuffix("Result")
                label = name + (f" ({source})" if source and len(sources) > 1 else "")
                out.append(Method(label, cls, source, runner, spec.name))
    return out


def pairs(names: list[str]) -> dict[str, Any]:
    from shiftlens.zoo import toy_pair
    from shiftlens.zoo.organisms import INSTRUCT, organism_pair

    return {n: (toy_pair() if n == INSTRUCT else organism_pair(n)) for n in names}


def run_method(m: Method, pair: Any, inputs: dict[str, list[str]], cache: dict[str, Any]
               ) -> tuple[Any, float]:
    """The method's Result on ``pair`` (one run per Result class and pair, shared by sources)."""
    from shiftlens.lenses import resolve_ref

    key = m.cls.__name__
    if key in cache:
        return cache[key]
    fn = resolve_ref(m.runner)
    opts = dict(OPTIONS.get(key, {}))
    texts = inputs[opts.pop("texts", "texts")]
    params = inspect.signature(fn).parameters
    kw = {k: v for k, v in dict(seed=0, progress=False, texts=texts, prompts=texts,
                                **opts).items() if k in params}
    if "texts" in kw and "prompts" in kw:
        del kw["prompts"]
    torch.manual_seed(0)
    t0 = time.process_time()
    res = fn(pair, **kw)
    cache[key] = (res, time.process_time() - t0)
    return cache[key]


def residual_ranking(pair: Any, texts: list[str]) -> tuple[list[int], float]:
    """The residual lens's per-token KL ranking (read-only use of its output_shift)."""
    from shiftlens import InstructionPrompt
    from shiftlens.lenses.residual.compare import output_shift

    t0 = time.process_time()
    res = output_shift(pair, [InstructionPrompt(t, id=f"#{i}") for i, t in enumerate(texts)],
                       with_reference=False, seed=0, progress=False, n_boot=200)
    return [int(t) for t in res.top_tokens.token_id[:K]], time.process_time() - t0


def reference_ranking(pair: Any, texts: list[str]) -> tuple[list[int], float]:
    from shiftlens.zoo.organisms import mean_logprob_diff

    t0 = time.process_time()
    d = mean_logprob_diff(pair.base, pair.tuned, pair.tokenizer, texts)
    return d.topk(K).indices.tolist(), time.process_time() - t0


def cell(name: str, label: str, top: list[int] | None, tokenizer: Any, seconds: float | None,
         note: str = "") -> dict[str, Any]:
    from shiftlens.zoo.organisms import organism_score

    out: dict[str, Any] = dict(pair=name, method=label, note=note)
    if top is not None:
        out.update(score=round(organism_score(top, name, K), 4), top_ids=top,
                   top_tokens=[tokenizer.decode([t]) for t in top],
                   cpu_s=None if seconds is None else round(seconds, 2))
    return out


def markdown(table: dict[str, Any]) -> str:
    cols = table["methods"]
    lines = ["| pair | " + " | ".join(cols) + " | reference | chance |",
             "|---|" + "---|" * (len(cols) + 2)]
    for name in table["pairs"]:
        cells = {c["method"]: c for c in table["cells"] if c["pair"] == name}
        row = []
        for c in cols + ["reference"]:
            x = cells.get(c, {})
            row.append("–" if "score" not in x else f"{x['score']:.2f}")
        row.append(f"{table['chance'][name]:.3f}")
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def write_docs(md: str, meta: str) -> None:
    p = ROOT / "docs" / "diffing.md"
    text = p.read_text(encoding="utf-8")
    if START not in text or END not in text:
        print("# docs/diffing.md has no table markers; not updated", file=sys.stderr)
        return
    body = f"{START}\n{md}\n\n{meta}\n{END}"
    p.write_text(re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: body, text,
                        flags=re.S), encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    from shiftlens.zoo.organisms import SCORED, chance_score, neutral_texts

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", default=",".join(SCORED), help="comma-separated rows")
    ap.add_argument("--methods", default="", help="only columns whose label contains this")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "diffing_table"))
    ap.add_argument("--no-docs", action="store_true", help="do not update docs/diffing.md")
    ap.add_argument("--from-json", metavar="FILE", default=None,
                    help="rewrite the markdown (and docs) from a finished run's JSON, no compute")
    ap.add_argument("--results", type=Path, default=None, metavar="PATH",
                    help="also write a results file (docs/results/bench-diffing-table.json)")
    args = ap.parse_args(argv)
    if args.from_json:
        table = json.loads(Path(args.from_json).read_text())
        md = markdown(table)
        print(md)
        if not args.no_docs:
            write_docs(md, _footer(table))
        if args.results is not None:
            write_results_file(args.results, table)
        return
    torch.set_num_threads(1)
    names = [n.strip() for n in args.pairs.split(",") if n.strip()]
    methods = [m for m in discover() if args.methods in m.label]
    inputs = dict(texts=neutral_texts(64), amplification=neutral_texts(8, 1, seed=3))
    extra = ["OutputShift (residual lens, per-token KL)"]
    table: dict[str, Any] = dict(
        k=K, pairs=names, methods=[m.label for m in methods] + extra, cells=[],
        chance={n: round(chance_score(n, K), 4) for n in names},
        inputs=dict(texts="neutral_texts(64, 6, seed=0)",
                    amplification="neutral_texts(8, 1, seed=3)"),
        machine=dict(python=platform.python_version(), torch=torch.__version__, threads=1))
    t_start = time.time()
    for name, pair in pairs(names).items():
        cache: dict[str, Any] = {}
        for m in methods:
            if m.runner is None:
                c = cell(name, m.label, None, pair.tokenizer, None,
                         "no diffing_runner declared: pending")
            else:
                try:
                    res, sec = run_method(m, pair, inputs, cache)
                    kw = {} if m.source is None else dict(source=m.source)
                    top = [int(t) for t in res.top_tokens(K, **kw)]
                    c = cell(name, m.label, top, pair.tokenizer, sec,
                             "" if top else "empty ranking (the method surfaced no token)")
                except Exception as e:  # noqa: BLE001 - one failing method is a cell, not a crash
                    c = cell(name, m.label, None, pair.tokenizer, None,
                             f"failed: {type(e).__name__}: {e}")
            table["cells"].append(c)
            print(json.dumps({k: v for k, v in c.items() if k != "top_ids"}), flush=True)
        for label, fn in ((extra[0], residual_ranking), ("reference", reference_ranking)):
            top, sec = fn(pair, inputs["texts"])
            c = cell(name, label, top, pair.tokenizer, sec)
            table["cells"].append(c)
            print(json.dumps({k: v for k, v in c.items() if k != "top_ids"}), flush=True)
    table["wall_s"] = round(time.time() - t_start, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(table, indent=1, ensure_ascii=False) + "\n")
    md = markdown(table)
    out.with_suffix(".md").write_text(md + "\n")
    print(md)
    if not args.no_docs and set(names) == set(SCORED) and not args.methods:
        write_docs(md, _footer(table))
    if args.results is not None:
        write_results_file(args.results, table)


def slug(label: str) -> str:
    """A column label as a results key: ``"WeightDelta (unembed)"`` -> ``weightdelta_unembed``."""
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")


def write_results_file(path: Path, table: dict[str, Any]) -> None:
    """The table as a results file: ``score.<pair>.<column>`` and ``chance.<pair>`` (values),
    the run's wall time (measured)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("regen_docs", ROOT / "tools" / "regen_docs.py")
    regen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(regen)
    scores: dict[str, dict[str, float]] = {}
    for c in table["cells"]:
        if "score" in c:
            scores.setdefault(c["pair"], {})[slug(c["method"])] = c["score"]
    rel = path.resolve()
    rel = rel.relative_to(ROOT) if rel.is_relative_to(ROOT) else path
    regen.write_results(path, generated_by=f"python benchmarks/diffing_table.py --results {rel}",
                        values=dict(score=scores, chance=table["chance"],
                                    n_methods=len(table["methods"]), n_pairs=len(table["pairs"])),
                        measured=dict(wall_s=table.get("wall_s")))


def _footer(table: dict[str, Any]) -> str:
    pending = sorted({c["method"] for c in table["cells"] if "score" not in c})
    return (f"*Generated by `python benchmarks/diffing_table.py` ({len(table['methods'])} methods "
            f"x {len(table['pairs'])} pairs, {table['wall_s']:.0f} s wall on a shared 2-core "
            "machine; every cell's top-20 tokens and CPU time are in "
            "`benchmarks/results/diffing_table.json`)."
            + (f" Pending (registered, no `diffing_runner` yet): {', '.join(pending)}."
               if pending else "") + "*")


if __name__ == "__main__":
    main()
