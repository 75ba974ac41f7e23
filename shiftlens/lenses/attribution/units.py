"""Per-prompt units of the attribution lens: what ``shiftlens run attribution`` computes.

:data:`SENSITIVITY_UNITS` follows the runner's unit protocol (``plan`` / ``compute`` /
``assemble``, see ``shiftlens.runner.units.LensUnits``) on top of the three public steps of
:func:`~shiftlens.lenses.attribution.compare.instruction_sensitivity`:
:func:`~shiftlens.lenses.attribution.compare.validate_sensitivity`,
:func:`~shiftlens.lenses.attribution.compare.accumulate_sensitivity` (one record per prompt and
model; only that model needs to be loaded) and
:func:`~shiftlens.lenses.attribution.compare.assemble_sensitivity`. Plans and records travel as
plain values (``to_dict`` / ``from_dict``), so a run directory can save them and a merge needs
no model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from shiftlens.errors import ShiftlensError
from shiftlens.generate import DEFAULT_MAX_NEW_TOKENS
from shiftlens.lenses.attribution.compare import (
    SensitivityPlan,
    SensitivityRecord,
    accumulate_sensitivity,
    assemble_sensitivity,
    validate_sensitivity,
)
from shiftlens.lenses.attribution.results import ROLES, SensitivityResult

__all__ = ["SensitivityUnits", "SENSITIVITY_UNITS"]


class SensitivityUnits:
    """:func:`~shiftlens.lenses.attribution.compare.instruction_sensitivity` one (prompt, model)
    record at a time.

    Attributes:
        name: ``"attribution.instruction_sensitivity"``.
        roles: ``("base", "tuned")``: one record per prompt and model, one model resident.
        function: The equivalent in-process function.

    Example:
        >>> units = SENSITIVITY_UNITS
        >>> plan = units.plan(pair, prompts, max_new_tokens=12)  # doctest: +SKIP
        >>> recs = {(i, r): units.compute(plan, r, getattr(pair, r), prompts[i], i)  # doctest: +SKIP
        ...         for i in range(len(prompts)) for r in units.roles}
        >>> units.assemble(plan, prompts, recs).equals(  # doctest: +SKIP
        ...     instruction_sensitivity(pair, prompts, max_new_tokens=12))
        True
    """

    name = "attribution.instruction_sensitivity"
    roles: tuple[str, ...] = ROLES
    function = "shiftlens.lenses.attribution.compare:instruction_sensitivity"

    def plan(
        self,
        pair: Any,
        prompts: Sequence[Any],
        *,
        response: str | Sequence[str | None] = "generate",
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        mode: str = "auto",
        chunk_size: int = 16,
        levels: int = 10,
        threshold: int = 7,
        p: float | int = 4,
        alternative: str = "two-sided",
        seed: int = 0,
    ) -> dict[str, Any]:
        """Validate (:func:`validate_sensitivity`); the plan as plain values.

        Example:
            >>> plan = SENSITIVITY_UNITS.plan(pair, prompts)  # doctest: +SKIP
        """
        return validate_sensitivity(
            pair, prompts, response=response, max_new_tokens=max_new_tokens, mode=mode,
            chunk_size=chunk_size, levels=levels, threshold=threshold, p=p,
            alternative=alternative, seed=seed,
        ).to_dict()

    def compute(self, plan: Mapping[str, Any], role: str, model: Any, prompt: Any,
                index: int) -> dict[str, Any]:
        """One record (:func:`accumulate_sensitivity`) as plain values.

        Example:
            >>> rec = SENSITIVITY_UNITS.compute(plan, "base", pair.base, prompts[0], 0)  # doctest: +SKIP
        """
        sp = SensitivityPlan.from_dict(plan)
        if not 0 <= index < len(sp) or sp.prompts[index].to_dict() != prompt.to_dict():
            raise ShiftlensError(f"prompt {index} is not the plan's prompt {index}")
        return accumulate_sensitivity(model, sp, index, role).to_dict()

    def assemble(self, plan: Mapping[str, Any], prompts: Sequence[Any],
                 records: Mapping[Any, Mapping[str, Any]]) -> SensitivityResult:
        """The Result (:func:`assemble_sensitivity`) from ``{(index, role): record}``.

        Example:
            >>> res = SENSITIVITY_UNITS.assemble(plan, prompts, records)  # doctest: +SKIP
        """
        return assemble_sensitivity(SensitivityPlan.from_dict(plan),
                                    [SensitivityRecord.from_dict(r) for r in records.values()])

    def __repr__(self) -> str:
        return f"SensitivityUnits({self.name!r})"


#: The attribution lens's units (``LensSpec(units=...)``).
SENSITIVITY_UNITS = SensitivityUnits()
