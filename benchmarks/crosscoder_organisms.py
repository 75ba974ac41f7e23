"""Benchmark: the crosscoder on every diffing organism, the instruction pair and the control.

Runs :func:`~shiftlens.lenses.crosscoder.compare.organism_crosscoder` (the setting of
``tests/toy/test_crosscoder_organisms.py`` and of the Crosscoder columns of
``benchmarks/diffing_table.py``: the last layer of the embedded pair, 128 latents, k = 8, 800
steps of 256 rows, relaxed thresholds) over ``neutral_texts(64)`` on each pair and reports, per
pair: the token positions trained on, the tuned-only latents under the relaxed thresholds and
under Minder et al.'s (``LatentThresholds()``: Δ >= 0.9, ν_ε and ν_r < 0.3), the largest Δ of a
live latent, the organism scores (top 20) of the tuned-only and the "changed" readouts, the
tuned-only readout's first tokens, each model's FVU and the wall time.

Prints one JSON line per pair. ``--results PATH`` writes a results file
(``tools/regen_docs.py``'s ``write_results``: the deterministic outcomes as values, FVU and
times as measured, the table as the block ``table``) that docs/crosscoder.md quotes.

    python benchmarks/crosscoder_organisms.py [--pairs topic,control]
    python benchmarks/crosscoder_organisms.py --results docs/results/bench-crosscoder-organisms.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LABELS = {"instruct": "instruct (embedded pair)", "control": "control (shuffled data)"}


def _regen() -> Any:
    spec = importlib.util.spec_from_file_location("regen_docs", ROOT / "tools" / "regen_docs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _pair(name: str) -> Any:
    from shiftlens.zoo import toy_pair
    from shiftlens.zoo.organisms import INSTRUCT, organism_pair

    return toy_pair() if name == INSTRUCT else organism_pair(name)


def measure(name: str, texts: list[str]) -> dict[str, Any]:
    """One pair: the crosscoder's classes, scores, readout, fit and wall time."""
    from shiftlens.lenses.crosscoder import LatentThresholds
    from shiftlens.lenses.crosscoder.compare import organism_crosscoder
    from shiftlens.zoo.organisms import organism_score

    pair = _pair(name)
    t0 = time.perf_counter()
    res = organism_crosscoder(pair, texts)
    wall = time.perf_counter() - t0
    s = res.summary()
    df = res.latents
    live = df[df.cls != "dead"]
    strict = LatentThresholds()
    minder = int(((live.delta_norm >= 1 - strict.outer) & (live.nu_err < strict.nu_max)
                  & (live.nu_rec < strict.nu_max)).sum())
    return dict(
        pair=name, n_rows=int(s["n_rows"]), tuned_only_relaxed=int(s["counts"]["tuned_only"]),
        tuned_only_minder=minder, max_delta=round(float(live.delta_norm.max()), 4),
        score_tuned_only=round(organism_score(res.top_tokens(20), name), 4),
        score_changed=round(organism_score(res.top_tokens(20, source="changed"), name), 4),
        tuned_only_tokens=list(s["top_tokens"][:4]),
        fvu_base=float(s["fvu"].get("base", float("nan"))),
        fvu_tuned=float(s["fvu"].get("tuned", float("nan"))), wall_s=round(wall, 1))


def table(rows: list[dict[str, Any]]) -> str:
    """docs/crosscoder.md's organism table."""
    lines = ["| pair | tuned-only latents (relaxed / Minder) | tuned-only readout | "
             "\"changed\" readout | FVU tuned | wall |", "|---|---|---|---|---|---|"]
    for r in rows:
        shown = ", ".join(f"`{t}`" for t in r["tuned_only_tokens"]) or "none"
        if len(r["tuned_only_tokens"]) >= 4:
            shown += ", ..."
        lines.append(f"| {LABELS.get(r['pair'], r['pair'])} | {r['tuned_only_relaxed']} / "
                     f"{r['tuned_only_minder']} | {r['score_tuned_only']:.2f} ({shown}) | "
                     f"{r['score_changed']:.2f} | {100 * r['fvu_tuned']:.1f}% | "
                     f"{r['wall_s']:.0f} s |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from shiftlens.zoo.organisms import SCORED, neutral_texts

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", default=",".join(SCORED), help="comma-separated pairs")
    ap.add_argument("--results", type=Path, default=None, metavar="PATH",
                    help="write a results file (docs/results/bench-crosscoder-organisms.json)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    texts = neutral_texts(64)
    names = [n.strip() for n in args.pairs.split(",") if n.strip()]
    rows = []
    for name in names:
        rows.append(measure(name, texts))
        print(json.dumps(rows[-1], ensure_ascii=False), flush=True)
    print(table(rows))
    if args.results is None:
        return
    regen = _regen()
    keep = ("n_rows", "tuned_only_relaxed", "tuned_only_minder", "max_delta", "score_tuned_only",
            "score_changed")
    rel = args.results.resolve()
    rel = rel.relative_to(ROOT) if rel.is_relative_to(ROOT) else args.results
    pairs_opt = "" if names == list(SCORED) else f" --pairs {','.join(names)}"
    regen.write_results(
        args.results,
        generated_by=f"python benchmarks/crosscoder_organisms.py{pairs_opt} --results {rel}",
        values={r["pair"]: {k: r[k] for k in keep} for r in rows},
        measured=dict(machine=regen.machine_note(),
                      **{r["pair"]: {k: r[k] for k in ("fvu_base", "fvu_tuned", "wall_s")}
                         for r in rows}),
        blocks={"table": table(rows)})


if __name__ == "__main__":
    main()
