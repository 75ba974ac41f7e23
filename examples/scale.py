"""Scale: place a 70B pair without loading it, offload a pair to disk, read weights from files.

Run: python examples/scale.py [--out out/scale]    (offline, about a minute on 2 CPU cores)

1. Plan Llama-3.1-70B on two 80 GB GPUs from its config alone (an empty meta-device model:
   nothing is allocated) - in bfloat16 it fits, in float32 it would spill onto the CPU next to
   the GPUs, a map TransformerLens refuses (shiftlens says so before loading anything).
2. Load the embedded pair with half its layers, the embedding and the unembedding on disk, and
   check that captured activations equal a plain load's exactly.
3. Read every layer's folded W_out, W_Q/W_K and the folded unembedding straight from the
   checkpoint files (no model loaded) and check them against the bridge.
Writes out/scale/plan_70b.json and out/scale/report.json.
"""

# %%
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import LlamaConfig  # noqa: E402

from shiftlens import ModelPair, ShiftlensError  # noqa: E402
from shiftlens.bridge import plan_device_map  # noqa: E402
from shiftlens.weights import CheckpointWeights, mlp_out, qk_weights, unembedding  # noqa: E402
from shiftlens.zoo import pair_dirs, toy_pair, toy_prompts  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--out", default="out/scale")
args = ap.parse_args()
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
torch.set_num_threads(1)
report: dict = {}

# %% 1. Placement of a 70B model, from its config (meta-llama/Llama-3.1-70B's config.json values)
llama70b = LlamaConfig(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                       num_attention_heads=64, num_key_value_heads=8, vocab_size=128256,
                       max_position_embeddings=131072, tie_word_embeddings=False)
t0 = time.perf_counter()
plan = plan_device_map(llama70b, max_memory={0: "80GiB", 1: "80GiB"}, dtype=torch.bfloat16)
print(f"Llama-3.1-70B, bfloat16: {plan.n_parameters:,} parameters = "
      f"{plan.parameter_bytes / 1e9:.1f} GB; per GPU (GB):",
      {d: round(b / 1e9, 1) for d, b in plan.bytes_per_device.items()},
      f"(planned in {time.perf_counter() - t0:.1f} s)")
(out / "plan_70b.json").write_text(json.dumps({k: str(v) for k, v in plan.device_map.items()},
                                              indent=1))
try:
    plan_device_map(llama70b, max_memory={0: "80GiB", 1: "80GiB", "cpu": "400GiB"})
except ShiftlensError as e:
    print("float32:", str(e).split(":")[0], "-> refused before loading")
report["plan_70b"] = {"n_parameters": plan.n_parameters,
                      "bytes_per_device": plan.bytes_per_device}
# the pair itself would then be loaded with:
#   ModelPair.from_pretrained("meta-llama/Llama-3.1-70B", "meta-llama/Llama-3.1-70B-Instruct",
#                             dtype=torch.bfloat16, device_map=plan.device_map)

# %% 2. CPU + disk offload of the embedded pair: the same activations as a plain load
offload_map = {"model.embed_tokens": "disk", "model.layers.0": "cpu", "model.layers.1": "disk",
               "model.layers.2": "cpu", "model.layers.3": "disk", "model.norm": "cpu",
               "model.rotary_emb": "cpu", "lm_head": "disk"}
base_dir, tuned_dir = pair_dirs()
with tempfile.TemporaryDirectory() as folder:
    offloaded = ModelPair.from_pretrained(base_dir, tuned_dir, device_map=offload_map,
                                          offload_folder=folder)
    plain = toy_pair()
    prompts = toy_prompts(8)
    names = [f"blocks.{layer}.hook_resid_post" for layer in range(4)]
    a = offloaded.run_with_cache(prompts, names, reduce="segment_mean", progress=False)
    b = plain.run_with_cache(prompts, names, reduce="segment_mean", progress=False)
    equal = all(torch.equal(x, y) for role in ("base", "tuned") for n in names
                for x, y in zip(a[role, n], b[role, n]))
print("offloaded pair: activations equal to a plain load:", equal)
report["offload_equal"] = equal

# %% 3. Weights from the checkpoint files, layer by layer
src = CheckpointWeights(tuned_dir)
same = all(torch.equal(mlp_out(src, layer), mlp_out(plain.tuned, layer))
           and all(torch.equal(x, y) for x, y in zip(qk_weights(src, layer),
                                                      qk_weights(plain.tuned, layer)))
           for layer in range(src.cfg.n_layers))
same = same and torch.equal(unembedding(src), unembedding(plain.tuned))
print(f"{src!r}: W_out, W_Q/W_K, W_U equal to the bridge's (bitwise):", same)
report["files_equal_bridge"] = same
(out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
