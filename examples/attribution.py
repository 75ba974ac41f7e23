"""Lens 1: which prompt tokens do the responses rest on? Attribution, importance density and the
instruction score of base vs tuned (Wu et al. 2024, section 3).

Run: python examples/attribution.py [--out out/attribution] [--n 14]
Uses the embedded pair (shiftlens.zoo) when shipped, else a tiny random pair built in code.
Writes the figures and results to --out, with numbers.json: the numbers docs/attribution.md
quotes (values: deterministic; measured: times), copied to docs/results/attribution.json by
``python tools/regen_docs.py --results attribution``.
"""

# %%
from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from shiftlens import ShiftlensWarning  # noqa: E402
from shiftlens import attribution as A  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--out", default="out/attribution")
ap.add_argument("--n", type=int, default=14, help="prompts for the pair comparison")
args = ap.parse_args()
t_start = time.perf_counter()
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
torch.set_num_threads(1)  # small models: one thread is fastest on a shared CPU

# %% The pair and its prompts
try:
    from shiftlens.zoo import toy_pair, toy_prompts

    pair, prompts, toy = toy_pair(), toy_prompts(n=args.n), True
except Exception:  # the embedded pair is not shipped yet
    from shiftlens import default_prompts
    from shiftlens.testing import tiny_pair

    pair, prompts, toy = tiny_pair("llama"), default_prompts()[: args.n], False
print(pair)

# %% One prompt, one model: the raw matrix a[n, m] = e_n . dp(y_m)/de_n and the density
p0 = prompts[0]
att = A.attribute(pair.tuned, p0, max_new_tokens=12)
print(f"prompt {p0.id!r}: N={att.n_input} input tokens, M={att.n_output} response tokens, "
      f"mode={att.mode} ({att.meta['mode_reason']})")
print("response:", repr(att.response))
print("p(y_m):", [round(float(x), 3) for x in att.probs])
print(att.to_frame()[["token", "segment", "density"]].head(12).to_string(index=False))
print("instruction score (L=10, b=7, p=4):", round(att.score(), 4))
print("with b=5:", round(att.score(threshold=5), 4))
plt.close(att.show(out / "attribution_tuned.png"))
att.save(out / "attribution_tuned")
assert A.AttributionResult.load(out / "attribution_tuned").equals(att)

# %% Forward and reverse mode give the same matrix (float32 rounding apart)
rev = A.attribute(pair.tuned, p0, att.response_tokens, mode="reverse")
fwd = A.attribute(pair.tuned, p0, att.response_tokens, mode="forward")
rel = float((rev.matrix - fwd.matrix).abs().max() / rev.matrix.abs().max())
print(f"forward vs reverse: max |diff| / max |a| = {rel:.2e}")

# %% Base vs tuned in both response settings, side by side (Wu et al. 2024, section 3):
# the same reference response for both models, and each model's own greedy response (the
# paper's setting). On the toy pair they disagree: the base model rambles to the limit, the
# tuned model answers in a few tokens, so with their own responses the two explain different
# texts. The summary gives both numbers, both response lengths, and why the headline uses the
# same-response setting.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", ShiftlensWarning)  # prompts without instruction -> NaN
    rs = A.response_settings(pair, prompts, max_new_tokens=12)
s = rs.summary()
print("both settings:", s["sentence"])
print("response lengths (tokens):", s["response_lengths"])
rs.save(out / "settings")
plt.close(rs.show(out / "settings.png"))

# %% The paper's setting on its own: per category, and other density parameters
res = rs.own
for cat, block in res.summary()["by_category"].items():
    print(f"  {cat:>14}: base {block['mean_b']:.3f}  tuned {block['mean_a']:.3f}  "
          f"p={block['pvalue']:.3g}")
res.save(out / "sensitivity")
plt.close(res.show(out / "sensitivity.png"))
# the raw matrices are kept: other density parameters without recomputing gradients
print("with L=10, b=5, p=2:", res.rescore(threshold=5, p=2).summary()["sentence"])

# %% Your own matrices (e.g. the paper's released ones, or another library's): the same Result
# ([n_response, n_input] here, hence layout="response_input"; None: a model gave no response)
mine = A.SensitivityResult.from_matrices(
    {r: [None if m is None else m.T for m in res.matrices[r]] for r in A.ROLES},
    res.instruction_masks, ids=list(res.frame["id"]), categories=list(res.frame["category"]),
    layout="response_input", response="generate", models=res.model_names)
assert mine.frame["tuned_score"].equals(res.frame["tuned_score"])
print("from your own matrices:", mine.summary()["overall"]["diff"])

# %% The same analysis one (prompt, model) record at a time: validate / accumulate / assemble
# (what a resumable or distributed runner does; the records may come in any order)
with warnings.catch_warnings():
    warnings.simplefilter("ignore", ShiftlensWarning)
    plan = A.validate_sensitivity(pair, prompts[:3], max_new_tokens=12)
    records = [A.accumulate_sensitivity(getattr(pair, role), plan, i, role)
               for i, role in reversed(plan.keys())]
    part = A.assemble_sensitivity(plan, records)
    assert part.equals(A.instruction_sensitivity(pair, prompts[:3], max_new_tokens=12,
                                                 progress=False))
print(f"assembled from {len(records)} records:", part.summary()["sentence"])

# %% Followed vs unfollowed responses (labels: the response reproduces the reference)
labels = A.followed_by_reference(res)
if labels and 0 < sum(labels.values()) < len(labels):
    fr = A.followed_comparison(res, labels)
    print(fr.summary()["sentence"])
    plt.close(fr.show(out / "followed.png"))
else:
    print("followed/unfollowed: need both kinds of responses;", sum(labels.values()), "of",
          len(labels), "follow the reference")

# %% Position sensitivity: the same instruction at the start, middle or end of a long context
if toy:
    words = [" ".join(p.meta["words"]) for p in prompts]
    items = [(p.text.splitlines()[0].removeprefix("Instruction: "), words[i: i + 4])
             for i, p in enumerate(prompts[:6])]
else:
    items = [("Summarize the text in one sentence.",
              ["The river rose after three days of rain.", "Farmers moved their animals uphill.",
               "The bridge stayed closed until Monday.", "Schools reopened on Tuesday."]),
             ("List every animal mentioned.",
              ["A fox crossed the road at dawn.", "Two crows watched from a wire.",
               "Later a dog barked at the mail van.", "Nobody saw the cat."])]
with warnings.catch_warnings():
    warnings.simplefilter("ignore", ShiftlensWarning)
    pos = A.position_sensitivity(pair, items, max_new_tokens=12, progress=False)
print(pos.summary()["sentence"])
pos.save(out / "position")
plt.close(pos.show(out / "position.png"))

# %% numbers.json: what docs/attribution.md quotes (the settings figure's caption)
def _test(block: dict) -> dict:
    return {k: block[k] for k in ("mean_a", "mean_b", "diff", "pvalue", "n_a")}


values = {
    "pair": "toy" if toy else "tiny", "n_prompts": len(prompts), "max_new_tokens": 12,
    "settings": {"headline": s["headline"], "agree": s["agree"],
                 "reference": _test(s["reference"]["overall"]),
                 "own": _test(s["own"]["overall"]),
                 "lengths": s["response_lengths"]},
}
load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
measured = {"seconds": round(time.perf_counter() - t_start, 1), "load": load,
            "forward_vs_reverse_rel": rel}  # float32 rounding: differs between machines
(out / "numbers.json").write_text(json.dumps({"values": values, "measured": measured}, indent=1))
print(f"figures and results in {out}/")
