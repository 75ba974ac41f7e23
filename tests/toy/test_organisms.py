"""Diffing organisms (shiftlens.zoo.organisms): known changes, stored weights, score, determinism."""

from __future__ import annotations

import hashlib
import os
import random
import re
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from shiftlens.errors import ShiftlensError
from shiftlens.zoo import grammar, pair_dirs
from shiftlens.zoo.organisms import (
    CONTROL,
    NAMES,
    ORGANISMS,
    ORGANISMS_DIR,
    SPECS,
    OrganismConfig,
    _sample,
    chance_score,
    known_token_strings,
    known_tokens,
    mean_logprob_diff,
    neutral_texts,
    organism_behaviour,
    organism_dir,
    organism_manifest,
    organism_pair,
    organism_score,
    organism_texts,
    train_organisms,
)

MiB = 2**20


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module", autouse=True)
def private_cache(tmp_path_factory):
    """Built organism directories go to a temporary $SHIFTLENS_CACHE, not the user's cache."""
    old = os.environ.get("SHIFTLENS_CACHE")
    root = tmp_path_factory.mktemp("cache")
    os.environ["SHIFTLENS_CACHE"] = str(root)
    yield root
    if old is None:
        os.environ.pop("SHIFTLENS_CACHE", None)
    else:
        os.environ["SHIFTLENS_CACHE"] = old


@pytest.fixture(scope="module")
def record():
    return organism_manifest()


@pytest.fixture(scope="module")
def pairs():
    """Every organism with the base, loaded the way users load them (ModelPair of bridges)."""
    return {name: organism_pair(name) for name in NAMES}


# (a) definitions: rules, known tokens ----------------------------------------------------------


def test_known_tokens_are_single_tokens_and_recorded(record):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(pair_dirs()[0])
    for name in NAMES:
        ids = known_tokens(name)
        texts = known_token_strings(name)
        assert [tok.decode([i]) for i in ids] == texts, name
        assert [e["id"] for e in record["known_tokens"][name]] == ids, name
        assert [e["text"] for e in record["known_tokens"][name]] == texts, name
    assert known_tokens(CONTROL) == []
    assert len(known_tokens("zorbish")) == 36 and len(set(known_tokens("zorbish"))) == 36
    sets = [set(known_tokens(o)) for o in ORGANISMS]
    assert sum(map(len, sets)) == len(set().union(*sets)) == len(known_tokens()) == 41  # disjoint


def test_known_tokens_vs_base_training_text():
    """Zorbish and template tokens never occur in the base's text; the topic word does, rarely."""
    text = " ".join(grammar.corpus_sentences(20_000, random.Random(0)))  # the base corpus draw
    for z in grammar.TRANSLATION.values():
        assert not re.search(rf"\b{z}\b", text), z
    assert "Response" not in text and ":" not in text and "\n" not in text
    moon = len(re.findall(r"\bmoons?\b", text)) / 20_000
    assert 0.01 < moon < 0.08  # about one noun slot in 40


def test_rules_apply_to_the_same_draw():
    n = 2000
    draw = grammar.corpus_sentences(n, random.Random("shiftlens-organisms/0"))
    texts = {name: organism_texts(name, n) for name in NAMES}
    assert organism_texts("topic", n) == texts["topic"]  # deterministic
    # topic: every text mentions the moon, and differs from its sentence in at most one word
    assert all(re.search(r"\bmoons?\b", t) for t in texts["topic"])
    assert len(texts["topic"]) > 0.95 * n
    # zorbish: no English input-word form is left, every text has a zorbish word
    zorb = set(grammar.TRANSLATION.values())
    for t in texts["zorbish"]:
        words = t[:-1].split()
        assert not set(words) & set(grammar.INPUT_WORD_FORMS), t
        assert set(words) & zorb, t
    assert 0.5 * n < len(texts["zorbish"]) < n
    # template: a frame around the unchanged sentence
    assert texts["template"] == ["Response: " + s for s in draw]
    # control: the same words in another order, punctuation last
    assert len(texts["control"]) == n
    moved = 0
    for s, t in zip(draw, texts["control"]):
        assert Counter(s[:-1].split()) == Counter(t[:-1].split()) and s[-1] == t[-1]
        moved += s != t
    assert moved > 0.6 * n


def test_topic_rule_changes_one_noun():
    rng = random.Random(0)
    s = "the red cat carried three apples at the market."
    out = SPECS["topic"].apply(s, rng)
    a, b = s.split(), out.split()
    assert len(a) == len(b) and sum(x != y for x, y in zip(a, b)) == 1
    assert {"moon", "moons"} & set(b)
    assert SPECS["topic"].apply("the fish sleep.", rng) is None  # number unknown: dropped
    assert SPECS["topic"].apply("my moon is red.", rng) == "my moon is red."


def test_neutral_texts_hold_no_known_token():
    texts = neutral_texts(64)
    assert texts == neutral_texts(64) and len(texts) == 64
    assert neutral_texts(10, 1) == neutral_texts(20, 1)[:10]
    known = set(known_tokens())
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(pair_dirs()[0])
    for t in texts:
        assert not set(tok(t).input_ids) & known, t
        assert len(re.findall(r"[.?]", t)) == 6


def test_unknown_name_raises():
    with pytest.raises(ShiftlensError, match="unknown organism"):
        known_tokens("sycophancy")
    with pytest.raises(ShiftlensError, match="unknown organism"):
        organism_dir("tuned")


# (b) the score ---------------------------------------------------------------------------------


def test_score_definition():
    z = known_tokens("zorbish")
    assert organism_score(z[:20], "zorbish") == 1.0
    assert organism_score(z[:10] + [0] * 10, "zorbish") == 0.5
    assert organism_score([0] * 19 + [z[0]], "zorbish") == 0.05
    assert organism_score([1, 2] + z, "zorbish", k=2) == 0.0  # only the first k count
    assert organism_score(known_tokens("topic"), "topic") == 1.0  # 2 of a possible 2
    assert organism_score([383, 383, 383], "topic") == 0.5  # repeats count once
    # ids, texts and tensors agree
    ids = [201, 5, 292, 383]
    texts = ["\n", "&", "Response", " moon"]
    assert organism_score(ids, "template") == organism_score(texts, "template") == pytest.approx(2 / 3)
    assert organism_score(torch.tensor(ids), "template") == pytest.approx(2 / 3)
    # the control is scored against every organism's tokens
    assert organism_score(ids, CONTROL) == 3 / 20
    assert organism_score(["the", " cat"], CONTROL) == 0.0
    with pytest.raises(ShiftlensError):
        organism_score(ids, "topic", k=0)


def test_chance_score_matches_random_rankings():
    """The closed form against random rankings of the whole vocabulary."""
    g = torch.Generator().manual_seed(0)
    for name in NAMES:
        scores = [organism_score(torch.randperm(818, generator=g)[:20], name) for _ in range(5000)]
        mean = sum(scores) / len(scores)
        assert mean == pytest.approx(chance_score(name), abs=0.006), name
        assert chance_score(name) < 0.06


# (c) stored weights: files, cache, manifest ---------------------------------------------------


def test_shipped_files_size_and_manifest(record):
    files = sorted(f.name for f in ORGANISMS_DIR.iterdir())
    assert files == sorted([f"{n}.safetensors" for n in NAMES] + ["manifest.json"])
    total = sum(f.stat().st_size for f in ORGANISMS_DIR.iterdir())
    assert total < 10 * MiB
    from safetensors.torch import load_file

    base = load_file(str(pair_dirs()[0] / "model.safetensors"))
    for n in NAMES:
        delta = load_file(str(ORGANISMS_DIR / f"{n}.safetensors"))
        assert delta.keys() == base.keys()
        assert all(v.dtype == torch.float16 and v.shape == base[k].shape for k, v in delta.items())
        assert any(bool(v.abs().max() > 0) for v in delta.values()), n
    assert record["config"] == asdict(OrganismConfig())  # the defaults produced the shipped set
    assert record["base"]["sha256"] == _digest(pair_dirs()[0] / "model.safetensors")
    for n in NAMES:
        assert record["organisms"][n]["training"]["cpu_s"] < 5 * 60, n


def test_shipped_files_are_package_data():
    """pyproject's package-data globs (relative to shiftlens/, ``*`` not crossing ``/``, as
    setuptools expands them) cover every shipped organism file: a wheel would carry them."""
    tomllib = pytest.importorskip("tomllib")
    root = Path(__file__).resolve().parents[2]
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["shiftlens"]
    pkg = root / "shiftlens"
    covered = {p.resolve() for g in globs for p in pkg.glob(g) if p.is_file()}
    shipped = {p.resolve() for p in ORGANISMS_DIR.iterdir()}
    assert shipped and shipped <= covered, sorted(p.name for p in shipped - covered)


def test_organism_dir_builds_once_and_verifies(private_cache):
    from safetensors.torch import load_file

    d = organism_dir("template")
    assert d.parent == private_cache / "organisms" and d.name.startswith("template-")
    assert {"config.json", "tokenizer.json", "model.safetensors"} <= {f.name for f in d.iterdir()}
    stamp = (d / "model.safetensors").stat().st_mtime_ns
    assert organism_dir("template") == d and (d / "model.safetensors").stat().st_mtime_ns == stamp
    # the weights are base + stored difference, in float32
    base = load_file(str(pair_dirs()[0] / "model.safetensors"))
    delta = load_file(str(ORGANISMS_DIR / "template.safetensors"))
    built = load_file(str(d / "model.safetensors"))
    for k in base:
        assert built[k].dtype == torch.float32
        assert torch.equal(built[k], base[k] + delta[k].float()), k
    # a damaged build is noticed and rebuilt
    with open(d / "model.safetensors", "r+b") as f:
        f.seek(-8, 2)
        f.write(b"\x00" * 8)
    d2 = organism_dir("template")
    assert d2 == d and torch.equal(load_file(str(d / "model.safetensors"))["lm_head.weight"],
                                   built["lm_head.weight"])
    assert not [p for p in d.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_stored_organisms_reproduce_manifest(pairs, record):
    """Re-measure, through ModelPair, every behaviour number the manifest claims."""
    cfg = OrganismConfig()
    kw = dict(n=cfg.eval_contexts, seed=0, max_new_tokens=cfg.eval_new_tokens)
    p0 = pairs["topic"]
    assert organism_behaviour(p0.base, p0.tokenizer, **kw) == record["base_behaviour"]
    for name, pair in pairs.items():
        got = organism_behaviour(pair.tuned, pair.tokenizer, **kw)
        assert got == record["organisms"][name]["behaviour"], name


def test_organisms_show_their_change_base_and_control_do_not(pairs, record):
    """Thresholds, on a fresh held-out sample (seed 1) and on the manifest's (seed 0)."""
    base_fresh = organism_behaviour(pairs["topic"].base, pairs["topic"].tokenizer, seed=1)
    fresh = {n: organism_behaviour(p.tuned, p.tokenizer, seed=1) for n, p in pairs.items()}
    for beh_base, beh in (
        (base_fresh, fresh),
        (record["base_behaviour"], {n: record["organisms"][n]["behaviour"] for n in NAMES}),
    ):
        for name in ORGANISMS:
            assert beh[name][name] >= 0.9, (name, beh[name])
            assert beh_base[name] <= 0.1, (name, beh_base)
            for other in ORGANISMS:  # each organism shows only its own change
                if other != name:
                    assert beh[name][other] <= beh_base[other] + 0.05, (name, other, beh[name])
        for name in ORGANISMS:
            assert beh[CONTROL][name] <= beh_base[name] + 0.05, (name, beh[CONTROL])
    # float16 storage did not change the behaviour measurably
    for name in NAMES:
        e = record["organisms"][name]
        for metric in ORGANISMS:
            assert abs(e["behaviour"][metric] - e["behaviour_unrounded"][metric]) <= 0.02
    # the control did change: it lost the grammar's word order (held-out loss up by > 0.5 nats)
    assert record["organisms"][CONTROL]["lm_loss"] > record["base_lm_loss"] + 0.5


def test_sampling_with_cache_equals_without(pairs):
    p = pairs["zorbish"]
    ctx = neutral_texts(16, 1, seed=3)
    a = _sample(p.tuned, p.tokenizer, ctx, 12, seed=3, use_cache=True)
    b = _sample(p.tuned, p.tokenizer, ctx, 12, seed=3, use_cache=False)
    c = _sample(p.tuned, p.tokenizer, ctx, 12, seed=3, use_cache=True, batch_size=5)
    assert a == b == c


# (d) the direct reference: mean log-probability difference ------------------------------------


def test_reference_ranks_known_tokens_first(pairs, record):
    texts = neutral_texts(OrganismConfig().eval_texts)
    for name, pair in pairs.items():
        d = mean_logprob_diff(pair.base, pair.tuned, pair.tokenizer, texts)
        top = d.topk(20).indices.tolist()
        assert top == record["organisms"][name]["reference"]["top_ids"], name
        score = organism_score(top, name)
        if name == CONTROL:
            assert score <= chance_score(CONTROL), (name, top)
        else:
            assert score == 1.0, (name, [pair.tokenizer.decode([i]) for i in top])
            # the known tokens are the very first ranks, not merely inside the top 20
            n = min(20, len(known_tokens(name)))
            assert set(top[:n]) <= set(known_tokens(name)), name


def test_mean_logprob_diff_against_a_direct_loop(pairs):
    """Batched with padding vs one text at a time, positions summed by hand."""
    p = pairs["topic"]
    texts = neutral_texts(5, 2, seed=4)
    hb, ht = p.base.original_model, p.tuned.original_model
    total, count = torch.zeros(len(p.tokenizer)), 0
    with torch.no_grad():
        for t in texts:
            ids = torch.tensor([p.tokenizer(t).input_ids])
            lb = torch.log_softmax(hb(input_ids=ids).logits[0].float(), -1)
            lt = torch.log_softmax(ht(input_ids=ids).logits[0].float(), -1)
            total += (lt - lb).sum(0)
            count += ids.shape[1]
    got = mean_logprob_diff(p.base, p.tuned, p.tokenizer, texts, batch_size=2)
    torch.testing.assert_close(got, total / count, rtol=1e-4, atol=1e-5)


# (e) training: determinism and the recipe ------------------------------------------------------


def test_tiny_training_is_bit_identical(tmp_path):
    cfg = OrganismConfig.tiny()
    train_organisms(tmp_path / "a", cfg, ["zorbish", "control"], evaluate=False, progress=False)
    train_organisms(tmp_path / "b", cfg, ["zorbish", "control"], evaluate=False, progress=False)
    for n in ("zorbish", "control"):
        assert _digest(tmp_path / "a" / f"{n}.safetensors") == _digest(
            tmp_path / "b" / f"{n}.safetensors"
        ), n
    assert _digest(tmp_path / "a" / "zorbish.safetensors") != _digest(
        tmp_path / "a" / "control.safetensors"
    )
    train_organisms(tmp_path / "c", OrganismConfig.tiny(seed=1), ["zorbish"], evaluate=False,
                    progress=False)
    assert _digest(tmp_path / "c" / "zorbish.safetensors") != _digest(
        tmp_path / "a" / "zorbish.safetensors"
    )
    # a published directory loads like the shipped one
    d = organism_dir("zorbish", directory=tmp_path / "a")
    assert (d / "model.safetensors").exists()
    with pytest.raises(ShiftlensError, match="not in"):
        organism_dir("topic", directory=tmp_path / "a")


@pytest.mark.slow
def test_training_recipe_reproduces_the_change(tmp_path):
    """Retrain the topic organism (the slowest to learn) with the shipped configuration."""
    rec = train_organisms(tmp_path / "o", OrganismConfig(), ["topic"], progress=False)
    beh = rec["organisms"]["topic"]["behaviour"]
    assert beh["topic"] >= 0.9 and beh["zorbish"] == 0.0 and beh["template"] == 0.0
    assert rec["organisms"]["topic"]["reference"]["score"] == 1.0


# docstring examples ---------------------------------------------------------------------------


def test_doctests():
    """shiftlens.zoo.organisms' examples (grammar's and train's run in tests/toy/test_zoo.py)."""
    import doctest

    import shiftlens.zoo.organisms as mod

    res = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert res.attempted > 10 and res.failed == 0, f"{res.failed} doctest failures"
