"""Lens 2 walkthrough: which heads read the instruction, and which word pairs they encode.

Runs offline, top to bottom (``# %%`` cells), on the embedded toy pair (``shiftlens.zoo``) when it
is installed, otherwise on a tiny random Llama pair (``shiftlens.testing.tiny_pair``; there every
shift is noise). Figures and results go to ``--out`` (default ``out/attention``), with
``numbers.json``: every number docs/attention.md quotes (``values``, deterministic; ``measured``,
times), copied to docs/results/attention.json by ``python tools/regen_docs.py --results attention``.

    python examples/attention.py [--out out/attention] [--pair toy|tiny] [--n-prompts N]
"""

# %% setup
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from shiftlens.lenses.attention import (  # noqa: E402
    instruction_attention,
    pair_diff,
    qk_score,
    top_pairs,
    verb_shift,
    word_pairs,
)
from shiftlens.prompts import SEGMENTS  # noqa: E402
from shiftlens.vocab import default_vocab  # noqa: E402
from shiftlens.weights import WordVocab  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--out", default="out/attention")
parser.add_argument("--pair", choices=["toy", "tiny", "auto"], default="auto")
parser.add_argument("--n-prompts", type=int, default=None,
                    help="toy pair: the first N held-out prompts (default: all 280)")
args, _ = parser.parse_known_args()
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)
t_start = time.perf_counter()

# %% the pair and its prompts
from shiftlens.zoo import PAIR_DIR  # noqa: E402

use_toy = args.pair == "toy" or (
    args.pair == "auto" and (PAIR_DIR / "base" / "model.safetensors").exists()
)
if use_toy:
    from shiftlens.zoo import grammar, heldout_sentences, toy_pair, toy_prompts

    pair = toy_pair()
    # the held-out prompts (40 per task by default, interleaved over tasks), with references
    prompts = toy_prompts(args.n_prompts)
    # the toy language's own words, most frequent first (its tokenizer is byte-level BPE, so
    # English words outside the grammar would only be byte soup)
    counts = collections.Counter(
        w for s in heldout_sentences(3000) + [p.text for p in prompts]
        for w in re.findall(r"\b[a-z]+\b", s)
    )
    counts.update(grammar.TRANSLATION.values())
    vocab = WordVocab.build(pair.tokenizer, [w for w, _ in counts.most_common()], max_tokens=2)
    instruction = [v[0] for v in grammar.INSTRUCTION_VERBS]  # reverse, repeat, sort, ...
    general = [v[0] for v in grammar.TRANSITIVE_VERBS]  # see, find, carry, ...
else:
    from shiftlens.prompts import default_prompts
    from shiftlens.testing import tiny_pair

    pair = tiny_pair("llama")
    prompts = default_prompts()[:16]
    vocab = default_vocab(pair.tokenizer, 3000)
    instruction = general = None  # the shipped lexicons
print(pair)
print(f"{len(prompts)} prompts; vocabulary {len(vocab)} words ({len(vocab.skipped)} skipped)")

# %% activation view: attention of the response tokens to the instruction, per head
t0 = time.perf_counter()
res = instruction_attention(pair, prompts, query="response", progress=False)
seconds = {"response": time.perf_counter() - t0}
print(res.summary()["sentence"])
print(res.ranking().head(6)[["layer", "head", "base", "tuned", "delta", "p", "p_holm", "p_bh"]])
res.show(out / "instruction_attention.png")
res.save(out / "instruction_attention")

# %% the same with the last prompt token as the query (what the model reads before answering)
t0 = time.perf_counter()
res_last = instruction_attention(pair, prompts, query="last", progress=False)
seconds["last"] = time.perf_counter() - t0
print(res_last.summary()["sentence"])
res_last.show(out / "instruction_attention_last.png")

# %% weight view: the word pairs of the head whose instruction attention rose most
top = res.ranking().iloc[0]
layer, head = int(top["layer"]), int(top["head"])
for role, model in pair:
    df = word_pairs(model, layer, head, vocab, top_dims=8, top_k=30)
    print(f"{role}: layer {layer} head {head}: {len(df)} pairs; top 8:")
    print(df.head(8)[["dim", "q_word", "k_word", "score", "similarity"]].to_string(index=False))
    print(df.attrs["filter_note"])  # how many candidates the relatedness filter dropped, and why

# %% the full bilinear score x_a^T W_Q W_K^T x_b: any pair, the head's top pairs, base vs tuned
q, k = df.q_word.iloc[0], df.k_word.iloc[0]  # the tuned head's top per-dimension pair
for role, model in pair:
    print(f"{role}: full score of ({q}, {k}) in L{layer}H{head}: "
          f"{qk_score(model, layer, head, q, k, vocab):.4g}")
print(top_pairs(pair.tuned, layer, head, vocab, k=8)[["q_word", "k_word", "score"]]
      .to_string(index=False))
diff = pair_diff(pair, layer, head, vocab, k=5, progress=False)
print(diff[["change", "q_word", "k_word", "base", "tuned", "delta"]].to_string(index=False))
print(diff.attrs["filter_note"])

# %% the same for every head of every layer at once (one batched projection per layer)
every = word_pairs(pair.tuned, vocab=vocab, top_dims=8, top_k=30, progress=False)
print(every.groupby(["layer", "head"]).size().unstack("head", fill_value=0))

# %% verb shift (the paper's Table 3): do heads gain pairs with instruction verbs?
# The report runs verb_shift with its own settings (a 5,000-word default vocabulary, the
# shipped verb lexicons, top_dims=10, top_k=50); this example uses the toy language's words
# and verbs and top_dims=8, top_k=30, so the numbers differ. Each sentence names its settings.
t0 = time.perf_counter()
vs = verb_shift(pair, vocab, instruction=instruction, general=general, top_dims=8, top_k=30,
                progress=False)
seconds["verb_shift_example"] = time.perf_counter() - t0
print(vs.tests[["group", "mean_instruction", "mean_general", "diff", "p",
                "n_instruction", "n_general"]].to_string(index=False))
print(vs.summary()["sentence"])
vs.show(out / "verb_shift.png")
vs.save(out / "verb_shift")

# %% the verb shift depends on its settings: the defaults and the paper's setting
# (all d_head dimensions, top-K 100, a pair counted when found in at least two dimensions)
SETTINGS = {
    "defaults": {},
    "paper": {"top_dims": None, "top_k": 100, "min_dims": 2},
    "example": None,  # the run above
}
shifts = {}
for name, kw in SETTINGS.items():
    if kw is None:
        shifts[name] = vs
        continue
    t0 = time.perf_counter()
    shifts[name] = verb_shift(pair, vocab, instruction=instruction, general=general,
                              progress=False, **kw)
    seconds[f"verb_shift_{name}"] = time.perf_counter() - t0
    print(f"{name}: {shifts[name].summary()['sentence']}")

# %% the shipped verb lexicons' frequencies (median Zipf frequency of the words in the list)
from shiftlens.lenses.attention import general_verbs, instruction_verbs  # noqa: E402
from shiftlens.vocab import word_zipf  # noqa: E402


def zipf_median(words: list[str]) -> tuple[float, list[str]]:
    z = {w: word_zipf(w) for w in words}
    known = sorted(v for v in z.values() if v is not None)
    mid = len(known) // 2
    med = known[mid] if len(known) % 2 else (known[mid - 1] + known[mid]) / 2
    return round(med, 6), [w for w, v in z.items() if v is None]


lex = {}
for name, words in (("instruction", instruction_verbs()), ("general", general_verbs())):
    med, missing = zipf_median(words)
    lex[name] = {"n": len(words), "zipf_median": med, "n_missing": len(missing),
                 "missing": ", ".join(missing)}
print("shipped lexicons:", lex)


# %% numbers.json: what docs/attention.md quotes
def activation_numbers(r) -> dict:
    s = r.summary()
    im = s["instruction_mass"]
    seg = {role: r.mean_mass(role).mean((0, 1)).tolist() for role in ("base", "tuned")}
    rank = r.ranking()
    heads = lambda rows: [{"layer": int(x.layer), "head": int(x.head), "base": float(x.base),  # noqa: E731
                           "tuned": float(x.tuned), "delta": float(x.delta)}
                          for x in rows.itertuples()]
    return {
        "n_prompts": s["n_prompts"], "n_heads": s["n_heads"],
        "base": im["mean_b"], "tuned": im["mean_a"], "diff": im["diff"],
        "ci_low": im["ci_low"], "ci_high": im["ci_high"], "p": im["pvalue"],
        "n_up": s["n_heads_up_holm"], "n_down": s["n_heads_down_holm"],
        "n_up_bh": s["n_heads_up_bh"], "n_down_bh": s["n_heads_down_bh"],
        "group": {g: {"diff": v["diff"], "p": v["pvalue"], "layers": v["layers"]}
                  for g, v in s["by_layer_group"].items()},
        "segment": {name: {"base": seg["base"][i], "tuned": seg["tuned"][i]}
                    for i, name in enumerate(SEGMENTS)},
        "top": heads(rank.head(4)), "bottom": heads(rank.tail(1)),
    }


def verb_numbers(v) -> dict:
    return {str(t.group): {"instruction": float(t.mean_instruction),
                           "general": float(t.mean_general), "p": float(t.p),
                           "n_instruction": int(t.n_instruction), "n_general": int(t.n_general)}
            for t in v.tests.itertuples()}


def fmt_cell(t: dict) -> str:
    p = t["p"]
    return f"{t['instruction']:.2f} vs {t['general']:.2f} (p={p:.2g})"


values = {
    "pair": "toy" if use_toy else "tiny",
    "n_vocab": len(vocab), "n_instruction_verbs": len(instruction or []),
    "n_general_verbs": len(general or []),
    "response": activation_numbers(res), "last": activation_numbers(res_last),
    "verb_shift": {name: verb_numbers(v) for name, v in shifts.items()},
    "lexicon": lex,
}
LABELS = {"defaults": "defaults (`top_dims=10, top_k=50`, `min_dims=1`)",
          "paper": "paper-like (`top_dims=None, top_k=100, min_dims=2`)",
          "example": "the example's (`top_dims=8, top_k=30`)"}
groups = list(values["verb_shift"]["defaults"])
verb_table = "\n".join(
    ["| setting | " + " | ".join(groups) + " |", "|---" * (len(groups) + 1) + "|"]
    + [f"| {LABELS[name]} | " + " | ".join(fmt_cell(values["verb_shift"][name][g])
                                          for g in groups) + " |" for name in shifts])
QUERY_LABELS = {"response": "response tokens", "last": "last prompt token"}
act_table = "\n".join(
    ["| query | instruction mass base -> tuned (mean over heads) | paired t-test across "
     "prompts | heads up / down (Holm p < 0.05) |", "|---|---|---|---|"]
    + [f"| {QUERY_LABELS[q]} | {a['base']:.3f} -> {a['tuned']:.3f} | p = {a['p']:.2g} | "
       f"{a['n_up']} / {a['n_down']} of {a['n_heads']} |"
       for q, a in (("response", values["response"]), ("last", values["last"]))])
load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
measured = {"seconds": time.perf_counter() - t_start, "threads": torch.get_num_threads(),
            "load": load, "step_seconds": seconds}
(out / "numbers.json").write_text(json.dumps(
    {"values": values, "measured": measured,
     "blocks": {"verb-table": verb_table, "activation-table": act_table}}, indent=1))
print(f"done in {time.perf_counter() - t_start:.1f}s; outputs in {out}")
