"""The command line: help, exit codes (0 ok, 1 internal failure, 2 bad input), each command."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from shiftlens import InstructionPrompt, ShiftlensError, default_prompts, save_prompts
from shiftlens.cli import build_parser, main

assert build_parser().prog == "shiftlens"

ROOT = Path(__file__).resolve().parents[2]


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("shiftlens: error: ")
    return lines[0]


# ----------------------------------------------------------------------------- help and usage
def test_help_lists_every_command(capsys):
    rc, out, _ = run(capsys, "--help")
    assert rc == 0
    for cmd in ("demo", "report", "compare", "attribute", "concepts", "lenses"):
        assert re.search(rf"^\s+{cmd}\b", out, flags=re.M), cmd
    assert "Exit codes: 0 ok, 1 internal failure, 2 bad input" in " ".join(out.split())


@pytest.mark.parametrize("cmd,needle", [
    ("demo", "--max-prompts"), ("report", "--prompts FILE"), ("compare", "TUNED"),
    ("attribute", "--instruction SPAN"), ("concepts", "--layer N"), ("lenses", "available")])
def test_subcommand_help(capsys, cmd, needle):
    rc, out, _ = run(capsys, cmd, "--help")
    assert rc == 0 and needle in out
    if cmd in ("demo", "report"):
        for opt in ("--lenses", "--device", "--dtype", "--max-prompts", "--out"):
            assert opt in out


def test_version_and_no_command(capsys):
    from shiftlens import __version__

    assert run(capsys, "--version")[:2] == (0, __version__ + "\n")
    rc, out, _ = run(capsys)
    assert rc == 2 and "usage: shiftlens" in out


@pytest.mark.parametrize("argv,msg", [
    (["report"], "the following arguments are required: BASE, TUNED"),
    (["report", "/no/such/dir", "/no/such/dir2"], "model path '/no/such/dir' does not exist"),
    (["demo", "--lenses", "atention"], "unknown lens 'atention'"),
    (["demo", "--max-prompts", "0"], "--max-prompts must be >= 1"),
    (["demo", "--dtype", "float8"], "invalid choice: 'float8'"),
    (["demo", "--lens-prompts", "attribution"], "takes KEY=N"),
    (["demo", "--lens-prompts", "nope=3"], "unknown key 'nope'"),
    (["demo", "--device", "tpu"], "unknown device 'tpu'"),
    (["concepts", "x", "--layer", "-1"], "expected an integer >= 0"),
    (["attribute", "x"], "required: --prompt"),
    (["bogus"], "invalid choice: 'bogus'"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, argv, msg):
    rc, _, err = run(capsys, *argv)
    assert rc == 2
    assert msg in one_line_error(err)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_cuda(capsys):
    rc, _, err = run(capsys, "demo", "--device", "cuda")
    assert rc == 2 and "CUDA is not available" in one_line_error(err)


def test_missing_prompt_file_and_bad_model_dir(capsys, tiny_dirs, tmp_path):
    base, tuned = tiny_dirs("llama")
    capsys.readouterr()  # the fixture's own output
    rc, _, err = run(capsys, "report", str(base), str(tuned), "--prompts", str(tmp_path / "none.jsonl"))
    assert rc == 2 and "does not exist" in one_line_error(err)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    rc, _, err = run(capsys, "report", str(base), str(tuned), "--prompts", str(bad))
    assert rc == 2 and "bad.jsonl:1: not valid JSON" in one_line_error(err)
    (tmp_path / "empty_dir").mkdir()
    rc, _, err = run(capsys, "concepts", str(tmp_path / "empty_dir"), "--layer", "0")
    assert rc == 2 and "not a Hugging Face model directory" in one_line_error(err)


def test_debug_shows_the_exception(tmp_path):
    with pytest.raises(ShiftlensError, match="does not exist"):
        main(["--debug", "report", "/no/such/a", "/no/such/b"])
    with pytest.raises(ShiftlensError, match="does not exist"):
        main(["report", "/no/such/a", "/no/such/b", "--debug"])


def test_internal_error_is_exit_1(capsys, monkeypatch):
    import shiftlens.cli as cli

    def boom(args):
        raise RuntimeError("unexpected\nmultiline")

    monkeypatch.setattr(cli, "cmd_lenses", boom)
    rc, _, err = run(capsys, "lenses")
    assert rc == 1
    assert err.strip() == ("shiftlens: internal error: RuntimeError: unexpected multiline (run "
                           "with --debug for the traceback)")


def test_subprocess_exit_code_and_no_traceback(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "shiftlens", "report", "/no/such/a", "/no/b"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip() == "shiftlens: error: model path '/no/such/a' does not exist"


# ----------------------------------------------------------------------------- commands
def test_lenses_says_which_are_available(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "shiftlens.residual", None)
    rc, out, _ = run(capsys, "demo", "--lenses", "list")
    assert rc == 0
    assert re.search(r"^attention\s+available", out, flags=re.M)
    assert re.search(r"^residual\s+NOT AVAILABLE", out, flags=re.M)
    assert "shiftlens.residual:similarity cannot be imported" in out


def test_concepts_prints_the_lens_words(capsys, tiny_dirs, tmp_path):
    from shiftlens.ffn import concept_words
    from shiftlens.pair import load_bridge

    base, _ = tiny_dirs("llama")
    rc, out, _ = run(capsys, "concepts", str(base), "--layer", "1", "--k", "3", "--show", "4",
                     "--out", str(tmp_path))
    assert rc == 0
    rows = [ln for ln in out.splitlines() if ln.startswith("#")]
    assert len(rows) == 3
    cw = concept_words(load_bridge(base), 1, k=3, top_words=15)
    for row, words, evr in zip(rows, cw.words, cw.explained_variance_ratio.tolist()):
        shown = [w[:-1] for w in row.split()[4:]]  # words carry a +/- sign suffix
        assert shown == words[:4]
        assert f"{evr:.1%}" in row
    assert (tmp_path / "concepts.csv").exists() and (tmp_path / "concepts.html").exists()
    rc, _, err = run(capsys, "concepts", str(base), "--layer", "7")
    assert rc == 2 and "layer 7 out of range (n_layers=2)" in one_line_error(err)


def test_attribute_prints_the_instruction_score(capsys, tiny_dirs, tmp_path):
    attribute = pytest.importorskip("shiftlens.attribution").attribute
    from shiftlens.pair import load_bridge

    base, _ = tiny_dirs("llama")
    text = "Sort the words.\nInput: pear apple\nAnswer:"
    rc, out, _ = run(capsys, "attribute", str(base), "--prompt", text, "--instruction",
                     "Sort the words.", "--context", "pear apple", "--response", " apple pear",
                     "--out", str(tmp_path), "--no-progress")
    assert rc == 0
    want = attribute(load_bridge(base), InstructionPrompt(
        text, instruction=["Sort the words."], context=["pear apple"]), " apple pear")
    score = float(re.search(r"instruction score: ([\d.]+)", out).group(1))
    assert score == pytest.approx(want.score(), abs=1e-4)
    rows = [ln for ln in out.splitlines() if re.match(r"^\s+\d+\s+(instruction|context|template)", ln)]
    assert len(rows) == want.n_input
    dens = [float(r.split()[2]) for r in rows]
    assert dens == pytest.approx(want.density().tolist(), abs=1e-3)
    for f in ("attribution.html", "attribution.csv", "attribution.png", "attribution.svg"):
        assert (tmp_path / f).stat().st_size > 0
    rc, _, err = run(capsys, "attribute", str(base), "--prompt", text, "--instruction", "nope")
    assert rc == 2 and "nope" in one_line_error(err)


def test_compare_is_report():
    a = build_parser().parse_args(["compare", "b", "t", "--max-prompts", "3"])
    b = build_parser().parse_args(["report", "b", "t", "--max-prompts", "3"])
    assert a.cmd == "compare" and b.cmd == "report"
    assert {**vars(a), "cmd": ""} == {**vars(b), "cmd": ""} and a.func == "report"


def test_report_command_writes_the_report(capsys, tiny_dirs, tmp_path):
    base, tuned = tiny_dirs("llama")
    pf = save_prompts(default_prompts()[:4], tmp_path / "p.jsonl")
    out = tmp_path / "rep"
    rc, stdout, _ = run(capsys, "compare", str(base), str(tuned), "--prompts", str(pf), "--out",
                        str(out), "--lenses", "attention", "--no-progress",
                        "--lens-prompts", "attention=3")
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert list(m["lenses"]) == ["attention"] and m["lenses"]["attention"]["status"] == "ok"
    assert m["lenses"]["attention"]["n_prompts"] == {"instruction_attention": 3}
    assert m["n_prompts"] == 4 and m["command"].startswith("shiftlens compare ")
    assert "Key findings:" in stdout and str(out / "report.html") in stdout
    assert (out / "report.html").read_text().count('<section id="lens-') == 1


@pytest.mark.slow
def test_demo_end_to_end(capsys, tmp_path):
    """The README's main job: the embedded pair (or the tiny fallback) -> report, every lens."""
    out = tmp_path / "demo"
    rc, stdout, err = run(capsys, "demo", "--out", str(out), "--no-progress")
    assert rc == 0, err
    from shiftlens.report import available_lenses

    m = json.loads((out / "metrics.json").read_text())
    want = {k: "ok" if ok else "skipped" for k, (ok, _) in available_lenses().items()}
    assert {k: v["status"] for k, v in m["lenses"].items()} == want
    from shiftlens.lenses import BUILTIN_LENSES

    assert set(BUILTIN_LENSES) <= set(want)  # every registered lens has a section, run or not
    html = (out / "report.html").read_text()
    assert html.count('<section id="lens-') == len(want) and "Key findings" in html
    assert re.findall(r'<section id="lens-([\w-]+)"', html) == list(want)  # in report order
    if all(v == "ok" for v in want.values()):
        assert len(list((out / "figures").glob("*.png"))) >= 7
        assert html.count("CircuitsVis.render(") == 6  # 3 attention panels + 3 token rows
    if "embedded toy pair" in html:  # known truth: tuning made the heads read the instruction
        key = [f for f in m["lenses"]["attention"]["findings"] if "on the instruction" in f][0]
        assert " rose significantly from " in key and "; significant at 0.05" in key
        assert m["lenses"]["attention"]["n_prompts"] == {"instruction_attention": 140}


def test_attribute_under_chat_template(capsys, tiny_dirs):
    attribute = pytest.importorskip("shiftlens.attribution").attribute
    from shiftlens.pair import load_bridge

    base, _ = tiny_dirs("llama")  # its tokenizer has a small chat template
    text = "Sort the words.\nInput: pear apple"
    rc, out, _ = run(capsys, "attribute", str(base), "--prompt", text, "--instruction",
                     "Sort the words.", "--context", "pear apple", "--response", " apple pear",
                     "--chat-template", "--system", "Be brief.", "--no-progress")
    assert rc == 0
    model = load_bridge(base)
    templated = InstructionPrompt(text, instruction=["Sort the words."],
                                  context=["pear apple"]).with_chat_template(
                                      model.tokenizer, system="Be brief.")
    want = attribute(model, templated, " apple pear")
    score = float(re.search(r"instruction score: ([\d.]+)", out).group(1))
    assert score == pytest.approx(want.score(), abs=1e-4)
    rows = [ln for ln in out.splitlines() if re.match(r"^\s+\d+\s+(instruction|context|template)", ln)]
    assert len(rows) == want.n_input > len(model.tokenizer(text)["input_ids"])  # template tokens


def test_help_texts_quote_the_values_in_use(capsys):
    """Issue 15.8: the caps and limits in --help are the ones the commands use."""
    from shiftlens.cli import DEMO_LIMITS, DEMO_OPTIONS, _default_limits
    from shiftlens.report.estimate import ESTIMATE_THRESHOLD_S

    def caps(text):
        return dict(re.findall(r"(\w+) \[(\d+|no cap)\]", text))

    rc, out, _ = run(capsys, "demo", "--help")
    text = " ".join(out.split())
    want = {k: str(v) if v else "no cap" for k, v in {**_default_limits(), **DEMO_LIMITS}.items()}
    assert rc == 0 and caps(text) == want
    assert f"capped at {DEMO_OPTIONS['attribution_tokens']} tokens" in text
    rc, out, _ = run(capsys, "report", "--help")
    assert caps(" ".join(out.split())) == {k: str(v) if v else "no cap"
                                           for k, v in _default_limits().items()}
    rc, out, _ = run(capsys, "--help")
    assert f"over {ESTIMATE_THRESHOLD_S:.0f} s" in " ".join(out.split())
    assert "a few minutes" not in out


def test_runner_commands_are_reachable(capsys):
    """`shiftlens run` and `shiftlens merge` (shiftlens.runner.cli) are subcommands of the CLI."""
    from shiftlens.cli import build_parser

    p = build_parser()
    args = p.parse_args(["merge", "runs/x", "--status"])
    assert args.handler == "shiftlens.runner.cli:cmd_merge" and args.status
    args = p.parse_args(["run", "attribution", "toy:base", "toy:tuned", "--prompts", "p.jsonl",
                         "--out", "runs/x", "--shard", "1/4"])
    assert args.handler == "shiftlens.runner.cli:cmd_run" and args.lens == "attribution"
    rc, out, _ = run(capsys, "--help")
    listed = re.findall(r"^    (\S+)", out, flags=re.M)
    assert rc == 0 and {"run", "merge"} <= set(listed)
    rc, out, err = run(capsys, "merge", "--help")
    assert rc == 0 and "run directory" in out

