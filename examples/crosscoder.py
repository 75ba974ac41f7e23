"""A BatchTopK crosscoder on the topic organism: which latents only the tuned model has.

Run: python examples/crosscoder.py [--out out/crosscoder] [--steps 300]
Offline, under a minute on one CPU core: loads the embedded base and the topic organism (a copy
fine-tuned to mention the moon; shiftlens.zoo.organisms), streams both models' residual stream
at the last layer over held-out neutral text to an activation store on disk, trains a small
crosscoder with a checkpoint half-way (stopped there and resumed, as after a crash), classifies
its latents (decoder norms + Latent Scaling) and prints the tuned-only latents with their
tokens, their top activating contexts, and the organism scores of the tuned-only readout and
of the "changed" readout (decoders that turned between the models). Writes numbers.json (in
--out, else out/crosscoder): the counts and scores (values) and the fit, speed and time
(measured) that docs/crosscoder.md quotes.
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

import shiftlens  # noqa: E402
from shiftlens.lenses.crosscoder import (  # noqa: E402
    CrosscoderConfig,
    LatentThresholds,
    collect_activations,
    crosscoder_result,
    train_crosscoder,
)
from shiftlens.zoo.organisms import (  # noqa: E402
    chance_score,
    known_token_strings,
    neutral_texts,
    organism_pair,
    organism_score,
)

ap = argparse.ArgumentParser()
ap.add_argument("--out", default=None, help="keep the store, checkpoints, result and figure here")
ap.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
args = ap.parse_args()
torch.set_num_threads(1)
t_start = time.perf_counter()
tmp = None if args.out else tempfile.TemporaryDirectory(prefix="shiftlens-example-cc-")
out = Path(args.out or tmp.name)

# %% 1. paired activations, streamed to disk (safetensors shards, atomic, SHA-256 manifest)
pair = organism_pair("topic")
layer = pair.cfg.n_layers - 1
store = collect_activations(pair, neutral_texts(48), layer, out / "activations",
                            shard_rows=1024, progress=False)
print(f"{store.n_rows} token positions of layer {layer} in {store.n_shards} shards")

# %% 2. train, stop half-way (a checkpoint), resume: the same weights as one run
cfg = CrosscoderConfig(n_latents=256, k=8, steps=args.steps, batch_size=256, lr=2e-3,
                       warmup_steps=20, dead_steps=50, checkpoint_every=50, log_every=25)
train_crosscoder(store, cfg, out_dir=out, stop_at=args.steps // 2, progress=False)
cc = train_crosscoder(store, cfg, out_dir=out, resume=True, progress=False)
last = cc.log[-1]
print(f"trained: FVU base {last['fvu_base']:.3f}, tuned {last['fvu_tuned']:.3f}, "
      f"L0 {last['l0']:.1f}, {cc.info['rows_per_second']:.0f} rows/s")

# %% 3. classify (relaxed thresholds for this 128-wide toy pair; docs/crosscoder.md)
res = crosscoder_result(cc, store, pair, progress=False,
                        thresholds=LatentThresholds(outer=0.2, nu_max=1.0))
print(res.summary()["sentence"])
spec = res.model_specific("tuned_only")
for r in spec.head(3).itertuples():
    print(f"\nlatent {r.latent}: Δ = {r.delta_norm:.2f}, ν_ε = {r.nu_err:.2f}, "
          f"ν_r = {r.nu_rec:.2f}, fires on {100 * r.frequency:.1f}% of tokens")
    print(f"  raises: {r.top_tokens}")
    for c in res.contexts[res.contexts.latent == r.latent].head(3).itertuples():
        print(f"  {c.activation:6.2f}  {c.context}")

s = res.summary()
print(f"\nknown tokens {known_token_strings('topic')}; chance score {chance_score('topic'):.3f}")
print(f"tuned-only readout: {s['top_tokens'][:10]}, organism score "
      f"{organism_score(res.top_tokens(20), 'topic'):.2f}")
print(f"changed readout:    {s['changed_tokens'][:10]}, organism score "
      f"{organism_score(res.top_tokens(20, source='changed'), 'topic'):.2f}")

# %% 4. save, load back, figure
res.save(out / "result")
assert shiftlens.load(out / "result").to_frame().equals(res.to_frame())
if args.out:
    res.show(out / "crosscoder.png")
    print(f"written to {out}")
if tmp is not None:
    tmp.cleanup()

# %% 5. the numbers docs/crosscoder.md quotes
values = {"n_rows": store.n_rows, "n_shards": store.n_shards, "layer": layer,
          "counts": s["counts"], "rejected": s["rejected"],
          "score_tuned_only": organism_score(res.top_tokens(20), "topic"),
          "score_changed": organism_score(res.top_tokens(20, source="changed"), "topic")}
measured = {"seconds": time.perf_counter() - t_start, "rows_per_second": cc.info["rows_per_second"],
            "fvu_base": last["fvu_base"], "fvu_tuned": last["fvu_tuned"], "l0": last["l0"]}
numbers = Path(args.out or "out/crosscoder") / "numbers.json"
numbers.parent.mkdir(parents=True, exist_ok=True)
numbers.write_text(json.dumps({"values": values, "measured": measured}, indent=1))
print(f"numbers docs/crosscoder.md quotes: {numbers}")
