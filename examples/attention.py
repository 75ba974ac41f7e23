"""Lens 2 walkthrough: which heads read the instruction, and which word pairs they encode.

Runs offline, top to bottom (``# %%`` cells), on the embedded toy pair (``shiftlens.zoo``) when it
is installed, otherwise on a tiny random Llama pair (``shiftlens.testing.tiny_pair``; there every
shift is noise). Figures and results go to ``--out`` (default ``out/attention``).

    python examples/attention.py [--out out/attention] [--pair toy|tiny]
"""

# %% setup
from __future__ import annotations

import argparse
import collections
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
from shiftlens.vocab import default_vocab  # noqa: E402
from shiftlens.weights import WordVocab  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--out", default="out/attention")
parser.add_argument("--pair", choices=["toy", "tiny", "auto"], default="auto")
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
    prompts = toy_prompts(28)  # 4 held-out prompts per task, with reference responses
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
res = instruction_attention(pair, prompts, query="response", progress=False)
print(res.summary()["sentence"])
print(res.ranking().head(6)[["layer", "head", "base", "tuned", "delta", "p", "p_holm", "p_bh"]])
res.show(out / "instruction_attention.png")
res.save(out / "instruction_attention")

# %% the same with the last prompt token as the query (what the model reads before answering)
res_last = instruction_attention(pair, prompts, query="last", progress=False)
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
vs = verb_shift(pair, vocab, instruction=instruction, general=general, top_dims=8, top_k=30,
                progress=False)
print(vs.tests[["group", "mean_instruction", "mean_general", "diff", "p",
                "n_instruction", "n_general"]].to_string(index=False))
print(vs.summary()["sentence"])
vs.show(out / "verb_shift.png")
vs.save(out / "verb_shift")
print(f"done in {time.perf_counter() - t_start:.1f}s; outputs in {out}")
