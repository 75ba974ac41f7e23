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
    function = "runner_synth:token_stats"

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
