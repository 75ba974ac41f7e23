"""The real tier's numbers for docs/real-models.md: run ``pytest -m real tests/real/test_real.py``
and turn the report it writes (``$SHIFTLENS_REAL_REPORT/real-tier.json``) into a docs results file.

    python benchmarks/real_tier.py --results docs/results/bench-real-tier.json

Needs the real-checkpoint packages (``requirements/real.txt``); the tier converts each GGUF file
once into ``$SHIFTLENS_CACHE`` (a cached conversion is reused). Written through
``tools/regen_docs.py``'s ``write_results``:

* ``values``: what the tests computed on the two real models and their random-weight controls
  (deterministic: fixed prompts, seed 0, one torch thread): mean NLL, FFN concept shares and
  their tests, judged word-pair cosines, attribution masses and test, logit-lens accuracies,
  attention sink and instruction heads, plus short example strings;
* ``measured``: per-lens timings (keys made marker-safe), the conversions' recorded sizes and
  times, the whole tier's wall and CPU minutes and the peak resident memory of the pytest
  process, the number of tests passed, the machine;
* ``blocks``: ``ffn-table`` (real vs control) and ``conversion-table``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"smollm2": "SmolLM2-135M-Instruct", "gemma3-270m": "gemma-3-270m"}


def _regen():
    spec = importlib.util.spec_from_file_location("regen_docs", ROOT / "tools" / "regen_docs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def slug(text: str) -> str:
    """A marker-safe key (``[a-z0-9_]``) of a timing's label."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def run_tier(report_dir: Path) -> dict:
    """Run the real tier once; wall/CPU time and peak RSS of the pytest process."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SHIFTLENS_REAL_REPORT": str(report_dir)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "real", "tests/real/test_real.py",
           "-p", "no:cacheprovider"]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    use = resource.getrusage(resource.RUSAGE_CHILDREN)
    tail = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
    if r.returncode != 0:
        raise SystemExit(f"the real tier failed (exit {r.returncode}):\n{r.stdout[-3000:]}"
                         f"\n{r.stderr[-2000:]}")
    passed = re.search(r"(\d+) passed", r.stdout)
    skipped = re.search(r"(\d+) skipped", r.stdout)
    return {"wall_minutes": round(wall / 60, 2),
            "cpu_minutes": round((use.ru_utime + use.ru_stime) / 60, 2),
            "peak_rss_gb": round(use.ru_maxrss * 1024 / 1e9, 2),
            "n_passed": int(passed.group(1)) if passed else 0,
            "n_skipped": int(skipped.group(1)) if skipped else 0, "summary": tail}


def heads_text(heads: list[dict], n: int = 3) -> str:
    return ", ".join(f"L{h['layer']}H{h['head']} {h['mass']:.2f}" for h in heads[:n])


def pairs_text(examples: dict, head: str, n: int = 3) -> str:
    return ", ".join(f"{q}→{k}" for q, k in examples.get(head, [])[:n])


def collect(rep: dict) -> tuple[dict, dict, dict]:
    """values, measured and blocks from a real-tier.json report."""
    values: dict = {"nll": rep["nll"], "logit_lens": {}, "attention": {}, "word_pairs": {},
                    "ffn": {}}
    for name, r in rep["ffn"].items():
        v = {k: r[k] for k in ("vocab_size", "vocab_dictionary_share", "real", "control",
                               "dictionary_test", "prefix_test")}
        v["prefix_ratio"] = r["real"]["prefix_share"] / r["control"]["prefix_share"]
        v["examples"] = {slug(k): ", ".join(w[:6]) for k, w in r.get("examples", {}).items()}
        values["ffn"][name] = v
    for name, r in rep["word_pairs"].items():
        v = {k: r[k] for k in ("judge", "random_pair_cosine", "real", "control")}
        v["examples"] = {h: pairs_text(r["examples"], h) for h in r.get("examples", {})}
        values["word_pairs"][name] = v
    a = rep["attribution"]
    values["attribution"] = {
        "n_prompts": len(a["prompts"]), "mean_mass": a["mean_mass"],
        "user_minus_template_per_token": a["user_minus_template_per_token"], "p": a["p"],
        "mean_n_in": statistics.mean(p["n_in"] for p in a["prompts"]),
        "max_new_tokens": max(p["n_out"] for p in a["prompts"])}
    g = rep["attribution_gemma"]
    values["attribution_gemma"] = {"max_abs_matrix": g["max_abs_matrix"]}
    for name, r in rep["logit_lens"].items():
        values["logit_lens"][name] = {
            "layers": "/".join(str(x) for x in r["layers"]),
            "real": "/".join(f"{x:.2f}" for x in r["real"]["next_token_accuracy_by_layer"]),
            "control_max": max(r["control"]["next_token_accuracy_by_layer"])}
    for name, r in rep["attention"].items():
        values["attention"][name] = {
            "n_prompts": r["n_prompts"],
            "real_sink": r["real"]["bos_mass_median_layers_ge2"],
            "control_sink": r["control"]["bos_mass_median_layers_ge2"],
            "top_instruction_heads": heads_text(r["top_instruction_heads"])}
    measured: dict = {"timings_s": {slug(k): v for k, v in rep["timings_s"].items()},
                      "attribution_gemma_max_abs_diff_forward_reverse":
                          g["max_abs_diff_forward_reverse"], "conversion": {}}
    for name, c in rep.get("conversion", {}).items():
        meta = json.loads((Path(c["dir"]) / "shiftlens_gguf.json").read_text())
        measured["conversion"][name] = {
            **{k: v for k, v in c.items() if k != "dir"},
            "logits_max_abs_diff": meta.get("logits_max_abs_diff")}
    blocks = {"ffn-table": ffn_table(rep), "conversion-table": conversion_table(rep, measured)}
    return values, measured, blocks


def ffn_table(rep: dict) -> str:
    rows = ["| | dictionary share real | control | Welch p | prefix share real | control "
            "| p (greater) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in rep["ffn"].items():
        rows.append(f"| {MODELS.get(name, name)} | {r['real']['dictionary_share']:.3f} "
                    f"| {r['control']['dictionary_share']:.3f} | {r['dictionary_test']['p']:.2g} "
                    f"| {r['real']['prefix_share']:.3f} | {r['control']['prefix_share']:.3f} "
                    f"| {r['prefix_test']['p']:.2g} |")
    return "\n".join(rows)


def conversion_table(rep: dict, measured: dict) -> str:
    names = [n for n in MODELS if n in measured["conversion"]]
    conv, t = measured["conversion"], rep["timings_s"]

    def row(label: str, cell) -> str:
        return f"| {label} | " + " | ".join(cell(n) for n in names) + " |"

    return "\n".join([
        "| | " + " | ".join(MODELS[n] for n in names) + " |",
        "| --- |" + " --- |" * len(names),
        row("GGUF size", lambda n: f"{conv[n]['gguf_mb']:.0f} MiB"),
        row("converted directory", lambda n: f"{conv[n]['cache_mb']:.0f} MiB "
            f"({conv[n]['n_parameters'] / 1e6:.1f} M float32 parameters)"),
        row("first conversion, wall (recorded in the cache)",
            lambda n: f"{conv[n]['seconds_first_conversion']:.0f} s"),
        row("cached call", lambda n: f"{1000 * t[f'{n}: GGUF -> HF dir (cached if fast)']:.0f} ms"),
        row("boot as TransformerBridge", lambda n: f"{t[f'{n}: boot TransformerBridge']:.1f} s"),
        row("logits: converted vs GGUF-loaded, max abs diff",
            lambda n: f"{conv[n]['logits_max_abs_diff']}"),
    ])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, required=True, metavar="PATH",
                    help="the results file to write (docs/results/bench-real-tier.json)")
    args = ap.parse_args(argv)
    regen = _regen()
    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    with tempfile.TemporaryDirectory(prefix="shiftlens-real-tier-") as tmp:
        tier = run_tier(Path(tmp))
        rep = json.loads((Path(tmp) / "real-tier.json").read_text(encoding="utf-8"))
    values, measured, blocks = collect(rep)
    note = regen.machine_note()
    if load0 is not None:
        note += f" at the end, {load0:.1f} at the start"
    measured.update(tier=tier, machine=note)
    regen.write_results(args.results, generated_by="python benchmarks/real_tier.py --results "
                        + args.results.as_posix(), values=values, measured=measured,
                        blocks=blocks)
    print(f"wrote {args.results}: {tier['summary']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
