"""Per-prompt units of the residual lens: what ``shiftlens run residual.similarity`` computes.

:data:`SIMILARITY_UNITS` follows the runner's unit protocol (``plan`` / ``compute`` /
``assemble``; :class:`shiftlens.runner.LensUnits`) for
:func:`~shiftlens.lenses.residual.compare.similarity`. A record compares the two models'
residual streams on one prompt, so it needs both models at once: its role is ``"pair"`` (the
runner loads a :class:`~shiftlens.pair.ModelPair`; resume, shards and Ray still apply).

- ``plan`` validates what :func:`similarity` validates (the pair, prompts, hooks, layers,
  ``n_boot``, ``seed``);
- ``compute`` captures one prompt in both models and returns its rows (cosine and CKA per
  layer, hook and segment) and, with ``per_token``, its per-position cosines as columns;
- ``assemble`` concatenates them in prompt order into the same
  :class:`~shiftlens.lenses.residual.results.SimilarityResult`.

Records are one prompt each, so the function's ``batch_size`` is not a parameter: the Result
equals ``similarity(pair, prompts, batch_size=1)`` bit for bit, and a batched call wherever right
padding does not change the kernels' rounding (on CPU, tested on the embedded pair with the
default ``batch_size=8``). :data:`UNITS` maps each runnable function of the lens to its units
(``output_shift`` is not one yet: its rising-token counts are float64 sums accumulated across
prompts in batch order, which per-prompt records would reorder).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from shiftlens.capture import run_hooks_batched
from shiftlens.checks import check_choice, pad_token_id, prompt_id
from shiftlens.errors import ShiftlensError
from shiftlens.lenses.residual.common import NonFinite, nonfinite_error
from shiftlens.lenses.residual.compare import (
    _common,
    _names,
    _prompt_similarity,
    _SimilarityPlan,
    _token_frame,
    _tokenize,
)
from shiftlens.lenses.residual.core import RESID_HOOKS, hook_name
from shiftlens.lenses.residual.results import SimilarityResult
from shiftlens.result import make_meta

__all__ = ["SimilarityUnits", "SIMILARITY_UNITS", "UNITS"]


def _columns(df: pd.DataFrame) -> dict[str, Any]:
    """A per-token frame as columns the runner saves (text as lists, numbers as arrays)."""
    return {c: (df[c].tolist() if df[c].dtype.kind not in "iufb" else df[c].to_numpy().copy())
            for c in df.columns}


class SimilarityUnits:
    """:func:`~shiftlens.lenses.residual.compare.similarity` one prompt (both models) at a time.

    Attributes:
        name: ``"residual.similarity"``.
        roles: ``("pair",)``: each record reads both models.
        function: The equivalent in-process function.

    Example:
        >>> units = SIMILARITY_UNITS
        >>> plan = units.plan(pair, prompts, per_token=True)  # doctest: +SKIP
        >>> recs = {(i, "pair"): units.compute(plan, "pair", pair, p, i)  # doctest: +SKIP
        ...         for i, p in enumerate(prompts)}
        >>> units.assemble(plan, prompts, recs).equals(  # doctest: +SKIP
        ...     similarity(pair, prompts, per_token=True, batch_size=1))
        True
    """

    name = "residual.similarity"
    roles: tuple[str, ...] = ("pair",)
    function = "shiftlens.lenses.residual.compare:similarity"

    def plan(
        self,
        pair: Any,
        prompts: Sequence[Any],
        *,
        hooks: Sequence[str] = RESID_HOOKS,
        layers: Sequence[int] | None = None,
        with_reference: bool = True,
        per_token: bool = False,
        n_boot: int = 2000,
        seed: int = 0,
    ) -> dict[str, Any]:
        """Validate as :func:`similarity` does; the plan as plain values.

        Example:
            >>> plan = SIMILARITY_UNITS.plan(pair, prompts)  # doctest: +SKIP
        """
        ps, ls = _common(pair, prompts, 1, n_boot, seed, layers, with_reference=with_reference,
                         per_token=per_token)
        hs = _names(hooks, RESID_HOOKS, "residual hook")
        return {
            "layers": list(ls), "hooks": list(hs), "with_reference": bool(with_reference),
            "per_token": bool(per_token), "n_boot": n_boot, "seed": seed,
            "ids": [prompt_id(p, i) for i, p in enumerate(ps)], "models": dict(pair.names),
            "n_layers": int(pair.cfg.n_layers),
        }

    def compute(self, plan: Mapping[str, Any], role: str, model: Any, prompt: Any,
                index: int) -> dict[str, Any]:
        """One prompt's rows (and per-position cosines) from both models of ``model``.

        Example:
            >>> rec = SIMILARITY_UNITS.compute(plan, "pair", pair, prompts[0], 0)  # doctest: +SKIP
        """
        check_choice("role", role, self.roles)
        pair = model
        sites = [(layer, h, hook_name(h, layer)) for layer in plan["layers"]
                 for h in plan["hooks"]]
        tp = _tokenize(pair, [prompt], plan["with_reference"])[0]
        names = [n for _, _, n in sites]
        pad = pad_token_id(pair.tokenizer)
        acts = {r: run_hooks_batched(m, [tp], names, batch_size=1, reduce=None, progress=False,
                                     pad_id=pad) for r, m in pair}
        sp = _SimilarityPlan(list(plan["layers"]), list(plan["hooks"]), sites, [tp],
                             [plan["ids"][index]])
        try:
            rows, parts = _prompt_similarity(sp, tp, plan["ids"][index],
                                             {r: {n: a[n][0] for n in names}
                                              for r, a in acts.items()}, plan["per_token"])
        except NonFinite as e:  # the same diagnosis as similarity() gives
            raise nonfinite_error(pair, e) from None
        return {"rows": rows, "tokens": [_columns(df) for df in parts]}

    def assemble(self, plan: Mapping[str, Any], prompts: Sequence[Any],
                 records: Mapping[Any, Mapping[str, Any]]) -> SimilarityResult:
        """The Result from ``{(index, "pair"): record}`` (any order).

        Example:
            >>> res = SIMILARITY_UNITS.assemble(plan, prompts, records)  # doctest: +SKIP
        """
        n = len(plan["ids"])
        missing = [i for i in range(n) if (i, "pair") not in records]
        if missing:
            raise ShiftlensError(f"{len(missing)} records missing, first prompts: {missing[:3]}")
        rows = [row for i in range(n) for row in records[(i, "pair")]["rows"]]
        parts = [pd.DataFrame(cols) for i in range(n) for cols in records[(i, "pair")]["tokens"]]
        res = SimilarityResult(
            pd.DataFrame(rows), _token_frame(parts),
            make_meta(models=plan["models"], seed=plan["seed"], params=dict(
                layers=list(plan["layers"]), hooks=list(plan["hooks"]),
                with_reference=plan["with_reference"], per_token=plan["per_token"],
                n_boot=plan["n_boot"]), n_layers=plan["n_layers"], prompt_ids=list(plan["ids"])))
        res.validate()
        return res

    def __repr__(self) -> str:
        return f"SimilarityUnits({self.name!r})"


#: The residual lens's ``similarity`` units.
SIMILARITY_UNITS = SimilarityUnits()
#: Every runnable function of the residual lens (``LensSpec(units=...)``; the first is the
#: default of ``shiftlens run residual``).
UNITS: dict[str, SimilarityUnits] = {"similarity": SIMILARITY_UNITS}
