"""The embedded pair (shiftlens.zoo): determinism, shipped numbers, held-out prompts, grammar."""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import asdict
from pathlib import Path

import pytest

from shiftlens.prompts import InstructionPrompt
from shiftlens.zoo import PAIR_DIR, grammar, manifest, pair_dirs, toy_pair, toy_prompts
from shiftlens.zoo.evaluate import evaluate_pair, task_accuracy
from shiftlens.zoo.train import TrainConfig, train_pair


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def shipped_pair():
    return toy_pair()


# (a) determinism ---------------------------------------------------------------------------


def test_training_is_bit_identical_across_runs(tmp_path):
    cfg = TrainConfig.tiny(pretrain_steps=15, sft_steps=15)
    m1 = train_pair(tmp_path / "a", cfg, evaluate=False, progress=False)
    m2 = train_pair(tmp_path / "b", cfg, evaluate=False, progress=False)
    for sub in ("base", "tuned"):
        a = tmp_path / "a" / sub / "model.safetensors"
        b = tmp_path / "b" / sub / "model.safetensors"
        assert _digest(a) == _digest(b), sub
        assert _digest(tmp_path / "a" / sub / "tokenizer.json") == _digest(
            tmp_path / "b" / sub / "tokenizer.json"
        )
    # training changed the weights (the check above would pass trivially on untrained copies)
    assert _digest(tmp_path / "a" / "base" / "model.safetensors") != _digest(
        tmp_path / "a" / "tuned" / "model.safetensors"
    )
    assert m1["phases"]["pretrain"]["final_loss"] == m2["phases"]["pretrain"]["final_loss"]
    assert m1["phases"]["pretrain"]["final_loss"] < 6.0  # it learned something from log(vocab)~6


def test_different_seed_gives_different_weights(tmp_path):
    train_pair(
        tmp_path / "a",
        TrainConfig.tiny(pretrain_steps=5, sft_steps=5),
        evaluate=False,
        progress=False,
    )
    train_pair(
        tmp_path / "b",
        TrainConfig.tiny(seed=1, pretrain_steps=5, sft_steps=5),
        evaluate=False,
        progress=False,
    )
    assert _digest(tmp_path / "a" / "base" / "model.safetensors") != _digest(
        tmp_path / "b" / "base" / "model.safetensors"
    )


# (b) the shipped pair reproduces its manifest ------------------------------------------------


def test_shipped_files_and_size():
    base, tuned = pair_dirs()
    total = sum(f.stat().st_size for f in PAIR_DIR.rglob("*") if f.is_file())
    assert total < 10 * 2**20
    for d in (base, tuned):
        names = {f.name for f in d.iterdir()}
        assert {
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
        } <= names
        assert not any(n.endswith((".bin", ".pkl", ".pt", ".pth")) for n in names)
    assert _digest(base / "tokenizer.json") == _digest(tuned / "tokenizer.json")


def test_manifest_meets_targets():
    m = manifest()
    ev = m["evaluation"]
    assert ev["tuned"]["exact"]["overall"] >= 0.90
    assert ev["base"]["exact"]["overall"] <= 0.10
    assert ev["tuned"]["lm_loss"] <= 1.2 * ev["base"]["lm_loss"]
    assert set(ev["tuned"]["exact"]) == set(grammar.TASK_NAMES) | {"overall"}
    # CPU time, not wall time: the shipped run shared its 2 cores with other jobs (see timing_note)
    assert m["train_cpu_s"] < 15 * 60
    # `python -m shiftlens.zoo.train` (the defaults) is what produced the shipped pair
    assert m["config"] == asdict(TrainConfig())
    assert m["model"]["n_kv_heads"] < m["model"]["n_heads"]  # grouped-query attention
    assert not m["model"]["tied_embeddings"]


def test_shipped_pair_reproduces_manifest(shipped_pair):
    """Reload through ModelPair (TransformerBridge), re-measure everything the manifest claims."""
    ev = manifest()["evaluation"]
    res = evaluate_pair(shipped_pair)
    assert res["prompts"] == ev["prompts"]
    for name in ("base", "tuned"):
        assert res[name]["exact"] == ev[name]["exact"], name
        assert res[name]["prefix"] == ev[name]["prefix"], name
        assert res[name]["lm_loss"] == pytest.approx(ev[name]["lm_loss"], abs=2e-4), name


def test_tuned_follows_instructions_base_does_not(shipped_pair):
    """An independent check on a different held-out sample (seed 1) than the manifest's."""
    prompts = toy_prompts(70, seed=1)
    tok = shipped_pair.tokenizer
    tuned = task_accuracy(shipped_pair.tuned, tok, prompts)
    base = task_accuracy(shipped_pair.base, tok, prompts)
    assert tuned["exact"]["overall"] >= 0.85
    assert base["exact"]["overall"] <= 0.15
    # the answer depends on the instruction: same input, different task, different output
    words = prompts[0].meta["words"]
    outs = {}
    for task in ("reverse", "sort", "count", "translate"):
        inst = next(t for t in grammar.TASKS if t.name == task).phrasings[0]
        p = InstructionPrompt(
            grammar.format_prompt(inst, words),
            category=task,
            reference=" " + " ".join(next(t for t in grammar.TASKS if t.name == task).solve(words)),
        )
        outs[task] = task_accuracy(shipped_pair.tuned, tok, [p])["outputs"][""]
    assert len(set(outs.values())) == 4, outs


# (c) held-out prompts ------------------------------------------------------------------------


def test_toy_prompts_spans_categories_and_split():
    ps = toy_prompts()
    assert len(ps) == 40 * len(grammar.TASK_NAMES)
    assert {p.category for p in ps} == set(grammar.TASK_NAMES)
    assert len({p.id for p in ps}) == len(ps)
    assert ps == toy_prompts()  # deterministic
    assert toy_prompts(14) == ps[:14]  # any prefix is balanced
    for p in ps:
        assert isinstance(p, InstructionPrompt)
        assert p.text.endswith("Response:")
        (ins,), (ctx,) = p.instruction, p.context
        assert isinstance(ins, str) and isinstance(ctx, str)
        assert p.text == f"Instruction: {ins}\nInput: {ctx}\nResponse:"
        task = next(t for t in grammar.TASKS if t.name == p.category)
        assert ins in task.phrasings
        words = ctx.split()
        assert 2 <= len(words) <= 5 and len(set(words)) == len(words)
        assert grammar.is_held_out(words)
        assert p.reference == " " + " ".join(task.solve(words))
    assert {p.category for p in toy_prompts(tasks=["sort", "count"])} == {"sort", "count"}
    assert toy_prompts(seed=1) != ps


def test_heldout_combinations_absent_from_training_data():
    cfg = TrainConfig()
    rng = random.Random(cfg.seed)
    grammar.corpus_sentences(cfg.n_sentences, rng)  # same draw order as train_pair
    seen = {
        frozenset(grammar.make_example(t, rng, held_out=False).words)
        for t in grammar.TASK_NAMES
        for _ in range(500)
    }
    held = {frozenset(p.meta["words"]) for p in toy_prompts()}
    assert not (seen & held)
    # and the split is a real split: it holds out some but not most combinations
    combos = [random.Random(i).sample(grammar.INPUT_WORDS, 3) for i in range(2000)]
    frac = sum(grammar.is_held_out(c) for c in combos) / len(combos)
    assert 0.05 < frac < 0.25


def test_prompt_and_reference_tokenize_like_the_joined_text(shipped_pair):
    tok = shipped_pair.tokenizer
    for p in toy_prompts(35):
        joint = tok(p.text + p.reference).input_ids
        split = tok(p.text).input_ids + tok(p.reference, add_special_tokens=False).input_ids
        assert joint == split, p.id
        assert joint[0] == tok.bos_token_id
    instruction_words = {
        w for t in grammar.TASKS for ph in t.phrasings for w in re.findall(r"[a-z]+", ph)
    }
    for w in (
        grammar.INPUT_WORDS + tuple(grammar.TRANSLATION.values()) + tuple(sorted(instruction_words))
    ):
        assert len(tok(" " + w, add_special_tokens=False).input_ids) == 1, w


def test_unknown_task_raises():
    from shiftlens.errors import ShiftlensError

    with pytest.raises(ShiftlensError, match="unknown task"):
        toy_prompts(tasks=["summarize"])


# (d) grammar -------------------------------------------------------------------------------


def test_instruction_verbs_occur_in_narrative_sentences():
    sentences = grammar.corpus_sentences(5000, random.Random(0))
    text = "\n".join(sentences)
    assert "Instruction:" not in text and "Input:" not in text and "Response:" not in text
    for forms in grammar.INSTRUCTION_VERBS:
        for form in forms:
            uses = [s for s in sentences if re.search(rf"\b{form}\b", s)]
            assert len(uses) >= 5, form
    # the words of every instruction phrasing are known to the base model from the corpus
    vocab = set(re.findall(r"[a-z]+", text))
    for task in grammar.TASKS:
        for phrasing in task.phrasings:
            missing = set(re.findall(r"[a-z]+", phrasing)) - vocab - {"input"}
            assert not missing, (task.name, phrasing, missing)


def test_task_solutions():
    ws = ["red", "cat", "sleeps"]
    solve = {t.name: t.solve for t in grammar.TASKS}
    assert solve["reverse"](ws) == ["sleeps", "cat", "red"]
    assert solve["repeat"](ws) == ws
    assert solve["sort"](ws) == ["cat", "red", "sleeps"]
    assert solve["count"](ws) == ["three"]
    assert solve["first"](ws) == ["red"]
    assert solve["last"](ws) == ["sleeps"]
    assert solve["translate"](ws) == [grammar.TRANSLATION[w] for w in ws]
    assert len(set(grammar.TRANSLATION.values())) == len(grammar.INPUT_WORDS)
    assert not set(grammar.TRANSLATION.values()) & set(grammar.INPUT_WORDS)


# docstring examples ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "shiftlens.zoo",
        "shiftlens.zoo.grammar",
        "shiftlens.zoo.heldout",
        "shiftlens.zoo.evaluate",
        pytest.param("shiftlens.zoo.train", marks=pytest.mark.slow),
    ],
)
def test_doctests(name):
    import doctest
    import importlib

    mod = importlib.import_module(name)
    res = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert res.failed == 0, f"{res.failed} doctest failures in {name}"
