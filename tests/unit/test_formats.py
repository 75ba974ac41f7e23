"""load_prompts for every source format: spans against hand-written files, errors, fuzz."""

from __future__ import annotations

import csv
import doctest
import importlib
import io
import json
import logging
import runpy
import sys
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from shiftlens import InstructionPrompt, ShiftlensError, ShiftlensWarning, load_prompts
from shiftlens.formats import (
    FORMAT_CHOICES,
    FORMATS,
    PLAIN_TEMPLATE,
    LoadReport,
    PromptList,
    detect_format,
)
from shiftlens.prompts import SEGMENTS, tokenize_prompt
from shiftlens.wu2024 import Wu2024Ratings, load_wu2024_ratings

ROOT = Path(__file__).resolve().parents[2]


def spans(p):
    """The instruction and context texts of a prompt, by its resolved character spans."""
    cs = p.char_spans()
    return ([p.text[s:e] for s, e in cs["instruction"]], [p.text[s:e] for s, e in cs["context"]])


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def dump_jsonl(path, records):
    return write(path, "".join(json.dumps(r) + "\n" for r in records))


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    """A small trained byte-level tokenizer with the test chat template (no trimming)."""
    from shiftlens.testing import build_tokenizer

    return build_tokenizer(tmp_path_factory.mktemp("tok"))


def test_format_names():
    assert FORMATS == ("jsonl", "alpaca", "messages", "sharegpt", "hf", "csv", "tsv", "wu2024")
    assert FORMAT_CHOICES == ("auto", *FORMATS)
    with pytest.raises(ShiftlensError, match=r"unknown format 'yaml'; choose from \['auto', 'jsonl'"):
        load_prompts([], format="yaml")


# ---------------------------------------------------------------- alpaca
ALPACA = [
    {"instruction": "Sort the words.", "input": "pear apple", "output": "apple pear"},
    {"instruction": "  Name a prime.\n", "input": "", "output": "7", "source": "me"},
    {"instruction": "Translate into French.", "input": "   ", "output": ""},
]


def check_alpaca(ps):
    a, b, c = ps
    assert a.text == "Instruction: Sort the words.\nInput: pear apple\nResponse:\n"
    assert a.char_spans() == {"instruction": [(13, 28)], "context": [(36, 46)]}
    assert a.reference == "apple pear"
    assert b.text == "Instruction: Name a prime.\nResponse:\n"  # edges stripped, no Input line
    assert b.char_spans() == {"instruction": [(13, 26)], "context": []}
    assert b.meta == {"source": "me"} and b.reference == "7"
    assert spans(c) == (["Translate into French."], []) and c.reference is None


def test_alpaca_json_list(tmp_path):
    f = write(tmp_path / "alpaca_data.json", json.dumps(ALPACA, indent=2))
    ps = load_prompts(f)
    check_alpaca(ps)
    assert isinstance(ps, PromptList) and isinstance(ps, list)
    assert [p.id for p in ps] == ["alpaca_data-0", "alpaca_data-1", "alpaca_data-2"]
    r = ps.report
    assert (r.format, r.rendering, r.n_records, r.n_prompts) == ("alpaca", "plain template", 3, 3)
    assert r.detected == f"{f}:2 (item 0) has keys input, instruction, output"
    assert r.notes == [f"{f}:13 (item 2): the reference field is empty; read as no reference"]
    assert not r.skipped


def test_alpaca_jsonl_and_memory_records(tmp_path):
    f = dump_jsonl(tmp_path / "a.jsonl", ALPACA)
    ps = load_prompts(f)
    check_alpaca(ps)
    assert [p.id for p in ps] == ["a-1", "a-2", "a-3"]  # line numbers
    mem = load_prompts(ALPACA)
    check_alpaca(mem)
    assert mem.report.format == "alpaca" and [p.id for p in mem] == ["record-0", "record-1",
                                                                      "record-2"]


def test_alpaca_instruction_inside_its_input_is_placed_by_offsets():
    ps = load_prompts([{"instruction": "Repeat", "input": "Repeat Repeat", "id": "r"}])
    assert ps[0].char_spans() == {"instruction": [(13, 19)], "context": [(27, 40)]}
    assert spans(ps[0]) == (["Repeat"], ["Repeat Repeat"])


def test_alpaca_unicode_offsets_are_characters():
    rec = {"instruction": "Traduis en français 🇫🇷 :", "input": "ねこが ねている\u0301", "id": "u"}
    p = load_prompts([rec])[0]
    assert spans(p) == (["Traduis en français 🇫🇷 :"], ["ねこが ねている\u0301"])
    assert p.char_spans()["instruction"] == [(13, 13 + len(rec["instruction"]))]


def test_alpaca_custom_templates(tmp_path):
    one = "Q: {instruction}\n{context}\nA:"
    ps = load_prompts(ALPACA[:2], template=one)
    assert ps[0].text == "Q: Sort the words.\npear apple\nA:"
    assert spans(ps[0]) == (["Sort the words."], ["pear apple"])
    assert ps[1].text == "Q: Name a prime.\n\nA:" and ps[1].context == ()
    ps = load_prompts(ALPACA[:2], template=("{{{instruction}}} <{context}>", "{instruction}!"))
    assert [p.text for p in ps] == ["{Sort the words.} <pear apple>", "Name a prime.!"]
    assert ps.report.rendering == "custom template"
    for bad, match in [("{instruction} {instruction}", "must hold {instruction} once"),
                       ("{question}", "and no other field"), ("{instruction!r}", "no format spec"),
                       ("{instruction", "not a str.format string"), (3, "template must be 'plain', 'chat'"),
                       (("{instruction}", 3), "a template must be a string")]:
        with pytest.raises(ShiftlensError, match=match):
            load_prompts(ALPACA, template=bad)
    with pytest.raises(ShiftlensError,
                       match=r"record 0: the record has a context but the template has no "
                             r"\{context\}; it would be lost"):
        load_prompts(ALPACA, template="Do: {instruction}")


def test_alpaca_chat_template_moves_spans(tok):
    ps = load_prompts(ALPACA[:2], tokenizer=tok, system="Be brief.")
    a, b = ps
    assert a.text == ("<bos><|system|>\nBe brief.<|end|>\n<|user|>\nSort the words.\n\npear apple"
                      "<|end|>\n<|assistant|>\n")
    assert a.char_spans() == {"instruction": [(42, 57)], "context": [(59, 69)]}
    assert b.text == "<bos><|system|>\nBe brief.<|end|>\n<|user|>\nName a prime.<|end|>\n<|assistant|>\n"
    assert ps.report.rendering.startswith("chat template of ")
    assert a.meta == {"chat_template": True} and b.meta == {"source": "me", "chat_template": True}
    # the tokens the masks select decode back to exactly the spans
    tp = tokenize_prompt(tok, a, prepend_bos=True)
    ids = tp.tokens.tolist()
    assert [SEGMENTS[i] for i in tp.segments.tolist()][0] == "bos" and ids.count(tok.bos_token_id) == 1
    assert tok.decode([i for i, m in zip(ids, tp.mask("instruction")) if m]).strip() == "Sort the words."
    assert tok.decode([i for i, m in zip(ids, tp.mask("context")) if m]).strip() == "pear apple"
    # the same as building the user text by hand and calling with_chat_template
    manual = InstructionPrompt("Sort the words.\n\npear apple", instruction=[(0, 15)],
                               context=[(17, 27)]).with_chat_template(tok, system="Be brief.")
    assert manual.text == a.text and manual.char_spans() == a.char_spans()


def test_alpaca_errors_name_line_and_field(tmp_path):
    f = tmp_path / "a.jsonl"
    cases = [
        ({"instruction": 3, "input": ""}, r"a.jsonl:2: field 'instruction' must be a string, got int 3"),
        ({"instruction": "Do.", "output": 5}, r"a.jsonl:2: field 'output' must be a string or null, got int 5"),
        ({"instruction": "Do.", "input": ["x"]}, r"a.jsonl:2: field 'input' must be a string or null"),
        ({"instruction": "   "}, r"a.jsonl:2: the instruction field is empty"),
        ({"instruction": "Do \ud800"}, r"a.jsonl:2: field 'instruction' holds a lone surrogate"),
        ({"instruction": "Do.", "id": 1.5}, r"a.jsonl:2: field 'id' must be a string or null"),
    ]
    for rec, match in cases:
        dump_jsonl(f, [ALPACA[0], rec])
        with pytest.raises(ShiftlensError, match=match):
            load_prompts(f, format="alpaca")
    dump_jsonl(f, [ALPACA[0], {"question": "Do."}])
    with pytest.raises(ShiftlensError, match=r"a.jsonl:2: no field 'instruction'; the record has \['question'\]"):
        load_prompts(f, format="alpaca")
    dump_jsonl(f, [{"instruction": "A", "id": "x"}, {"instruction": "B", "id": "y"},
                   {"instruction": "C", "id": "x"}])
    with pytest.raises(ShiftlensError, match=r"a.jsonl:3: duplicate prompt id 'x' \(first at .*a.jsonl:1\)"):
        load_prompts(f)
    # a JSON list broken in the middle: the document's own line and column
    write(f.with_suffix(".json"), '[\n {"instruction": "A"},\n {"instruction": "B",}\n]')
    with pytest.raises(ShiftlensError, match=r"a.json:3: not valid JSON \(Expecting property name"):
        load_prompts(f.with_suffix(".json"))
    write(f.with_suffix(".json"), '[\n {"instruction": "A"},\n {"instruction": "B", "instruction": "C"}\n]')
    with pytest.raises(ShiftlensError, match=r"a.json:3 \(item 1\): duplicate key 'instruction'"):
        load_prompts(f.with_suffix(".json"))


def test_mapping_names_fields(tmp_path):
    recs = [{"q": "Sort the words.", "passage": "pear apple", "a": "apple pear", "qid": 7,
             "topic": "sorting"}]
    p = load_prompts(recs, instruction="q", context="passage", reference="a", id="qid",
                     category="topic")[0]
    assert spans(p) == (["Sort the words."], ["pear apple"])
    assert (p.id, p.category, p.reference, p.meta) == ("7", "sorting", "apple pear", {})
    with pytest.raises(ShiftlensError, match=r"record 0: no field 'passage2' \(given as context='passage2'\)"):
        load_prompts(recs, instruction="q", context="passage2")
    with pytest.raises(ShiftlensError, match=r"unknown argument\(s\) \['question'\]"):
        load_prompts(recs, question="q")
    with pytest.raises(ShiftlensError, match="instruction= must name a field"):
        load_prompts(recs, instruction="")
    with pytest.raises(ShiftlensError, match=r"record 0: cannot tell the format: the record has \['a', 'passage', 'q', 'qid', 'topic'\]"):
        load_prompts(recs)


# ---------------------------------------------------------------- messages / sharegpt
CHAT = {"id": "c1", "messages": [
    {"role": "system", "content": "Be kind."},
    {"role": "user", "content": "Hi?"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue.", "weight": 1},
]}


def test_messages_turns(tmp_path):
    f = dump_jsonl(tmp_path / "chats.jsonl", [CHAT])
    last = load_prompts(f)
    assert last.report.format == "messages" and last.report.rendering == "plain transcript"
    p = last[0]
    assert p.text == "System: Be kind.\nUser: Hi?\nAssistant: Hello.\nUser: Name a colour.\nAssistant:\n"
    assert p.char_spans() == {"instruction": [(51, 65)], "context": []}
    assert (p.id, p.reference) == ("c1", "Blue.")
    assert p.meta == {"turn": 1, "n_user_turns": 2, "message_extras": {"4": {"weight": 1}}}
    first = load_prompts(f, turn=0)[0]
    assert first.text == "System: Be kind.\nUser: Hi?\nAssistant:\n" and first.reference == "Hello."
    assert spans(first) == (["Hi?"], [])
    every = load_prompts(f, turn="all")
    assert [(q.id, q.reference) for q in every] == [("c1.turn0", "Hello."), ("c1.turn1", "Blue.")]
    assert every[1].text == p.text
    with pytest.raises(ShiftlensError, match=r"chats.jsonl:1: turn 2 was asked for; the conversation has 2"):
        load_prompts(f, turn=2)
    with pytest.raises(ShiftlensError, match="turn must be an integer or 'all'"):
        load_prompts(f, turn="first")


def test_messages_missing_assistant_and_bare_lists(tmp_path):
    f = write(tmp_path / "m.jsonl",
              json.dumps([{"role": "user", "content": "Name a colour."}]) + "\n"
              + json.dumps([{"role": "user", "content": "Q?"}, {"role": "assistant", "content": " "}])
              + "\n")
    ps = load_prompts(f)
    assert ps.report.detected == f"{f}:1 has a list of messages"
    assert [p.reference for p in ps] == [None, None] and [p.id for p in ps] == ["m-1", "m-2"]
    assert ps.report.notes == [f"{f}:1: no assistant reply follows user turn 0; no reference",
                               f"{f}:2: the assistant reply to user turn 0 is empty; no reference"]


@pytest.mark.parametrize(
    "msgs, match",
    [
        ([], "the conversation is empty"),
        ([{"role": "system", "content": "x"}], "the conversation has no user turn"),
        ([{"role": "user", "content": "  "}], r"user turn 0 \(message 0\) is empty"),
        ([{"role": "tool", "content": "x"}], r"message 0 has the unknown role 'tool'.*roles="),
        ([{"role": "user"}], r"message 0 needs one of 'role'/'from' and one of 'content'/'value'"),
        ([{"role": "user", "from": "human", "content": "x"}], "needs one of 'role'/'from'"),
        ([{"role": "user", "content": [{"type": "text", "text": "x"}]}], "multi-part content"),
        ([{"role": "user", "content": None}], r"message 0 field 'content' must be a string"),
        ([{"role": 3, "content": "x"}], r"message 0 field 'role' must be a string"),
        (["hi"], r"message 0 must be an object, got 'hi'"),
        ("hi", "the conversation must be a list of messages, got str"),
    ],
)
def test_bad_conversations(msgs, match):
    with pytest.raises(ShiftlensError, match=r"record 0: .*" + match):
        load_prompts([{"messages": msgs}], format="messages")


def test_roles_mapping_and_record_errors():
    recs = [{"messages": [{"role": "observation", "content": "Look."},
                          {"role": "user", "content": "Go."}]}]
    p = load_prompts(recs, roles={"observation": "user"})[0]
    assert p.text == "User: Look.\nUser: Go.\nAssistant:\n" and spans(p) == (["Go."], [])
    with pytest.raises(ShiftlensError, match="roles must map role names"):
        load_prompts(recs, roles={"observation": "narrator"})
    with pytest.raises(ShiftlensError, match=r"record 0: the record's field\(s\) \['turn'\] clash"):
        load_prompts([{"messages": recs[0]["messages"], "turn": 3}], roles={"observation": "user"})
    with pytest.raises(ShiftlensError, match=r"record 0: no field 'dialog' holding the conversation"):
        load_prompts([{"messages": []}], messages="dialog")
    with pytest.raises(ShiftlensError, match=r"field mapping \['instruction'\] does not apply to messages"):
        load_prompts(recs, instruction="x")


def test_sharegpt(tmp_path):
    data = [{"id": "s1", "model": "x", "conversations": [
        {"from": "human", "value": "¿Qué hora es?"}, {"from": "gpt", "value": "Las tres."},
        {"from": "human", "value": "Gracias 🙏"}]},
        {"id": "s2", "conversations": [{"from": "system", "value": "Sé breve."},
                                       {"from": "Human", "value": "Hola."},
                                       {"from": "GPT", "value": "Hola."}]}]
    f = write(tmp_path / "sharegpt.json", json.dumps(data, ensure_ascii=False))
    ps = load_prompts(f)
    assert ps.report.format == "sharegpt"
    a, b = ps
    assert a.text == "User: ¿Qué hora es?\nAssistant: Las tres.\nUser: Gracias 🙏\nAssistant:\n"
    assert spans(a) == (["Gracias 🙏"], []) and a.reference is None and a.meta["model"] == "x"
    assert b.text == "System: Sé breve.\nUser: Hola.\nAssistant:\n"
    assert spans(b) == (["Hola."], []) and b.reference == "Hola."  # the user's "Hola.", not the reply's
    assert [p.id for p in load_prompts(f, turn="all")] == ["s1.turn0", "s1.turn1", "s2.turn0"]
    assert load_prompts(f, format="messages") == ps  # either key, either role spelling


def test_conversation_chat_template(tok):
    repeat = {"messages": [{"role": "user", "content": "Again?"},
                           {"role": "assistant", "content": "Yes."},
                           {"role": "user", "content": "Again?"}], "id": "r"}
    p = load_prompts([repeat], tokenizer=tok, system="Be brief.")[0]
    assert p.text == ("<bos><|system|>\nBe brief.<|end|>\n<|user|>\nAgain?<|end|>\n<|assistant|>\n"
                      "Yes.<|end|>\n<|user|>\nAgain?<|end|>\n<|assistant|>\n")
    assert p.char_spans()["instruction"] == [(91, 97)]  # the second "Again?", not (42, 48)
    assert p.meta == {"turn": 1, "n_user_turns": 2, "chat_template": True}
    own = {"messages": [{"role": "system", "content": "Mine."}] + repeat["messages"][:1]}
    assert load_prompts([own], tokenizer=tok, system="Be brief.")[0].text.startswith(
        "<bos><|system|>\nMine.<|end|>")
    with pytest.raises(ShiftlensError, match="template='chat' needs tokenizer="):
        load_prompts([repeat], template="chat")
    with pytest.raises(ShiftlensError, match="tokenizer= is only used with template='chat'"):
        load_prompts([repeat], template="plain", tokenizer=tok)


class FakeChat:
    """A tokenizer stand-in whose chat template applies ``change`` to every message."""

    chat_template = "x"

    def __init__(self, name, change):
        self.name_or_path, self.change = name, change

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        return "".join(f"<{m['role']}>{self.change(m['content'])}" for m in messages)


def test_chat_template_that_changes_text():
    rec = [{"instruction": "Sort the list."}]
    with pytest.raises(ShiftlensError, match=r"record 0: prompt 'record-0': the chat template of "
                                             r"'upper' did not write the user message unchanged"):
        load_prompts(rec, tokenizer=FakeChat("upper", str.upper))
    with pytest.raises(ShiftlensError, match=r"record 0: prompt 'record-0': the chat template of "
                                             r"'escape' changes the text of the user message"):
        load_prompts(rec, tokenizer=FakeChat("escape", lambda s: s.replace(".", "\\.")))
    ok = load_prompts(rec, tokenizer=FakeChat("same", lambda s: s))[0]
    assert ok.text == "<user>Sort the list." and spans(ok) == (["Sort the list."], [])


# ---------------------------------------------------------------- hf
def test_hf_dataset_dict_disk_and_parquet(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [{"question": "Sort the words.", "passage": "pear apple", "answer": "apple pear",
             "id": "h1"},
            {"question": "Name a prime.", "passage": "", "answer": "7", "id": "h2"}]
    ds = datasets.Dataset.from_list(rows)
    kw = dict(instruction="question", context="passage", reference="answer")
    ps = load_prompts(ds, **kw)
    assert ps.report.format == "hf" and ps.report.detected.startswith("Dataset object; dataset row 0 has keys")
    assert spans(ps[0]) == (["Sort the words."], ["pear apple"]) and ps[0].id == "h1"
    assert ps[1].context == () and ps[1].reference == "7"
    dd = datasets.DatasetDict({"train": ds, "test": ds.select([1])})
    with pytest.raises(ShiftlensError, match=r"dataset has the splits \['train', 'test'\]; choose one"):
        load_prompts(dd, **kw)
    assert load_prompts(dd, split="test", **kw) == ps[1:]
    with pytest.raises(ShiftlensError, match=r"dataset has no split 'dev'"):
        load_prompts(dd, split="dev", **kw)
    dd.save_to_disk(str(tmp_path / "saved"))
    disk = load_prompts(tmp_path / "saved", split="train", **kw)
    assert disk == ps and disk.report.detected.startswith("a save_to_disk directory")
    assert disk.report.notes == [] and "saved[train] row 0" in disk.report.detected
    ds.to_parquet(str(tmp_path / "rows.parquet"))
    pq = load_prompts(tmp_path / "rows.parquet", **kw)
    assert pq == ps and pq.report.format == "hf"
    # a messages column (list of structs) is a conversation
    chats = datasets.Dataset.from_list([CHAT])
    assert load_prompts(chats)[0] == load_prompts([CHAT])[0]
    bad = datasets.Dataset.from_list([{"question": "Q", "answer": 5}])
    with pytest.raises(ShiftlensError, match=r"dataset row 0: field 'answer' must be a string or null, got int 5"):
        load_prompts(bad, instruction="question", reference="answer")
    with pytest.raises(ShiftlensError, match=r"split='x' applies to a DatasetDict"):
        load_prompts(ds, split="x", **kw)
    (tmp_path / "plain_dir").mkdir()
    with pytest.raises(ShiftlensError, match="is a directory, not a file"):
        load_prompts(tmp_path / "plain_dir", format="hf")


# ---------------------------------------------------------------- csv / tsv
def test_csv_with_quoting_and_mapping(tmp_path):
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["qid", "question", "passage", "answer", "note"])
    w.writerow(["q1", "Summarize, briefly.", "The river rose.\nThe town flooded.", 'He said "wet".', "x"])
    w.writerow(["q2", "Name a prime.", "", "", ""])
    f = write(tmp_path / "qa.csv", buf.getvalue())
    ps = load_prompts(f, instruction="question", context="passage", reference="answer", id="qid")
    assert ps.report.format == "csv" and ps.report.detected == "extension .csv"
    a, b = ps
    assert spans(a) == (["Summarize, briefly."], ["The river rose.\nThe town flooded."])
    assert a.reference == 'He said "wet".' and a.meta == {"note": "x"} and a.id == "q1"
    assert b.context == () and b.reference is None and b.meta == {"note": ""}
    assert ps.report.notes == [f"{f}:4: the reference field is empty; read as no reference"]
    # default column names, TSV
    t = write(tmp_path / "p.tsv", "instruction\tinput\toutput\nSort.\tb a\ta b\n\nCount.\t\t2\n")
    ps = load_prompts(t)
    assert ps.report.format == "tsv" and [p.id for p in ps] == ["p-2", "p-4"]
    assert spans(ps[0]) == (["Sort."], ["b a"]) and ps[1].reference == "2"


@pytest.mark.parametrize(
    "text, match",
    [
        ("instruction,output\nSort.,a,b\n", r"x.csv:2: 3 fields, the header has 2"),
        ("instruction,output\n,a\n", r"x.csv:2: the instruction field is empty"),
        ('instruction,output\n"Steak" rhymes,a\n', r"x.csv:2: malformed CSV"),
        ("instruction,instruction\na,b\n", r"x.csv:1: a duplicate column name 'instruction'"),
        ("instruction,\na,b\n", r"x.csv:1: an empty column name"),
        ('instruction,output\nok,"a\nb"\nbad,1,2\n', r"x.csv:4: 3 fields"),  # after a 2-line record
    ],
)
def test_csv_errors(tmp_path, text, match):
    with pytest.raises(ShiftlensError, match=match):
        load_prompts(write(tmp_path / "x.csv", text))


# ---------------------------------------------------------------- wu2024
WU_HEADER = "ID\tPrompt\tResponse\tInstruct&Context\n"
WU_ROWS = [
    # instruction + context, /n escapes
    "user_oriented_task_0\tRewrite the sentence clearly./n/nInput: The cat, it sat./n/nOutput:"
    "\tThe cat sat.\tRewrite the sentence clearly.&&&The cat, it sat.",
    # two instruction spans split by |||, no context, a /t escape in the response
    "lima_author_3\tWrite a haiku. Make it about rain.\tRain/ton the roof\tWrite a haiku.|||Make it about rain.",
    # an ambiguous span (first occurrence), a context overlapping the instruction (cut)
    "mtbench_math_7\tAdd 2 and 3. Then add 2 and 3 again.\t10\t2 and 3|||Then&&&Then add 2 and 3 again.",
    # no annotation at all
    "mtbench_writing_1\tTell me a story.\tOnce.\t",
]


def test_wu2024_final_dataset(tmp_path):
    f = write(tmp_path / "FinalDataset.tsv", WU_HEADER + "\n".join(WU_ROWS) + "\n\n")
    ps = load_prompts(f)
    r = ps.report
    assert (r.format, r.detected, r.n_records) == ("wu2024", "header ID, Prompt, Response, Instruct&Context", 4)
    a, b, c, d = ps
    assert a.text == "Rewrite the sentence clearly.\n\nInput: The cat, it sat.\n\nOutput:"
    assert a.char_spans() == {"instruction": [(0, 29)], "context": [(38, 54)]}
    assert (a.id, a.category, a.reference) == ("user_oriented_task_0", "user_oriented_task", "The cat sat.")
    assert spans(b) == (["Write a haiku.", "Make it about rain."], [])
    assert b.reference == "Rain\ton the roof" and b.category == "lima_author"
    assert c.text == "Add 2 and 3. Then add 2 and 3 again."
    assert c.char_spans() == {"instruction": [(4, 11), (13, 17)], "context": [(17, 36)]}
    assert spans(c) == (["2 and 3", "Then"], [" add 2 and 3 again."])
    assert c.meta["load_notes"] == [
        "instruction span '2 and 3' occurs more than once in the prompt; its first occurrence is used",
        "context span 'Then add 2 and 3 again.' overlaps the instruction; the overlap counts as "
        "instruction",
    ]
    assert d.instruction == () and d.meta["load_notes"] == ["no instruction span is annotated"]
    assert r.notes[0] == f"{f}:4: instruction span '2 and 3' occurs more than once in the prompt; its first occurrence is used"
    # the header is found under any file name; another text file is named as not JSON
    g = write(tmp_path / "final.txt", f.read_text())
    assert load_prompts(g) == ps and load_prompts(g, format="wu2024") == ps
    h = write(tmp_path / "other.txt", "ID\tPrompt\n")
    with pytest.raises(ShiftlensError, match=r"other.txt:1: not valid JSON .*\(format='auto' read "
                                             r"other.txt as JSON; pass format= for another"):
        load_prompts(h)


@pytest.mark.parametrize(
    "row, match",
    [
        ("t_1\tSort b a.\ta b", r"F.tsv:2: 3 tab-separated fields, expected 4"),
        ("t_1\tSort b a.\ta b\tSort the list.", r"F.tsv:2: field 'Instruct&Context': instruction span 'Sort the list.' is not in the prompt"),
        ("t_1\tSort b a.\ta b\tSort&&&b a&&&x", r"F.tsv:2: field 'Instruct&Context' holds '&&&' more than once"),
        ("t_1\tSort b a.\ta b\tSort&&&c d", r"F.tsv:2: field 'Instruct&Context': context span 'c d' is not in the prompt"),
        ("\tSort b a.\ta b\tSort", r"F.tsv:2: the id field is empty"),
        ("t_1\t /n \ta b\t", r"F.tsv:2: field 'Prompt' is empty"),
    ],
)
def test_wu2024_errors(tmp_path, row, match):
    f = write(tmp_path / "F.tsv", WU_HEADER + row + "\n")
    with pytest.raises(ShiftlensError, match=match):
        load_prompts(f)


def test_wu2024_duplicate_ids_and_bad_header(tmp_path):
    f = write(tmp_path / "F.tsv", WU_HEADER + WU_ROWS[0] + "\n" + WU_ROWS[0] + "\n")
    with pytest.raises(ShiftlensError, match=r"F.tsv:3: duplicate prompt id 'user_oriented_task_0' \(first at .*F.tsv:2\)"):
        load_prompts(f)
    f = write(tmp_path / "G.tsv", "ID\tPrompt\tResponse\n" + WU_ROWS[0] + "\n")
    with pytest.raises(ShiftlensError, match=r"G.tsv:1: expected the header ID, Prompt, Response, Instruct&Context"):
        load_prompts(f, format="wu2024")


RATED_HEADER = "File\tModel\tPrompt\tReference\tInstruct\tResponse\tRating\n"
RATED_ROWS = [
    "user_oriented_task_0.pkl\tvicuna_7B\tRewrite the sentence clearly./n/nInput: The cat, it sat."
    "\tThe cat sat.\tRewrite the sentence clearly.&&&The cat, it sat.\tThe cat sat down./nDone.\t4",
    "lima_author_3.pkl\tvicuna_7B\tWrite a haiku. Make it about rain.\tRain\tWrite a haiku."
    "\tDrops fall.\t1",
    "mtbench_math_7.pkl\tvicuna_7B\tAdd 2 and 2.\t4\tAdd 2 and 2.\tFour.\t-1",
    "user_oriented_task_0.pkl\talpaca_7B\tRewrite the sentence clearly.\tx\tRewrite\tNo.\t-1",
    "lima_author_9.pkl\tvicuna_7B\tSay hi.\thi\tSay hi.\tHi!\t2",
]


def test_wu2024_ratings(tmp_path):
    f = write(tmp_path / "AnnotatedDataset.tsv", RATED_HEADER + "\n".join(RATED_ROWS) + "\n")
    r = load_wu2024_ratings(f, "VICUNA_7b")  # case-insensitive
    assert isinstance(r, Wu2024Ratings) and r.model == "vicuna_7B"
    assert [p.id for p in r.prompts] == ["user_oriented_task_0", "lima_author_3", "mtbench_math_7",
                                         "lima_author_9"]
    assert r.responses == ("The cat sat down.\nDone.", "Drops fall.", "Four.", "Hi!")
    assert r.ratings == {"user_oriented_task_0": 4, "lima_author_3": 1, "lima_author_9": 2}
    assert r.unrated == ("mtbench_math_7",)
    assert r.followed == {"user_oriented_task_0": True, "lima_author_3": False, "lima_author_9": True}
    assert spans(r.prompts[0]) == (["Rewrite the sentence clearly."], ["The cat, it sat."])
    assert r.prompts[0].reference == "The cat sat." and r.prompts[0].meta == {"model": "vicuna_7B"}
    fr = r.to_frame()
    assert fr["rating"].tolist()[:2] == [4, 1] and fr["followed"].tolist() == [True, False, None, True]
    strict = load_wu2024_ratings(f, "vicuna_7B", followed_min=3)
    assert strict.followed["lima_author_9"] is False
    a = load_wu2024_ratings(f, "alpaca_7B")
    assert a.ratings == {} and a.unrated == ("user_oriented_task_0",)
    with pytest.raises(ShiftlensError, match=r"no ratings for model 'llama'; the file has \['alpaca_7B', 'vicuna_7B'\]"):
        load_wu2024_ratings(f, "llama")
    with pytest.raises(ShiftlensError, match="is the Wu et al. ratings file.*load_wu2024_ratings"):
        load_prompts(f)
    write(f, RATED_HEADER + RATED_ROWS[0] + "\n" + RATED_ROWS[1].replace("\t1", "\tgood") + "\n")
    with pytest.raises(ShiftlensError, match=r"AnnotatedDataset.tsv:3: field 'Rating' must be an integer, got 'good'"):
        load_wu2024_ratings(f, "vicuna_7B")
    with pytest.warns(ShiftlensWarning, match="skipped 1 of 2 records"):
        skip = load_wu2024_ratings(f, "vicuna_7B", on_error="skip")
    assert len(skip.prompts) == 1 and skip.prompts.report.skipped[0][0].endswith("AnnotatedDataset.tsv:3")


# ---------------------------------------------------------------- the driver
def test_auto_detection_evidence_and_log(tmp_path, caplog):
    files = {
        "n.jsonl": ('{"id": "a", "text": "Sort: b a", "instruction": ["Sort:"]}\n', "jsonl"),
        "a.json": (json.dumps(ALPACA), "alpaca"),
        "m.jsonl": (json.dumps(CHAT) + "\n", "messages"),
        "s.json": (json.dumps([{"conversations": [{"from": "human", "value": "Hi"}]}]), "sharegpt"),
        "c.csv": ("instruction,output\nSort.,x\n", "csv"),
        "t.tsv": ("instruction\toutput\nSort.\tx\n", "tsv"),
        "w.tsv": (WU_HEADER + WU_ROWS[0] + "\n", "wu2024"),
    }
    for name, (text, fmt) in files.items():
        f = write(tmp_path / name, text)
        assert detect_format(f)[0] == fmt, name
        with caplog.at_level(logging.INFO, logger="shiftlens.formats"):
            ps = load_prompts(f)
        assert ps.report.format == fmt and len(ps) >= 1
        assert f"{f}: reading as {fmt}" in caplog.text
    assert detect_format(tmp_path / "s.json") == ("sharegpt", f"{tmp_path / 's.json'}:1 (item 0) has keys conversations")


def test_skip_reports_every_record(tmp_path):
    f = write(tmp_path / "mixed.jsonl", "\n".join([
        json.dumps(ALPACA[0]), "{broken", json.dumps({"instruction": 3}), json.dumps(ALPACA[1]),
        json.dumps({"instruction": "X", "id": "alpaca-9"}), json.dumps({"instruction": "Y", "id": "alpaca-9"}),
    ]) + "\n")
    with pytest.warns(ShiftlensWarning, match=r"skipped 3 of 6 records .* all are listed in \.report\.skipped"):
        ps = load_prompts(f, on_error="skip")
    assert [p.id for p in ps] == ["mixed-1", "mixed-4", "alpaca-9"]
    assert ps.report.skipped == [
        (f"{f}:2", "not valid JSON (Expecting property name enclosed in double quotes, column 2)"),
        (f"{f}:3", "field 'instruction' must be a string, got int 3"),
        (f"{f}:6", f"duplicate prompt id 'alpaca-9' (first at {f}:5)"),
    ]
    assert "skipped" in str(ps.report) and ps.report.n_prompts == 3
    with pytest.raises(ShiftlensError, match="on_error must be 'raise' or 'skip'"):
        load_prompts(f, on_error="ignore")


def test_options_that_do_not_apply(tmp_path, tok):
    n = write(tmp_path / "n.jsonl", '{"text": "Sort: b a"}\n')
    with pytest.raises(ShiftlensError, match="jsonl records carry their text as written"):
        load_prompts(n, tokenizer=tok)
    with pytest.raises(ShiftlensError, match="turn= and roles= apply to conversations"):
        load_prompts(ALPACA, turn=0)
    with pytest.raises(ShiftlensError, match="system= needs template='chat'"):
        load_prompts(ALPACA, system="Be brief.")
    with pytest.raises(ShiftlensError, match="split= applies to a datasets DatasetDict"):
        load_prompts(n, split="train")
    with pytest.raises(ShiftlensError, match="cannot read prompts from a int"):
        load_prompts(5)
    with pytest.raises(ShiftlensError, match="a list of records is read as jsonl, alpaca"):
        load_prompts(ALPACA, format="csv")


def test_empty_sources(tmp_path):
    for name in ("e.jsonl", "e.json", "e.csv"):
        ps = load_prompts(write(tmp_path / name, ""))
        assert ps == [] and ps.report.n_records == 0
    assert load_prompts(write(tmp_path / "l.json", "[]")) == []


def test_native_json_list_equals_jsonl(tmp_path):
    recs = [{"id": "a", "text": "Sort: b a", "instruction": ["Sort:"], "context": [[6, 9]]}]
    assert load_prompts(write(tmp_path / "x.json", json.dumps(recs))) == \
        load_prompts(dump_jsonl(tmp_path / "x.jsonl", recs))


def test_load_report_and_prompt_list():
    r = LoadReport("s", "csv", "given", "plain template", 3, 1, [("s:2", "bad")], ["s:3: note"])
    assert str(r) == ("s: format csv (given), 1 prompts from 3 records, rendering: plain template\n"
                      "  skipped s:2: bad\n  note s:3: note")
    ps = PromptList([InstructionPrompt("x y")], r)
    assert ps == [InstructionPrompt("x y")] and ps.report is r and type(ps[:1]) is list
    assert PLAIN_TEMPLATE[1] == "Instruction: {instruction}\nResponse:\n"


# ---------------------------------------------------------------- fuzz: ShiftlensError or valid
text = st.one_of(st.text(max_size=10), st.sampled_from(["Sort", " b a ", "", "\ud800", "|||", "&&&"]))
value = st.one_of(st.none(), st.integers(-2, 3), st.booleans(), text,
                  st.lists(text, max_size=2), st.dictionaries(text, text, max_size=2))


def check_lenient(records, **kw):
    """Strict equals lenient when strict succeeds; lenient loses no record."""
    try:
        strict = load_prompts(records, **kw)
    except ShiftlensError:
        strict = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            lenient = load_prompts(records, on_error="skip", **kw)
        except ShiftlensError:  # only whole-source problems (undetectable format) may raise
            assert strict is None
            return []
    r = lenient.report
    event(f"strict {'ok' if strict is not None else 'refused'}; {min(len(lenient), 2)}+ kept")
    assert r.n_records == len(records)
    assert len({p.id for p in lenient}) == len(lenient)
    if strict is not None:
        assert strict == lenient and not r.skipped
    return lenient


words = st.text(alphabet=st.sampled_from(list("ab .\n") + ["é", "🙂"]), max_size=10)
good_alpaca = st.fixed_dictionaries(
    {"instruction": words}, optional={"input": words, "output": words, "id": st.sampled_from("xyz")})
any_alpaca = st.fixed_dictionaries({}, optional={
    "instruction": value, "input": value, "output": value, "id": value, "category": value,
    "x": value})


@settings(max_examples=120, deadline=None)
@given(st.lists(st.one_of(good_alpaca, good_alpaca, any_alpaca), max_size=4))
def test_fuzz_alpaca_records(records):
    check_lenient(records, format="alpaca")
    for rec in records:  # each record alone: refused, or its spans hold exactly its fields
        try:
            p = load_prompts([rec], format="alpaca")[0]
        except ShiftlensError:
            continue
        event("a valid alpaca record")
        assert spans(p) == ([rec["instruction"].strip()],
                            [rec["input"].strip()] if (rec.get("input") or "").strip() else [])
        assert p.reference == (rec.get("output") if (rec.get("output") or "").strip() else None)


message = st.fixed_dictionaries({}, optional={
    "role": st.one_of(st.sampled_from(["user", "assistant", "system", "human", "gpt", "tool"]), value),
    "content": value, "from": st.sampled_from(["human", "gpt"]), "value": value})
good_message = st.one_of(
    st.fixed_dictionaries({"role": st.just("user"), "content": words.filter(str.strip)}),
    st.fixed_dictionaries({"role": st.sampled_from(["assistant", "system"]), "content": words}))
good_conversation = st.tuples(st.lists(good_message, max_size=3), good_message,
                              st.lists(good_message, max_size=2)).map(
    lambda t: [*t[0], {"role": "user", "content": t[1]["content"] or "x"}, *t[2]])
conversation = st.one_of(good_conversation, good_conversation, st.lists(message, max_size=4))


@settings(max_examples=120, deadline=None)
@given(st.lists(st.one_of(conversation.map(lambda m: {"messages": m}),
                          conversation.map(lambda m: {"conversations": m}), conversation, value),
                max_size=3),
       st.one_of(st.integers(-2, 2), st.just("all")))
def test_fuzz_conversations(records, turn):
    check_lenient(records, format="messages", turn=turn)
    for rec in records:
        try:
            ps = load_prompts([rec], format="messages", turn=turn)
        except ShiftlensError:
            continue
        event("a valid conversation")
        msgs = rec if isinstance(rec, list) else next(iter(rec.values()))
        users = [i for i, m in enumerate(msgs) if m["role"] in ("user", "human")]
        for p in ps:  # the instruction is the chosen user turn, the reference the next reply
            i = users[p.meta["turn"]]
            assert spans(p) == ([msgs[i]["content"].strip()], [])
            nxt = msgs[i + 1] if i + 1 < len(msgs) else None
            want = nxt["content"] if nxt and nxt["role"] == "assistant" else None
            assert p.reference == (want if want and want.strip() else None)


cell = st.text(alphabet=st.sampled_from(list('ab ,"\t\n|&/n')), max_size=8)


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.lists(cell, min_size=1, max_size=4), max_size=4),
       raw=st.text(alphabet=st.sampled_from(list('ab,"\n\r')), max_size=30))
def test_fuzz_csv_and_tsv(tmp_path, rows, raw):
    buf = io.StringIO()
    csv.writer(buf).writerows([["instruction", "input", "output"], *rows])
    for name, body in (("w.csv", buf.getvalue()), ("r.csv", "instruction,output\n" + raw),
                       ("r.tsv", "instruction\toutput\n" + raw.replace(",", "\t"))):
        f = write(tmp_path / name, body)
        try:
            strict = load_prompts(f)
        except ShiftlensError:
            strict = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lenient = load_prompts(f, on_error="skip")
        assert lenient.report.n_prompts + len(lenient.report.skipped) == lenient.report.n_records
        event(f"{name}: strict {'ok' if strict is not None else 'refused'}, "
              f"{min(len(lenient), 2)}+ kept")
        if strict is not None:
            assert strict == lenient


wu_cell = st.lists(st.sampled_from(list("ab .") + ["/n", "/t", "|||", "&&&", "\t"]),
                   max_size=8).map("".join)


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(st.sampled_from(["t_1", "t_2", "", "x"]), wu_cell, wu_cell, wu_cell),
                     max_size=4))
def test_fuzz_wu2024(tmp_path, rows):
    f = write(tmp_path / "F.tsv", WU_HEADER + "\n".join("\t".join(r) for r in rows) + "\n")
    try:
        load_prompts(f)
    except ShiftlensError:
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ps = load_prompts(f, on_error="skip")
    assert ps.report.n_prompts + len(ps.report.skipped) == ps.report.n_records
    event(f"{min(len(ps), 2)}+ kept, {min(len(ps.report.skipped), 2)}+ skipped")
    for p in ps:  # every span lies inside the prompt, instruction and context disjoint
        ins, ctx = p.char_spans()["instruction"], p.char_spans()["context"]
        assert not any(a < d and c < b for a, b in ins for c, d in ctx)


# ---------------------------------------------------------------- docstrings and examples
@pytest.mark.parametrize("name", ["shiftlens.formats", "shiftlens.wu2024"])
def test_doctests(name):
    res = doctest.testmod(importlib.import_module(name),
                          optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert res.attempted > 0 and res.failed == 0


EXAMPLES = sorted((ROOT / "examples").glob("prompts_*.py"))


def test_examples_exist_one_per_source():
    assert {p.stem.removeprefix("prompts_") for p in EXAMPLES} >= {
        "alpaca", "messages", "sharegpt", "hf", "csv", "wu2024"}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(path, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(path)])
    runpy.run_path(str(path), run_name="__main__")
    assert "instruction" in capsys.readouterr().out


def test_detection_skips_leading_non_records_and_mapping_twice(tmp_path):
    f = write(tmp_path / "a.jsonl", "null\n" + json.dumps(ALPACA[0]) + "\n")
    assert detect_format(f) == ("alpaca", f"{f}:2 has keys input, instruction, output")
    with pytest.raises(ShiftlensError, match=r"a.jsonl:1: a record must be an object"):
        load_prompts(f)
    with pytest.warns(ShiftlensWarning):
        assert len(load_prompts(f, on_error="skip")) == 1
    with pytest.raises(ShiftlensError, match=r"record 0: cannot tell the format: no record is an object"):
        load_prompts(["hi", 3])
    with pytest.raises(ShiftlensError, match="uses one field twice"):
        load_prompts(ALPACA, instruction="input", context="input")


def every_format_files(tmp_path, rows):
    """The same (id, instruction, context) rows written in every file format; {format: path}."""
    import datasets

    alp = [{"id": i, "instruction": ins, "input": ctx, "output": "ok"} for i, ins, ctx in rows]
    chats = [{"id": i, "messages": [{"role": "user", "content": ins}]} for i, ins, _ in rows]
    share = [{"id": i, "conversations": [{"from": "human", "value": ins}]} for i, ins, _ in rows]
    buf = io.StringIO()
    csv.writer(buf).writerows([["id", "instruction", "input"], *rows])
    tsv = "id\tinstruction\tinput\n" + "".join(f"{i}\t{a}\t{b}\n" for i, a, b in rows)
    wu = WU_HEADER + "".join(f"{i}\t{a} {b}\tok\t{a}&&&{b}\n" for i, a, b in rows)
    native = [{"id": i, "text": f"{a} {b}", "instruction": [a], "context": [b]} for i, a, b in rows]
    datasets.Dataset.from_list(alp).to_parquet(str(tmp_path / "hf.parquet"))
    return {
        "alpaca": write(tmp_path / "alpaca.json", json.dumps(alp, ensure_ascii=False)),
        "messages": dump_jsonl(tmp_path / "m.jsonl", chats),
        "sharegpt": write(tmp_path / "s.json", json.dumps(share, ensure_ascii=False)),
        "csv": write(tmp_path / "c.csv", buf.getvalue()),
        "tsv": write(tmp_path / "t.tsv", tsv),
        "wu2024": write(tmp_path / "w.tsv", wu),
        "jsonl": dump_jsonl(tmp_path / "n.jsonl", native),
        "hf": tmp_path / "hf.parquet",
    }


def test_unicode_in_every_format(tmp_path):
    rows = [("ü-1", "Übersetze ins Japanische:", "猫が寝ている 🐈"), ("ü-2", "Résume en un mot", "ça va")]
    for fmt, f in every_format_files(tmp_path, rows).items():
        ps = load_prompts(f)
        assert ps.report.format == fmt and [p.id for p in ps] == ["ü-1", "ü-2"], fmt
        for p, (_, ins, ctx) in zip(ps, rows):
            want = ([ins], []) if fmt in ("messages", "sharegpt") else ([ins], [ctx])
            assert spans(p) == want, fmt


def test_duplicate_ids_in_every_format(tmp_path):
    rows = [("d1", "Sort the words.", "b a"), ("d2", "Count.", "x"), ("d1", "Again.", "y")]
    for fmt, f in every_format_files(tmp_path, rows).items():
        with pytest.raises(ShiftlensError, match=r"duplicate prompt id 'd1' \(first at "):
            load_prompts(f)
        with pytest.warns(ShiftlensWarning, match="skipped 1 of 3"):
            ps = load_prompts(f, on_error="skip")
        assert [p.id for p in ps] == ["d1", "d2"], fmt
