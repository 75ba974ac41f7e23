"""Paired capture: both models' residual streams and attention on the same tokens, by segment.

Run: python examples/capture.py [--out out/capture]
Uses the embedded pair (shiftlens.zoo) when shipped, else a tiny random pair built in code.
"""

# %%
from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from shiftlens import PairCache  # noqa: E402
from shiftlens.prompts import SEGMENTS  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--out", default="out/capture")
args = ap.parse_args()
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)

# %% The pair and its prompts
try:
    from shiftlens.zoo import toy_pair, toy_prompts

    pair, prompts = toy_pair(), toy_prompts(n=24)
except Exception:  # the embedded pair is not shipped yet
    from shiftlens import default_prompts
    from shiftlens.testing import tiny_pair

    pair, prompts = tiny_pair("llama"), default_prompts()[:24]
print(pair)

# %% Segments of one prompt
tp = pair.tokenize(prompts[0], response=prompts[0].reference)
for tok, seg in zip(pair.tokenizer.convert_ids_to_tokens(tp.tokens.tolist()), tp.segments.tolist()):
    print(f"{tok!r:>14} {SEGMENTS[seg]}")

# %% Capture with on-the-fly segment means (bounded memory), save and reload
L = pair.cfg.n_layers
names = [f"blocks.{l}.hook_resid_post" for l in range(L)] + [f"blocks.{l}.attn.hook_pattern" for l in range(L)]
cache = pair.run_with_cache(prompts, names, reduce="segment_mean", batch_size=8)
cache = PairCache.load(cache.save(out / "cache"))

# %% Cosine similarity of base vs tuned residual streams per layer and segment
fig, ax = plt.subplots(figsize=(6, 3.5))
for s, seg in enumerate(SEGMENTS):
    cos = []
    for l in range(L):
        b = cache.stack("base", f"blocks.{l}.hook_resid_post")[:, s]
        t = cache.stack("tuned", f"blocks.{l}.hook_resid_post")[:, s]
        cos.append(torch.nn.functional.cosine_similarity(b, t, dim=-1).nanmean().item())
    ax.plot(range(L), cos, marker="o", label=seg)
ax.set_xlabel("layer")
ax.set_xticks(range(L))
ax.set_ylabel("cosine(base, tuned)\nsegment-mean resid_post")
ax.set_title(f"{pair.names['base']} vs {pair.names['tuned']}"[-60:], fontsize=8)
ax.legend(fontsize=7)
fig.tight_layout()
fig.savefig(out / "resid_cosine.png", dpi=120)

# %% Attention mass of response tokens on the instruction, per layer (mean over heads)
ins, resp = SEGMENTS.index("instruction"), SEGMENTS.index("response")
for l in range(L):
    b = cache.stack("base", f"blocks.{l}.attn.hook_pattern")[:, resp, :, ins].nanmean().item()
    t = cache.stack("tuned", f"blocks.{l}.attn.hook_pattern")[:, resp, :, ins].nanmean().item()
    print(f"layer {l}: response->instruction attention base {b:.3f} tuned {t:.3f}")
print(f"figures and cache in {out}/")
