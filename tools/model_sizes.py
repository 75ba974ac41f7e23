"""Exact parameter counts and weight memory of the pairs shiftlens targets (docs/scale.md).

Every number in the memory table of docs/scale.md comes from this script:

    .venv/bin/python tools/model_sizes.py            # the markdown table
    .venv/bin/python tools/model_sizes.py --json     # one JSON line per model
    .venv/bin/python tools/model_sizes.py --results docs/results/model-sizes.json

``--results`` writes the numbers and tables the docs quote (docs/scale.md, docs/real-models.md)
through ``tools/regen_docs.py``'s ``write_results``: per model (``SLUGS``) its counts and sizes,
the two tables of docs/scale.md and the sizes table of docs/real-models.md as blocks, and the
Llama-3.1-70B placement on two 80 GiB GPUs that ``plan_device_map`` computes (its seconds and
the growth of the peak RSS while planning are measured, the rest is deterministic).

Each model is built from its published ``config.json`` values (written out below: nothing is
downloaded) as an empty model on the meta device (``shiftlens.bridge.empty_model``: no memory),
its parameters counted (tied parameters once), and the count checked against a closed-form
formula from the shapes, so a wrong config value or a miscounted tie cannot go unnoticed.
Bytes are parameters times the dtype's size (GB = 1e9 bytes); activations, caches and framework
overhead are not included.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# published config.json values (hub ids in the keys); tie = tie_word_embeddings
CONFIGS: dict[str, dict] = {
    "HuggingFaceTB/SmolLM2-135M": dict(
        kind="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, vocab_size=49152, tie=True),
    "google/gemma-3-270m": dict(
        kind="gemma3", hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
        num_attention_heads=4, num_key_value_heads=1, head_dim=256, vocab_size=262144, tie=True),
    "Qwen/Qwen2.5-0.5B": dict(
        kind="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
        num_attention_heads=14, num_key_value_heads=2, vocab_size=151936, tie=True),
    "meta-llama/Llama-3.2-1B": dict(
        kind="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, head_dim=64, vocab_size=128256, tie=True),
    "google/gemma-2-2b": dict(
        kind="gemma2", hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
        num_attention_heads=8, num_key_value_heads=4, head_dim=256, vocab_size=256000, tie=True),
    "huggyllama/llama-7b (= lmsys/vicuna-7b-v1.3)": dict(
        kind="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=32, vocab_size=32000, tie=False),
    "meta-llama/Llama-2-7b-hf (= lmsys/vicuna-7b-v1.5)": dict(
        kind="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=32, vocab_size=32000, tie=False),
    "meta-llama/Llama-3.1-70B": dict(
        kind="llama", hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
        num_attention_heads=64, num_key_value_heads=8, vocab_size=128256, tie=False),
}


#: A short key per model for docs/results/model-sizes.json (``model-sizes.<slug>.<number>``).
SLUGS = {
    "HuggingFaceTB/SmolLM2-135M": "smollm2_135m",
    "google/gemma-3-270m": "gemma3_270m",
    "Qwen/Qwen2.5-0.5B": "qwen2_5_0_5b",
    "meta-llama/Llama-3.2-1B": "llama3_2_1b",
    "google/gemma-2-2b": "gemma2_2b",
    "huggyllama/llama-7b (= lmsys/vicuna-7b-v1.3)": "llama_7b",
    "meta-llama/Llama-2-7b-hf (= lmsys/vicuna-7b-v1.5)": "llama2_7b",
    "meta-llama/Llama-3.1-70B": "llama3_1_70b",
}

#: The rows of docs/real-models.md's sizes table: (label, model of CONFIGS, is a pair).
PAIR_ROWS = (
    ("SmolLM2-135M (measured here)", "HuggingFaceTB/SmolLM2-135M", False),
    ("gemma-3-270m (measured here)", "google/gemma-3-270m", False),
    ("Qwen2.5-0.5B / -Instruct", "Qwen/Qwen2.5-0.5B", True),
    ("Llama-3.2-1B / -Instruct", "meta-llama/Llama-3.2-1B", True),
    ("gemma-2-2b / -it", "google/gemma-2-2b", True),
    ("LLaMA-7B / Vicuna-7B", "huggyllama/llama-7b (= lmsys/vicuna-7b-v1.3)", True),
)


def build_config(spec: dict):
    """The transformers config of a spec."""
    import transformers as tf

    s = dict(spec)
    kind, tie = s.pop("kind"), s.pop("tie")
    cls = {"llama": tf.LlamaConfig, "qwen2": tf.Qwen2Config, "gemma2": tf.Gemma2Config,
           "gemma3": tf.Gemma3TextConfig}[kind]
    return cls(tie_word_embeddings=tie, **s)


def formula(spec: dict) -> int:
    """Parameter count from the shapes alone (no model object)."""
    d, f, L, V = (spec["hidden_size"], spec["intermediate_size"], spec["num_hidden_layers"],
                  spec["vocab_size"])
    H, KV = spec["num_attention_heads"], spec["num_key_value_heads"]
    dh = spec.get("head_dim") or d // H
    attn = d * H * dh + 2 * d * KV * dh + H * dh * d
    if spec["kind"] == "qwen2":
        attn += H * dh + 2 * KV * dh  # q/k/v biases
    norms = {"llama": 2, "qwen2": 2, "gemma2": 4, "gemma3": 4}[spec["kind"]] * d
    if spec["kind"] == "gemma3":
        norms += 2 * dh  # q_norm, k_norm
    return V * d * (1 if spec["tie"] else 2) + d + L * (attn + 3 * d * f + norms)


def measure(name: str, spec: dict) -> dict:
    """Count one model on the meta device and check the count against :func:`formula`."""
    import torch

    from shiftlens.bridge import empty_model

    model = empty_model(build_config(spec), dtype=torch.bfloat16)
    n = sum(p.numel() for p in model.parameters())
    if n != formula(spec):
        raise SystemExit(f"{name}: counted {n} parameters, the formula says {formula(spec)}")
    layer = sum(p.numel() for p in model.model.layers[0].parameters())
    w_out = spec["hidden_size"] * spec["intermediate_size"]
    return {
        "model": name, "n_parameters": n, "n_layers": spec["num_hidden_layers"],
        "fp32_bytes": 4 * n, "bf16_bytes": 2 * n, "pair_fp32_bytes": 8 * n,
        "pair_bf16_bytes": 4 * n, "layer_parameters": layer, "layer_fp32_bytes": 4 * layer,
        "w_out_fp32_bytes": 4 * w_out,
        "w_u_fp32_bytes": 4 * spec["vocab_size"] * spec["hidden_size"],
        "largest_matrix": max(spec["vocab_size"] * spec["hidden_size"], w_out),
    }


def _gb(b: int) -> str:
    return f"{b / 1e9:,.2f}" if b < 1e10 else f"{b / 1e9:,.1f}"


def table(rows: list[dict]) -> str:
    """The markdown table of docs/scale.md."""
    out = [
        "| model | parameters (exact) | fp32 GB | bf16/fp16 GB | pair fp32 GB | pair bf16 GB "
        "| one layer fp32 MB | one W_out fp32 MB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        out.append(
            f"| {r['model']} | {r['n_parameters']:,} | {_gb(r['fp32_bytes'])} | "
            f"{_gb(r['bf16_bytes'])} | {_gb(r['pair_fp32_bytes'])} | {_gb(r['pair_bf16_bytes'])} "
            f"| {r['layer_fp32_bytes'] / 1e6:,.0f} | {r['w_out_fp32_bytes'] / 1e6:,.0f} |"
        )
    return "\n".join(out)


#: What each lens holds at once (weights only), as the code reads them.
LENS_RESIDENCY = (
    ("attribution, attention via `shiftlens run`", "one model (the other freed first)"),
    ("residual, activation_difference, amplification, crosscoder (collection); in-process "
     "attribution/attention", "both models"),
    ("ffn from checkpoint files", "one W_out + the unembedding W_U, fp32"),
    ("weight_delta from checkpoint files", "largest matrix: base, tuned and their difference "
     "in float64"),
)


def lens_bytes(r: dict, dtype_bytes: int) -> list[int]:
    """Bytes per row of :data:`LENS_RESIDENCY` for one model at ``dtype_bytes`` per weight."""
    n = r["n_parameters"]
    return [n * dtype_bytes, 2 * n * dtype_bytes, r["w_out_fp32_bytes"] + r["w_u_fp32_bytes"],
            3 * 8 * r["largest_matrix"]]


def lens_table(rows: list[dict]) -> str:
    """The per-lens memory table of docs/scale.md (GB, weights only; bf16 for the model rows)."""
    out = ["| model | " + " | ".join(f"{lens} ({what})" for lens, what in LENS_RESIDENCY)
           + " |", "| --- |" + " ---: |" * len(LENS_RESIDENCY)]
    for r in rows:
        out.append(f"| {r['model']} | " + " | ".join(_gb(b) for b in lens_bytes(r, 2)) + " |")
    return "\n".join(out)


def pair_table(rows: list[dict]) -> str:
    """The sizes table of docs/real-models.md (shapes from the configs, sizes counted)."""
    by_name = {r["model"]: r for r in rows}
    out = ["| pair | params per model | layers | d_model | d_mlp | heads (KV) | vocab "
           "| weights per model fp32 / bf16 | pair bf16 |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for label, name, is_pair in PAIR_ROWS:
        r, spec = by_name[name], CONFIGS[name]
        out.append(
            f"| {label} | {r['n_parameters'] / 1e9:.3g} B | {spec['num_hidden_layers']} "
            f"| {spec['hidden_size']} | {spec['intermediate_size']} "
            f"| {spec['num_attention_heads']} ({spec['num_key_value_heads']}) "
            f"| {spec['vocab_size']:,} | {_gb(r['fp32_bytes'])} / {_gb(r['bf16_bytes'])} GB "
            f"| {_gb(r['pair_bf16_bytes']) + ' GB' if is_pair else '—'} |")
    return "\n".join(out)


def plan_70b() -> dict:
    """Llama-3.1-70B in bfloat16 planned onto two 80 GiB GPUs (nothing allocated)."""
    import torch

    from shiftlens.bridge import plan_device_map

    cfg = build_config(CONFIGS["meta-llama/Llama-3.1-70B"])
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    plan = plan_device_map(cfg, max_memory={0: "80GiB", 1: "80GiB", "cpu": "64GiB"},
                           dtype=torch.bfloat16)
    seconds = time.perf_counter() - t0
    grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) * 1024
    layers = {d: sorted(int(k.split(".")[2]) for k, v in plan.device_map.items()
                        if k.startswith("model.layers.") and v == d) for d in (0, 1)}
    values = {
        "parameter_bytes": plan.parameter_bytes, "n_parameters": plan.n_parameters,
        "gpu0_gb": plan.bytes_per_device.get("0", plan.bytes_per_device.get(0, 0)) / 1e9,
        "gpu1_gb": plan.bytes_per_device.get("1", plan.bytes_per_device.get(1, 0)) / 1e9,
        "gpu0_last_layer": max(layers[0]), "gpu1_first_layer": min(layers[1]),
        "gpu1_last_layer": max(layers[1]),
        "embed_on": plan.device_map["model.embed_tokens"], "lm_head_on": plan.device_map["lm_head"],
    }
    return {"values": values, "measured": {"seconds": round(seconds, 2),
                                           "peak_rss_growth_gb": round(grew / 1e9, 3)}}


def write_results(path: Path, rows: list[dict], command: str) -> None:
    """The numbers and tables the docs quote, as a docs/results file."""
    spec = importlib.util.spec_from_file_location("regen_docs", ROOT / "tools" / "regen_docs.py")
    regen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(regen)
    values: dict = {}
    for r in rows:
        v = {k: r[k] for k in ("n_parameters", "n_layers", "layer_parameters")}
        for k in ("fp32", "bf16", "pair_fp32", "pair_bf16", "w_out_fp32", "w_u_fp32"):
            v[f"{k}_gb"] = r[f"{k}_bytes"] / 1e9
        v["layer_fp32_mb"] = r["layer_fp32_bytes"] / 1e6
        v["w_out_fp32_mb"] = r["w_out_fp32_bytes"] / 1e6
        v["w_u_folding_fp32_gb"] = 2 * r["w_u_fp32_bytes"] / 1e9  # W_U and its folded copy
        # the per-lens table's columns (bf16 models), in the order of LENS_RESIDENCY
        for key, b in zip(("one_model", "both_models", "ffn_files", "weight_delta_files"),
                          lens_bytes(r, 2)):
            v[f"lens_{key}_gb"] = b / 1e9
        values[SLUGS[r["model"]]] = v
    plan = plan_70b()
    values["plan_70b_two_80gib_gpus"] = plan["values"]
    regen.write_results(
        path, generated_by=command, values=values,
        measured={"plan_70b_two_80gib_gpus": plan["measured"], "machine": regen.machine_note()},
        blocks={"table": table(rows), "lens-table": lens_table(rows),
                "pair-table": pair_table(rows)})


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="one JSON line per model")
    ap.add_argument("--results", type=Path, default=None, metavar="PATH",
                    help="write the docs' numbers and tables to PATH (docs/results/NAME.json)")
    args = ap.parse_args(argv)
    rows = [measure(name, spec) for name, spec in CONFIGS.items()]
    if args.results is not None:
        write_results(args.results, rows,
                      f"python tools/model_sizes.py --results {args.results.as_posix()}")
        print(f"wrote {args.results}")
    elif args.json:
        for r in rows:
            print(json.dumps(r))
    else:
        print(table(rows))
        print()
        print(lens_table(rows))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
