"""Benchmark: paired activation capture (PairCache) against two plain forward passes.

Builds a random-weight Llama-style model of moderate size (``shiftlens.testing`` saves it as a
Hugging Face directory with its tokenizer; the tuned twin is a perturbed copy) and boots both
through ``ModelPair.from_pretrained``, exactly like real checkpoints. Then:

* time: ``pair.run_with_cache`` over N prompts x T tokens with every residual hook
  (``resid_pre``, ``resid_mid``, ``resid_post`` of every layer) on both models, with
  ``reduce=None`` (store everything) and ``reduce="segment_mean"``, against the same batches
  run through both models with no hooks (``model(tokens, return_type=None)``, the call the
  capture makes). Rounds are interleaved and the fastest of each mode is kept; the ratio is
  capture time / plain time, measured in the same run (target <= 1.3).
* memory: each mode runs in a fresh subprocess; a sampling thread reads the process RSS
  (psutil) every 2 ms, and the peak minus the RSS after loading and one warm-up batch is
  reported, together with the exact bytes held by the returned cache. (tracemalloc cannot
  see torch's CPU allocations, hence RSS.)

Prints one JSON line per measurement. ``--quick`` runs a smaller configuration.

    python benchmarks/capture.py [--quick] [--threads 1]
    python benchmarks/capture.py --quick --results docs/results/bench-capture.json
        # also the results file docs/residual.md quotes (ratios, the table, where it ran)
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: Every measurement printed in this run, for ``--results``.
RECORDS: list[dict] = []


def emit(rec: dict) -> None:
    RECORDS.append(rec)
    print(json.dumps(rec), flush=True)


def build_pair_dirs(root: Path, d_model: int, n_layers: int, n_ctx: int) -> tuple[Path, Path]:
    from shiftlens.testing import perturbed_copy, tiny_model_dir

    base, tuned = root / "base", root / "tuned"
    if not (base / "config.json").exists():
        tiny_model_dir("llama", base, seed=0, n_layers=n_layers, d_model=d_model, n_ctx=n_ctx)
        perturbed_copy(base, tuned, scale=0.05, seed=1)
    return base, tuned


def make_prompts(tokenizer, n: int, n_tokens: int):
    """n prompts of exactly ``n_tokens`` tokens (BOS included) cut from the shipped texts."""
    from shiftlens import InstructionPrompt, default_prompts

    texts = [p.text for p in default_prompts()]
    out = []
    for i in range(n):
        long = " ".join(texts[(i + k) % len(texts)] for k in range(12))
        enc = tokenizer(long, add_special_tokens=False, return_offsets_mapping=True)
        k = n_tokens - 1
        text = long[: enc["offset_mapping"][k - 1][1]]
        while len(tokenizer(text, add_special_tokens=False)["input_ids"]) > k:
            text = text[:-1]
        cut = len(texts[i % len(texts)])
        out.append(InstructionPrompt(text, instruction=[(0, min(cut, len(text)))],
                                     context=[(min(cut, len(text) - 1), len(text))],
                                     id=f"bench-{i}"))
    return out


def resid_hooks(n_layers: int) -> list[str]:
    return [f"blocks.{l}.hook_{h}" for l in range(n_layers)
            for h in ("resid_pre", "resid_mid", "resid_post")]


def plain(pair, prompts, batch_size: int) -> None:
    """Both models, same right-padded batches as the capture, no hooks."""
    tps = [pair.tokenize(p) for p in prompts]
    pad = pair.tokenizer.pad_token_id or 0
    for _, model in pair:
        for i in range(0, len(tps), batch_size):
            sub = tps[i : i + batch_size]
            w = max(int(tp.tokens.shape[0]) for tp in sub)
            toks = torch.full((len(sub), w), pad, dtype=torch.long)
            for j, tp in enumerate(sub):
                toks[j, : tp.tokens.shape[0]] = tp.tokens
            with torch.no_grad():
                model(toks, return_type=None)


def capture(pair, prompts, batch_size: int, reduce):
    return pair.run_with_cache(prompts, resid_hooks(pair.cfg.n_layers), batch_size=batch_size,
                               reduce=reduce, with_reference=False, progress=False)


def cache_bytes(cache) -> int:
    return sum(t.numel() * t.element_size() for role in cache.data.values()
               for ts in role.values() for t in ts)


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def memory_child(args) -> None:
    """Run one mode in this (fresh) process and print its peak RSS delta as JSON."""
    from shiftlens import ModelPair

    torch.set_num_threads(args.threads)
    pair = ModelPair.from_pretrained(args.base, args.tuned)
    prompts = make_prompts(pair.tokenizer, args.prompts, args.tokens)
    reduce = None if args.child == "store_all" else "segment_mean"
    # warm-up with the same code path (first hook registration, allocator pools)
    if args.child == "plain":
        plain(pair, prompts[: args.batch_size], args.batch_size)
    else:
        capture(pair, prompts[: args.batch_size], args.batch_size, reduce)
    gc.collect()
    base_rss = _rss()
    peak = [base_rss]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.002)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    stored = 0
    if args.child == "plain":
        plain(pair, prompts, args.batch_size)
    else:
        cache = capture(pair, prompts, args.batch_size, reduce)
        stored = cache_bytes(cache)
    gc.collect()
    end = _rss()
    peak[0] = max(peak[0], end)
    stop.set()
    th.join()
    print(json.dumps({"peak_delta_bytes": peak[0] - base_rss, "stored_bytes": stored,
                      "retained_delta_bytes": end - base_rss}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small configuration (~20 s)")
    ap.add_argument("--prompts", type=int, default=None)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--d-model", type=int, default=None)
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (1 avoids contention on a shared machine)")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--no-timing", action="store_true")
    ap.add_argument("--workdir", type=str, default=None)
    ap.add_argument("--results", type=Path, default=None, metavar="PATH",
                    help="also write a docs results file (tools/regen_docs.py's format)")
    ap.add_argument("--child", type=str, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--base", type=str, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--tuned", type=str, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        memory_child(args)
        return
    t_start = time.perf_counter()
    args.prompts = args.prompts or (16 if args.quick else 64)
    args.d_model = args.d_model or 256
    args.layers = args.layers or (4 if args.quick else 6)
    args.rounds = args.rounds or (2 if args.quick else 3)
    torch.set_num_threads(args.threads)

    from shiftlens import ModelPair

    root = Path(args.workdir or tempfile.mkdtemp(prefix="shiftlens-bench-capture-"))
    root = root / f"llama-d{args.d_model}-l{args.layers}"
    base, tuned = build_pair_dirs(root, args.d_model, args.layers, max(256, args.tokens))
    pair = ModelPair.from_pretrained(base, tuned)
    prompts = make_prompts(pair.tokenizer, args.prompts, args.tokens)
    lengths = [int(pair.tokenize(p).tokens.shape[0]) for p in prompts]
    config = dict(model="LlamaForCausalLM (random weights)", d_model=args.d_model,
                  n_layers=args.layers, d_vocab=pair.cfg.d_vocab, n_prompts=len(prompts),
                  tokens_min=min(lengths), tokens_max=max(lengths),
                  batch_size=args.batch_size, hooks=len(resid_hooks(args.layers)),
                  threads=args.threads, rounds=args.rounds)

    if not args.no_timing:
        timing(pair, prompts, args, config)
    if not args.no_memory:
        memory(base, tuned, args, config)
    if args.results is not None:
        write_results_file(args.results, config, time.perf_counter() - t_start)


def _regen_docs():
    spec = importlib.util.spec_from_file_location("regen_docs", ROOT / "tools" / "regen_docs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def results_table(time_recs: dict, mem_recs: dict) -> str:
    """The Markdown table docs/residual.md shows, from this run's records."""
    rows = ["| measurement | PairCache | reference | ratio |", "|---|---|---|---|"]
    for mode, r in time_recs.items():
        rows.append(f"| time, `reduce={'None' if mode == 'store_all' else repr(mode)}`"
                    f"{' (store all)' if mode == 'store_all' else ''} | {r['seconds']:.2f} s | "
                    f"two plain forwards {r['reference_seconds']:.2f} s | **{r['ratio']:.2f}** |")
    for mode, r in mem_recs.items():
        what = "`segment_mean`" if mode == "segment_mean" else "plain forwards"
        held = (f" ({r['stored_mb']:.1f} MB held by the cache)" if r["stored_mb"] else "")
        rows.append(f"| peak RSS delta, {what} vs store-all | {r['peak_delta_mb']:.1f} MB{held} | "
                    f"{r['reference_peak_delta_mb']:.1f} MB ({r['reference_stored_mb']:.0f} MB "
                    f"held) | **{r['ratio']:.3f}** |")
    return "\n".join(rows) + "\n"


def write_results_file(path: Path, config: dict, seconds: float) -> None:
    """``--results``: this run's measurements as a docs results file."""
    regen = _regen_docs()
    drop = {"benchmark", "measure", "method", "reference", "memory_tool", "all_seconds",
            "all_reference_seconds", *config}
    times = {r["method"].split("=")[-1]: r for r in RECORDS if r["measure"] == "time"}
    mems = {r["method"]: r for r in RECORDS if r["measure"] == "peak_rss"}
    measured = {"config": config, "seconds": seconds, "machine": regen.machine_note(),
                "time": {m: {k: v for k, v in r.items() if k not in drop} for m, r in times.items()},
                "memory": {m: {k: v for k, v in r.items() if k not in drop}
                           for m, r in mems.items()}}
    cmd = " ".join(["python", "benchmarks/capture.py", *sys.argv[1:]])
    regen.write_results(path, generated_by=cmd, measured=measured,
                        blocks={"table": results_table(times, mems)})
    print(f"wrote {path}", file=sys.stderr)


def timing(pair, prompts, args, config) -> None:
    capture(pair, prompts[: args.batch_size], args.batch_size, None)  # warm-up
    plain(pair, prompts[: args.batch_size], args.batch_size)
    times: dict[str, list[float]] = {"plain": [], "store_all": [], "segment_mean": []}
    for _ in range(args.rounds):
        for mode in times:
            t0 = time.perf_counter()
            if mode == "plain":
                plain(pair, prompts, args.batch_size)
            else:
                capture(pair, prompts, args.batch_size, None if mode == "store_all" else "segment_mean")
            times[mode].append(time.perf_counter() - t0)
    t_plain = min(times["plain"])
    for mode in ("store_all", "segment_mean"):
        t = min(times[mode])
        emit(dict(
            benchmark="capture", measure="time", method=f"PairCache reduce={mode}",
            reference="two plain forward passes (no hooks)", seconds=round(t, 4),
            reference_seconds=round(t_plain, 4), ratio=round(t / t_plain, 3), target=1.3,
            all_seconds=[round(x, 3) for x in times[mode]],
            all_reference_seconds=[round(x, 3) for x in times["plain"]], **config,
        ))



def memory(base, tuned, args, config) -> None:
    mem = {}
    for mode in ("plain", "store_all", "segment_mean"):
        cmd = [sys.executable, __file__, "--child", mode, "--base", str(base), "--tuned",
               str(tuned), "--prompts", str(args.prompts), "--tokens", str(args.tokens),
               "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        mem[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    ref = mem["store_all"]
    for mode in ("segment_mean", "plain"):
        m = mem[mode]
        emit(dict(
            benchmark="capture", measure="peak_rss", method=f"{mode}",
            reference="PairCache reduce=None (store every activation)",
            peak_delta_mb=round(m["peak_delta_bytes"] / 2**20, 1),
            reference_peak_delta_mb=round(ref["peak_delta_bytes"] / 2**20, 1),
            retained_delta_mb=round(m["retained_delta_bytes"] / 2**20, 1),
            reference_retained_delta_mb=round(ref["retained_delta_bytes"] / 2**20, 1),
            ratio=round(m["peak_delta_bytes"] / max(ref["peak_delta_bytes"], 1), 4),
            stored_mb=round(m["stored_bytes"] / 2**20, 2),
            reference_stored_mb=round(ref["stored_bytes"] / 2**20, 2),
            memory_tool="psutil RSS sampled every 2 ms in a fresh subprocess, minus RSS after warm-up",
            **config,
        ))


if __name__ == "__main__":
    main()
