"""Benchmark: weight lenses streamed from checkpoint files against a loaded model.

What the weight lenses read - every layer's folded ``W_out`` (``mlp_out``), folded ``W_Q``/``W_K``
(``qk_weights``, GQA expanded) and the folded unembedding - computed two ways on a checkpoint of
at least 1 GB:

* ``streamed``: :class:`shiftlens.weights.CheckpointWeights` reads the safetensors files one
  tensor at a time (no model is loaded);
* ``loaded``: :func:`shiftlens.bridge.load_bridge` boots the whole model, then the same
  functions read the bridge.

Each mode runs in a fresh subprocess, glibc told to return large freed blocks to the OS
(``MALLOC_MMAP_THRESHOLD_``). Memory is the peak resident set size (a 2 ms sampling
thread, and ``ru_maxrss`` for spikes it misses) minus the RSS after both code paths were warmed
up on the embedded pair (imports and lazily loaded modeling code are not counted), reported for
the layer loop alone and with the unembedding (whose folded copy is as large as it is); time is
wall time of the whole mode. The two modes' results are hashed and must be identical (the
streamed path is exact). A third line times the load-time NaN/infinity check
(:func:`shiftlens.bridge.check_finite_weights`) against the load itself.

The checkpoint: ``--model DIR`` if given; else the converted gemma-3-270m when its package is
installed (``requirements/real.txt``, 1.07 GB in float32); else a random-weight Llama written
here in 4 shards (16 layers, d_model 1024, d_mlp 4096, vocab 32000: 1.24 GB in float32).

Prints one JSON line per measurement:

    python benchmarks/weightfiles.py [--model DIR] [--threads 1] [--workdir DIR]
    python benchmarks/weightfiles.py --results docs/results/bench-weightfiles.json

``--results PATH`` also writes what docs/scale.md quotes (through ``tools/regen_docs.py``'s
``write_results``): every measurement and ratio under ``measured``, the table as the block
``table``, the machine it ran on; the NaN/infinity check is then also timed on one model of the
embedded pair.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402


def build_random_llama(root: Path, *, d_model: int = 1024, d_mlp: int = 4096, n_layers: int = 16,
                       vocab: int = 32000, shards: int = 4, seed: int = 0) -> Path:
    """A sharded random-weight Llama checkpoint written tensor by tensor (never all in memory)."""
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    from shiftlens.bridge import empty_model
    from shiftlens.testing import build_tokenizer

    out = root / f"llama-d{d_model}-l{n_layers}-v{vocab}"
    if (out / "model.safetensors.index.json").exists():
        return out
    cfg = LlamaConfig(hidden_size=d_model, intermediate_size=d_mlp, num_hidden_layers=n_layers,
                      num_attention_heads=16, num_key_value_heads=4, vocab_size=vocab,
                      max_position_embeddings=512, tie_word_embeddings=False,
                      bos_token_id=0, eos_token_id=1, pad_token_id=2)
    out.mkdir(parents=True)
    cfg.save_pretrained(out)
    build_tokenizer(out, "sentencepiece")
    names = [(n, tuple(p.shape)) for n, p in empty_model(cfg).named_parameters()]
    g = torch.Generator().manual_seed(seed)
    per = -(-len(names) // shards)
    weight_map, total = {}, 0
    for s in range(shards):
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        sd = {}
        for n, shape in names[s * per:(s + 1) * per]:
            t = torch.randn(shape, generator=g)
            sd[n] = 1 + 0.1 * t if "norm" in n else 0.02 * t
            weight_map[n] = fname
        total += sum(t.numel() * 4 for t in sd.values())
        save_file(sd, out / fname, metadata={"format": "pt"})
        del sd
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    return out


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _digest(h, t: torch.Tensor) -> None:
    h.update(t.contiguous().numpy())  # the buffer itself, no copy


def child(args) -> None:
    """One mode in this fresh process; prints a JSON line."""
    import shiftlens.bridge as bridge
    import shiftlens.weights as weights

    torch.set_num_threads(args.threads)
    # warm both code paths on the embedded pair (same architecture): imports, lazily loaded
    # modeling code and TransformerLens adapters are then outside the measurement
    from shiftlens.zoo import pair_dirs

    toy = pair_dirs()[0]
    for src in (weights.CheckpointWeights(toy), bridge.load_bridge(toy)):
        weights.mlp_out(src, 0), weights.qk_weights(src, 0), weights.unembedding(src)
    del src
    import gc

    gc.collect()
    base = _rss()
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.002)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t0 = time.perf_counter()
    out: dict = {"mode": args.child}
    if args.child == "finite":
        model = bridge.load_bridge(args.model, check_finite=False)
        t_load = time.perf_counter() - t0
        times = []
        for _ in range(3):
            t1 = time.perf_counter()
            bridge.check_finite_weights(model)
            times.append(time.perf_counter() - t1)
        n = sum(p.numel() for p in model.original_model.parameters())
        out.update(load_seconds=round(t_load, 3), check_seconds=round(min(times), 4),
                   check_over_load=round(min(times) / t_load, 4), n_parameters=n,
                   check_gb_per_s=round(4 * n / min(times) / 1e9, 2))
    else:
        src = (weights.CheckpointWeights(args.model) if args.child == "streamed"
               else bridge.load_bridge(args.model))
        h = hashlib.sha256()
        for layer in range(src.cfg.n_layers):
            _digest(h, weights.mlp_out(src, layer))
            for w in weights.qk_weights(src, layer):
                _digest(h, w)
        t_layers = time.perf_counter() - t0
        layers_peak = max(peak[0], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        _digest(h, weights.unembedding(src))
        out.update(seconds=round(time.perf_counter() - t0, 3), layers_seconds=round(t_layers, 3),
                   layers_peak_delta_bytes=layers_peak - base, sha256=h.hexdigest())
    stop.set()
    th.join()
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out["peak_delta_bytes"] = max(peak[0], maxrss) - base
    print(json.dumps(out))


def run_child(mode: str, args) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--model", str(args.model),
           "--threads", str(args.threads)]
    # glibc told to return large freed blocks to the OS (otherwise its dynamic mmap threshold
    # keeps each freed layer buffer in the heap and the RSS measures the allocator, not the
    # tensors held)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
    res = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    lines = [line for line in res.stdout.splitlines() if line.startswith("{")]
    if res.returncode or not lines:
        raise SystemExit(f"{mode} failed:\n{res.stderr[-3000:]}")
    return json.loads(lines[-1])


def _mb(b: float) -> str:
    return f"{b / 1e6:,.0f} MB"


def results_table(config: dict, res: dict, ratio: dict) -> str:
    """The streamed-vs-loaded table of docs/scale.md."""
    s, l_ = res["streamed"], res["loaded"]
    same = "identical (SHA-256 of every tensor)" if ratio["identical_results"] else "DIFFERENT"
    return "\n".join([
        "| | streamed (`CheckpointWeights`) | loaded (`load_bridge` + bridge) | ratio |",
        "| --- | ---: | ---: | ---: |",
        f"| every layer's `mlp_out` + `qk_weights` | {_mb(s['layers_peak_delta_bytes'])} "
        f"(one layer's tensors: {_mb(config['layer_bytes'])}) "
        f"| {_mb(l_['layers_peak_delta_bytes'])} | {ratio['layers_only_peak_memory_ratio']:.2g} |",
        f"| + folded unembedding ({_mb(config['unembed_bytes'])}, copied once when folded) "
        f"| {_mb(s['peak_delta_bytes'])} | {_mb(l_['peak_delta_bytes'])} "
        f"| {ratio['peak_memory_ratio']:.2g} |",
        f"| wall time, whole mode | {s['seconds']:.1f} s | {l_['seconds']:.1f} s "
        f"| {ratio['time_ratio']:.2g} |",
        f"| results | {same} | | |",
    ])


def write_results(path: Path, command: str, config: dict, res: dict, ratio: dict,
                  finite: dict, finite_toy: dict) -> None:
    spec = importlib.util.spec_from_file_location(
        "regen_docs", Path(__file__).resolve().parents[1] / "tools" / "regen_docs.py")
    regen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(regen)
    config = {k: v for k, v in config.items() if k != "path"}
    config.update(checkpoint_gb=config["checkpoint_bytes"] / 1e9,
                  layer_mb=config["layer_bytes"] / 1e6, unembed_mb=config["unembed_bytes"] / 1e6)
    res = {mode: {**r, **{k.replace("_bytes", "_mb"): v / 1e6 for k, v in r.items()
                          if k.endswith("_bytes")}} for mode, r in res.items()}
    measured = {"config": config, **res, "ratio": ratio, "finite": finite,
                "finite_embedded_pair": finite_toy, "machine": regen.machine_note()}
    regen.write_results(path, generated_by=command, measured=measured,
                        blocks={"table": results_table(config, res, ratio)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=str, default=None, help="a checkpoint directory")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workdir", type=str, default=None)
    ap.add_argument("--results", type=Path, default=None, metavar="PATH",
                    help="also write the docs' results file (docs/results/bench-weightfiles.json)")
    ap.add_argument("--child", type=str, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    from shiftlens.weightfiles import SafetensorsCheckpoint

    source = "given"
    if args.model is None:
        from shiftlens.checkpoints import packaged_available, packaged_hf_dir

        if packaged_available("gemma3-270m"):
            args.model, source = str(packaged_hf_dir("gemma3-270m", progress=False)), "gemma-3-270m"
        else:
            root = Path(args.workdir or tempfile.mkdtemp(prefix="shiftlens-bench-weightfiles-"))
            args.model, source = str(build_random_llama(root)), "random Llama"
    ck = SafetensorsCheckpoint(args.model)
    names = ck.keys()
    layer0 = [n for n in names if ".layers.0." in n]
    unembed = [n for n in names if n.startswith("lm_head.")] or \
        [n for n in names if "embed_tokens" in n]
    config = {"checkpoint": source, "path": args.model, "files": len(ck.files),
              "checkpoint_bytes": ck.nbytes, "threads": args.threads,
              "layer_bytes": sum(ck.entry(n).nbytes for n in layer0),
              "unembed_bytes": sum(ck.entry(n).nbytes for n in unembed)}
    print(json.dumps({"config": config}))
    res = {m: run_child(m, args) for m in ("streamed", "loaded")}
    for r in res.values():
        print(json.dumps({"measure": "weight lenses, all layers", **r}))
    s, l_ = res["streamed"], res["loaded"]
    ratio = {
        "peak_memory_ratio": round(s["peak_delta_bytes"] / l_["peak_delta_bytes"], 4),
        "layers_only_peak_memory_ratio": round(
            s["layers_peak_delta_bytes"] / l_["layers_peak_delta_bytes"], 4),
        "streamed_peak_over_checkpoint": round(s["peak_delta_bytes"] / ck.nbytes, 4),
        "loaded_peak_over_checkpoint": round(l_["peak_delta_bytes"] / ck.nbytes, 4),
        "time_ratio": round(s["seconds"] / l_["seconds"], 3),
        "identical_results": s["sha256"] == l_["sha256"],
    }
    print(json.dumps({"measure": "streamed / loaded", **ratio}))
    finite = run_child("finite", args)
    print(json.dumps({"measure": "NaN/inf check at load", **finite}))
    if args.results is not None:
        from shiftlens.zoo import pair_dirs

        toy = argparse.Namespace(**{**vars(args), "model": str(pair_dirs()[0])})
        finite_toy = run_child("finite", toy)
        print(json.dumps({"measure": "NaN/inf check at load, embedded pair", **finite_toy}))
        write_results(args.results,
                      f"python benchmarks/weightfiles.py --results {args.results.as_posix()}",
                      config, res, ratio, finite, finite_toy)


if __name__ == "__main__":
    main()
