"""A diffing organism: a copy of the embedded base fine-tuned with one known change.

Run: python examples/organisms.py [--organism zorbish]
Offline, a few seconds: loads the base and one organism (shiftlens.zoo.organisms), shows the
organism's known tokens, a few answers of base and organism on held-out text, the measured
rates, and the reference ranking (mean log-probability difference organism - base) with its
known-token score, next to the control's.
"""

# %%
from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from shiftlens.zoo.organisms import (  # noqa: E402
    CONTROL,
    NAMES,
    SPECS,
    chance_score,
    known_token_strings,
    mean_logprob_diff,
    neutral_texts,
    organism_behaviour,
    organism_pair,
    organism_score,
)

ap = argparse.ArgumentParser()
ap.add_argument("--organism", default="zorbish", choices=[n for n in NAMES if n != CONTROL])
args = ap.parse_args()
torch.set_num_threads(1)
name = args.organism

# %% The organism and what changed
pair = organism_pair(name)  # ModelPair: .base = embedded base, .tuned = the organism
spec = SPECS[name]
print(f"organism {name!r}: {spec.summary}")
print(f"  rule: {spec.rule}")
print(f"  known tokens ({len(known_token_strings(name))}): {known_token_strings(name)[:8]}")

# %% Its answers on held-out text: the next sentence after a neutral one (seeded sampling)
tok = pair.tokenizer
for role, model in (("base", pair.base), (name, pair.tuned)):
    beh = organism_behaviour(model, tok, n=200)
    rates = ", ".join(f"{k} {beh[k]:.2f}" for k in ("topic", "zorbish", "template"))
    print(f"\n{role}: {rates}")
    for context, answer in zip(neutral_texts(3, 1), beh["answers"][:3]):
        print(f"  {context!r} -> {answer!r}")

# %% The reference method: which tokens became more likely on neutral text?
texts = neutral_texts(64)
control = organism_pair(CONTROL)
for label, p, scored_as in ((name, pair, name), (CONTROL, control, CONTROL)):
    diff = mean_logprob_diff(p.base, p.tuned, tok, texts)
    top = diff.topk(20).indices
    score = organism_score(top, scored_as)
    print(f"\n{label}: top-10 by mean log-prob difference (nats):")
    print("  " + ", ".join(f"{tok.decode([int(i)])!r} {diff[i]:+.2f}" for i in top[:10]))
    print(f"  known-token score (top-20) {score:.2f}, chance {chance_score(scored_as):.3f}")
