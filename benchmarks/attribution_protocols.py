"""Lens 1 on the embedded toy pair: the instruction score under four response protocols, per
task, followed vs unfollowed, and the toy test's 70-prompt check. docs/attribution.md quotes it.

On ``shiftlens.zoo.toy_pair()`` and ``toy_prompts(N)`` (default 280 held-out prompts, 40 per
task), each model's instruction score (L = 10, b = 7, p = 4) is compared, base vs tuned
(two-sided Welch test, bootstrap 95% CI, seed 0), when each model explains

- the same reference response (``response="reference"``),
- its own greedy response cut at 1, 3 and 12 tokens (``response="generate"``,
  ``max_new_tokens``; 12 tokens is the paper's own-response setting as the demo runs it).

Also: per task with the reference response; followed vs unfollowed responses (own responses,
<= 12 tokens, labels from ``followed_by_reference``) among the tuned model's responses; and
``tests/toy/test_attribution_toy.py``'s check, 70 held-out prompts with the reference response,
one-sided (tuned > base), as that test asks.

Run: ``python benchmarks/attribution_protocols.py [--n 280] [--results FILE]``; with
``--results docs/results/bench-attribution-protocols.json`` it writes the numbers (``values``: the
scores and tests, deterministic for the pair and seed; ``measured``: seconds and the machine)
and the table (``blocks``) through ``tools/regen_docs.py``'s ``write_results``. About 5 minutes
on a loaded 2-core CPU.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TEST_KEYS = ("mean_a", "mean_b", "diff", "ci_low", "ci_high", "pvalue", "n_a", "n_b")


def _regen_docs():
    spec = importlib.util.spec_from_file_location("regen_docs", ROOT / "tools" / "regen_docs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _test(block: dict) -> dict:
    return {k: block[k] for k in TEST_KEYS}


def _e(x: float) -> str:
    """A p-value as the table shows it."""
    return f"{x:.2g}" if x >= 0.01 else f"{x:.1e}"


def protocol_table(rows: list[tuple[str, dict]]) -> str:
    """The four protocols as a Markdown table."""
    out = ["| response protocol | base | tuned | tuned − base (95% CI) | two-sided Welch p "
           "| mean response length, base / tuned (tokens) |",
           "|---|---|---|---|---|---|"]
    for label, r in rows:
        sign = lambda x: f"{x:+.3f}".replace("-", "−")  # noqa: E731
        p = _e(r["pvalue"])
        if r["pvalue"] < 0.05:
            p = f"**{p}** ({'tuned' if r['diff'] > 0 else 'base'} higher)"
        out.append(
            f"| {label} | {r['mean_b']:.3f} | {r['mean_a']:.3f} | {sign(r['diff'])} "
            f"[{sign(r['ci_low'])}, {sign(r['ci_high'])}] | {p} "
            f"| {r['length_base']:.1f} / {r['length_tuned']:.1f} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=280, help="held-out prompts (default 280)")
    ap.add_argument("--n-test", type=int, default=70, help="prompts of the toy test's check")
    ap.add_argument("--results", type=Path, default=None, metavar="FILE")
    args = ap.parse_args()
    torch.set_num_threads(1)

    from shiftlens import ShiftlensWarning
    from shiftlens import attribution as A
    from shiftlens.zoo import toy_pair, toy_prompts

    t_all = time.perf_counter()
    pair, prompts = toy_pair(), toy_prompts(args.n)
    values: dict = {"n_prompts": len(prompts), "n_tasks": len({p.category for p in prompts})}
    measured: dict = {}
    runs = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ShiftlensWarning)
        for name, kw in (("reference", {"response": "reference"}),
                         ("own1", {"max_new_tokens": 1}), ("own3", {"max_new_tokens": 3}),
                         ("own12", {"max_new_tokens": 12})):
            t0 = time.perf_counter()
            runs[name] = A.instruction_sensitivity(pair, prompts, progress=False, **kw)
            measured[f"seconds.{name}"] = round(time.perf_counter() - t0, 1)
            print(f"{name}: {measured[f'seconds.{name}']} s", file=sys.stderr, flush=True)

    labels = {"reference": "same reference response for both",
              "own1": "own greedy response, first token only (`max_new_tokens=1`)",
              "own3": "own greedy response, ≤ 3 tokens",
              "own12": "own greedy response, ≤ 12 tokens (the paper's setting)"}
    rows = []
    for name, res in runs.items():
        s = res.summary()
        row = {**_test(s["overall"]), "length_base": s["response_lengths"]["base"],
               "length_tuned": s["response_lengths"]["tuned"]}
        values[name] = row
        rows.append((labels[name], row))

    # per task, reference response
    by = runs["reference"].summary()["by_category"]
    values["reference_by_task"] = {t: _test(b) for t, b in by.items()}
    lo = min(by, key=lambda t: by[t]["pvalue"])
    hi = max(by, key=lambda t: by[t]["pvalue"])
    values["reference_tasks"] = {
        "tuned_higher": sum(b["diff"] > 0 for b in by.values()),
        "significant": sum(b["pvalue"] < 0.05 and b["diff"] > 0 for b in by.values()),
        "p_min": by[lo]["pvalue"], "p_min_task": lo, "p_max": by[hi]["pvalue"], "p_max_task": hi,
    }

    # own responses, <= 12 tokens: how long, how often at the limit
    fr12 = runs["own12"].frame
    values["own12_lengths"] = {
        "base_at_limit": int((fr12["base_n_response"] == 12).sum()),
        "base_min": int(fr12["base_n_response"].min()),
        "tuned_min": int(fr12["tuned_n_response"].min()),
        "tuned_max": int(fr12["tuned_n_response"].max()),
        "tuned_le3": int((fr12["tuned_n_response"] <= 3).sum()),
    }

    # followed vs unfollowed (own responses, <= 12 tokens), the tuned model's responses
    lab = A.followed_by_reference(runs["own12"])
    values["followed"] = {
        "base_followed": sum(v for (role, _), v in lab.items() if role == "base"),
        "tuned_followed": sum(v for (role, _), v in lab.items() if role == "tuned"),
    }
    fc = A.followed_comparison(runs["own12"], lab, roles="tuned").summary()
    values["followed"]["tuned"] = _test(fc["pooled"])

    # tests/toy/test_attribution_toy.py: 70 prompts, reference response, one-sided
    t0 = time.perf_counter()
    chk = A.instruction_sensitivity(pair, toy_prompts(args.n_test), response="reference",
                                    alternative="greater", progress=False)
    measured["seconds.test_check"] = round(time.perf_counter() - t0, 1)
    values["test_check"] = {**_test(chk.summary()["overall"]), "n_prompts": args.n_test}

    measured["seconds.total"] = round(time.perf_counter() - t_all, 1)
    table = protocol_table(rows)
    print(table)
    if args.results is not None:
        regen = _regen_docs()
        measured["machine"] = regen.machine_note()
        try:
            rel = args.results.resolve().relative_to(ROOT)
        except ValueError:
            rel = args.results
        cmd = "python benchmarks/attribution_protocols.py"
        if args.n != 280:
            cmd += f" --n {args.n}"
        if args.n_test != 70:
            cmd += f" --n-test {args.n_test}"
        regen.write_results(args.results, generated_by=f"{cmd} --results {rel}", values=values,
                            measured=measured, blocks={"table": table})
        print(f"wrote {args.results}", file=sys.stderr)


if __name__ == "__main__":
    main()
