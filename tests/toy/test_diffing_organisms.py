"""The diffing methods on the organisms: each finds its organisms' known tokens and stays silent on
the control (the table of docs/diffing.md, as assertions).

Pass: ``organism_score >= 0.5`` on an organism. For the topic organism (2 known tokens) that is
one of them in the top 20, which 20 random tokens of the 818 achieve with probability 0.048; for
template (3 tokens) two of them, probability 0.0017; for zorbish (36 tokens) ten of them, under
1e-8 (hypergeometric tails; ``chance_score`` is 0.024 / 0.024 / 0.044 on average). Silent on the
control: ``score <= 0.10``, at most 2 of its top 20 among the organisms' 41 known tokens (20
random tokens hold 1.0 of them on average, ``chance_score("control") = 0.05``).

Which method passes which organism is what docs/diffing.md's table reports; a method's known
limits are asserted as such (a change there is noticed, and the table is re-run). The scoring
runs take minutes: marked slow. Built organism directories go to a temporary $SHIFTLENS_CACHE.
"""

from __future__ import annotations

import os
import random
import re

import pytest
import torch

from shiftlens.lenses.activation_difference import activation_difference, diff_mining
from shiftlens.lenses.amplification import amplification
from shiftlens.lenses.weight_delta import weight_delta
from shiftlens.zoo import grammar
from shiftlens.zoo.organisms import (
    CONTROL,
    INSTRUCT,
    chance_score,
    instruct_token_strings,
    known_tokens,
    neutral_texts,
    organism_pair,
    organism_score,
)

PASS, SILENT = 0.5, 0.10
ORGS = ("topic", "zorbish", "template")


@pytest.fixture(scope="module", autouse=True)
def private_cache(tmp_path_factory):
    old = os.environ.get("SHIFTLENS_CACHE")
    os.environ["SHIFTLENS_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("SHIFTLENS_CACHE", None)
    else:
        os.environ["SHIFTLENS_CACHE"] = old


@pytest.fixture(scope="module")
def texts():
    return neutral_texts(64)


@pytest.fixture(scope="module")
def pairs():
    torch.set_num_threads(1)
    from shiftlens.zoo import toy_pair

    out = {n: organism_pair(n) for n in (*ORGS, CONTROL)}
    out[INSTRUCT] = toy_pair()
    return out


@pytest.mark.slow
def test_instruct_tokens_are_what_the_instruction_data_introduced():
    """The set, and the piece-wise count equal to tokenizing every text (its 43 tokens)."""
    from shiftlens.zoo.organisms.scoring import _token_counts, _tokenizer

    tok = _tokenizer()
    rng = random.Random(1)
    examples = [grammar.make_example(t, rng, held_out=False) for t in grammar.TASK_NAMES]
    texts = (grammar.corpus_sentences(300, rng) + [" the cat sleeps."]
             + [e.prompt for e in examples] + [e.response for e in examples])
    direct: dict[int, int] = {}
    for ids in tok(texts, add_special_tokens=False).input_ids:
        for i in ids:
            direct[i] = direct.get(i, 0) + 1
    assert dict(_token_counts(tok, texts)) == direct
    toks = instruct_token_strings()
    assert len(toks) == 43 and len(set(toks)) == 43
    assert {":", "\n", "Instruction", "Input", "Response", "<eos>", " input"} <= set(toks)
    assert {" " + z for z in grammar.TRANSLATION.values()} <= set(toks)
    corpus = " ".join(grammar.corpus_sentences(5000, random.Random(0)))
    for t in toks:
        if t.strip() and t.strip().isalpha():
            assert not re.search(rf"\b{t.strip()}\b", corpus), t
    assert toks[:3] == [":", "\n", "<eos>"]  # most frequent first, ties by id
    assert chance_score(INSTRUCT) == pytest.approx(20 * 43 / (818 * 20))
    assert organism_score(known_tokens(INSTRUCT)[:20], INSTRUCT) == 1.0


def _scores(rank):
    return {n: organism_score(rank(n), n) for n in (*ORGS, CONTROL)}


@pytest.mark.slow
def test_activation_difference_lens(pairs, texts):
    res = {n: activation_difference(pairs[n], texts, steer_prompts=[], progress=False)
           for n in (*ORGS, CONTROL, INSTRUCT)}
    for source in ("logit_lens", "patchscope"):
        s = _scores(lambda n, source=source: res[n].top_tokens(20, source=source))
        assert all(s[o] >= PASS for o in ORGS), (source, s)
        assert s[CONTROL] <= SILENT, (source, s)
    top = [pairs["topic"].tokenizer.decode([int(t)]) for t in res["topic"].top_tokens(20)]
    assert " moon" in top and top.index(" moon") < 3
    # the known tokens are stable: in the top 20 of (nearly) every bootstrap resample
    ll = res["topic"].ranking("logit_lens")
    assert float(ll[ll.token == " moon"].stability.iloc[0]) >= 0.95
    # limit: the broad instruction fine-tune leaves no readable first-token trace
    assert organism_score(res[INSTRUCT].top_tokens(20), INSTRUCT) < PASS


@pytest.mark.slow
def test_diff_mining(pairs, texts):
    res = {n: diff_mining(pairs[n], texts, progress=False) for n in (*ORGS, CONTROL, INSTRUCT)}
    s = _scores(lambda n: res[n].top_tokens(20))
    assert all(s[o] >= PASS for o in ORGS) and s[CONTROL] <= SILENT, s
    assert organism_score(res[INSTRUCT].top_tokens(20), INSTRUCT) >= PASS


@pytest.mark.slow
def test_weight_delta(pairs):
    res = {n: weight_delta(pairs[n], progress=False) for n in (*ORGS, CONTROL)}
    s = _scores(lambda n: res[n].top_tokens(20))  # "directions"
    assert s["topic"] >= PASS and s[CONTROL] <= SILENT, s
    assert organism_score(res["zorbish"].top_tokens(20, source="embed"), "zorbish") >= PASS
    assert organism_score(res["template"].top_tokens(20, source="unembed"), "template") >= PASS
    # limits (docs/diffing.md): the block matrices' directions miss new vocabulary, and the
    # unembedding's change also holds rare-token drift, which the control shows
    assert s["zorbish"] < PASS
    assert organism_score(res[CONTROL].top_tokens(20, source="embed"), CONTROL) <= SILENT


@pytest.mark.slow
def test_amplification(pairs):
    prompts = neutral_texts(8, 1, seed=3)
    # a = 0 and 4 only: top_tokens compares the most with the least amplified responses
    res = {n: amplification(pairs[n], prompts, alphas=(0.0, 4.0), progress=False)
           for n in ("topic", "template", CONTROL)}
    for n in ("topic", "template"):
        assert organism_score(res[n].top_tokens(20), n) >= PASS
        known = set(known_tokens(n))
        hi = res[n].counts[res[n].alphas.index(4.0)]
        lo = res[n].counts[res[n].alphas.index(0.0)]
        assert float(hi[list(known)].sum()) > float(lo[list(known)].sum())  # more at a = 4
    assert organism_score(res[CONTROL].top_tokens(20), CONTROL) <= SILENT


def test_table_cells_are_the_organism_scores_of_their_tokens():
    """Each cell of benchmarks/results/diffing_table.json (the table of docs/diffing.md; the unit
    tests check the doc equals it) is ``organism_score`` of the top-20 ids it records, the rows
    are the scored pairs and ``chance`` is ``chance_score``."""
    import json
    from pathlib import Path

    from shiftlens.zoo.organisms import SCORED

    path = Path(__file__).resolve().parents[2] / "benchmarks/results/diffing_table.json"
    table = json.loads(path.read_text())
    assert table["pairs"] == list(SCORED)
    for name in SCORED:
        assert table["chance"][name] == pytest.approx(chance_score(name), abs=1e-4)
    cells = [c for c in table["cells"] if "score" in c]
    assert len(cells) >= 8 * len(SCORED)
    for c in cells:
        assert len(c["top_ids"]) <= 20
        assert c["score"] == pytest.approx(organism_score(c["top_ids"], c["pair"]), abs=1e-4), c


@pytest.mark.slow
def test_residual_output_shift(pairs, texts):
    """The existing KL lens (residual lens's per-token KL(tuned || base), read as a ranking of the
    tokens among each position's top contributions) on the same texts, as the table reads it."""
    from shiftlens import InstructionPrompt
    from shiftlens.lenses.residual.compare import output_shift

    prompts = [InstructionPrompt(t, id=f"#{i}") for i, t in enumerate(texts)]

    def rank(n):
        res = output_shift(pairs[n], prompts, with_reference=False, seed=0, progress=False)
        return [int(t) for t in res.top_tokens.token_id[:20]]

    s = _scores(rank)
    assert all(s[o] >= PASS for o in ORGS) and s[CONTROL] <= SILENT, s
