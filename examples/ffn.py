"""Lens 3, feed-forward concepts: what W_out encodes, and how tuning rotates it.

Notebook-style (``# %%`` cells). Runs offline on the embedded toy pair when it is installed
(``shiftlens/zoo/pair``), otherwise on a tiny random pair built on the fly::

    python examples/ffn.py [--out out/ffn] [--pair toy|tiny]

Figures and saved results go to ``--out``, and the numbers docs/ffn.md quotes to
``OUT/numbers.json`` (``python tools/regen_docs.py --results ffn`` copies them to
``docs/results/ffn.json``).
"""

# %% setup
from __future__ import annotations

import argparse
import json
import os
import time
import warnings
import zlib
from importlib import resources
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore", category=UserWarning)

import torch  # noqa: E402

from shiftlens import ffn  # noqa: E402
from shiftlens.vocab import default_vocab  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--out", default="out/ffn")
ap.add_argument("--pair", choices=["auto", "toy", "tiny"], default="auto")
args, _ = ap.parse_known_args()
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)
t_wall, t_cpu = time.perf_counter(), time.process_time()
#: What docs/ffn.md quotes from this run (written to OUT/numbers.json at the end).
values: dict = {}


def load_pair(kind: str):
    if kind in ("auto", "toy"):
        try:
            from shiftlens.zoo import toy_pair

            return "toy", toy_pair()
        except Exception as e:  # noqa: BLE001 - the toy pair may not be installed yet
            if kind == "toy":
                raise
            print(f"toy pair unavailable ({type(e).__name__}: {e}); using a tiny random pair")
    from shiftlens.testing import tiny_pair

    return "tiny", tiny_pair("llama", n_layers=4, scale=0.05)


which, pair = load_pair(args.pair)
print(pair)

# %% vocabulary: frequent English words the tokenizer covers (the toy pair: its grammar's words)


#: The grammar's word lists the toy vocabulary is built from (named, so that a constant added to
#: the grammar later does not change this example's vocabulary: 236 words).
GRAMMAR_LISTS = ("ADJECTIVES", "INPUT_NOUNS", "INPUT_VERBS", "INPUT_WORDS", "INSTRUCTION_VERBS",
                 "NUMBER_WORDS", "OTHER_NOUNS", "PEOPLE", "PLACES", "PRONOUNS", "TASK_NAMES",
                 "TIMES", "TRANSITIVE_VERBS", "TRANSLATION")


def toy_words() -> list[str]:
    from shiftlens.zoo import grammar

    out: list[str] = []

    def walk(x):
        if isinstance(x, str):
            out.extend(x.split())
        elif isinstance(x, dict):
            for k, v in x.items():
                walk(k)
                walk(v)
        elif isinstance(x, (tuple, list)):
            for v in x:
                walk(v)

    for name in GRAMMAR_LISTS:
        walk(getattr(grammar, name))
    walk([t.phrasings for t in grammar.TASKS])
    return list(dict.fromkeys(w.strip(".?,") for w in out))


vocab = default_vocab(pair.tokenizer, words=toy_words()) if which == "toy" else default_vocab(
    pair.tokenizer, 5000)
print(f"{len(vocab)} words ({len(vocab.skipped)} skipped: not encodable in <= 3 tokens)")
values["pair"] = {"kind": which, "n_layers": pair.cfg.n_layers, "d_model": pair.cfg.d_model,
                  "d_mlp": pair.cfg.d_mlp, "d_vocab": pair.cfg.d_vocab, "n_words": len(vocab)}

# %% one model, one layer: principal components of W_out and their words
layer = pair.cfg.n_layers - 1
pc = ffn.principal_components(pair.base, layer, k=8)
print("explained variance ratio of the top 8 components:",
      [round(x, 3) for x in pc.explained_variance_ratio.tolist()])
cw = ffn.concept_words(pair.base, layer, k=5, top_words=10, vocab=vocab)
for c, (ws, ss) in enumerate(zip(cw.words, cw.scores.tolist())):
    print(f"base L{layer} PC{c}: " + " ".join(f"{w}({s:+.2f})" for w, s in zip(ws, ss)))


def words(model, top: int = 5, k: int = 3) -> dict:
    """Every layer's first ``k`` components as their ``top`` words (what the docs quote)."""
    out = {}
    for lay in range(pair.cfg.n_layers):
        c = ffn.concept_words(model, lay, k=k, top_words=8, vocab=vocab)
        out[f"L{lay}"] = {f"PC{i}": ", ".join(ws[:top]) for i, ws in enumerate(c.words)}
        if lay == 2:  # the zorbish component of base layer 2: how tight its words' scores are
            a = c.scores[0].abs()
            out[f"L{lay}"]["PC0_abs_cos"] = {"min": float(a.min()), "max": float(a.max())}
    return out


values["words"] = {"base": words(pair.base), "tuned": words(pair.tuned)}

# %% rotation: how far each layer's top-k subspace moved
rot = ffn.rotation(pair, vocab=vocab, top_words=8, progress=False)
print(rot.to_frame()[["layer", "overlap", "mean_angle_deg", "var_retained"]].round(3))
print(rot.summary()["sentence"])
moved = rot.moved.query("side == 'tuned'").sort_values("inside_other").head(3)
for _, r in moved.iterrows():
    print(f"L{r.layer} tuned PC{r.component} (inside base subspace {r.inside_other:.2f}):\n"
          f"   before: {r.words_before}\n   after:  {r.words_after}")
rs = rot.summary()
values["rotation"] = {
    "k": rot.k, "chance_overlap": rot.chance_overlap, "mean_overlap": rs["mean_overlap"],
    "overlap_ci": list(rs["overlap_ci"]), "mean_var_retained": rs["mean_var_retained"],
    "layers": {f"L{int(r.layer)}": {"overlap": float(r.overlap),
                                    "mean_angle_deg": float(r.mean_angle_deg),
                                    "var_retained": float(r.var_retained)}
               for r in rot.to_frame().itertuples()}}
# the last layer's most moved components: new tuned directions, lost base ones
last = rot.moved[rot.moved.layer == layer]
values["rotation"]["moved_last"] = {
    side: [{"component": int(r.component), "explained_variance_ratio": float(r.explained_variance_ratio),
            "words_before": ", ".join(r.words_before.split("|")),
            "words_after": ", ".join(r.words_after.split("|"))}
           for r in last[last.side == side].itertuples()]
    for side in ("tuned", "base")}
rot.save(out / "rotation")  # reload with shiftlens.load(out / "rotation")
rot.show(out / "rotation.png")

# %% concept shift with the offline lexicon annotator
res = ffn.concept_shift(pair, k=16, top_words=15, vocab=vocab, progress=False)
print(res.summary()["sentence"])
st = res.stats()
print(st[(st.group == "all") & (st.kind != "explainable")][
    ["kind", "label", "base_mean", "tuned_mean", "diff", "p", "unit"]].round(3).to_string(index=False))


def shares(result) -> dict:
    """Base/tuned share, difference, CI and p of every task and level over all layers."""
    s = result.stats()
    s = s[(s.group == "all") & (s.kind != "explainable")]
    return {r.label: {k: float(getattr(r, k)) for k in ("base_mean", "tuned_mean", "diff", "p")
                      if not (k == "p" and r.p != r.p)} for r in s.itertuples()}


values["concept_shift"] = shares(res)
ci = res.summary()["task"]["user-oriented"]
values["concept_shift"]["user-oriented"].update(ci_low=float(ci["ci_low"]), ci_high=float(ci["ci_high"]))
res.save(out / "concept_shift")
res.show(out / "concept_shift.png")
res.show(out / "concept_shift_by_group.png", by_group=True)  # the report's figure

# %% toy pair only: a lexicon for the toy's own tasks (zorbish words = translation, numbers = math)
if which == "toy":
    from shiftlens.zoo import grammar

    tasks = json.loads((resources.files("shiftlens") / "data" / "lexicons" / "tasks.json").read_text())
    tasks["tasks"]["translation"]["words"] += [*grammar.TRANSLATION.values(), "zorbish"]
    tasks["tasks"]["math"]["words"] += [*grammar.NUMBER_WORDS, "count", "number", "many"]
    toy_lex = ffn.LexiconAnnotator(lexicons=ffn.load_lexicons(tasks=tasks))
    res_toy = ffn.concept_shift(pair, toy_lex, k=16, top_words=15, vocab=vocab, progress=False)
    print("toy lexicon:", res_toy.summary()["sentence"])
    res_toy.show(out / "concept_shift_toy_lexicon.png")
    values["concept_shift_toy_lexicon"] = shares(res_toy)

    # the slow toy test's known shift: zorbish words as the only task lexicon, a vocabulary of
    # the grammar's adjectives, input words, number words, zorbish words and pronouns
    small = default_vocab(pair.tokenizer, words=[w for ws in (
        grammar.ADJECTIVES, grammar.INPUT_WORDS, grammar.NUMBER_WORDS,
        tuple(grammar.TRANSLATION.values()), grammar.PRONOUNS) for w in ws])
    zlex = ffn.load_lexicons(tasks={"tasks": {"translation": {"words": [*grammar.TRANSLATION.values()]}}})
    res_z = ffn.concept_shift(pair, ffn.LexiconAnnotator(lexicons=zlex), k=16, top_words=15,
                              vocab=small, progress=False)
    tr = res_z.summary()["task"]["translation"]
    print(f"zorbish-only lexicon, {len(small)} words: translation {tr['base_mean']:.1%} -> "
          f"{tr['tuned_mean']:.1%} (p = {tr['p']:.2g})")
    values["zorbish_only"] = {"n_words": len(small), **{k: float(tr[k]) for k in (
        "base_mean", "tuned_mean", "t", "p", "ci_low", "ci_high") if k in tr}}

# %% from the checkpoint files, one layer at a time (for a model that does not fit in memory),
# with one ComponentCache shared by both analyses (each layer's PCA computed once, as the report)
if which == "toy":
    from shiftlens.zoo import pair_dirs

    cache = ffn.ComponentCache()
    files = pair_dirs()  # (base_dir, tuned_dir): read with shiftlens.weights.CheckpointWeights
    rot_files = ffn.rotation(files, vocab=vocab, top_words=8, progress=False, cache=cache)
    res_files = ffn.concept_shift(files, k=16, top_words=15, vocab=vocab, progress=False,
                                  cache=cache)
    print("from the files, bit for bit the bridges' results:",
          rot_files.equals(rot) and res_files.equals(res), cache)
    print(res_files.exclusions().to_string() if len(res_files.exclusions())
          else "no (model, seed, layer group) without an explainable concept")

# %% the paper's two-step protocol with any text generator (here: a rule-based stand-in)
# Replace `toy_llm` by a call into a local chat model, e.g.
#   lambda prompt, seed: chat(prompt, temperature=1.0, seed=seed)


def toy_llm(prompt: str, seed: int = 0) -> str:
    """Describes with the lexicon annotator, and (like a sampled LLM) gives up now and then."""
    if prompt.rstrip().endswith("Concept:"):
        words = prompt.split("\n")[1].split(", ")
        lex = ffn.LexiconAnnotator().annotate(words)
        coin = (zlib.crc32(" ".join(words).encode()) + seed) % 4 == 0  # varies with the seed
        if not lex.explainable or coin:
            return "cannot tell"
        return f"{lex.task} words at the {lex.level} level"
    if prompt.rstrip().endswith("Task:"):
        return next((t for t in ffn.TASKS if t in prompt.split("\n")[0]), "none")
    return next((lv for lv in ffn.LEVELS if lv in prompt.split("\n")[0]), "semantics")


gen = ffn.GenerativeAnnotator(toy_llm, seeds=(0, 1, 2), name="rule-based stand-in")
res_gen = ffn.concept_shift(pair, gen, layers=[layer], k=8, top_words=15, vocab=vocab,
                            progress=False)
print(res_gen.summary()["sentence"])
values["generative"] = shares(res_gen)["user-oriented"]

# %% null calibration of the lexicon annotator: random frequent English words share no concept
from shiftlens.vocab import english_words  # noqa: E402

pool = english_words(5000)
rng = torch.Generator().manual_seed(0)
lex = ffn.LexiconAnnotator()
anns = [lex.annotate([pool[i] for i in torch.randperm(len(pool), generator=rng)[:15].tolist()])
        for _ in range(2000)]
null = {"n_lists": len(anns),
        "level": {lv: sum(a.explainable and a.level == lv for a in anns) / len(anns)
                  for lv in ffn.LEVELS},
        "task": {t: sum(a.task == t for a in anns) / len(anns) for t in ffn.USER_TASKS}}
print("null calibration, share of random lists labelled:", null)
values["null_calibration"] = null

# %% the shipped lexicons' sizes
lexicons = {n: json.loads((resources.files("shiftlens") / "data" / "lexicons" / f"{n}.json")
                          .read_text()) for n in ("tasks", "linguistic")}
english = set(english_words(30000))
ling = lexicons["linguistic"]
values["lexicons"] = {
    "tasks": {t: {"words": len(v["words"]),
                  "in_english": sum(w in english for w in v["words"]) / len(v["words"])}
              for t, v in lexicons["tasks"]["tasks"].items()},
    "phonology_words": len(ling["phonology"]["words"]),
    **{f"morphology_{k}": len(ling["morphology"][k]) for k in ("prefixes", "suffixes", "abbreviations")},
    "function_words": sum(map(len, ling["syntax"]["function_words"].values())),
    "function_word_classes": len(ling["syntax"]["function_words"]),
    "semantic_fields": len(ling["semantics"]["fields"]),
    "semantic_field_min": min(map(len, ling["semantics"]["fields"].values())),
    "semantic_field_max": max(map(len, ling["semantics"]["fields"].values())),
}

load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
measured = {"seconds": time.perf_counter() - t_wall, "cpu_seconds": time.process_time() - t_cpu,
            "load_average": load}
(out / "numbers.json").write_text(json.dumps({"values": values, "measured": measured}, indent=1))
print(f"figures and results in {out}/")
