"""Benchmark: the cost of the diffing methods as multiples of one forward pass, measured in one run.

The unit is **one forward pass of one model over the texts** (``forward``: the tuned model on
every text, right-padded batches of 16, logits computed). Each method is timed on the same texts
and pair and reported as a ratio to that unit, measured in the same run (process CPU time, which
is steadier than wall time on a shared machine; both are printed):

- ``adl_accumulate``: :func:`activation_difference` with nothing but the mean difference
  (``layers=[lens layer]``, no Patchscope scale beyond one, no bootstrap, no steering): both
  models over the first ``1 + n_positions`` tokens of each text;
- ``adl_default``: :func:`activation_difference` with its defaults but no steering (every layer
  read through both logit lenses and Patchscopes at 4 scales, 200 bootstrap resamples);
- ``adl_steering``: the defaults with steering (3 prompts x 4 strengths x 2 models x 16 tokens);
- ``diff_mining``: :func:`diff_mining` (both models over the whole texts, top-k counts, 200
  resamples);
- ``amplification``: 8 single-sentence prompts, 24 new tokens, ``a = 4``: decoding the combined
  logits without a cache, against ``greedy`` (the tuned model's cached, verified greedy decoding
  of the same prompts) as the unit instead.

Prints one JSON line per measurement, writes them all to
``benchmarks/results/activation_difference.json`` and the table of ratios between the markers of
docs/diffing.md's "Cost" section (``--from-json FILE`` rewrites that table from a finished run, no
compute; ``--no-docs`` leaves the docs alone). ``--results PATH`` also writes a results file
(``tools/regen_docs.py``'s ``write_results``: every ratio and CPU time as measured, with where it
ran; texts and mean tokens as values) whose numbers docs/diffing.md's prose quotes through markers.

    python benchmarks/activation_difference.py          # the embedded topic organism
    python benchmarks/activation_difference.py --results docs/results/bench-activation-difference.json
    python benchmarks/activation_difference.py --quick  # fewer texts, results not written
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- adl-cost:start -->", "<!-- adl-cost:end -->"
OUT = ROOT / "benchmarks" / "results" / "activation_difference.json"
#: What each measurement is, for the docs table (rows in this order).
WHAT = {
    "adl_accumulate": "ADL, mean difference only (lens layer, one Patchscope scale, no bootstrap)",
    "adl_default": "ADL defaults without steering (every layer, 2 logit lenses, "
                   "Patchscope at 4 scales, 200 resamples)",
    "adl_steering": "ADL defaults with steering (3 prompts x 4 strengths x 2 models x 16 tokens)",
    "diff_mining": "diff mining (both models over the whole texts, 200 resamples)",
    "amplification": "amplification, a = 4 (8 prompts, 24 new tokens, no cache)",
}


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """Median process CPU and wall seconds of ``repeats`` calls (after one warm-up call)."""
    fn()
    cpu, wall = [], []
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return sorted(cpu)[len(cpu) // 2], sorted(wall)[len(wall) // 2]


def main(argv: list[str] | None = None) -> None:
    from shiftlens import InstructionPrompt
    from shiftlens.generate import greedy_batch
    from shiftlens.lenses.activation_difference import activation_difference, diff_mining
    from shiftlens.lenses.amplification import amplified_generations
    from shiftlens.zoo.organisms import neutral_texts, organism_pair

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="16 texts, one repeat")
    ap.add_argument("--organism", default="topic")
    ap.add_argument("--no-docs", action="store_true", help="do not update docs/diffing.md")
    ap.add_argument("--from-json", metavar="FILE", default=None,
                    help="rewrite the docs table from a finished run's JSON, no compute")
    ap.add_argument("--results", metavar="PATH", type=Path, default=None,
                    help="also write a results file (docs/results/bench-activation-difference.json)")
    args = ap.parse_args(argv)
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        rows = saved["measurements"]
        print(markdown(rows))
        if not args.no_docs:
            write_docs(markdown(rows))
        if args.results is not None:
            write_results_file(args.results, rows, saved.get("machine", "not recorded"))
        return
    torch.set_num_threads(1)
    rows: list[dict[str, Any]] = []

    def emit(row: dict[str, Any]) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)

    n_texts, repeats = (16, 1) if args.quick else (64, 3)
    pair = organism_pair(args.organism)
    texts = neutral_texts(n_texts)
    toks = [pair.tokenize(InstructionPrompt(t)).tokens for t in texts]
    pad = pair.tokenizer.pad_token_id

    def forward() -> None:
        with torch.no_grad():
            for b in range(0, len(toks), 16):
                chunk = toks[b : b + 16]
                batch = torch.full((len(chunk), max(len(t) for t in chunk)), pad)
                for j, t in enumerate(chunk):
                    batch[j, : len(t)] = t
                pair.tuned(batch, return_type="logits")

    common = dict(machine=platform.machine(), torch=torch.__version__, threads=1,
                  organism=args.organism, n_texts=n_texts,
                  mean_tokens=round(sum(len(t) for t in toks) / len(toks), 1))
    unit_cpu, unit_wall = timed(forward, repeats)
    emit(dict(method="forward", cpu_s=round(unit_cpu, 3), wall_s=round(unit_wall, 3), ratio=1.0,
              **common))
    lens = pair.cfg.n_layers // 2
    runs: dict[str, Callable[[], Any]] = {
        "adl_accumulate": lambda: activation_difference(
            pair, texts, layers=[lens], patch_scales=(1.0,), n_boot=0, steer_prompts=[],
            progress=False),
        "adl_default": lambda: activation_difference(pair, texts, steer_prompts=[],
                                                     progress=False),
        "adl_steering": lambda: activation_difference(pair, texts, progress=False),
        "diff_mining": lambda: diff_mining(pair, texts, progress=False),
    }
    for name, fn in runs.items():
        cpu, wall = timed(fn, repeats)
        emit(dict(method=name, cpu_s=round(cpu, 3), wall_s=round(wall, 3),
                  ratio=round(cpu / unit_cpu, 2), wall_ratio=round(wall / unit_wall, 2),
                  unit="forward", **common))
    prompts = [pair.tokenize(InstructionPrompt(t)).tokens for t in neutral_texts(8, 1, seed=3)]
    g_cpu, g_wall = timed(lambda: greedy_batch(pair.tuned, prompts, 24), repeats)
    emit(dict(method="greedy", cpu_s=round(g_cpu, 3), wall_s=round(g_wall, 3), ratio=1.0,
              new_tokens=24, n_prompts=8, **common))
    a_cpu, a_wall = timed(lambda: amplified_generations(pair.base, pair.tuned, prompts, [4.0],
                                                        max_new_tokens=24), repeats)
    emit(dict(method="amplification", cpu_s=round(a_cpu, 3), wall_s=round(a_wall, 3),
              ratio=round(a_cpu / g_cpu, 2), wall_ratio=round(a_wall / g_wall, 2),
              unit="greedy", new_tokens=24, n_prompts=8, **common))
    if args.quick:
        return
    machine = _regen().machine_note()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(dict(measurements=rows, repeats=repeats, machine=machine),
                              indent=1) + "\n")
    md = markdown(rows)
    print(md)
    if not args.no_docs:
        write_docs(md)
    if args.results is not None:
        write_results_file(args.results, rows, machine)


def _regen() -> Any:
    """tools/regen_docs.py as a module (its ``write_results`` and ``machine_note``)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("regen_docs", ROOT / "tools" / "regen_docs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def write_results_file(path: Path, rows: list[dict[str, Any]], machine: str) -> None:
    """The results file docs/diffing.md's markers read: per method its ratio to its unit and its
    CPU seconds (measured), the texts and their mean length (values)."""
    by = {r["method"]: r for r in rows}
    f = by["forward"]
    rel = path.resolve().relative_to(ROOT) if path.resolve().is_relative_to(ROOT) else path
    _regen().write_results(
        path, generated_by=f"python benchmarks/activation_difference.py --results {rel}",
        values=dict(organism=f["organism"], n_texts=f["n_texts"], mean_tokens=f["mean_tokens"]),
        measured=dict(machine=machine, torch=f["torch"],
                      ratio={m: r["ratio"] for m, r in by.items()},
                      cpu_s={m: r["cpu_s"] for m, r in by.items()}))


def markdown(rows: list[dict[str, Any]]) -> str:
    """The docs table: each method's CPU time and its ratio to its unit, from the JSON rows."""
    by = {r["method"]: r for r in rows}
    f, g = by["forward"], by["greedy"]
    lines = ["| measurement | CPU s | ratio | unit |", "|---|---|---|---|",
             f"| one forward pass of one model ({f['n_texts']} texts, {f['mean_tokens']} tokens "
             f"on average) | {f['cpu_s']:.3f} | 1 | |"]
    for name, what in WHAT.items():
        r = by[name]
        unit = "forward pass" if r["unit"] == "forward" else "cached greedy decoding, one model"
        lines.append(f"| {what} | {r['cpu_s']:.3f} | **{r['ratio']:.2f}** | {unit} |")
    lines.append(f"| one model's cached greedy decoding of the same 8 prompts | {g['cpu_s']:.3f} "
                 "| 1 | |")
    return (("\n".join(lines)) + f"\n\n*Generated by `python benchmarks/activation_difference.py` "
            f"(organism {f['organism']}, median of the run's repeats, process CPU time, one "
            f"torch thread, torch {f['torch']}); the numbers are in "
            "`benchmarks/results/activation_difference.json`.*")


def write_docs(md: str) -> None:
    """Replace the text between the cost markers of docs/diffing.md with ``md``."""
    p = ROOT / "docs" / "diffing.md"
    text = p.read_text(encoding="utf-8")
    if START not in text or END not in text:
        print("# docs/diffing.md has no cost markers; not updated", file=sys.stderr)
        return
    body = f"{START}\n{md}\n{END}"
    p.write_text(re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: body, text,
                        flags=re.S), encoding="utf-8")


if __name__ == "__main__":
    main()
