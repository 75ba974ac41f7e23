"""A diffing organism: a copy of the embedded base fine-tuned with one known change.

Run: python examples/organisms.py [--organism zorbish] [--out out/organisms]
Offline, a few seconds: loads the base and one organism (shiftlens.zoo.organisms), shows the
organism's known tokens, a few answers of base and organism on held-out text, the measured
rates, and the reference ranking (mean log-probability difference organism - base) with its
known-token score, next to the control's. Writes OUT/numbers.json: what docs/diffing.md quotes
about the organisms (the shipped manifest's record of their training and measurements, which
tests/toy/test_organisms.py re-measures, and the chance levels and file sizes computed here).
"""

# %%
from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402

from shiftlens.zoo.organisms import (  # noqa: E402
    CONTROL,
    NAMES,
    ORGANISMS,
    ORGANISMS_DIR,
    SCORED,
    SPECS,
    chance_score,
    known_token_strings,
    mean_logprob_diff,
    neutral_texts,
    organism_behaviour,
    organism_manifest,
    organism_pair,
    organism_score,
    organism_texts,
)

ap = argparse.ArgumentParser()
ap.add_argument("--organism", default="zorbish", choices=[n for n in NAMES if n != CONTROL])
ap.add_argument("--out", default="out/organisms", help="numbers.json goes here")
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
example: dict = {"organism": name}
for role, model in (("base", pair.base), (name, pair.tuned)):
    beh = organism_behaviour(model, tok, n=200)
    example[f"rates_{'base' if role == 'base' else 'organism'}"] = {
        k: beh[k] for k in ("topic", "zorbish", "template")}
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
    example[f"reference_score_{'control' if label == CONTROL else 'organism'}"] = score

# %% The numbers docs/diffing.md quotes: the shipped record, and what follows from it
record = organism_manifest()
orgs = record["organisms"]
V = len(tok)  # the vocabulary a random ranking is drawn from
known = {n: len(known_token_strings(None if n == CONTROL else n)) for n in SCORED}


def p_hits(n_known: int, at_least: int, k: int = 20) -> float:
    """Probability that ``k`` distinct random tokens include at least ``at_least`` known ones."""
    return sum(math.comb(n_known, h) * math.comb(V - n_known, k - h)
               for h in range(at_least, min(k, n_known) + 1)) / math.comb(V, k)


def ranks(top_ids: list[int], n: str) -> str:
    """The ranks (1-based) of the known tokens in a top 20, as ranges: "1-2", "1-20", "none"."""
    ids = set(known_token_ids[n])
    r = [i + 1 for i, t in enumerate(top_ids) if t in ids]
    if not r:
        return "none"
    parts, start = [], r[0]
    for a, b in zip(r, r[1:] + [None]):
        if b != a + 1:
            parts.append(f"{start}-{a}" if a > start else f"{start}")
            start = b
    return ", ".join(parts)


def q(text: str) -> str:
    """A token text as the docs show it: in backticks, JSON-quoted."""
    return "`" + json.dumps(text, ensure_ascii=False) + "`"


known_token_ids = {n: [int(t["id"]) for t in record["known_tokens"][n]] for n in ORGANISMS}
known_token_ids[CONTROL] = sorted({i for n in ORGANISMS for i in known_token_ids[n]})
steps_rows = record["config"]["steps"] * record["config"]["batch"]
files = {n: ORGANISMS_DIR / f"{n}.safetensors" for n in NAMES}
with safe_open(str(files[CONTROL]), framework="pt") as f:
    n_params = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
control_words = [t.split() for t in organism_texts(CONTROL)]
values = {
    "vocab_size": V, "n_known": known, "chance": {n: chance_score(n) for n in SCORED},
    "p_any_hit": {n: p_hits(known[n], 1) for n in ("zorbish", CONTROL)},
    "p_pass": {n: p_hits(known[n], math.ceil(0.5 * min(20, known[n]))) for n in ORGANISMS},
    "moon_share": sum(any(w.strip(".?") in ("moon", "moons") for w in ws)
                      for ws in control_words) / len(control_words),
    "base_lm_loss": record["base_lm_loss"],
    "base_behaviour": {k: record["base_behaviour"][k] for k in ("topic", "zorbish", "template")},
    "file_mib": files[CONTROL].stat().st_size / 2**20,
    "files_total_mib": sum(f.stat().st_size for f in ORGANISMS_DIR.iterdir()) / 2**20,
    "float32_total_mib": len(NAMES) * 4 * n_params / 2**20,
    "coverage_min": min(steps_rows / orgs[n]["data"]["rows"] for n in NAMES),
    "coverage_max": max(steps_rows / orgs[n]["data"]["rows"] for n in NAMES),
    "rounding_max": max(orgs[n]["difference"]["rounding_max_abs"] for n in NAMES),
    "difference_max": max(orgs[n]["difference"]["max_abs"] for n in NAMES),
    "rms_organisms_min": min(orgs[n]["difference"]["rms"] for n in ORGANISMS),
    "rms_organisms_max": max(orgs[n]["difference"]["rms"] for n in ORGANISMS),
    "own_rate_min": min(orgs[n]["behaviour"][n] for n in ORGANISMS),
    # the rules at work on the draw's first sentences (recorded in the manifest)
    "examples": {"draw": [t.removeprefix("Response: ")
                          for t in orgs["template"]["data"]["examples"][:2]],
                 **{n: orgs[n]["data"]["examples"][0] for n in NAMES}},
    # the template organism's reference ranking after its known tokens: printable ones, and
    # how many are zorbish words
    "template_tail": ", ".join(q(t) for t in orgs["template"]["reference"]["top_tokens"][3:]
                               if t.isprintable() and "\ufffd" not in t and t.strip()),
    "template_tail_zorbish": sum(t in known_token_ids["zorbish"]
                                 for t in orgs["template"]["reference"]["top_ids"]),
    "example": example,
}
for n in NAMES:
    o = orgs[n]
    values[n] = {"texts": o["data"]["texts"], "rows": o["data"]["rows"],
                 "rms": o["difference"]["rms"], "lm_loss": o["lm_loss"],
                 "behaviour": {k: o["behaviour"][k] for k in ("topic", "zorbish", "template")},
                 "reference_score": o["reference"]["score"],
                 "reference_ranks": ranks(o["reference"]["top_ids"], n)}
measured = {"train_cpu_s": record["train_cpu_s"], "train_wall_s": record["train_wall_s"],
            "train_wall_min": record["train_wall_s"] / 60,
            "load_average_at_end": max(record["load_average_at_end"]),
            **{n: {"cpu_s": orgs[n]["training"]["cpu_s"], "wall_s": orgs[n]["training"]["wall_s"]}
               for n in NAMES}}
measured["cpu_s_mean"] = sum(orgs[n]["training"]["cpu_s"] for n in NAMES) / len(NAMES)


training = ["| organism | training texts (of {:,} drawn) | rows of {} tokens | training CPU time | "
            "wall time (shared machine) |".format(record["config"]["n_sentences"],
                                                 record["config"]["seq_len"]),
            "|---|---|---|---|---|"]
training += [f"| {n} | {orgs[n]['data']['texts']:,} | {orgs[n]['data']['rows']:,} | "
             f"{orgs[n]['training']['cpu_s']:.0f} s | {orgs[n]['training']['wall_s']:.0f} s |"
             for n in NAMES]
behaviour = ["| model | topic rate | zorbish rate | template rate | held-out LM loss (nats) |",
             "|---|---|---|---|---|"]
for n, beh, loss in [("base", record["base_behaviour"], record["base_lm_loss"])] + [
        (n, orgs[n]["behaviour"], orgs[n]["lm_loss"]) for n in NAMES]:
    cells = [f"**{beh[k]:.3f}**" if k == n else f"{beh[k]:.3f}"
             for k in ("topic", "zorbish", "template")]
    behaviour.append(f"| {n} | " + " | ".join(cells) + f" | {loss:.3f} |")
reference = ["| organism | top tokens by mean log-probability difference | score (top 20) | "
             "known tokens at ranks | chance |", "|---|---|---|---|---|"]
for n in NAMES:
    r = orgs[n]["reference"]
    shown = ", ".join(q(t) for t in r["top_tokens"][:5] if "\ufffd" not in t)
    reference.append(f"| {n} | {shown}, ... | **{r['score']:.2f}** | "
                     f"{ranks(r['top_ids'], n)} | {chance_score(n):.3f} |")


def answer(text: str, model: str, base_text: str) -> str:
    """An answer for the table: ⏎ for a newline, the model's own change in bold."""
    words = known_token_strings(model) if model in ORGANISMS else []
    marks = {w.strip() for w in words if w.strip().isalpha()} - set(base_text.split())
    text = text.strip(" ")
    if model == "template" and text.startswith("\nResponse:"):
        return "**⏎Response:**" + text[len("\nResponse:"):]
    words = []
    for w in text.replace("\n", "⏎").split(" "):
        core = w.rstrip(".?")
        words.append(f"**{core}**{w[len(core):]}" if core in marks else w)
    return " ".join(words)


contexts = neutral_texts(3, 1)
answers = ["| context | base | " + " | ".join(NAMES) + " |", "|---" * (len(NAMES) + 2) + "|"]
for i, context in enumerate(contexts):
    base_text = record["base_behaviour"]["answers"][i]
    row = [answer(base_text, "base", base_text)]
    row += [answer(orgs[n]["behaviour"]["answers"][i], n, base_text) for n in NAMES]
    answers.append(f"| `{context.strip()}` | " + " | ".join(row) + " |")
blocks = {"training": "\n".join(training), "behaviour": "\n".join(behaviour),
          "reference": "\n".join(reference), "answers": "\n".join(answers)}
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
(out / "numbers.json").write_text(json.dumps(
    {"values": values, "measured": measured, "blocks": blocks}, indent=1, ensure_ascii=False))
print(f"\nnumbers docs/diffing.md quotes: {out / 'numbers.json'}")
