"""The runner's unit protocol, record format, fingerprints and scheduler (synthetic lens in
tests/runner_synth.py)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from runner_synth import PAIR_SYNTH, SYNTH, Faulty, TokenStats, read_counts, token_stats  # noqa: F401

from shiftlens.errors import ShiftlensError
from shiftlens.result import Result, make_meta  # noqa: F401


def test_units_protocol_and_resolution():
    from shiftlens.runner import LensUnits, resolve_units

    assert isinstance(SYNTH, LensUnits)
    units, ref = resolve_units("runner_synth:SYNTH")
    assert units is SYNTH and ref == "runner_synth:SYNTH"
    units, ref = resolve_units(SYNTH)  # an object: found again under its module name
    assert units is SYNTH and ref == "runner_synth:SYNTH"
    _, ref = resolve_units(Faulty(SYNTH))
    assert ref is None
    with pytest.raises(ShiftlensError, match="not a LensUnits"):
        resolve_units(object())
    with pytest.raises(ShiftlensError, match="unknown lens"):
        resolve_units("no_such_lens")

    class BadRoles(TokenStats):
        roles = ("base",)

    with pytest.raises(ShiftlensError, match="roles"):
        resolve_units(BadRoles())


def test_bind_params_full_set_and_unknown_names():
    from shiftlens.runner import bind_params

    assert bind_params(SYNTH, None) == {"scale": 1.0}
    assert bind_params(SYNTH, {"scale": 2}) == {"scale": 2}
    with pytest.raises(ShiftlensError, match=r"unknown parameter\(s\) sclae; accepted: scale"):
        bind_params(SYNTH, {"sclae": 2})


def test_unit_keys_role_major():
    from shiftlens.runner import unit_keys

    assert unit_keys(("base", "tuned"), 2) == [(0, "base"), (1, "base"), (0, "tuned"),
                                              (1, "tuned")]
    assert unit_keys(("pair",), 2) == [(0, "pair"), (1, "pair")]


def test_parse_shard(monkeypatch):
    from shiftlens.runner import parse_shard

    assert parse_shard("0/1") == (0, 1) and parse_shard([2, 3]) == (2, 3)
    for bad in ("3/3", "1", "a/b", "-1/2", (1,), (True, 2)):
        with pytest.raises(ShiftlensError):
            parse_shard(bad)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "5")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "4")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
    assert parse_shard("slurm") == (1, 3)
    monkeypatch.delenv("SLURM_ARRAY_TASK_COUNT")
    with pytest.raises(ShiftlensError, match="job array"):
        parse_shard("slurm")


def test_payload_round_trip_and_damage():
    from shiftlens.runner import decode_payload, encode_payload

    value = {"t": torch.arange(6, dtype=torch.float32).reshape(2, 3)[1], "b": torch.ones(2) > 0,
             "bf": torch.ones(3, dtype=torch.bfloat16), "nan": float("nan"), "tup": (1, "a"),
             "keys": {(0, "base"): 1.5}, "none": None, "s": "x", "order": {"z": 1, "a": 2}}
    data = encode_payload(value, {"format": "demo", "n": 1})
    header, got = decode_payload(data)
    assert header == {"format": "demo", "n": 1}
    assert torch.equal(got["t"], value["t"]) and got["b"].dtype == torch.bool
    assert got["bf"].dtype == torch.bfloat16 and got["nan"] != got["nan"]
    assert got["tup"] == (1, "a") and got["keys"] == {(0, "base"): 1.5} and got["none"] is None
    assert list(got) == list(value) and list(got["order"]) == ["z", "a"]  # key order kept
    with pytest.raises(ShiftlensError, match="truncated"):
        decode_payload(data[: len(data) // 2])
    flipped = bytearray(data)
    flipped[-3] ^= 0xFF  # a tensor byte
    with pytest.raises(ShiftlensError, match="SHA-256"):
        decode_payload(bytes(flipped))
    with pytest.raises(ShiftlensError, match="not tables"):
        encode_payload({"f": pd.DataFrame({"a": [1]})}, {})


def test_model_fingerprints_tell_fine_tunes_apart(tiny_dirs, tmp_path):
    import shutil

    from shiftlens.runner import model_fingerprint
    from shiftlens.testing import perturbed_copy

    base, tuned = tiny_dirs("llama")
    fb, ft = model_fingerprint(base), model_fingerprint(tuned)
    assert fb["source"] == "files" and fb["fingerprint"] != ft["fingerprint"]
    other = perturbed_copy(base, tmp_path / "other", scale=0.05, seed=7)  # another fine-tune
    assert model_fingerprint(other)["fingerprint"] not in (fb["fingerprint"], ft["fingerprint"])
    copy = shutil.copytree(tuned, tmp_path / "copy")  # the same weights elsewhere
    assert model_fingerprint(copy) == ft
    from shiftlens.pair import load_bridge

    mb, mt = load_bridge(base), load_bridge(tuned)
    assert model_fingerprint(mb)["source"] == "memory"
    assert model_fingerprint(mb) == model_fingerprint(load_bridge(base))
    assert model_fingerprint(mb) != model_fingerprint(mt)


def test_pair_view_tokenizes_like_the_pair(llama_pair):
    from shiftlens.prompts import default_prompts
    from shiftlens.runner import PairView, pair_signature

    view = PairView(llama_pair.names, {"tuned": llama_pair.tuned})
    assert [r for r, _ in view] == ["tuned"]
    for p in default_prompts()[:3]:
        a, b = view.tokenize(p, response="ok"), llama_pair.tokenize(p, response="ok")
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.segments, b.segments)
    assert pair_signature(llama_pair.base) == pair_signature(llama_pair.tuned)
    with pytest.raises(ShiftlensError):
        PairView(llama_pair.names, {})


@pytest.mark.parametrize("name", ["shiftlens.runner.units", "shiftlens.runner.store",
                                  "shiftlens.runner.execute", "shiftlens.runner.fingerprint",
                                  "shiftlens.runner.cli"])
def test_doctests(name):
    import doctest
    import importlib

    res = doctest.testmod(importlib.import_module(name),
                          optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert res.attempted > 0 and res.failed == 0


def test_ray_scheduler_spreads_roles_and_switches_only_when_it_pays():
    from shiftlens.runner.distributed import _Scheduler

    now = [0.0]
    todo = [(i, r) for r in ("base", "tuned") for i in range(4)]
    s = _Scheduler(todo, ("base", "tuned"), 2, clock=lambda: now[0])
    s.holds[0] = "base"  # the planning actor
    assert s.take(0) == (0, "base") and s.take(1) == (0, "tuned")  # one role each
    assert s.idle() == []
    for _ in range(3):  # plain records take 1 s; actor 1's first record loaded its model: 11 s
        now[0] += 1
        s.done(0)
        assert s.take(0)[1] == "base"
    now[0] += 8
    s.done(1)
    assert s.compute_times == [1, 1, 1] and s.load_times == [11]
    assert s.take(1) == (1, "tuned")
    now[0] += 1
    s.done(0)  # base is done; 2 tuned records left, held by actor 1: a 10 s load does not pay
    assert s.take(0) is None and s.idle() == [0]
    s.load_times = [1.2]  # a cheap load: switching pays (0.2 s < 2 records x 1 s / 2)
    assert s.take(0) == (2, "tuned")
    s.dead(1, (1, "tuned"))  # actor 1 stays dead: its record goes back to the front
    assert s.alive == {0} and s.queues["tuned"][0] == 1 and s.holds[1] is None
    now[0] += 1
    s.done(0)
    assert s.take(0) == (1, "tuned") and s.pending() == 1
