"""A synthetic lens for the runner tests (importable by Ray workers), and the protocol helpers.

``SYNTH``: per (prompt, model) record = the log-probability of every next prompt token under
that model (a deterministic forward pass), its mean, the argmax at the last position, a NaN and
a tuple (to exercise the encoder). ``PAIR_SYNTH``: the same per prompt with both models at once
(role ``"pair"``): the log-probability difference tuned - base. ``token_stats`` is the
in-process reference: plan, compute and assemble in memory, no run directory.

``Faulty`` wraps any units to count computations (in memory and in a file, so Ray workers can
count too), raise at one unit (a crash) or kill its process at one unit once (``os._exit``, as
an out-of-memory kill would).
"""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from shiftlens.errors import ShiftlensError
from shiftlens.result import Result, make_meta


# ============================================================================ the synthetic lens
@dataclass(eq=False, repr=False)
class TokenStatsResult(Result):
    frame: pd.DataFrame
    logprobs: dict[str, list[torch.Tensor]]
    meta: dict[str, Any] = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        return self.frame.copy()

    def summary(self) -> dict[str, Any]:
        return {"sentence": f"{len(self.frame)} prompts"}

    def plot(self, **opts: Any) -> Any:
        raise NotImplementedError


def _next_token_logprobs(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        logits = model(tokens[None])[0].float()
    lp = logits.log_softmax(-1)
    return lp[:-1].gather(-1, tokens[1:, None])[:, 0]


class TokenStats:
    """Per-model synthetic units."""

    name = "synthetic.token_stats"
    roles = ("base", "tuned")
    function = "test_runner_units:token_stats"

    def plan(self, pair: Any, prompts: list[Any], *, scale: float = 1.0) -> dict[str, Any]:
        if not scale > 0:
            raise ShiftlensError(f"scale must be > 0, got {scale}")
        from shiftlens.checks import prompt_id

        return {"ids": tuple(prompt_id(p, i) for i, p in enumerate(prompts)),
                "tokens": tuple(pair.tokenize(p).tokens for p in prompts),
                "scale": float(scale), "models": dict(pair.names)}

    def compute(self, plan: Any, role: str, model: Any, prompt: Any, index: int) -> dict:
        lp = _next_token_logprobs(model, plan["tokens"][index]) * plan["scale"]
        return {"id": plan["ids"][index], "logprobs": lp, "mean": float(lp.double().mean()),
                "top": int(lp.argmax()), "nan": float("nan"), "pair": (index, role)}

    def assemble(self, plan: Any, prompts: list[Any], records: Any) -> TokenStatsResult:
        rows = []
        for i, p in enumerate(prompts):
            row = {"id": plan["ids"][i], "category": p.category}
            for role in self.roles:
                r = records[(i, role)]
                assert r["pair"] == (i, role) and isinstance(r["pair"], tuple)
                assert r["nan"] != r["nan"]
                row.update({f"{role}_mean": r["mean"], f"{role}_top": r["top"]})
            rows.append(row)
        lps = {role: [records[(i, role)]["logprobs"] for i in range(len(prompts))]
               for role in self.roles}
        meta = make_meta(models=plan["models"], seed=0, params={"scale": plan["scale"]})
        return TokenStatsResult(pd.DataFrame(rows), lps, meta)


class PairStats(TokenStats):
    """The same, one record per prompt computed with both models at once."""

    name = "synthetic.pair_stats"
    roles = ("pair",)

    def compute(self, plan: Any, role: str, model: Any, prompt: Any, index: int) -> dict:
        assert role == "pair"
        t = plan["tokens"][index]
        d = _next_token_logprobs(model.tuned, t) - _next_token_logprobs(model.base, t)
        return {"diff": d * plan["scale"], "mean": float(d.double().mean())}

    def assemble(self, plan: Any, prompts: list[Any], records: Any) -> TokenStatsResult:
        rows = [{"id": plan["ids"][i], "mean": records[(i, "pair")]["mean"]}
                for i in range(len(prompts))]
        lps = {"diff": [records[(i, "pair")]["diff"] for i in range(len(prompts))]}
        return TokenStatsResult(pd.DataFrame(rows), lps,
                                make_meta(models=plan["models"], seed=0, params={}))


SYNTH = TokenStats()
PAIR_SYNTH = PairStats()


def token_stats(pair: Any, prompts: list[Any], *, units: Any = SYNTH, **params: Any) -> Any:
    """The in-process reference: every record in memory, in prompt-major order."""
    plan = units.plan(pair, prompts, **params)
    if units.roles == ("pair",):
        recs = {(i, "pair"): units.compute(plan, "pair", pair, p, i)
                for i, p in enumerate(prompts)}
    else:
        recs = {(i, role): units.compute(plan, role, model, p, i)
                for i, p in enumerate(prompts) for role, model in pair}
    return units.assemble(plan, prompts, recs)


class Faulty:
    """Wrap units: count computations, crash (raise) or die (``os._exit``) at one unit."""

    def __init__(self, inner: Any, *, crash: tuple[int, str] | None = None,
                 die: tuple[int, str] | None = None, marker: str | None = None,
                 count_file: str | None = None) -> None:
        self.inner, self.crash, self.die, self.marker = inner, crash, die, marker
        self.count_file = count_file
        self.name, self.roles, self.function = inner.name, inner.roles, inner.function
        self.calls: list[tuple[int, str]] = []
        self.models: list[tuple[str, Any]] = []
        self.plan = inner.plan  # the inner signature: the runner binds its parameters

    def compute(self, plan: Any, role: str, model: Any, prompt: Any, index: int) -> Any:
        if self.crash == (index, role):
            raise RuntimeError(f"injected crash at prompt {index} ({role})")
        if self.die == (index, role) and self.marker and os.path.exists(self.marker):
            os.remove(self.marker)
            os._exit(1)  # the process dies mid-unit, as under an OOM kill
        rec = self.inner.compute(plan, role, model, prompt, index)
        self.calls.append((index, role))
        self.models.append((role, weakref.ref(model)))
        if self.count_file:
            with open(self.count_file, "a") as f:
                f.write(f"{index} {role} {os.getpid()}\n")
        return rec

    def assemble(self, plan: Any, prompts: list[Any], records: Any) -> Any:
        return self.inner.assemble(plan, prompts, records)


def read_counts(path: str | Path) -> list[tuple[int, str]]:
    """The ``(index, role)`` lines a Faulty count file holds."""
    p = Path(path)
    if not p.exists():
        return []
    return [(int(a), b) for a, b, _ in (line.split() for line in p.read_text().splitlines())]


# ============================================================================ protocol helpers
def test_units_protocol_and_resolution():
    from shiftlens.runner import LensUnits, resolve_units

    assert isinstance(SYNTH, LensUnits)
    units, ref = resolve_units("test_runner_units:SYNTH")
    assert units is SYNTH and ref == "test_runner_units:SYNTH"
    units, ref = resolve_units(SYNTH)  # an object: found again under its module name
    assert units is SYNTH and ref == "test_runner_units:SYNTH"
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
