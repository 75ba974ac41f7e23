"""Benchmark: QK word pairs of every head of a random-weight model, batched vs per-head loop.

The issue's setting: d_model 1024, 16 heads (d_head 64), 24 layers, a 30,000-word vocabulary.
Random weights are built directly as tensors (no 24-layer bridge is booted: the weight view
only needs the word vectors E and each layer's norm-folded W_Q / W_K), and both
implementations get the same tensors and the same bound relatedness filter (the paper's
mean + 1.96 sd cosine rule on E, :func:`shiftlens.lenses.attention.filters.cosine_threshold`):

- ``batched``: :func:`shiftlens.lenses.attention.qk.qk_word_pairs`, one matmul per layer for all
  heads' Q and K, energy ranking / top-K / same-sign rule batched over heads and dimensions,
  one filter call per layer.
- ``per_head``: a straightforward loop (the reference): per head, Q = E W_Q[h] and
  K = E W_K[h]; per top dimension, top-K words, the candidate pairs and the filter on that
  (dimension) block.

The batched implementation runs on every layer (``batched_total_s``: word pairs of all
24 x 16 heads); the per-head loop runs on the first ``--loop-layers`` layers (default 6, to keep
the run near 3 minutes on 2 CPU cores), interleaved with the batched calls on the same layers,
and must return identical pairs there (checked every run). Prints one JSON line per
measurement; ``ratio`` = per-head loop time / batched time on the compared layers (wall clock;
``cpu_ratio`` the same with process CPU time, steadier on a shared machine).

    python benchmarks/attention.py            # 24 layers, 30k words
    python benchmarks/attention.py --quick    # 4 layers, 10k words (both methods on all 4)
    python benchmarks/attention.py --quick --results docs/results/bench-attention.json

``--results PATH`` runs the setting with and without the relatedness filter and writes a
results file (tools/regen_docs.py's ``write_results``: the settings and pair counts as
``values``, times, ratios and the machine as ``measured``, the table docs/attention.md shows
as the block ``table``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import time
from pathlib import Path

import torch

from shiftlens.lenses.attention import LayerPairs, cosine_threshold, qk_word_pairs


def per_head_loop(E, W_Q, W_K, *, top_dims, top_k, pair_filter, exclude_self=True):
    """Reference: one head and one dimension at a time (same rules, same output order)."""
    n = E.shape[0]
    H, _, e = W_Q.shape
    k = min(top_k, n)
    T = min(top_dims, e)
    g = H // W_K.shape[0]
    out = {f: [] for f in ("head", "dim", "dim_rank", "q_word", "k_word", "q_act", "k_act")}
    energies, tops = [], []
    for h in range(H):
        Q = E @ W_Q[h]  # [n, e]
        K = E @ W_K[h // g]
        energy = (Q**2).sum(0) + (K**2).sum(0)
        dims = energy.topk(T).indices
        energies.append(energy)
        tops.append(dims)
        rows = {f: [] for f in out}
        for t, d in enumerate(dims.tolist()):
            qcol, kcol = Q[:, d], K[:, d]
            qi = qcol.abs().topk(k).indices
            ki = kcol.abs().topk(k).indices
            qa, ka = qcol[qi], kcol[ki]
            keep = (qa[:, None] * ka[None, :]) > 0
            if exclude_self:
                keep &= qi[:, None] != ki[None, :]
            if pair_filter is not None:  # same filter rule, one (head, dim) block at a time
                keep &= pair_filter.block(qi, ki)
            i, j = keep.nonzero(as_tuple=True)
            rows["head"].append(torch.full_like(i, h))
            rows["dim"].append(torch.full_like(i, d))
            rows["dim_rank"].append(torch.full_like(i, t))
            rows["q_word"].append(qi[i])
            rows["k_word"].append(ki[j])
            rows["q_act"].append(qa[i])
            rows["k_act"].append(ka[j])
        cat = {f: torch.cat(v) for f, v in rows.items()}
        order = torch.argsort(cat["q_act"] * cat["k_act"], descending=True, stable=True)
        for f in out:
            out[f].append(cat[f][order])
    res = {f: torch.cat(v) for f, v in out.items()}
    return LayerPairs(**res, energy=torch.stack(energies), top_dims=torch.stack(tops))


def same(a: LayerPairs, b: LayerPairs) -> bool:
    exact = all(torch.equal(getattr(a, f), getattr(b, f))
                for f in ("head", "dim", "dim_rank", "q_word", "k_word", "top_dims"))
    close = torch.allclose(a.q_act, b.q_act, rtol=1e-4, atol=1e-6) and torch.allclose(
        a.k_act, b.k_act, rtol=1e-4, atol=1e-6)
    return exact and close


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="4 layers, 10k words")
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--words", type=int, default=30_000)
    ap.add_argument("--d-model", type=int, default=1024)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--kv-heads", type=int, default=16)
    ap.add_argument("--top-dims", type=int, default=10)
    ap.add_argument("--top-k", type=int, default=50)
    ap.add_argument("--loop-layers", type=int, default=6,
                    help="layers also run with the per-head loop (ratio and identity check)")
    ap.add_argument("--no-filter", action="store_true", help="skip the relatedness filter")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--results", type=Path, default=None, metavar="PATH",
                    help="run with and without the filter and write a results file for the docs")
    args = ap.parse_args(argv)
    if args.quick:
        args.layers, args.words, args.loop_layers = 4, 10_000, 4
    return args


def run(args: argparse.Namespace, *, use_filter: bool) -> dict:
    """One measurement: the filter bind, then the batched function on every layer and the
    per-head loop on the first ``loop_layers``; prints and returns the JSON records."""
    loop_layers = max(1, min(args.loop_layers, args.layers))
    d_head = args.d_model // args.heads
    g = torch.Generator().manual_seed(args.seed)
    E = torch.randn(args.words, args.d_model, generator=g) * 0.02
    scale = args.d_model**-0.5
    weights = [
        (torch.randn(args.heads, args.d_model, d_head, generator=g) * scale,
         torch.randn(args.kv_heads, args.d_model, d_head, generator=g) * scale)
        for _ in range(args.layers)
    ]
    setting = {
        "layers": args.layers, "n_words": args.words, "d_model": args.d_model,
        "heads": args.heads, "kv_heads": args.kv_heads, "d_head": d_head,
        "top_dims": args.top_dims, "top_k": args.top_k, "filter": use_filter,
        "threads": torch.get_num_threads(), "seed": args.seed, "torch": torch.__version__,
        "machine": platform.machine(),
    }
    t0, c0 = time.perf_counter(), time.process_time()
    bound = cosine_threshold(E, n_baseline=3000) if use_filter else None
    t_bind, c_bind = time.perf_counter() - t0, time.process_time() - c0
    bind = {"bench": "attention.filter_bind", **setting, "seconds": round(t_bind, 3),
            "cpu_s": round(c_bind, 3)}
    print(json.dumps(bind), flush=True)
    kw = dict(top_dims=args.top_dims, top_k=args.top_k, pair_filter=bound)
    qk_word_pairs(E, *weights[0], **kw)  # warm-up (allocator, threads)
    t_total = t_batched = t_loop = c_total = c_batched = c_loop = 0.0
    n_pairs = 0
    identical = True
    for li, (W_Q, W_K) in enumerate(weights):
        t0, c0 = time.perf_counter(), time.process_time()
        a = qk_word_pairs(E, W_Q, W_K, **kw)
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        t_total += dt
        c_total += dc
        n_pairs += len(a)
        if li < loop_layers:  # the reference loop on the first layers, interleaved
            t_batched += dt
            c_batched += dc
            t0, c0 = time.perf_counter(), time.process_time()
            b = per_head_loop(E, W_Q, W_K, **kw)
            t_loop += time.perf_counter() - t0
            c_loop += time.process_time() - c0
            identical &= same(a, b)
    rec = {
        "bench": "attention.word_pairs_all_heads", **setting,
        "batched_total_s": round(t_total, 3), "n_pairs": n_pairs,
        "compared_layers": loop_layers,
        "batched_s": round(t_batched, 3), "per_head_loop_s": round(t_loop, 3),
        "ratio": round(t_loop / t_batched, 3), "identical": identical,
        "batched_total_cpu_s": round(c_total, 3), "batched_cpu_s": round(c_batched, 3),
        "per_head_loop_cpu_s": round(c_loop, 3), "cpu_ratio": round(c_loop / c_batched, 3),
    }
    print(json.dumps(rec), flush=True)
    if not identical:
        raise SystemExit("batched and per-head results differ")
    return {"bind": bind, "pairs": rec}


def _regen_docs():
    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("regen_docs", root / "tools" / "regen_docs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def write_results_file(args: argparse.Namespace, runs: dict[str, dict],
                       argv: list[str]) -> None:
    """The docs' results file: settings and pair counts (values), times and ratios
    (measured), the table (block ``table``)."""
    regen = _regen_docs()
    label = {"filter": "embedding-cosine filter", "no_filter": "no filter"}
    rows = ["| run | batched, all layers | compared layers | per-head loop / batched |",
            "|---|---|---|---|"]
    for name, r in runs.items():
        p = r["pairs"]
        rows.append(
            f"| {label[name]} | {p['batched_total_s']:.1f} s wall, "
            f"{p['batched_total_cpu_s']:.1f} s CPU ({p['n_pairs']:,} pairs) | "
            f"{p['compared_layers']} of {p['layers']} | **{p['ratio']:.2f}x** wall "
            f"({p['per_head_loop_s']:.1f} s vs {p['batched_s']:.1f} s), "
            f"{p['cpu_ratio']:.2f}x CPU |")
    first = next(iter(runs.values()))["pairs"]
    values = {"setting": {k: first[k] for k in ("layers", "n_words", "d_model", "heads",
                                                "kv_heads", "d_head", "top_dims", "top_k",
                                                "compared_layers", "seed")},
              **{name: {"n_pairs": r["pairs"]["n_pairs"], "identical": r["pairs"]["identical"]}
                 for name, r in runs.items()}}
    measured = {
        "machine": regen.machine_note(), "threads": first["threads"], "torch": first["torch"],
        **{name: {"bind_s": r["bind"]["seconds"], "bind_cpu_s": r["bind"]["cpu_s"],
                  **{k: r["pairs"][k] for k in ("batched_total_s", "batched_total_cpu_s",
                                                "batched_s", "per_head_loop_s", "ratio",
                                                "batched_cpu_s", "per_head_loop_cpu_s",
                                                "cpu_ratio")}}
           for name, r in runs.items()},
    }
    cmd = " ".join(["python", "benchmarks/attention.py", *argv])
    regen.write_results(args.results, generated_by=cmd, values=values, measured=measured,
                        blocks={"table": "\n".join(rows)})
    print(f"wrote {args.results}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.results is None:
        run(args, use_filter=not args.no_filter)
        return
    runs = {"filter": run(args, use_filter=True), "no_filter": run(args, use_filter=False)}
    write_results_file(args, runs, argv)


if __name__ == "__main__":
    main()
