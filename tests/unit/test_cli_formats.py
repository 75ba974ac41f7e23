"""Issue 16: the CLI runs the embedded pair end to end on an Alpaca file and a messages file."""

from __future__ import annotations

import json

import pytest

from shiftlens.cli import main

pytestmark = pytest.mark.slow

ALPACA = [
    {"instruction": "reverse the words.", "input": "red cat moon", "output": " moon cat red"},
    {"instruction": "count the words.", "input": "blue stone", "output": " two"},
    {"instruction": "give the first word.", "input": "tree bird house", "output": " tree"},
]
MESSAGES = [
    {"id": "m1", "messages": [{"role": "system", "content": "Answer briefly."},
                              {"role": "user", "content": "repeat the words. cat dog"},
                              {"role": "assistant", "content": "cat dog"}]},
    {"id": "m2", "messages": [{"role": "user", "content": "sort the words. red blue"},
                              {"role": "assistant", "content": "blue red"}]},
]


@pytest.mark.parametrize("kind", ["alpaca", "messages"])
def test_report_on_an_alpaca_and_a_messages_file(kind, tmp_path, capsys):
    if kind == "alpaca":
        src = tmp_path / "data.json"
        src.write_text(json.dumps(ALPACA))
        n = len(ALPACA)
    else:
        src = tmp_path / "chats.jsonl"
        src.write_text("\n".join(json.dumps(r) for r in MESSAGES) + "\n")
        n = len(MESSAGES)
    out = tmp_path / "rep"
    rc = main(["report", "toy:base", "toy:tuned", "--prompts", str(src), "--lenses",
               "attention", "--no-progress", "--out", str(out), "--threads", "1"])
    out_text, err = capsys.readouterr()
    assert rc == 0, err
    # what the loader found is a finding: on stdout (stderr carries errors only)
    loaded = [ln for ln in out_text.splitlines() if ln.startswith("prompts: ")]
    assert len(loaded) == 1 and kind in loaded[0], out_text
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_prompts"] == n and m["selfcheck"]["passed"]
    assert m["lenses"]["attention"]["status"] == "ok"
    assert m["lenses"]["attention"]["findings"]


def test_bad_prompt_file_is_one_line_exit_2(tmp_path, capsys):
    src = tmp_path / "bad.jsonl"
    src.write_text('{"instruction": "x", "input": "y", "output": "z"}\nnull\n')
    rc = main(["report", "toy:base", "toy:tuned", "--prompts", str(src), "--format", "alpaca",
               "--out", str(tmp_path / "r"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("shiftlens: error:") and "bad.jsonl" in err[-1]
    assert ":2" in err[-1] or "line 2" in err[-1]


def test_parser_constants_equal_the_library_ones():
    """cliargs repeats two tuples so that building the parser imports no torch; keep them equal."""
    from shiftlens import cliargs
    from shiftlens.bridge import DTYPE_NAMES
    from shiftlens.formats import FORMAT_CHOICES

    assert cliargs.FORMAT_CHOICES == FORMAT_CHOICES
    assert cliargs.DTYPES == DTYPE_NAMES
