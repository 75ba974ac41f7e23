"""The runner and its run directory, on the synthetic lens of runner_synth (tiny Llama pair).

Every test compares the runner's Result with the in-process reference (``equals``: tensors bit
for bit, frames with dtypes, NaN-aware), and counts computations through ``Faulty``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from runner_synth import PAIR_SYNTH, SYNTH, Faulty, token_stats

from shiftlens import ModelPair
from shiftlens.errors import ShiftlensError, ShiftlensWarning
from shiftlens.prompts import default_prompts
from shiftlens.runner import load_run, run_lens, run_status

N = 6


@pytest.fixture(scope="module")
def prompts():
    return default_prompts()[:N]


@pytest.fixture(scope="module")
def dirs(tiny_dirs):
    return tuple(str(d) for d in tiny_dirs("llama"))


@pytest.fixture(scope="module")
def reference(dirs, prompts):
    pair = ModelPair.from_pretrained(*dirs)
    return {"synth": token_stats(pair, prompts, scale=0.5),
            "pair": token_stats(pair, prompts, units=PAIR_SYNTH, scale=0.5)}


def _assert_equal(got, want):
    assert got.differences(want) == []


def _quiet(fn, *a, **k):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ShiftlensWarning)  # no warning on a clean run
        return fn(*a, **k)


def test_inprocess_run_equals_reference_one_model_at_a_time(dirs, prompts, reference, tmp_path):
    units = Faulty(SYNTH)
    s = _quiet(run_lens, units, dirs, prompts, tmp_path / "run", params={"scale": 0.5},
               progress=False)
    assert s.complete and s.computed == 2 * N and s.done_before == 0 and s.total == 2 * N
    # role-major: every base record, then every tuned record
    assert units.calls == [(i, "base") for i in range(N)] + [(i, "tuned") for i in range(N)]
    # one model resident at a time: the base model was freed before the tuned one computed
    base_refs = [r for role, r in units.models if role == "base"]
    assert len({id(r()) for r in base_refs if r() is not None}) <= 1
    assert all(r() is None for r in base_refs)
    got = load_run(tmp_path / "run", units=SYNTH)
    _assert_equal(got, reference["synth"])
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["units_name"] == "synthetic.token_stats" and info["params"] == {"scale": 0.5}
    assert info["prompts"]["n"] == N and len(info["prompts"]["sha256"]) == 64
    assert info["models"]["base"]["name"] == reference["synth"].meta["models"]["base"]
    assert info["sources"]["base"] == str(Path(dirs[0]).resolve())
    assert info["models"]["base"]["fingerprint"] != info["models"]["tuned"]["fingerprint"]
    assert info["load"] == {"dtype": "float32", "processing": "raw"}
    assert set(info["versions"]) >= {"torch", "transformers", "shiftlens"}
    files = sorted(p.relative_to(tmp_path / "run").as_posix()
                   for p in (tmp_path / "run" / "records").rglob("*"))
    assert files == ["records/base"] + [f"records/base/{i:06d}.safetensors" for i in range(N)] \
        + ["records/tuned"] + [f"records/tuned/{i:06d}.safetensors" for i in range(N)]
    sessions = list((tmp_path / "run" / "sessions").glob("*.json"))
    assert len(sessions) == 1
    assert json.loads(sessions[0].read_text())["status"] == "ok"


def test_registered_ref_merges_without_units(dirs, prompts, reference, tmp_path):
    run_lens("runner_synth:SYNTH", dirs, prompts, tmp_path / "r", params={"scale": 0.5},
             progress=False)
    _assert_equal(load_run(tmp_path / "r"), reference["synth"])  # units found from run.json
    run_lens(SYNTH, dirs, prompts[:2], tmp_path / "named", names=("base 7B", "chat 7B"),
             progress=False)
    assert load_run(tmp_path / "named", units=SYNTH).meta["models"] == {"base": "base 7B",
                                                                        "tuned": "chat 7B"}
    with pytest.raises(ShiftlensError, match="two different"):
        run_lens(SYNTH, dirs, prompts[:2], tmp_path / "x", names=("a", "a"), progress=False)


def test_crash_then_resume_computes_each_record_once(dirs, prompts, reference, tmp_path):
    k = 3
    first = Faulty(SYNTH, crash=(k, "base"))
    with pytest.raises(RuntimeError, match="injected crash"):
        run_lens(first, dirs, prompts, tmp_path / "run", params={"scale": 0.5}, progress=False)
    assert first.calls == [(i, "base") for i in range(k)]
    st = run_status(tmp_path / "run")
    assert st["done"] == k and st["by_role"] == {"base": k, "tuned": 0}
    assert st["missing"][0] == (prompts[k].id, "base")
    session = json.loads(next((tmp_path / "run" / "sessions").glob("*.json")).read_text())
    assert session["status"].startswith("failed: RuntimeError")
    with pytest.raises(ShiftlensError, match="records are missing"):
        load_run(tmp_path / "run", units=SYNTH)
    with pytest.raises(ShiftlensError, match="pass --resume"):
        run_lens(SYNTH, dirs, prompts, tmp_path / "run", params={"scale": 0.5}, progress=False)
    second = Faulty(SYNTH)
    s = _quiet(run_lens, second, dirs, prompts, tmp_path / "run", params={"scale": 0.5},
               resume=True, progress=False)
    assert s.done_before == k and s.computed == 2 * N - k and s.complete
    assert sorted(first.calls + second.calls) == sorted(
        [(i, r) for r in ("base", "tuned") for i in range(N)])  # each record exactly once
    _assert_equal(load_run(tmp_path / "run", units=SYNTH), reference["synth"])
    again = Faulty(SYNTH)
    s = run_lens(again, dirs, prompts, tmp_path / "run", params={"scale": 0.5}, resume=True,
                 progress=False)
    assert again.calls == [] and s.computed == 0 and s.done_before == 2 * N


def test_resume_refuses_other_inputs(dirs, prompts, tmp_path, tiny_dirs):
    from shiftlens.testing import perturbed_copy

    out = tmp_path / "run"
    with pytest.raises(RuntimeError):
        run_lens(Faulty(SYNTH, crash=(1, "base")), dirs, prompts, out, params={"scale": 0.5},
                 progress=False)
    kw = {"resume": True, "progress": False}
    with pytest.raises(ShiftlensError, match=r"params\.scale: 0\.5 \(run\) vs 2 \(now\)"):
        run_lens(SYNTH, dirs, prompts, out, params={"scale": 2}, **kw)
    with pytest.raises(ShiftlensError, match=r"prompts\.n: 6 \(run\) vs 5 \(now\)"):
        run_lens(SYNTH, dirs, prompts[:5], out, params={"scale": 0.5}, **kw)
    changed = [*prompts[:-1], prompts[-1].__class__(prompts[-1].text + " ", id=prompts[-1].id)]
    with pytest.raises(ShiftlensError, match=r"prompts\.sha256"):
        run_lens(SYNTH, dirs, changed, out, params={"scale": 0.5}, **kw)
    other = perturbed_copy(dirs[0], tmp_path / "other", scale=0.05, seed=9)
    with pytest.raises(ShiftlensError, match=r"models\.tuned\.fingerprint"):
        run_lens(SYNTH, (dirs[0], str(other)), prompts, out, params={"scale": 0.5}, **kw)
    with pytest.raises(ShiftlensError, match=r"load\.dtype"):
        run_lens(SYNTH, dirs, prompts, out, params={"scale": 0.5}, dtype=torch.float64, **kw)
    with pytest.raises(ShiftlensError, match=r"models\.base\.name"):
        run_lens(SYNTH, dirs, prompts, out, params={"scale": 0.5}, names=("b", "t"), **kw)
    with pytest.raises(ShiftlensError, match="units_name"):
        run_lens(PAIR_SYNTH, dirs, prompts, out, params={"scale": 0.5}, **kw)
    with pytest.raises(ShiftlensError, match=r"unknown parameter\(s\) k"):
        run_lens(SYNTH, dirs, prompts, out, params={"k": 1}, **kw)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ShiftlensError, match="not a shiftlens run directory"):
        run_lens(SYNTH, dirs, prompts, foreign, progress=False)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_damaged_records_are_recomputed_with_a_warning(dirs, prompts, reference, tmp_path):
    out = tmp_path / "run"
    run_lens(SYNTH, dirs, prompts, out, params={"scale": 0.5}, progress=False)
    rec = out / "records"
    (rec / "base" / "000001.safetensors").write_bytes(
        (rec / "base" / "000001.safetensors").read_bytes()[:100])  # truncated
    data = bytearray((rec / "tuned" / "000004.safetensors").read_bytes())
    data[-2] ^= 0x01  # one flipped bit in a tensor
    (rec / "tuned" / "000004.safetensors").write_bytes(bytes(data))
    # a record of another unit renamed into place
    (rec / "tuned" / "000002.safetensors").write_bytes(
        (rec / "tuned" / "000003.safetensors").read_bytes())
    st = run_status(out)
    assert st["done"] == 2 * N - 3 and len(st["damaged"]) == 3
    units = Faulty(SYNTH)
    with pytest.warns(ShiftlensWarning, match="3 record.s. .* damaged"):
        s = run_lens(units, dirs, prompts, out, params={"scale": 0.5}, resume=True,
                     progress=False)
    assert sorted(units.calls) == [(1, "base"), (2, "tuned"), (4, "tuned")]
    assert s.recomputed == 3
    _assert_equal(load_run(out, units=SYNTH), reference["synth"])


def test_two_shards_merged_equal_the_full_run(dirs, prompts, reference, tmp_path):
    out = tmp_path / "run"
    calls = []
    for i in (1, 0):  # any order; each joins the run the other created
        units = Faulty(SYNTH)
        s = _quiet(run_lens, units, dirs, prompts, out, params={"scale": 0.5},
                   shard=f"{i}/2", progress=False)
        assert s.assigned == N and s.computed == N
        assert {k[0] % 2 for k in units.calls} == {i}
        calls += units.calls
    assert s.complete and sorted(calls) == sorted((i, r) for r in ("base", "tuned")
                                                  for i in range(N))
    _assert_equal(load_run(out, units=SYNTH), reference["synth"])


def test_in_memory_pair_and_pair_role(dirs, prompts, reference, tmp_path):
    pair = ModelPair.from_pretrained(*dirs)
    run_lens(SYNTH, pair, prompts, tmp_path / "mem", params={"scale": 0.5}, progress=False)
    _assert_equal(load_run(tmp_path / "mem", units=SYNTH), reference["synth"])
    info = json.loads((tmp_path / "mem" / "run.json").read_text())
    assert info["models"]["base"]["source"] == "memory"
    with pytest.raises(ShiftlensError, match="already loaded"):
        run_lens(SYNTH, pair, prompts, tmp_path / "x", dtype=torch.float64, progress=False)
    # a run made from files is not resumed from memory: the fingerprints are of other kinds
    run_lens(SYNTH, dirs, prompts[:2], tmp_path / "files", progress=False)
    with pytest.raises(ShiftlensError, match=r"models\.base\.source: 'files' \(run\) vs "
                                             r"'memory' \(now\)"):
        run_lens(SYNTH, pair, prompts[:2], tmp_path / "files", resume=True, progress=False)
    units = Faulty(PAIR_SYNTH)
    run_lens(units, dirs, prompts, tmp_path / "pair", params={"scale": 0.5}, progress=False)
    assert units.calls == [(i, "pair") for i in range(N)]
    _assert_equal(load_run(tmp_path / "pair", units=PAIR_SYNTH), reference["pair"])


def test_incompatible_models_are_refused_across_roles(dirs, prompts, tiny_dirs, tmp_path):
    gpt2 = str(tiny_dirs("gpt2")[1])
    with pytest.raises(ShiftlensError, match="incompatible pair"):
        run_lens(SYNTH, (dirs[0], gpt2), prompts[:2], tmp_path / "run", progress=False)


def test_plan_changes_are_refused(dirs, prompts, tmp_path):
    class Renamed(type(SYNTH)):
        def plan(self, pair, prompts, *, scale=1.0):
            p = super().plan(pair, prompts, scale=scale)
            p["extra"] = 1  # what a changed validation would do
            return p

    out = tmp_path / "run"
    with pytest.raises(RuntimeError):
        run_lens(Faulty(SYNTH, crash=(0, "tuned")), dirs, prompts[:2], out, progress=False)
    with pytest.raises(ShiftlensError, match="plan computed now differs"):
        run_lens(Renamed(), dirs, prompts[:2], out, resume=True, progress=False)


# ============================================================================ the command line
@pytest.fixture
def main(monkeypatch):
    """``shiftlens.cli.main`` with ``run``/``merge`` added (until cli.py registers them)."""
    import argparse

    from shiftlens import cli
    from shiftlens.runner.cli import add_commands

    orig = cli.build_parser

    def build():
        p = orig()
        sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
        if "run" not in sub.choices:
            add_commands(sub)
        return p

    monkeypatch.setattr(cli, "build_parser", build)
    return cli.main


def test_cli_shards_status_merge(main, dirs, prompts, reference, tmp_path, capsys):
    import shiftlens
    from shiftlens.prompts import save_prompts

    pfile = save_prompts(prompts, tmp_path / "p.jsonl")
    run = str(tmp_path / "run")
    argv = ["run", "runner_synth:SYNTH", dirs[0], dirs[1], "--prompts", str(pfile),
            "--out", run, "--param", "scale=0.5", "--no-progress"]
    assert main([*argv, "--shard", "1/2"]) == 0
    out = capsys.readouterr().out
    assert f"{N} records computed" in out and "other shards" in out
    assert main(["merge", run, "--status"]) == 0
    assert f"{N} of {2 * N} records done (base {N // 2}, tuned {N // 2}); {N} missing" \
        in capsys.readouterr().out
    assert main(["merge", run]) == 2
    assert "records are missing" in capsys.readouterr().err
    assert main([*argv, "--shard", "0/2"]) == 0
    assert "run complete" in capsys.readouterr().out
    assert main(["merge", run, "--out", str(tmp_path / "res")]) == 0
    assert "saved:" in capsys.readouterr().out
    assert shiftlens.load(tmp_path / "res").differences(reference["synth"]) == []
    assert main(["merge", run]) == 0 and (tmp_path / "run" / "result").is_dir()
    assert main(["run", "--help"]) == 0 and "--gpus-per-worker" in capsys.readouterr().out
    # loading options reach the loader: a device map (here all on the CPU)
    mapped = str(tmp_path / "mapped")
    argv_map = [*argv[:7], mapped, *argv[8:], "--device-map", '{"": "cpu"}']
    assert main(argv_map) == 0
    assert json.loads((tmp_path / "mapped" / "run.json").read_text())["device_type"] == \
        "device_map"
    assert load_run(mapped).differences(reference["synth"]) == []
    assert main([*argv_map, "--resume", "--offload-folder", str(tmp_path / "off"),
                 "--device-map", "x"]) == 2


@pytest.mark.parametrize("extra,msg", [
    (["--param", "scale"], "KEY=VALUE"),
    (["--param", "scale=2", "--resume"], "refusing to resume"),
    (["--param", "scale=0.5"], "pass --resume"),
    (["--param", "scale=-1", "--resume"], "refusing to resume"),
    (["--shard", "2/2"], "0 <= i < N"),
    (["--executor", "ray", "--device", "cuda:1", "--resume", "--param", "scale=0.5"],
     "each worker sees only"),
])
def test_cli_bad_input_exit_2(main, dirs, prompts, tmp_path, capsys, extra, msg):
    from shiftlens.prompts import save_prompts

    pfile = save_prompts(prompts[:2], tmp_path / "p.jsonl")
    argv = ["run", "runner_synth:SYNTH", dirs[0], dirs[1], "--prompts", str(pfile),
            "--out", str(tmp_path / "run"), "--no-progress"]
    assert main([*argv, "--param", "scale=0.5"]) == 0
    capsys.readouterr()
    assert main([*argv, *extra]) == 2
    err = capsys.readouterr().err
    assert msg in err and err.startswith("shiftlens: error:") and "Traceback" not in err


def test_cli_run_reads_any_prompt_format(main, dirs, tmp_path, capsys):
    """``shiftlens run --prompts FILE --format alpaca`` (issue 16): the records are those of the
    prompts load_prompts reads from the file, computed in memory for comparison."""
    import json as _json

    from shiftlens.prompts import load_prompts

    recs = [{"instruction": "Reverse the words.", "input": "red blue green",
             "output": "green blue red"},
            {"instruction": "Count the words.", "input": "", "output": "two"},
            {"instruction": "Sort the words.", "input": "b a", "output": "a b"}]
    f = tmp_path / "alpaca.json"
    f.write_text(_json.dumps(recs), encoding="utf-8")
    run = str(tmp_path / "run")
    assert main(["run", "runner_synth:SYNTH", dirs[0], dirs[1], "--prompts", str(f),
                 "--format", "alpaca", "--out", run, "--param", "scale=0.5",
                 "--no-progress"]) == 0
    assert "alpaca" in capsys.readouterr().out  # the loader says what it read
    want = token_stats(ModelPair.from_pretrained(*dirs), list(load_prompts(f, format="alpaca")),
                       scale=0.5)
    assert load_run(run).differences(want) == []
    assert main(["run", "runner_synth:SYNTH", dirs[0], dirs[1], "--prompts", str(f),
                 "--format", "messages", "--out", str(tmp_path / "r2")]) == 2
