"""Benchmark: crosscoder training throughput (activations/s) and peak memory, streamed from disk
against held in memory.

Synthetic paired activations (``rows x 2 x d_model`` float32, Gaussian, the tuned half a
perturbed copy of the base half) are written once to an activation store
(:class:`~shiftlens.lenses.crosscoder.store.ActivationWriter`, ``--shard-rows`` rows a shard).
Then, each in a fresh subprocess (so that one mode's allocations do not hide the other's):

* ``memory``: :class:`~shiftlens.lenses.crosscoder.store.InMemoryActivations` over the whole
  tensor (the baseline: what one would do without a store);
* ``disk``: :class:`~shiftlens.lenses.crosscoder.store.ActivationStore` over the files (one shard
  in memory at a time, each shard's SHA-256 checked when read).

Each trains the same crosscoder (``train_crosscoder``: BatchTopK, AuxK, Adam, explicit device and
dtype) for ``--steps`` steps of ``--batch`` rows. Reported per mode: training throughput
(activations/s: rows x 2 models per second of the step loop, after a warm-up run excluded),
and peak resident memory above the RSS after the imports (``VmHWM`` after a reset through
``/proc/self/clear_refs``; tracemalloc cannot see torch's CPU allocations), next to the bytes
of the store and of one shard. The ratios disk / memory are printed last.

Prints one JSON line per measurement. ``--quick`` runs a smaller configuration. ``--results
PATH`` also writes a results file (``tools/regen_docs.py``'s ``write_results``: the settings as
values, throughputs, peaks and ratios as measured, with where it ran, and the table as the block
``table``) that docs/crosscoder.md's markers quote.

    python benchmarks/crosscoder.py [--quick] [--threads 1] [--device cpu] [--dtype float32]
    python benchmarks/crosscoder.py --quick --results docs/results/bench-crosscoder.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]

_CHILD = r"""
import json, sys, time, torch
args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
from shiftlens.lenses.crosscoder.core import CrosscoderConfig
from shiftlens.lenses.crosscoder.store import ActivationStore, InMemoryActivations
from shiftlens.lenses.crosscoder.train import train_crosscoder

def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

cfg = CrosscoderConfig(n_latents=args["latents"], k=args["k"], steps=args["steps"],
                       batch_size=args["batch"], checkpoint_every=0, log_every=10**6,
                       norm_rows=4096, threshold_batches=4, warmup_steps=10)
dtype = getattr(torch, args["dtype"])
warm = cfg.replace(steps=5)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
base = status("VmRSS")
if args["mode"] == "memory":
    store = ActivationStore(args["store"])
    acts = torch.cat([a for _, a in store.rows(65536)])
    src = InMemoryActivations(acts, shard_rows=args["shard_rows"])
else:
    src = ActivationStore(args["store"])
train_crosscoder(src, warm, device=args["device"], dtype=dtype, progress=False)
t0 = time.perf_counter()
cc = train_crosscoder(src, cfg, device=args["device"], dtype=dtype, progress=False)
wall = time.perf_counter() - t0
print(json.dumps(dict(mode=args["mode"], loop_s=cc.info["train_seconds"], wall_s=wall,
                      rows_per_s=cc.info["rows_per_second"],
                      activations_per_s=2 * cc.info["rows_per_second"],
                      peak_bytes=status("VmHWM") - base)))
"""


def write_store(path: Path, rows: int, d_model: int, shard_rows: int) -> None:
    import torch

    from shiftlens.lenses.crosscoder.store import ActivationWriter

    g = torch.Generator().manual_seed(0)
    with ActivationWriter(path, d_model, shard_rows=shard_rows, meta={"synthetic": True}) as w:
        for k in range(0, rows, 4096):
            n = min(4096, rows - k)
            xb = torch.randn(n, d_model, generator=g)
            xt = xb + 0.3 * torch.randn(n, d_model, generator=g)
            w.add(torch.stack([xb, xt], 1))


def run_mode(mode: str, cfg: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(dict(cfg, mode=mode))],
                         capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(res: dict[str, dict], ratios: dict[str, float]) -> str:
    """The Markdown table of docs/crosscoder.md: throughput and peak memory per source, ratios."""
    def row(label: str, r: dict) -> str:
        return (f"| {label} | {r['activations_per_s']:,.0f} activations/s "
                f"({r['rows_per_s']:,.0f} rows/s) | {r['peak_bytes'] / 2**20:.1f} MiB |")

    return "\n".join([
        "| source | throughput | peak RSS above imports |", "|---|---|---|",
        row("in memory (`InMemoryActivations`)", res["memory"]),
        row("streamed (`ActivationStore`)", res["disk"]),
        f"| ratio streamed / in memory | **{ratios['throughput_disk_over_memory']:.2f}** | "
        f"**{ratios['peak_disk_over_memory']:.2f}** |"])


def write_results_file(path: Path, argv: list[str], store: dict, res: dict[str, dict],
                       ratios: dict[str, float]) -> None:
    """``path`` in the format of ``docs/results/NAME.json`` (through tools/regen_docs.py)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("regen_docs", ROOT / "tools" / "regen_docs.py")
    regen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(regen)
    settings = {k: store[k] for k in ("rows", "d_model", "shards", "store_mib", "shard_mib",
                                      "n_latents", "k", "batch", "steps", "device", "dtype",
                                      "threads")}
    measured = {"machine": regen.machine_note(), "write_rows_per_s": store["write_rows_per_s"],
                **ratios}
    for mode, r in res.items():
        measured[mode] = {k: r[k] for k in ("rows_per_s", "activations_per_s", "loop_s")}
        measured[mode]["peak_mib"] = r["peak_bytes"] / 2**20
    rel = path.resolve().relative_to(ROOT) if path.resolve().is_relative_to(ROOT) else path
    cmd = " ".join(["python benchmarks/crosscoder.py", *argv, "--results", str(rel)])
    regen.write_results(path, generated_by=cmd, values=settings, measured=measured,
                        blocks={"table": table(res, ratios)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smaller configuration")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float64"))
    ap.add_argument("--results", type=Path, default=None, metavar="PATH",
                    help="also write a results file (docs/results/bench-crosscoder.json)")
    a = ap.parse_args()
    argv = [x for x in ("--quick",) if a.quick]
    argv += [f"--{k} {v}" for k, v, d in (("threads", a.threads, 1), ("device", a.device, "cpu"),
                                          ("dtype", a.dtype, "float32")) if v != d]
    if not sys.platform.startswith("linux"):
        raise SystemExit("reads /proc/self/status: Linux only")
    if a.quick:
        rows, d_model, latents, steps, batch, shard = 65536, 128, 1024, 100, 512, 8192
    else:
        rows, d_model, latents, steps, batch, shard = 262144, 256, 2048, 300, 1024, 16384
    with tempfile.TemporaryDirectory(prefix="shiftlens-bench-cc-") as tmp:
        store = Path(tmp) / "acts"
        t0 = time.perf_counter()
        write_store(store, rows, d_model, shard)
        write_s = time.perf_counter() - t0
        store_bytes = rows * 2 * d_model * 4
        cfg = dict(store=str(store), threads=a.threads, device=a.device, dtype=a.dtype,
                   latents=latents, k=32, steps=steps, batch=batch, shard_rows=shard)
        store_line = dict(what="store", rows=rows, d_model=d_model, shards=rows // shard,
                          store_mib=store_bytes / 2**20,
                          shard_mib=shard * 2 * d_model * 4 / 2**20,
                          write_rows_per_s=rows / write_s, n_latents=latents, k=32,
                          batch=batch, steps=steps, device=a.device, dtype=a.dtype,
                          threads=a.threads)
        print(json.dumps(store_line))
        res = {}
        for mode in ("memory", "disk"):
            r = res[mode] = run_mode(mode, cfg)
            print(json.dumps(dict(what="train", **r, peak_mib=r["peak_bytes"] / 2**20)))
        ratios = dict(
            throughput_disk_over_memory=res["disk"]["rows_per_s"] / res["memory"]["rows_per_s"],
            peak_disk_over_memory=res["disk"]["peak_bytes"] / res["memory"]["peak_bytes"],
            peak_disk_over_store=res["disk"]["peak_bytes"] / store_bytes)
        print(json.dumps(dict(what="ratios", **ratios,
                              activations_per_s_disk=res["disk"]["activations_per_s"])))
    if a.results is not None:
        write_results_file(a.results, argv, store_line, res, ratios)


if __name__ == "__main__":
    main()
