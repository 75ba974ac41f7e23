# %% [markdown]
# # Where in depth does instruction tuning live? Residual similarity, logit lens, patching
#
# Runs offline on the embedded pair (`shiftlens.zoo.toy_pair()`, a small Llama and its
# instruction-tuned twin) when it is installed, otherwise on a tiny random pair from
# `shiftlens.testing` (whose "tuning" is Gaussian noise, so the numbers mean nothing there).
#
#     python examples/residual.py [--out out/residual] [--n 28] [--threads 1]
#
# The numbers docs/residual.md quotes are written to `OUT/numbers.json`
# (`python tools/regen_docs.py --results residual` copies them to `docs/results/residual.json`).

# %%
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import matplotlib
import torch

matplotlib.use("Agg")

from shiftlens import ShiftlensError, default_prompts  # noqa: E402
from shiftlens.residual import output_shift, patching, similarity  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--out", default="out/residual")
ap.add_argument("--n", type=int, default=28, help="number of prompts (28: 4 per task)")
ap.add_argument("--max-new-tokens", type=int, default=12, help="longest greedy response")
ap.add_argument("--threads", type=int, default=1, help="torch threads (small models: 1 is fastest)")
args, _ = ap.parse_known_args()
torch.set_num_threads(args.threads)
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
t_wall, t_cpu, seconds = time.perf_counter(), time.process_time(), {}

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
t0 = time.perf_counter()
sim = similarity(pair, prompts, progress=False)
seconds["similarity"] = time.perf_counter() - t0
print(sim.summary()["sentence"])
agg = sim.to_frame(aggregate=True)  # means over prompts with bootstrap 95% CIs
print(agg.query("segment == 'all'")[["hook", "layer", "cosine", "cka"]].to_string(index=False))
sim.show(out / "similarity.png")
sim.save(out / "similarity")

# %% 2. What does the tuned model now predict that the base did not? (KL, logit lens)
t0 = time.perf_counter()
kl = output_shift(pair, prompts, segments=["response"], progress=False)
seconds["output_shift"] = time.perf_counter() - t0
print(kl.summary()["sentence"])
print(kl.top_tokens.head(10).to_string(index=False))
kl.show(out / "output_shift.png")
kl.save(out / "output_shift")

# %% 3. Causally: which layer's activations carry the tuned behaviour? (cross-model patching)
t0 = time.perf_counter()
pr = patching(pair, prompts, response=response, max_new_tokens=args.max_new_tokens,
              progress=False)
seconds["patching"] = time.perf_counter() - t0
print(pr.summary()["sentence"])
print(pr.to_frame(aggregate=True)[["direction", "component", "layer", "recovery", "recovery_low",
                                    "recovery_high"]].to_string(index=False))
pr.show(out / "patching.png")
pr.save(out / "patching")

# %% 4. Which positions carry it? The same patching, one group of positions at a time
by_positions = {}
for name, pos in (("instruction", "instruction"), ("context", "context"),
                  ("template_response", ["template", "response"])):
    r = patching(pair, prompts, components=("attn_out", "mlp_out", "resid_post"),
                 positions=pos, response=response, max_new_tokens=args.max_new_tokens,
                 progress=False)
    by_positions[name] = r.to_frame(aggregate=True)
    print(f"positions {pos}: largest recovery "
          + ", ".join(f"{d} {g.recovery.max():.2f}" for d, g in by_positions[name].groupby("direction")))

# %% Headline numbers
summary = {"similarity": sim.summary(), "output_shift": kl.summary(), "patching": pr.summary()}
(out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))


def key(direction: str) -> str:
    """A direction as a docs marker key: "tuned->base" -> "tuned_to_base"."""
    return direction.replace("->", "_to_")


def recoveries(frame) -> dict:
    """Pooled recovery (with its bootstrap CI) per direction, component and layer."""
    return {key(d): {c: {f"L{int(r.layer)}": {"recovery": float(r.recovery),
                                         "low": float(r.recovery_low),
                                         "high": float(r.recovery_high)}
                    for r in g[g.component == c].itertuples()}
                for c in sorted(set(g.component))}
            for d, g in frame.groupby("direction")}


def cell(positions: str, direction: str, component: str, layer: int) -> float:
    """One pooled recovery of the patching by positions."""
    f = by_positions[positions]
    sel = (f.direction == direction) & (f.component == component) & (f.layer == layer)
    return float(f[sel].recovery.iloc[0])


agg = sim.to_frame(aggregate=True)
ss, ks, ps = summary["similarity"], summary["output_shift"], summary["patching"]
last = int(agg.layer.max())
sim_at = {f"{r.hook}_L{int(r.layer)}": float(r.cosine)
          for r in agg[agg.segment == "all"].itertuples()}
gap_by_task = pr.prompts.groupby("category").gap.mean()
values = {
    "n_prompts": len(prompts), "max_new_tokens": args.max_new_tokens, "n_layers": pair.cfg.n_layers,
    "d_model": pair.cfg.d_model,
    "similarity": {
        "final": {seg: {"cosine": float(v["cosine"]), "cosine_low": float(v["cosine_ci"][0]),
                        "cosine_high": float(v["cosine_ci"][1]),
                        **({"cka": float(v["cka"])} if v["cka"] == v["cka"] else {})}
                  for seg, v in ss["final"].items()},
        "all": sim_at, "last_layer": last},
    "output_shift": {
        "kl": {seg: {"kl": float(v["kl"]), "low": float(v["ci"][0]), "high": float(v["ci"][1]),
                     "top1_agree": float(v["top1_agree"])} for seg, v in ks["output_kl"].items()},
        "lens_kl": {f"L{k}": float(v) for k, v in ks["lens_kl_per_layer"].items()},
        "top_tokens": [{"token": repr(r.token), "mean_p_tuned": float(r.mean_p_tuned),
                        "mean_p_base": float(r.mean_p_base)}
                       for r in kl.top_tokens.sort_values("kl_share", ascending=False)
                       .head(10).itertuples()]},  # the tokens carrying most of the KL
    "patching": {
        "gap": {"mean": float(ps["gap"]["mean"]), "low": float(ps["gap"]["ci"][0]),
                "high": float(ps["gap"]["ci"][1]),
                "by_task": {t: float(v) for t, v in gap_by_task.items()},
                "min_task": str(gap_by_task.idxmin()), "max_task": str(gap_by_task.idxmax())},
        "all": recoveries(pr.to_frame(aggregate=True)),
        # by positions: the largest recovery at any site, and the sites the docs name (the
        # many near-zero recoveries are left out: their last digits are float noise)
        "max": {pos: {key(d): float(g.recovery.max()) for d, g in f.groupby("direction")}
                for pos, f in by_positions.items()},
        "context": {f"{c}_L{lay}": cell("context", "base->tuned", c, lay)
                    for c, lay in (("mlp_out", 0), ("resid_post", 0), ("resid_post", 1),
                                   ("resid_post", 2))},
        "template_response": {key(d): cell("template_response", d, "mlp_out", 0)
                              for d in ("tuned->base", "base->tuned")}},
}
load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
measured = {"seconds": time.perf_counter() - t_wall, "cpu_seconds": time.process_time() - t_cpu,
            "load_average": load, "lens_seconds": seconds, "threads": args.threads}
(out / "numbers.json").write_text(json.dumps({"values": values, "measured": measured}, indent=1))
print("figures and results in", out)
