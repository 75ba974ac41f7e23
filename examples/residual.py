# %% [markdown]
# # Where in depth does instruction tuning live? Residual similarity, logit lens, patching
#
# Runs offline on the embedded pair (`shiftlens.zoo.toy_pair()`, a small Llama and its
# instruction-tuned twin) when it is installed, otherwise on a tiny random pair from
# `shiftlens.testing` (whose "tuning" is Gaussian noise, so the numbers mean nothing there).
#
#     python examples/residual.py [--out out/residual] [--n 14] [--threads 1]

# %%
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import matplotlib
import torch

matplotlib.use("Agg")

from shiftlens import ShiftlensError, default_prompts  # noqa: E402
from shiftlens.residual import output_shift, patching, similarity  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--out", default="out/residual")
ap.add_argument("--n", type=int, default=14, help="number of prompts")
ap.add_argument("--threads", type=int, default=1, help="torch threads (small models: 1 is fastest)")
args, _ = ap.parse_known_args()
torch.set_num_threads(args.threads)
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)

# %% Load a pair and prompts
try:
    from shiftlens.zoo import toy_pair, toy_prompts

    pair = toy_pair()
    prompts = toy_prompts(args.n)
    response = "greedy"  # the tuned model's own answer
    print("embedded pair:", pair)
except ShiftlensError as e:
    from shiftlens.testing import tiny_pair

    print(f"embedded pair unavailable ({e}); using a tiny random pair")
    pair = tiny_pair("llama")
    prompts = [p for p in default_prompts() if p.reference][: args.n]
    response = "reference"

# %% 1. How far apart are the residual streams, layer by layer and segment by segment?
sim = similarity(pair, prompts, progress=False)
print(sim.summary()["sentence"])
agg = sim.to_frame(aggregate=True)  # means over prompts with bootstrap 95% CIs
print(agg.query("segment == 'all'")[["hook", "layer", "cosine", "cka"]].to_string(index=False))
sim.show(out / "similarity.png")
sim.save(out / "similarity")

# %% 2. What does the tuned model now predict that the base did not? (KL, logit lens)
kl = output_shift(pair, prompts, segments=["response"], progress=False)
print(kl.summary()["sentence"])
print(kl.top_tokens.head(10).to_string(index=False))
kl.show(out / "output_shift.png")
kl.save(out / "output_shift")

# %% 3. Causally: which layer's activations carry the tuned behaviour? (cross-model patching)
pr = patching(pair, prompts, response=response, max_new_tokens=8, progress=False)
print(pr.summary()["sentence"])
print(pr.to_frame(aggregate=True)[["direction", "component", "layer", "recovery", "recovery_low",
                                    "recovery_high"]].to_string(index=False))
pr.show(out / "patching.png")
pr.save(out / "patching")

# %% Headline numbers
summary = {"similarity": sim.summary(), "output_shift": kl.summary(), "patching": pr.summary()}
(out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
print("figures and results in", out)
