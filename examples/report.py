"""Circuit visualizations, static figures and the HTML report on the embedded pair.

Run: ``python examples/report.py --out out/report`` (offline; about two minutes of CPU).
Every file lands in ``--out``: three interactive pages that render with no network
(attention patterns side by side, importance density of the prompt tokens, top words per W_out
component), PNG + SVG figures, and a small report (attention and feed-forward lenses).
Uses the embedded toy pair (``shiftlens.zoo``), or a tiny random pair when it is not installed.
"""

# %% setup
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import torch  # noqa: E402

from shiftlens import InstructionPrompt, default_prompts  # noqa: E402
from shiftlens.lenses.attention.plots import head_delta_figure  # noqa: E402
from shiftlens.lenses.ffn.plots import concept_share_figure, rotation_figure  # noqa: E402
from shiftlens.viz import (  # noqa: E402
    attention_patterns,
    concept_table,
    importance_tokens,
    pyplot,
    save_figure,
)

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--out", default="out/report", help="output directory")
args, _ = parser.parse_known_args()
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)
torch.set_num_threads(1)  # the toy model is tiny: more threads only contend on a busy CPU
t_start = time.perf_counter()

# %% the pair and the prompts
try:
    from shiftlens.zoo import pair_dirs, toy_pair, toy_prompts

    pair_dirs()
    pair, prompts = toy_pair(), toy_prompts(14)  # two held-out prompts per task
except Exception:  # the embedded pair is not installed: a tiny random pair
    from shiftlens.testing import tiny_pair

    pair, prompts = tiny_pair("llama"), default_prompts()[:14]
print(pair)
prompt: InstructionPrompt = min(prompts, key=lambda p: len(pair.tokenize(p, p.reference).tokens))
print("example prompt:", repr(prompt.text), "->", repr(prompt.reference))

# %% attention patterns of base and tuned side by side (circuitsvis, offline)
last = pair.cfg.n_layers - 1
vis = attention_patterns(pair, prompt, layers=[last])
vis.save(out / "attention_patterns.html")  # vis._repr_html_() renders it in a notebook
print("attention_patterns.html:", [name for name, _ in vis.components])

# %% prompt tokens coloured by importance density: base, tuned, difference
from shiftlens.attribution import attribute  # noqa: E402

att = {role: attribute(model, prompt, max_new_tokens=12, model_name=pair.names[role])
       for role, model in pair}  # each model explains its own greedy response
vis = importance_tokens(att["base"], att["tuned"], tokenizer=pair.tokenizer)
vis.save(out / "importance.html")
print("instruction score base -> tuned:", {k: round(v, 3) for k, v in vis.data["scores"].items()})

# %% top words per W_out principal component, base beside tuned
from shiftlens.ffn import concept_shift, concept_words, rotation  # noqa: E402

cws = tuple(concept_words(model, last, k=8, top_words=12) for _, model in pair)
concept_table(cws, n_components=8, n_words=10).save(out / "concepts.html")

# %% static figures (PNG + SVG, model names under every figure)
from shiftlens.attention import instruction_attention  # noqa: E402

ia = instruction_attention(pair, prompts, progress=False)
print(ia.summary()["sentence"])
save_figure(head_delta_figure(ia), out / "head_delta")
rot = rotation(pair, progress=False)
save_figure(rotation_figure(rot), out / "rotation")
cs = concept_shift(pair, k=8, progress=False)
save_figure(concept_share_figure(cs), out / "concept_shares")
pyplot().close("all")

# %% a small report: the attention and feed-forward lenses (the full one: `shiftlens demo`)
from shiftlens.report import build_report  # noqa: E402

rep = build_report(pair, prompts, out / "report_small", lenses="attention,ffn", progress=False,
                   options={"concept_k": 8, "rotation_k": 8, "verb_words": 500})
for line in rep.headlines:
    print("-", line)

# %% what the attention view shows for the head whose instruction attention rose most
top = ia.ranking().iloc[0]
layer, head = int(top["layer"]), int(top["head"])
view = attention_patterns(pair, prompt, layers=[layer])
tokens = view.data["tokens"]
facts = {"layer": layer, "head": head, "prompt": prompt.id, "n_tokens": len(tokens),
         "base_mean": float(top["base"]), "tuned_mean": float(top["tuned"]), "p_holm": float(top["p_holm"])}
for role in ("base", "tuned"):
    row = view.data["patterns"][role][layer][head, -1]  # the last token's attention over keys
    k = int(row.argmax())
    facts[role] = {"target": tokens[k], "weight": float(row[k])}
    print(f"{role}: L{layer}H{head}: {tokens[-1]!r} puts {float(row[k]):.2f} of its attention "
          f"on {tokens[k]!r}")

# %% the numbers docs/viz.md quotes (docs/results/report.json, tools/regen_docs.py --results report)
import circuitsvis  # noqa: E402

bundle = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"
sizes = {name: (out / name).stat().st_size
         for name in ("attention_patterns.html", "importance.html", "concepts.html")}
numbers = {"values": {"view": facts, "n_prompts": len(prompts)},
           "measured": {"bytes": {**sizes, "bundle": bundle.stat().st_size,
                                  "report_small": rep.html_path.stat().st_size},
                        "bundle_mb": round(bundle.stat().st_size / 1e6, 1),
                        "seconds": round(time.perf_counter() - t_start, 1)}}
(out / "numbers.json").write_text(json.dumps(numbers, indent=1))
print(f"report: {rep.html_path}; all files in {out}/ ({time.perf_counter() - t_start:.0f} s)")
