"""InstructionPrompt spans -> token segment masks, JSONL I/O, shipped prompt set."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from shiftlens import (
    InstructionPrompt,
    ShiftlensError,
    default_prompts,
    load_prompts,
    save_prompts,
    tokenize_prompt,
)
from shiftlens.prompts import SEGMENTS

CATEGORIES = {
    "writing", "coding", "math", "translation", "extraction", "classification",
    "brainstorming", "rewriting",
}


def seg_names(tp):
    return [SEGMENTS[i] for i in tp.segments.tolist()]


@pytest.fixture(scope="module")
def word_tok():
    """A word-level tokenizer whose tokens are known by hand."""
    words = ["<bos>", "<eos>", "<pad>", "<unk>", "Translate", "this", ":", "the", "cat", "sleeps"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
        unk_token="<unk>",
    )


@pytest.fixture(scope="module", params=["bytelevel", "sentencepiece"])
def trained_tok(request, tiny_dirs):
    arch = "gpt2" if request.param == "bytelevel" else "llama"
    return AutoTokenizer.from_pretrained(tiny_dirs(arch)[0])


# ---------------------------------------------------------------- spans
def test_char_spans_substrings_and_offsets():
    p = InstructionPrompt("Sort these: b a c", instruction=["Sort these"], context=[(12, 17)])
    assert p.char_spans() == {"instruction": [(0, 10)], "context": [(12, 17)]}
    assert p.text[12:17] == "b a c"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(text="Do it", instruction=["nope"]), "not found"),
        (dict(text="a b a", instruction=["a"]), "more than once"),
        (dict(text="abc", instruction=[(2, 9)]), "not a non-empty range"),
        (dict(text="abc", instruction=[(2, 2)]), "not a non-empty range"),
        (dict(text="abcdef", instruction=["abcd"], context=["cdef"]), "overlaps"),
        (dict(text="   "), "empty"),
        (dict(text="", instruction=[]), "empty"),
        (dict(text="abc", instruction=[""]), "empty instruction span"),
        (dict(text="abc", instruction=[3.5]), "neither a substring"),
    ],
)
def test_bad_spans_raise_with_prompt_id(kwargs, match):
    with pytest.raises(ShiftlensError, match=match) as e:
        InstructionPrompt(id="p-7", **kwargs)
    assert "'p-7'" in str(e.value)


def test_hand_checked_masks_word_level(word_tok):
    p = InstructionPrompt(
        "Translate this: the cat sleeps", instruction=["Translate this"], context=["the cat sleeps"]
    )
    tp = tokenize_prompt(word_tok, p, prepend_bos=True, response="sleeps")
    assert word_tok.convert_ids_to_tokens(tp.tokens.tolist()) == [
        "<bos>", "Translate", "this", ":", "the", "cat", "sleeps", "sleeps"
    ]
    assert seg_names(tp) == [
        "bos", "instruction", "instruction", "template", "context", "context", "context",
        "response",
    ]
    assert tp.n_prompt == 7 and tp.n_response == 1
    assert tp.mask("context").sum() == 3
    tp2 = tokenize_prompt(word_tok, p, prepend_bos=False)
    assert seg_names(tp2)[0] == "instruction" and tp2.n_prompt == 6


def test_leading_space_token_counts_as_instruction(trained_tok):
    # " reverse": byte-level/metaspace tokens carry the space that precedes the span
    p = InstructionPrompt("Instruction: write the words.\nInput: red cat",
                          instruction=["write the words."], context=["red cat"])
    tp = tokenize_prompt(trained_tok, p, prepend_bos=True)
    ins = [int(t) for t, m in zip(tp.tokens, tp.mask("instruction")) if m]
    ctx = [int(t) for t, m in zip(tp.tokens, tp.mask("context")) if m]
    assert trained_tok.decode(ins).strip() == "write the words."
    assert trained_tok.decode(ctx).strip() == "red cat"


def test_masks_match_independent_walk(trained_tok):
    """Label each token by walking decoded token texts through the string (no offsets)."""
    for p in default_prompts()[:20]:
        if not p.text.isascii():
            continue
        tp = tokenize_prompt(trained_tok, p, prepend_bos=True)
        labels = p.char_labels()
        pos, expected = 0, ["bos"]
        for t in tp.tokens[1:].tolist():
            piece = trained_tok.convert_ids_to_tokens(t).replace("\u0120", " ").replace(
                "\u2581", " ").replace("\u010a", "\n").replace("\u0109", "\t")
            if pos == 0 and piece.startswith(" ") and not p.text.startswith(" "):
                piece = piece[1:]  # metaspace's prepended space
            assert p.text.startswith(piece, pos), (p.id, piece, p.text[pos:pos + 10])
            first = next((pos + i for i, c in enumerate(piece) if not c.isspace()), pos)
            expected.append(SEGMENTS[labels[first]])
            pos += len(piece)
        assert pos == len(p.text)
        assert seg_names(tp) == expected, p.id


def test_too_long_and_empty_response_raise(word_tok):
    p = InstructionPrompt("Translate this: the cat", instruction=["Translate this"], id="L1")
    with pytest.raises(ShiftlensError, match="exceed the context length 4.*'L1'|'L1'.*exceed"):
        tokenize_prompt(word_tok, p, prepend_bos=True, n_ctx=4)
    with pytest.raises(ShiftlensError, match="response is empty"):
        tokenize_prompt(word_tok, p, response="  ")


def test_chat_template_keeps_spans(tiny_dirs):
    tok = AutoTokenizer.from_pretrained(tiny_dirs("llama")[0])
    p = InstructionPrompt(
        "Summarize the passage.\nThe river rose after the storm.",
        instruction=["Summarize the passage."], context=["The river rose after the storm."],
        id="c1",
    )
    t = p.with_chat_template(tok, system="Be brief.")
    spans = t.char_spans()
    assert t.text[slice(*spans["instruction"][0])] == "Summarize the passage."
    assert t.text[slice(*spans["context"][0])] == "The river rose after the storm."
    assert t.text.startswith("<bos><|system|>") and t.meta["chat_template"]
    tp = tokenize_prompt(tok, t, prepend_bos=True)
    ids = tp.tokens.tolist()
    assert ids.count(tok.bos_token_id) == 1 and seg_names(tp)[0] == "bos"  # not doubled
    ins = tok.decode([i for i, m in zip(ids, tp.mask("instruction")) if m]).strip()
    ctx = tok.decode([i for i, m in zip(ids, tp.mask("context")) if m]).strip()
    # this tokenizer merges ".\nThe" across the boundary: first non-space char decides
    assert ins.startswith("Summarize the passage.") and "The river rose after the storm.".endswith(ctx)
    assert len(ctx) > 20
    assert "<|assistant|>" in tok.decode([i for i, m in zip(ids, tp.mask("template")) if m])


def test_chat_template_missing_raises(word_tok):
    with pytest.raises(ShiftlensError, match="no chat template"):
        InstructionPrompt("Translate this", instruction=["Translate"]).with_chat_template(word_tok)


# ---------------------------------------------------------------- property test
WORDS = ["red", "cat", "sleeps", "write", "the", "story", "about", "a", "river", "now"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    words=st.lists(st.sampled_from(WORDS), min_size=3, max_size=12),
    data=st.data(),
)
def test_property_word_aligned_spans(trained_tok, words, data):
    """Word-aligned spans: a token is in a span iff its word is (pre-tokens never cross words)."""
    n = len(words)
    i0 = data.draw(st.integers(0, n - 2))
    i1 = data.draw(st.integers(i0 + 1, n - 1))
    j0 = data.draw(st.integers(i1, n - 1))
    j1 = data.draw(st.integers(j0 + 1, n))
    starts = [sum(len(w) + 1 for w in words[:k]) for k in range(n)]
    text = " ".join(words)
    ins = (starts[i0], starts[i1 - 1] + len(words[i1 - 1]))
    ctx = (starts[j0], starts[j1 - 1] + len(words[j1 - 1])) if j0 > i1 - 1 else None
    p = InstructionPrompt(text, instruction=[ins], context=[ctx] if ctx else [])
    tp = tokenize_prompt(trained_tok, p, prepend_bos=True)
    def seg_of(k):
        if i0 <= k < i1:
            return "instruction"
        return "context" if ctx and j0 <= k < j1 else "template"

    # independent path: pre-tokenize (one piece per word), then run the BPE model per piece
    backend = trained_tok.backend_tokenizer
    pieces = [pc for pc, _ in backend.pre_tokenizer.pre_tokenize_str(text)]
    assert len(pieces) == n
    expected = ["bos"]
    for k, piece in enumerate(pieces):
        for t in (tk.value for tk in backend.model.tokenize(piece)):
            if t.strip("\u0120\u2581") == "":  # lone space token: in a span only with word k-1
                # (a metaspace prepended to the first word maps onto that word's first character)
                same = k == 0 or seg_of(k - 1) == seg_of(k)
                expected.append(seg_of(k) if same else "template")
            else:
                expected.append(seg_of(k))
    assert seg_names(tp) == expected
    # masks partition the positions
    total = sum(int(m.sum()) for m in tp.masks.values())
    assert total == tp.tokens.shape[0]


# ---------------------------------------------------------------- I/O and data
def test_jsonl_round_trip(tmp_path):
    ps = default_prompts()[:5] + [
        InstructionPrompt("Sort: b a", instruction=[(0, 5)], context=["b a"], id="x",
                          meta={"source": "test"})
    ]
    path = save_prompts(ps, tmp_path / "p.jsonl")
    back = load_prompts(path)
    assert back == ps and back[-1].meta == {"source": "test"}


def test_jsonl_errors(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"id": "a", "text": "Sort: b a", "instruction": ["Sort:"]}\n{not json\n')
    with pytest.raises(ShiftlensError, match="bad.jsonl:2"):
        load_prompts(f)
    f.write_text('{"id": "a", "text": "x y"}\n{"id": "a", "text": "z"}\n')
    with pytest.raises(ShiftlensError, match="duplicate prompt ids"):
        load_prompts(f)
    f.write_text('{"id": "q", "text": "x y", "instruction": ["nope"]}\n')
    with pytest.raises(ShiftlensError, match="bad.jsonl:1.*'q'.*not found"):
        load_prompts(f)
    with pytest.raises(ShiftlensError, match="does not exist"):
        load_prompts(tmp_path / "missing.jsonl")


def test_unknown_keys_kept_in_meta(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"id": "a", "text": "x y", "source": "me"}) + "\n")
    assert load_prompts(f)[0].meta == {"source": "me"}


def test_shipped_prompt_set(trained_tok):
    ps = default_prompts()
    assert len(ps) >= 60
    assert {p.category for p in ps} == CATEGORIES
    assert sum(bool(p.context) for p in ps) >= 20
    assert all(p.instruction and p.reference for p in ps)
    for p in ps:  # every prompt tokenizes with its reference, every instruction span non-empty
        tp = tokenize_prompt(trained_tok, p, prepend_bos=True, response=p.reference)
        assert tp.mask("instruction").any(), p.id
        assert tp.mask("context").any() == bool(p.context), p.id
    assert len(default_prompts(["math"])) >= 9
    with pytest.raises(ShiftlensError, match="unknown categories"):
        default_prompts(["poetry"])
