"""Benchmark: weight lenses streamed from checkpoint files against a loaded model.

What the weight lenses read - every layer's folded ``W_out`` (``mlp_out``), folded ``W_Q``/``W_K``
(``qk_weights``, GQA expanded) and the folded unembedding - computed two ways on a checkpoint of
at least 1 GB:

* ``streamed``: :class:`shiftlens.weights.CheckpointWeights` reads the safetensors files one
  tensor at a time (no model is loaded);
* ``loaded``: :func:`shiftlens.bridge.load_bridge` boots the whole model, then the same
  functions read the bridge.

Each mode runs in a fresh subprocess. Memory is the peak resident set size (a 2 ms sampling
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
"""

from __future__ import annotations

import argparse
import hashlib
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
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [line for line in res.stdout.splitlines() if line.startswith("{")]
    if res.returncode or not lines:
        raise SystemExit(f"{mode} failed:\n{res.stderr[-3000:]}")
    return json.loads(lines[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=str, default=None, help="a checkpoint directory")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workdir", type=str, default=None)
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
    config = {"checkpoint": source, "path": args.model, "files": len(ck.files),
              "checkpoint_bytes": ck.nbytes, "threads": args.threads}
    print(json.dumps({"config": config}))
    res = {m: run_child(m, args) for m in ("streamed", "loaded")}
    for r in res.values():
        print(json.dumps({"measure": "weight lenses, all layers", **r}))
    s, l_ = res["streamed"], res["loaded"]
    print(json.dumps({
        "measure": "streamed / loaded",
        "peak_memory_ratio": round(s["peak_delta_bytes"] / l_["peak_delta_bytes"], 4),
        "layers_only_peak_memory_ratio": round(
            s["layers_peak_delta_bytes"] / l_["layers_peak_delta_bytes"], 4),
        "streamed_peak_over_checkpoint": round(s["peak_delta_bytes"] / ck.nbytes, 4),
        "loaded_peak_over_checkpoint": round(l_["peak_delta_bytes"] / ck.nbytes, 4),
        "time_ratio": round(s["seconds"] / l_["seconds"], 3),
        "identical_results": s["sha256"] == l_["sha256"],
    }))
    print(json.dumps({"measure": "NaN/inf check at load", **run_child("finite", args)}))


if __name__ == "__main__":
    main()
