"""Benchmark: attribution_matrix (shiftlens.lenses.attribution.core) vs the paper code's loop.

A random-weight Llama-style model (d_model 512, 6 layers, 8 heads, d_mlp 1376, vocabulary
50,000; float32) is built with ``transformers`` in a temporary directory and booted through
``TransformerBridge`` like a checkpoint. For (N prompt tokens, M response tokens) =
(32, 16), (32, 64), (16, 256) it times, on the same random tokens:

- naive (the paper code's method): one forward pass computing full-vocabulary probabilities
  at every position, then one backward pass per response token of ``p(y_m)`` to the input
  embeddings (``retain_graph``), ``a[:, m] = e . grad``. Every backward pass costs the same,
  so for M > ``--naive-cols`` (default 32) only that many evenly spaced response tokens are
  run and the loop's time is extrapolated (``naive_extrapolated`` in the output; the
  difference is measured on those columns; ``--naive-cols 0`` runs them all);
- shiftlens: ``attribution_matrix(mode="auto")`` (logits only at response positions, batched
  forward- or reverse-mode products, see docs/attribution.md);
- unit: one forward + backward of the sequence (full logits, one probability's gradient).

Printed, one JSON line per configuration: time ratio naive/shiftlens, peak-memory ratio
shiftlens/naive (peak resident-set growth during the call, sampled every 2 ms, glibc told to
return large blocks to the OS), the max abs difference relative to the matrix scale
(max |a_naive|), the floor ratio time / (min(N, M) x unit), and the error of each float32
method against a float64 evaluation of the same weights (norms computed in float64 too). A first line compares one
forward with logits at the response positions only against full logits. ``--quick`` runs a
smaller model (d_model 256, 4 layers, vocabulary 20,000) on smaller (N, M).

A line ``measure: modes`` times the first configuration in both modes (forward: N products,
reverse: M) and gives the cost of one forward-mode product over one reverse-mode product.

Run: ``python benchmarks/attribution.py [--quick] [--threads 1] [--results FILE]``.
``--results docs/results/bench-attribution.json`` also writes the numbers docs/attribution.md
quotes (through ``tools/regen_docs.py``'s ``write_results``: timings, ratios and differences
as ``measured``, the table and the targets as ``blocks``, the machine and the wall time).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import shlex
import sys
import tempfile
import threading
import time
from pathlib import Path

# Large blocks go straight to mmap and back to the OS on free, so the resident set size tracks
# what is allocated (the default dynamic threshold lets freed blocks linger in the heap).
if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "131072"
    os.environ.setdefault("MALLOC_TRIM_THRESHOLD_", "131072")
    os.execv(sys.executable, [sys.executable, *sys.argv])

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

FULL = dict(d_model=512, n_layers=6, n_heads=8, d_mlp=1376, vocab=50_000,
            shapes=[(32, 16), (32, 64), (16, 256)])
QUICK = dict(d_model=256, n_layers=4, n_heads=4, d_mlp=688, vocab=20_000,
             shapes=[(16, 8), (16, 32), (8, 96)])


def build_model(cfg: dict, path: Path):
    """A random-weight LlamaForCausalLM saved with a small tokenizer and booted as a bridge."""
    import transformers as tf

    from shiftlens.bridge import load_bridge
    from shiftlens.testing import build_tokenizer

    build_tokenizer(path, "sentencepiece")  # token ids are drawn directly; its size is irrelevant
    hf_cfg = tf.LlamaConfig(
        vocab_size=cfg["vocab"], hidden_size=cfg["d_model"], intermediate_size=cfg["d_mlp"],
        num_hidden_layers=cfg["n_layers"], num_attention_heads=cfg["n_heads"],
        num_key_value_heads=cfg["n_heads"], max_position_embeddings=1024,
        tie_word_embeddings=False, bos_token_id=0, eos_token_id=1, pad_token_id=2,
    )
    torch.manual_seed(0)
    tf.LlamaForCausalLM(hf_cfg).save_pretrained(path)
    return load_bridge(path)


def _exact_rmsnorm() -> None:
    """Make HF's LlamaRMSNorm compute in its input dtype (it computes in float32 and casts
    back). A no-op for float32 models; lets the float64 reference be float64 throughout."""
    import transformers.models.llama.modeling_llama as ml

    def forward(self, hidden_states):
        var = hidden_states.pow(2).mean(-1, keepdim=True)
        return self.weight * (hidden_states * torch.rsqrt(var + self.variance_epsilon))

    ml.LlamaRMSNorm.forward = forward


def naive_attribution(
    model, tokens: torch.Tensor, n_prompt: int, cols: list[int] | None = None
) -> tuple[torch.Tensor, float, float]:
    """The paper code's method: full-vocabulary softmax at every position, one backward per
    response token through it (retaining the graph), gradient . embedding.

    Returns ``(matrix over the response tokens in cols, forward seconds, backward seconds)``.
    """
    state = {}

    def embed_hook(x, hook=None):
        e = x.detach().clone().requires_grad_(True)
        state["E"] = e
        return e

    t0 = time.perf_counter()
    with model.hooks(fwd_hooks=[("hook_embed", embed_hook)]):
        logits = model(tokens[None], return_type="logits")
    probs = torch.softmax(logits[0], dim=-1)  # [T, V]
    t1 = time.perf_counter()
    E = state["E"]
    M = tokens.shape[0] - n_prompt
    out = []
    for m in range(M) if cols is None else cols:
        t = n_prompt + m
        (g,) = torch.autograd.grad(probs[t - 1, tokens[t]], E, retain_graph=True)
        out.append((g[0, :n_prompt].double() * E[0, :n_prompt].detach().double()).sum(-1))
    return torch.stack(out, dim=1), t1 - t0, time.perf_counter() - t1


def one_forward_backward(model, tokens: torch.Tensor) -> None:
    state = {}

    def embed_hook(x, hook=None):
        e = x.detach().clone().requires_grad_(True)
        state["E"] = e
        return e

    with model.hooks(fwd_hooks=[("hook_embed", embed_hook)]):
        logits = model(tokens[None], return_type="logits")
    p = torch.softmax(logits[0, -2], dim=-1)[tokens[-1]]
    torch.autograd.grad(p, state["E"])


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Peak growth of the resident set size while the block runs (sampled every 2 ms)."""

    def __enter__(self):
        gc.collect()
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._poll, daemon=True)
        self._t.start()
        return self

    def _poll(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self.peak = max(self.peak, _rss())
        self._stop.set()
        self._t.join()

    @property
    def mb(self) -> float:
        return (self.peak - self.base) / 2**20


def timed(fn):
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t0
    return dt, mem.mb, out


ROOT = Path(__file__).resolve().parents[1]


def _regen_docs():
    """tools/regen_docs.py as a module (its ``write_results`` and ``machine_note``)."""
    spec = importlib.util.spec_from_file_location("regen_docs", ROOT / "tools" / "regen_docs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _e(x: float | None) -> str:
    return "-" if x is None else f"{x:.1e}"


def table(lines: list[dict]) -> str:
    """The attribution lines as the Markdown table docs/attribution.md shows."""
    rows = ["| (N, M) | mode | naive s | shiftlens s | time ratio | peak-memory ratio "
            "| rel. max\\|Δ\\| | floor ratio | naive vs f64 | shiftlens vs f64 |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for ln in lines:
        naive = f"{ln['t_naive_s']:.1f}"
        if ln["naive_extrapolated"]:
            naive += (f" ({ln['naive_columns_run']} of {ln['M']} columns run, "
                      "extrapolated)")
        rows.append(
            f"| ({ln['N']}, {ln['M']}) | {ln['mode']} | {naive} | {ln['t_shiftlens_s']:.1f} "
            f"| **{ln['time_ratio']:.2f}x** | {ln['peak_ratio']:.2f} "
            f"| {_e(ln['rel_max_abs_diff'])} | {ln['floor_ratio']:.2f} "
            f"| {_e(ln.get('rel_err_naive_vs_f64'))} | {_e(ln.get('rel_err_shiftlens_vs_f64'))} |")
    return "\n".join(rows)


def targets(lines: list[dict], quick: bool) -> str:
    """The issue's targets, met or not in this run, as Markdown bullets."""
    out = []
    if not quick:
        by = {(ln["N"], ln["M"]): ln for ln in lines}
        parts = []
        for shape, want in (((32, 64), 2.0), ((16, 256), 4.0)):
            if shape in by:
                r = by[shape]["time_ratio"]
                parts.append(f"≥ {want:g}x at {shape}: {'met' if r >= want else 'NOT met'} "
                             f"({r:.2f}x)")
        out.append("- Targets: " + "; ".join(parts) + ".")
    slower = [ln for ln in lines if ln["time_ratio"] < 1]
    out.append("- Never slower than the loop: " + (
        "met." if not slower else f"NOT met at {[(ln['N'], ln['M']) for ln in slower]}."))
    worst = max(ln["peak_ratio"] for ln in lines)
    out.append(f"- Peak memory ≤ 2x the loop's: {'met' if worst <= 2 else 'NOT met'} "
               f"(at most {worst:.2f}x).")
    rel = [ln["rel_max_abs_diff"] for ln in lines]
    out.append(f"- Relative difference ≤ 1e-6: {'met' if max(rel) <= 1e-6 else '**not** met'} "
               f"({min(rel):.1e} to {max(rel):.1e}).")
    f64 = [ln for ln in lines if "rel_err_naive_vs_f64" in ln]
    if f64:
        closer = sum(ln["rel_err_shiftlens_vs_f64"] <= ln["rel_err_naive_vs_f64"] for ln in f64)
        out.append(
            f"- Against a float64 evaluation of the same weights: the naive loop is "
            f"{min(ln['rel_err_naive_vs_f64'] for ln in f64):.1e} to "
            f"{max(ln['rel_err_naive_vs_f64'] for ln in f64):.1e} away, shiftlens "
            f"{min(ln['rel_err_shiftlens_vs_f64'] for ln in f64):.1e} to "
            f"{max(ln['rel_err_shiftlens_vs_f64'] for ln in f64):.1e}; shiftlens is the closer "
            f"one in {closer} of {len(f64)} configurations.")
    return "\n".join(out)


def write_results_file(path: Path, head: dict, modes: dict, lines: list[dict], argv: list[str],
                       wall: float, quick: bool) -> None:
    regen = _regen_docs()
    measured = {
        "machine": regen.machine_note(), "wall_s": round(wall, 1),
        "settings": " ".join(shlex.quote(a) for a in argv), "model": lines[0]["model"],
        "threads": lines[0]["threads"], "torch": lines[0]["torch"],
        "head": {k: v for k, v in head.items() if k.startswith(("t_", "ratio", "N", "M"))},
        "modes": {k: v for k, v in modes.items() if k not in ("bench", "device", "cpu",
                                                             "torch", "model", "quick",
                                                             "threads", "measure")},
        "configs": [{k: v for k, v in ln.items() if k not in ("bench", "device", "cpu", "torch",
                                                             "model", "quick", "threads",
                                                             "measure")} for ln in lines],
        "max_peak_ratio": max(ln["peak_ratio"] for ln in lines),
        "min_time_ratio": min(ln["time_ratio"] for ln in lines),
    }
    rel = [ln["rel_max_abs_diff"] for ln in lines]
    measured["rel_max_abs_diff_min"], measured["rel_max_abs_diff_max"] = min(rel), max(rel)
    for key in ("rel_err_naive_vs_f64", "rel_err_shiftlens_vs_f64"):
        xs = [ln[key] for ln in lines if key in ln]
        if xs:
            measured[f"{key}_min"], measured[f"{key}_max"] = min(xs), max(xs)
    try:
        rel_path = path.resolve().relative_to(ROOT)
    except ValueError:
        rel_path = path
    cmd = ("python benchmarks/attribution.py "
           + " ".join(shlex.quote(a) for a in argv if a != str(path))).replace(
        "--results", f"--results {rel_path}")
    regen.write_results(path, generated_by=cmd, measured=measured,
                        blocks={"table": table(lines), "targets": targets(lines, quick)})
    print(f"wrote {path}", file=sys.stderr)


def main() -> None:
    t_start = time.perf_counter()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller model and shapes (seconds)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--chunk-size", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--naive-cols", type=int, default=32,
                    help="run the naive loop on at most this many response tokens (evenly "
                         "spaced) and extrapolate its time linearly; 0 = all (slow: minutes)")
    ap.add_argument("--no-f64", action="store_true",
                    help="skip the float64 reference (error of each float32 method)")
    ap.add_argument("--results", type=Path, default=None, metavar="FILE",
                    help="also write the numbers as a docs results file "
                         "(docs/results/bench-attribution.json)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = QUICK if args.quick else FULL

    from shiftlens.lenses.attribution.core import attribution_matrix

    _exact_rmsnorm()
    with tempfile.TemporaryDirectory(prefix="shiftlens-bench-attr-") as tmp:
        t0 = time.perf_counter()
        model = build_model(cfg, Path(tmp) / "model")
        build_s = time.perf_counter() - t0
        model64 = None
        if not args.no_f64:
            from shiftlens.bridge import load_bridge

            model64 = load_bridge(Path(tmp) / "model", dtype=torch.float64)
    common = {
        "bench": "attribution", "device": "cpu", "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
        "model": f"llama d_model={cfg['d_model']} layers={cfg['n_layers']} vocab={cfg['vocab']}",
        "quick": args.quick,
    }
    g = torch.Generator().manual_seed(args.seed)

    # warm-up (first-call overheads of vmap/jvp and autograd), not timed
    warm = torch.randint(3, cfg["vocab"], (12,), generator=g)
    attribution_matrix(model, warm, 6, mode="forward", chunk_size=args.chunk_size)
    attribution_matrix(model, warm, 6, mode="reverse", chunk_size=args.chunk_size)

    # logits at the response positions only vs full logits (one forward, no grad)
    N, M = cfg["shapes"][0]
    toks = torch.randint(3, cfg["vocab"], (N + M,), generator=g)
    q = torch.arange(N - 1, N + M - 1)
    with torch.no_grad():
        reps = []
        for kw in ({"logits_to_keep": q}, {}):
            best = float("inf")
            for _ in range(2):
                t = time.perf_counter()
                model(toks[None], return_type="logits", **kw)
                best = min(best, time.perf_counter() - t)
            reps.append(best)
    head = {**common, "measure": "head", "N": N, "M": M,
            "t_forward_response_logits_s": round(reps[0], 4),
            "t_forward_full_logits_s": round(reps[1], 4),
            "ratio_full_over_response": round(reps[1] / reps[0], 2),
            "build_s": round(build_s, 1)}
    print(json.dumps(head), flush=True)

    # one forward-mode product (a JVP per prompt token) vs one reverse-mode product (a VJP per
    # response token), at the first shape: best of 2 of each mode
    t_mode = {}
    for mode in ("forward", "reverse"):
        t_mode[mode] = min(
            timed(lambda mode=mode: attribution_matrix(model, toks, N, mode=mode,
                                                       chunk_size=args.chunk_size))[0]
            for _ in range(2))
    modes = {**common, "measure": "modes", "N": N, "M": M,
             "t_forward_s": round(t_mode["forward"], 3), "t_reverse_s": round(t_mode["reverse"], 3),
             "forward_over_reverse_per_product": round(
                 (t_mode["forward"] / N) / (t_mode["reverse"] / M), 2)}
    print(json.dumps(modes), flush=True)

    lines = []

    for N, M in cfg["shapes"]:
        toks = torch.randint(3, cfg["vocab"], (N + M,), generator=g)
        unit = min(timed(lambda toks=toks: one_forward_backward(model, toks))[0] for _ in range(2))
        t_ours, mem_ours, (a, _, info) = timed(
            lambda toks=toks, N=N: attribution_matrix(model, toks, N, mode="auto",
                                                     chunk_size=args.chunk_size))
        k = M if not args.naive_cols or M <= args.naive_cols else args.naive_cols
        cols = torch.linspace(0, M - 1, k).round().long().tolist()
        _, mem_naive, (ref, t_fw, t_bw) = timed(
            lambda toks=toks, N=N, cols=cols: naive_attribution(model, toks, N, cols))
        t_naive = t_fw + t_bw * M / len(cols)  # backward passes all cost the same
        a_cols = a[:, cols]
        scale = float(ref.abs().max())
        rel = float((a_cols.double() - ref).abs().max()) / scale
        extra = {}
        if model64 is not None:  # float64 reference: how far is each float32 method from it?
            ref64, _, _ = attribution_matrix(model64, toks, N, mode="forward", chunk_size=8)
            ref64 = ref64[:, cols]
            s64 = float(ref64.abs().max())
            extra = {
                "rel_err_naive_vs_f64": float(f"{float((ref - ref64).abs().max()) / s64:.3g}"),
                "rel_err_shiftlens_vs_f64": float(
                    f"{float((a_cols.double() - ref64).abs().max()) / s64:.3g}"),
            }
        line = {
            **common, "measure": "attribution", "N": N, "M": M, "mode": info["mode"],
            "chunk_size": args.chunk_size,
            "naive_columns_run": len(cols), "naive_extrapolated": len(cols) < M,
            "t_naive_s": round(t_naive, 3), "t_shiftlens_s": round(t_ours, 3),
            "time_ratio": round(t_naive / t_ours, 2),
            "peak_mb_naive": round(mem_naive, 1), "peak_mb_shiftlens": round(mem_ours, 1),
            "peak_ratio": round(mem_ours / max(mem_naive, 1e-9), 3),
            "rel_max_abs_diff": float(f"{rel:.3g}"),
            "t_unit_fwd_bwd_s": round(unit, 4),
            "floor_ratio": round(t_ours / (min(N, M) * unit), 3),
            **extra,
        }
        lines.append(line)
        print(json.dumps(line), flush=True)
        del a, ref
        gc.collect()
    if args.results is not None:
        write_results_file(args.results, head, modes, lines, sys.argv[1:],
                           time.perf_counter() - t_start, args.quick)


if __name__ == "__main__":
    main()
