"""Model diffing on an organism: what each method says the fine-tuning was about, and its score.

Run: python examples/diffing.py [--organism topic] [--out out/diffing]
Offline, under a minute of CPU on one core: loads the embedded base and one organism
(shiftlens.zoo.organisms), runs the activation difference lens (logit lens, Patchscope,
steering), diff mining, the weight delta and amplification, prints each method's top tokens
with its organism score (chance level alongside), and the same for the control, which must score
near zero. Kept small for speed (32 texts, 50 bootstrap resamples, one steering strength, two
amplification prompts); benchmarks/diffing_table.py runs the methods with their defaults. With
--out, every Result is saved and its figure written. Writes OUT/numbers.json (OUT: --out, default
out/diffing): each method's score, the known tokens' bootstrap stability, the steered and
amplified responses (values) and the CPU time (measured), which docs/diffing.md quotes.
"""

# %%
from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from shiftlens.lenses.activation_difference import activation_difference, diff_mining  # noqa: E402
from shiftlens.lenses.amplification import amplification  # noqa: E402
from shiftlens.lenses.weight_delta import weight_delta  # noqa: E402
from shiftlens.tokens import display_token  # noqa: E402
from shiftlens.zoo.organisms import (  # noqa: E402
    CONTROL,
    ORGANISMS,
    chance_score,
    known_token_strings,
    known_tokens,
    neutral_texts,
    organism_pair,
    organism_score,
)

ap = argparse.ArgumentParser()
ap.add_argument("--organism", default="topic", choices=list(ORGANISMS))
ap.add_argument("--out", default=None, help="save the Results and figures here")
args = ap.parse_args()
torch.set_num_threads(1)
cpu0 = time.process_time()
values: dict = {}
texts = neutral_texts(32)  # held-out grammar text: no known token of any organism occurs in it

# %% Each method on the organism and on the control
for name in (args.organism, CONTROL):
    pair = organism_pair(name)
    print(f"\n=== {name}: known tokens {known_token_strings(name)[:6]} "
          f"(chance score {chance_score(name):.3f})")
    adl = activation_difference(pair, texts, steer_strengths=(1.0,),
                                max_new_tokens=12, n_boot=50, progress=False)
    mining = diff_mining(pair, texts, n_boot=50, progress=False)
    wd = weight_delta(pair, progress=False)
    amp = amplification(pair, neutral_texts(2, 1, seed=3), alphas=(0.0, 4.0), max_new_tokens=16,
                        progress=False)
    rankings = {
        "ADL, logit lens": adl.top_tokens(20),
        "ADL, Patchscope": adl.top_tokens(20, source="patchscope"),
        "diff mining": mining.top_tokens(20),
        "weight delta, directions": wd.top_tokens(20),
        "amplification": amp.top_tokens(20),
    }
    role = "control" if name == CONTROL else "organism"
    v = values[role] = {"score": {}}
    for label, top in rankings.items():
        shown = " ".join(display_token(pair.tokenizer.decode([int(t)])) for t in top[:8])
        print(f"{label:26s} score {organism_score(top, name):.2f}   {shown}")
        v["score"][re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")] = organism_score(top, name)
    steered = adl.steering[(adl.steering.model == "base") & (adl.steering.strength == 1.0)]
    print("base steered with the difference:", repr(steered.response.iloc[0]))
    print("a = 4:", repr(amp.responses(4.0)[0]))
    v["steered"] = str(steered.response.iloc[0]).strip()
    v["amplified"] = str(amp.responses(4.0)[0]).strip()
    if name != CONTROL:  # how often the known tokens stay in the top 20 across resamples
        ranking = adl.ranking("logit_lens")
        known = ranking.head(20)[ranking.head(20).token_id.isin([int(t) for t in known_tokens(name)])]
        v["known_in_top20"] = len(known)
        v["known_stability_min"] = float(known.stability.min()) if len(known) else float("nan")
    if args.out:
        out = Path(args.out) / name
        for res, stem in ((adl, "activation_difference"), (mining, "diff_mining"),
                          (wd, "weight_delta"), (amp, "amplification")):
            res.save(out / stem)
            res.show(out / f"{stem}.png")
        print(f"saved under {out}")

# %% The numbers docs/diffing.md quotes
out = Path(args.out or "out/diffing")
out.mkdir(parents=True, exist_ok=True)
(out / "numbers.json").write_text(json.dumps(
    {"values": values, "measured": {"cpu_s": time.process_time() - cpu0}}, indent=1,
    ensure_ascii=False))
print(f"numbers docs/diffing.md quotes: {out / 'numbers.json'}")
