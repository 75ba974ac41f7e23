"""Per-prompt units of the attention lens: what ``shiftlens run attention`` computes.

:data:`INSTRUCTION_ATTENTION_UNITS` follows the runner's unit protocol (``plan`` / ``compute``
/ ``assemble``; :class:`shiftlens.runner.LensUnits`) for
:func:`~shiftlens.lenses.attention.compare.instruction_attention`:

- ``plan`` validates what the function validates (query, alternative, seed, layers, the
  prompts, which of them have instruction tokens) with whatever model is resident;
- ``compute`` is one prompt with one model: :func:`~shiftlens.lenses.attention.core.
  segment_attention` on that prompt alone, the ``[layer, head, segment]`` mass;
- ``assemble`` stacks the masses, excludes and records the prompts whose mass is non-finite
  in either model (:func:`~shiftlens.lenses.attention.compare.drop_nonfinite`, as the
  function does) and runs the same per-head tests
  (:func:`~shiftlens.lenses.attention.compare.head_tests`) into the same
  :class:`~shiftlens.lenses.attention.results.InstructionAttentionResult`.

Records are one prompt each, so the function's ``batch_size`` is not a parameter here: the
Result equals ``instruction_attention(pair, prompts, batch_size=1)`` bit for bit, and a batched
call wherever right padding does not change the kernels' rounding (on CPU, tested on the
embedded pair with the default ``batch_size=8``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from shiftlens.checks import check_choice, check_int, check_layers, check_prompts
from shiftlens.errors import ShiftlensError
from shiftlens.lenses.attention.compare import (
    ALTERNATIVES,
    _split_by_instruction,
    drop_nonfinite,
    head_tests,
)
from shiftlens.lenses.attention.core import QUERIES, segment_attention
from shiftlens.lenses.attention.results import ROLES, InstructionAttentionResult
from shiftlens.prompts import SEGMENTS
from shiftlens.result import make_meta

__all__ = ["InstructionAttentionUnits", "INSTRUCTION_ATTENTION_UNITS"]


class InstructionAttentionUnits:
    """:func:`~shiftlens.lenses.attention.compare.instruction_attention` one (prompt, model)
    record at a time (one model resident).

    Attributes:
        name: ``"attention.instruction_attention"``.
        roles: ``("base", "tuned")``.
        function: The equivalent in-process function.

    Example:
        >>> units = INSTRUCTION_ATTENTION_UNITS
        >>> plan = units.plan(pair, prompts, query="response")  # doctest: +SKIP
        >>> recs = {(i, r): units.compute(plan, r, getattr(pair, r), prompts[i], i)  # doctest: +SKIP
        ...         for i in range(len(prompts)) for r in units.roles}
        >>> units.assemble(plan, prompts, recs).equals(  # doctest: +SKIP
        ...     instruction_attention(pair, prompts, batch_size=1))
        True
    """

    name = "attention.instruction_attention"
    roles: tuple[str, ...] = tuple(ROLES)
    function = "shiftlens.lenses.attention.compare:instruction_attention"

    def plan(
        self,
        pair: Any,
        prompts: Sequence[Any],
        *,
        query: str = "response",
        layers: Sequence[int] | None = None,
        alternative: str = "two-sided",
        ci: bool = True,
        seed: int = 0,
    ) -> dict[str, Any]:
        """Validate as :func:`instruction_attention` does; the plan as plain values.

        Example:
            >>> plan = INSTRUCTION_ATTENTION_UNITS.plan(pair, prompts)  # doctest: +SKIP
        """
        prompts = check_prompts(prompts, who="instruction_attention")
        check_choice("query", query, QUERIES)
        check_choice("alternative", alternative, ALTERNATIVES)
        seed = check_int("seed", seed)
        if not isinstance(ci, bool):
            raise ShiftlensError(f"ci must be True or False, got {ci!r}")
        _, model = next(iter(pair))  # any resident model: the pair shares n_layers
        sel = sorted(check_layers(model, layers))
        kept, ids, excluded = _split_by_instruction(pair, prompts)
        kept_ids = {id(p) for p in kept}
        return {
            "query": query, "layers": sel, "layers_given": layers is not None,
            "alternative": alternative, "ci": ci, "seed": seed,
            "kept": [i for i, p in enumerate(prompts) if id(p) in kept_ids],
            "ids": list(ids), "excluded": list(excluded), "models": dict(pair.names),
            "n_layers": int(model.cfg.n_layers),
        }

    def compute(self, plan: Mapping[str, Any], role: str, model: Any, prompt: Any,
                index: int) -> dict[str, Any]:
        """The ``[layer, head, segment]`` mass of one prompt under one model.

        Example:
            >>> rec = INSTRUCTION_ATTENTION_UNITS.compute(plan, "base", pair.base, p, 0)  # doctest: +SKIP
        """
        check_choice("role", role, self.roles)
        if index not in plan["kept"]:  # no instruction tokens: excluded, nothing to run
            return {"kept": False}
        sa = segment_attention(model, [prompt], plan["query"], layers=plan["layers"],
                               batch_size=1, progress=False, nonfinite="keep")
        return {"kept": True, "mass": sa.mass[0].clone(), "used_last": bool(sa.used_last[0])}

    def assemble(self, plan: Mapping[str, Any], prompts: Sequence[Any],
                 records: Mapping[Any, Mapping[str, Any]]) -> InstructionAttentionResult:
        """The Result from ``{(index, role): record}`` (any order).

        Example:
            >>> res = INSTRUCTION_ATTENTION_UNITS.assemble(plan, prompts, records)  # doctest: +SKIP
        """
        kept = list(plan["kept"])
        missing = [(i, r) for i in kept for r in self.roles if (i, r) not in records]
        if missing:
            raise ShiftlensError(f"{len(missing)} records missing, first: {missing[:3]}")
        mass = torch.stack([torch.stack([records[(i, r)]["mass"] for i in kept])
                            for r in self.roles])
        sel = list(plan["layers"])
        used = [records[(i, self.roles[0])]["used_last"] for i in kept]
        mass, ids, used, cells = drop_nonfinite(mass, list(plan["ids"]), used, sel,
                                                dict(plan["models"]))
        meta = make_meta(models=plan["models"], seed=plan["seed"], params={
            "query": plan["query"], "layers": sel if plan["layers_given"] else None,
            "alternative": plan["alternative"], "ci": plan["ci"]},
            n_layers=plan["n_layers"], segments=list(SEGMENTS))
        return InstructionAttentionResult(
            mass=mass, layers=sel, prompt_ids=ids, used_last=used,
            excluded=list(plan["excluded"]),
            tests=head_tests(mass, sel, alternative=plan["alternative"], ci=plan["ci"],
                             seed=plan["seed"]),
            nonfinite=cells, meta=meta)

    def __repr__(self) -> str:
        return f"InstructionAttentionUnits({self.name!r})"


#: The attention lens's units (``LensSpec(units=...)``).
INSTRUCTION_ATTENTION_UNITS = InstructionAttentionUnits()
