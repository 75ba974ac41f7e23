"""How close is the report's run-time estimate? Estimated vs measured seconds per lens.

Runs ``shiftlens demo`` on the embedded pair (every built-in lens unless ``--lenses``), with the
estimate always computed, and prints one JSON line per lens and one for the whole report:
``estimated_s``, ``measured_s`` and ``ratio`` = measured / estimated (1.0 is exact; the estimate
aims at the right order of magnitude, 0.1-10). Both are wall-clock seconds on this machine: a
machine whose load changes between the calibration (before the run) and the lenses moves the
ratio, which is why this is a benchmark and not a timed test.

    python benchmarks/estimate.py [--lenses attention,residual] [--out DIR]
                                  [--results docs/results/bench-estimate.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lenses", default=None, help="comma-separated lenses (default: the demo's)")
    ap.add_argument("--out", default=None, help="write the summary JSON here")
    ap.add_argument("--results", type=Path, default=None, help="write a docs results file")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from shiftlens.cli import main as cli

    with tempfile.TemporaryDirectory() as tmp:
        argv = ["demo", "--out", f"{tmp}/d", "--no-progress", "--estimate-threshold", "1e9"]
        if args.lenses:
            argv += ["--lenses", args.lenses]
        rc = cli(argv)
        if rc != 0:
            raise SystemExit(f"demo exited {rc}")
        m = json.loads(Path(f"{tmp}/d/metrics.json").read_text())
    est = m["estimate"]
    rows = []
    for lens, rec in m["lenses"].items():
        e = est["per_lens"].get(lens)
        rows.append({"lens": lens, "estimated_s": e, "measured_s": round(rec["seconds"], 2),
                     "ratio": round(rec["seconds"] / e, 2) if e else None})
    took = sum(rec["seconds"] for rec in m["lenses"].values())
    rows.append({"lens": "(all)", "estimated_s": est["seconds"], "measured_s": round(took, 2),
                 "ratio": round(took / est["seconds"], 2),
                 "calibration_forward_ms": round(est["calibration"]["forward_s"] * 1000, 1),
                 "calibration_flops_per_s": float(f"{est['calibration']['flops_per_s']:.3g}"),
                 "calibration_loop_ms": round(est["calibration"]["loop_s"] * 1000, 2)})
    for r in rows:
        print(json.dumps(r))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")
    if args.results is not None:
        spec = importlib.util.spec_from_file_location("regen_docs", ROOT / "tools/regen_docs.py")
        regen = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(regen)
        table = ["| lens | estimated (s) | measured (s) | measured / estimated |",
                 "|---|---:|---:|---:|"]
        table += [f"| {r['lens']} | {r['estimated_s']:.1f} | {r['measured_s']:.1f} | "
                  f"{r['ratio']:.2f} |" for r in rows]
        cmd = "python benchmarks/estimate.py" + (f" --lenses {args.lenses}" if args.lenses else "")
        regen.write_results(args.results, generated_by=f"{cmd} --results {args.results}",
                            measured={"machine": regen.machine_note(),
                                      **{r["lens"].strip("()"): r for r in rows}},
                            blocks={"table": "\n".join(table) + "\n"})


if __name__ == "__main__":
    main()
