"""InstructionPrompt spans -> token segment masks, JSONL I/O, shipped prompt set."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, event, given, settings
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
    with pytest.raises(ShiftlensError, match=r"bad.jsonl:2: duplicate prompt id 'a' \(first at .*bad.jsonl:1\)"):
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


# ---------------------------------------------------------------- hardening: bad input, named
def write_lines(path, *lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


GOOD = '{"id": "g", "text": "Sort: b a", "instruction": ["Sort:"]}'


@pytest.mark.parametrize(
    "line, match",
    [
        ("null", r"p.jsonl:2: a prompt record must be a JSON object, got NoneType None"),
        ("[1, 2]", r"p.jsonl:2: a prompt record must be a JSON object, got list \[1, 2\]"),
        ('"hi"', r"p.jsonl:2: a prompt record must be a JSON object, got str 'hi'"),
        ('{"id": "q", "text": "x y", "instruction": 3}',
         r"p.jsonl:2: prompt record 'q': field 'instruction' must be a list of spans .*got int 3"),
        ('{"id": "q", "text": "x y", "context": {"a": 1}}',
         r"p.jsonl:2: prompt record 'q': field 'context' must be a list of spans"),
        ('{"id": "q", "text": "x y", "meta": [1, 2]}',
         r"p.jsonl:2: prompt record 'q': field 'meta' must be an object, got list"),
        ('{"id": "q", "text": "x y", "reference": 5}',
         r"p.jsonl:2: prompt record 'q': field 'reference' must be a string or null, got int 5"),
        ('{"id": "q", "text": "x y", "category": ["a"]}',
         r"p.jsonl:2: prompt record 'q': field 'category' must be a string or null"),
        ('{"id": "q", "text": 7}', r"p.jsonl:2: prompt record 'q': field 'text' must be a string"),
        ('{"id": "q"}', r"p.jsonl:2: prompt record 'q' has no 'text'"),
        ('{"id": 1.5, "text": "x y"}',
         r"p.jsonl:2: field 'id' must be a string or an integer, got float 1.5"),
        ('{"id": true, "text": "x y"}', r"p.jsonl:2: field 'id' must be a string or an integer"),
        ('{"id": "q", "text": "x \\ud800 y"}',
         r"p.jsonl:2: prompt record 'q': field 'text' holds a lone surrogate '\\ud800' at "
         r"character 2"),
        ('{"id": "q", "text": "x y", "instruction": ["\\udfff"]}',
         r"p.jsonl:2: prompt record 'q': field 'instruction' span holds a lone surrogate"),
        ('{"id": "q", "text": "x y", "reference": "ok \\udc80"}',
         r"p.jsonl:2: prompt record 'q': field 'reference' holds a lone surrogate"),
        ('{"id": "q", "text": "abc", "instruction": [[true, 2]]}',
         r"p.jsonl:2: prompt record 'q': field 'instruction' span \[True, 2\] is neither"),
        ('{"id": "q", "text": "abc", "instruction": [0, false]}',
         r"p.jsonl:2: prompt record 'q': field 'instruction' span 0 is neither"),
        ('{"id": "q", "text": "x y", "source": "a", "meta": {"source": "b"}}',
         r"p.jsonl:2: prompt record 'q': key 'source' is both a top-level key and a key of 'meta'"),
        ('{"id": "q", "text": "x y", "id": "r"}', r"p.jsonl:2: duplicate key 'id' in one object"),
        ('{"id": "q", "text": "x y", "meta": {"v": NaN}}', r"p.jsonl:2: NaN is not valid JSON"),
        ('{"id": "q", "text": "x y"} {"id": "r"}', r"p.jsonl:2: not valid JSON \(extra data"),
        ("[" * 5000 + "]" * 5000, r"p.jsonl:2: .*nested too deeply"),
    ],
)
def test_bad_jsonl_records_name_file_line_and_field(tmp_path, line, match):
    f = write_lines(tmp_path / "p.jsonl", GOOD, line)
    with pytest.raises(ShiftlensError, match=match):
        load_prompts(f)


def test_integer_id_stays_distinct(tmp_path):
    f = write_lines(tmp_path / "p.jsonl", '{"id": 0, "text": "x y"}', '{"id": 1, "text": "x z"}',
                    '{"text": "no id"}', '{"text": "no id either"}')
    assert [p.id for p in load_prompts(f)] == ["0", "1", "", ""]  # empty ids are not duplicates
    write_lines(f, '{"id": 0, "text": "x y"}', '{"id": "0", "text": "x z"}')
    with pytest.raises(ShiftlensError, match=r"p.jsonl:2: duplicate prompt id '0'"):
        load_prompts(f)


def test_bool_offsets_are_not_ints():
    with pytest.raises(ShiftlensError, match=r"instruction span \(True, 2\) is neither"):
        InstructionPrompt("abc", instruction=[(True, 2)], id="b")
    # a lone (True, 2) is not taken as one pair of offsets either
    with pytest.raises(ShiftlensError, match="instruction span True is neither"):
        InstructionPrompt("abc", instruction=(True, 2), id="b")
    assert InstructionPrompt("abc", instruction=(1, 2)).char_spans()["instruction"] == [(1, 2)]


def test_prompt_path_is_a_directory_or_not_utf8(tmp_path):
    with pytest.raises(ShiftlensError, match="is a directory, not a file"):
        load_prompts(tmp_path)
    f = tmp_path / "latin1.jsonl"
    f.write_bytes(GOOD.encode() + b"\n" + '{"text": "caf\xe9"}'.encode("latin-1") + b"\n")
    with pytest.raises(ShiftlensError,
                       match=r"latin1.jsonl:2: not UTF-8 text \(byte 0xe9 at byte offset 72\)"):
        load_prompts(f)
    f.write_bytes(b"\xef\xbb\xbf" + GOOD.encode() + b"\n")  # a BOM is fine
    assert load_prompts(f)[0].id == "g"


def test_wrong_types_in_constructor_name_the_field(unchecked):
    cases = [
        (dict(text=5), "text must be a string, got int 5"),
        (dict(text="x y", id=3), "id must be a string, got int 3"),
        (dict(text="x y", reference=5), "reference must be a string or null, got int 5"),
        (dict(text="x y", category=1), "category must be a string or null"),
        (dict(text="x y", meta=[1]), r"meta must be a dict, got list \[1\]"),
        (dict(text="x y", instruction=3), "instruction must be a list of spans"),
        (dict(text="x \ud800"), "text holds a lone surrogate"),
    ]
    for kwargs, match in cases:
        with pytest.raises(ShiftlensError, match=match):
            InstructionPrompt(**kwargs)


def test_messages_given_as_text_point_to_from_messages(unchecked):
    msgs = [{"role": "user", "content": "Name a colour."}]
    with pytest.raises(ShiftlensError, match=r"list of chat messages.*InstructionPrompt\.from_messages"):
        InstructionPrompt(msgs)
    p = InstructionPrompt.from_messages(msgs + [{"role": "assistant", "content": "Blue."}],
                                        id="c")
    assert p.text == "User: Name a colour.\nAssistant:\n"
    assert p.char_spans() == {"instruction": [(6, 20)], "context": []}
    assert p.reference == "Blue." and p.meta == {"turn": 0, "n_user_turns": 1}


def test_from_messages_turn_and_system():
    msgs = [{"role": "user", "content": "Again?"}, {"role": "assistant", "content": "Yes."},
            {"role": "user", "content": "Again?"}, {"role": "assistant", "content": "No."}]
    first = InstructionPrompt.from_messages(msgs, turn=0, system="Be terse.")
    last = InstructionPrompt.from_messages(msgs, system="Be terse.")
    assert first.text == "System: Be terse.\nUser: Again?\nAssistant:\n"
    assert first.char_spans()["instruction"] == [(24, 30)] and first.reference == "Yes."
    assert last.text == ("System: Be terse.\nUser: Again?\nAssistant: Yes.\nUser: Again?\n"
                         "Assistant:\n")
    # the second "Again?", not the first occurrence of the same text
    assert last.char_spans()["instruction"] == [(53, 59)] and last.reference == "No."
    with pytest.raises(ShiftlensError, match="turn 2 was asked for; the conversation has 2"):
        InstructionPrompt.from_messages(msgs, turn=2)


def test_chat_template_places_text_repeated_in_system(tiny_dirs):
    tok = AutoTokenizer.from_pretrained(tiny_dirs("llama")[0])
    p = InstructionPrompt("Sort the words.", instruction=["Sort"], id="r")
    t = p.with_chat_template(tok, system="Sort the words.")  # the old str.find was ambiguous
    assert t.text == ("<bos><|system|>\nSort the words.<|end|>\n<|user|>\nSort the words.<|end|>\n"
                      "<|assistant|>\n")
    assert t.char_spans()["instruction"] == [(48, 52)] and t.meta["user_offset"] == 48


def test_chat_template_that_alters_or_refuses(tiny_dirs):
    tok = AutoTokenizer.from_pretrained(tiny_dirs("llama")[0])
    p = InstructionPrompt(" Sort the words. ", instruction=["Sort"], id="r")
    tok.chat_template = "{% for m in messages %}[{{ m['content'] | trim }}]{% endfor %}"
    with pytest.raises(ShiftlensError, match="'r': the chat template .* changes the text"):
        p.with_chat_template(tok)
    tok.chat_template = ("{% for m in messages %}{% if m['role'] == 'system' %}"
                         "{{ raise_exception('System role not supported') }}{% endif %}"
                         "{{ m['content'] }}{% endfor %}")
    with pytest.raises(ShiftlensError, match="chat template .* failed: .*System role not supported"):
        p.with_chat_template(tok, system="Be brief.")


def test_save_prompts_keeps_the_old_file_on_failure(tmp_path, unchecked):
    f = tmp_path / "p.jsonl"
    old = [InstructionPrompt("Sort: b a", instruction=["Sort:"], id="a")]
    save_prompts(old, f)
    before = f.read_bytes()
    bad_meta = InstructionPrompt("x y", id="b", meta={"t": object()})
    nan_meta = InstructionPrompt("x y", id="b", meta={"t": float("nan")})
    sur_meta = InstructionPrompt("x y", id="b", meta={"t": "\ud800"})
    dup = InstructionPrompt("x z", id="a")
    cases = [
        ([*old, bad_meta], r"prompt 'b' \(item 1\): cannot be written as JSON \(TypeError"),
        ([*old, nan_meta], r"prompt 'b' \(item 1\): cannot be written as JSON \(ValueError"),
        ([*old, sur_meta], r"prompt 'b' \(item 1\): cannot be written as JSON"),
        ([*old, "not a prompt"], "item 1 is a str, not an InstructionPrompt; nothing was written"),
        ([*old, dup], "items 0 and 1 share the id 'a'"),
    ]
    for prompts, match in cases:
        with pytest.raises(ShiftlensError, match=match):
            save_prompts(prompts, f)
        assert f.read_bytes() == before
    assert not [q for q in tmp_path.iterdir() if q.name != "p.jsonl"]  # no temporary left over
    with pytest.raises(ShiftlensError, match="is a directory"):
        save_prompts(old, tmp_path)


# ---------------------------------------------------------------- fuzz: ShiftlensError or valid
SPAN_KEYS = ("instruction", "context")
json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 40), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12), st.just("\ud800"), st.sampled_from(["Sort", "b a", "Sort: b a", ""]),
)
json_value = st.recursive(
    json_leaf, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids,
                                                                        max_size=3),
    max_leaves=8,
)
span_value = st.one_of(
    json_value,
    st.lists(st.one_of(st.sampled_from(["Sort", "b a", ":", "x"]),
                       st.tuples(st.integers(-1, 12), st.integers(-1, 12)).map(list),
                       st.tuples(st.booleans(), st.integers(0, 5)).map(list)), max_size=3),
)
record = st.fixed_dictionaries(
    {},
    optional={
        "id": st.one_of(st.text(max_size=4), st.integers(0, 3), json_value),
        "text": st.one_of(st.sampled_from(["Sort: b a", "x", "   "]), json_value),
        "instruction": span_value, "context": span_value,
        "reference": st.one_of(st.text(max_size=8), json_value),
        "category": json_value, "meta": st.one_of(st.dictionaries(st.text(max_size=4), json_leaf,
                                                                  max_size=2), json_value),
        "extra": json_value,
    },
)
line = st.one_of(record.map(lambda r: json.dumps(r)), json_value.map(json.dumps),
                 st.text(max_size=20).filter(lambda s: "\n" not in s and "\r" not in s))


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(lines=st.lists(line, max_size=6), lead=st.booleans())
def test_fuzz_jsonl_error_or_valid(tmp_path, lines, lead):
    if lead:  # a first valid object line: the file is JSONL whatever follows
        lines = [GOOD, *lines]
    f = tmp_path / "fuzz.jsonl"
    f.write_text("".join(x + "\n" for x in lines), encoding="utf-8")
    try:
        got = load_prompts(f, format="jsonl")
    except ShiftlensError:
        got = None
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        skipped = load_prompts(f, format="jsonl", on_error="skip")
    rep = skipped.report
    event(f"strict {'ok' if got is not None else 'refused'}; {min(len(skipped), 2)}+ kept")
    assert rep.n_prompts + len(rep.skipped) == rep.n_records  # nothing vanishes
    if lead:
        assert rep.n_records == sum(bool(x.strip()) for x in lines)
    if got is not None:  # strict succeeded: it equals the lenient result, and round-trips
        assert got == skipped and not rep.skipped
    for p in skipped:
        p.char_labels()
        out = tmp_path / "back.jsonl"
        try:
            save_prompts([p], out)
        except ShiftlensError:
            continue
        assert load_prompts(out) == [p]


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kwargs=record, messages=st.lists(st.dictionaries(
    st.sampled_from(["role", "from", "content", "value", "name"]),
    st.one_of(st.sampled_from(["user", "assistant", "system", "gpt", "tool"]), json_value),
    max_size=3), max_size=3), turn=st.integers(-3, 3))
def test_fuzz_prompt_objects_error_or_valid(unchecked, kwargs, messages, turn):
    args = {k: v for k, v in kwargs.items() if k != "extra"}
    args.setdefault("text", "Sort: b a")
    for build in (lambda: InstructionPrompt(**args), lambda: InstructionPrompt.from_dict(kwargs),
                  lambda: InstructionPrompt(messages),
                  lambda: InstructionPrompt.from_messages(messages, turn=turn)):
        try:
            p = build()
        except ShiftlensError:
            continue
        event("built a prompt")
        assert len(p.char_labels()) == len(p.text)
        assert InstructionPrompt.from_dict(json.loads(json.dumps(p.to_dict()))) == p
