"""The unit protocol: how a lens tells the runner what one (prompt, role) record is.

A lens that can be run prompt by prompt exposes a :class:`LensUnits` object (registered as
``LensSpec(units="module:OBJECT")``). The runner never looks inside a record; it calls three
methods:

1. ``plan(pair, prompts, **params)`` - validate every input and normalise the parameters
   before any record is computed; the plan is a value the Result encoder can save (JSON-safe
   values, tuples, dicts, tensors, prompts). It is saved once in the run directory, so merging
   needs no model.
2. ``compute(plan, role, model, prompt, index)`` - one record: a dict of the same kinds of
   values. ``role`` is ``"base"`` or ``"tuned"`` for per-model units (``model`` is that
   model's ``TransformerBridge``; only one needs to be resident) or ``"pair"`` for units that
   need both models at once (``model`` is the :class:`~shiftlens.pair.ModelPair`).
3. ``assemble(plan, prompts, records)`` - the Result from ``{(index, role): record}``; it must
   equal the in-process function's Result whatever order the records were computed in.

``pair`` in ``plan`` is what is loaded when the plan is made: a :class:`~shiftlens.pair.
ModelPair`, or a :class:`PairView` (names, the shared tokenizer, the config and whichever
models are resident) when the runner loads one model at a time.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from shiftlens.errors import ShiftlensError

__all__ = [
    "MODEL_ROLES",
    "PAIR_ROLE",
    "LensUnits",
    "PairView",
    "resolve_units",
    "bind_params",
    "unit_keys",
]

#: Roles of per-model units, in the order the runner computes them (role-major).
MODEL_ROLES: tuple[str, str] = ("base", "tuned")
#: The one role of units that need both models at once (e.g. cross-model patching).
PAIR_ROLE = "pair"


@runtime_checkable
class LensUnits(Protocol):
    """What a lens gives the runner to compute its Result one (prompt, role) record at a time.

    Attributes:
        name: A stable name for run directories and messages (``"attribution.
            instruction_sensitivity"``).
        roles: ``("base", "tuned")`` for per-model records (the runner keeps one model resident
            at a time) or ``("pair",)`` for records that need both models.
        function: ``"module:function"`` of the equivalent in-process function (recorded in
            ``run.json``; the runner's Result equals that function's).

    Example:
        >>> class Lengths:  # one record per (prompt, model): the prompt's token count
        ...     name, roles, function = "demo.lengths", ("base", "tuned"), "mypkg:lengths"
        ...     def plan(self, pair, prompts, *, scale=1):
        ...         return {"scale": scale, "names": dict(pair.names)}
        ...     def compute(self, plan, role, model, prompt, index):
        ...         return {"n": plan["scale"] * len(model.to_tokens(prompt.text)[0])}
        ...     def assemble(self, plan, prompts, records):
        ...         return ...  # a Result built from records[(i, role)]["n"]
        >>> isinstance(Lengths(), LensUnits)
        True
    """

    name: str
    roles: tuple[str, ...]
    function: str

    def plan(self, pair: Any, prompts: Sequence[Any], **params: Any) -> Any:
        """Validate and normalise; return the plan (a value the Result encoder saves)."""
        ...

    def compute(self, plan: Any, role: str, model: Any, prompt: Any, index: int) -> Any:
        """One record: a dict of JSON-safe values and tensors."""
        ...

    def assemble(self, plan: Any, prompts: Sequence[Any], records: Mapping[Any, Any]) -> Any:
        """The Result from ``{(index, role): record}`` for every unit."""
        ...


class PairView:
    """What a plan sees of the pair while the runner holds one model at a time.

    It answers the questions a plan asks a :class:`~shiftlens.pair.ModelPair` before any model
    runs (names, tokenizer, config, tokenization with segment labels) and iterates over the
    models that are resident now (one, or both).

    Attributes:
        names: ``{"base": ..., "tuned": ...}`` as the Result will record them.
        models: The resident models by role (a subset of ``base``/``tuned``).
        tokenizer: The shared tokenizer (the resident model's).
        cfg: The resident model's TransformerLens config.

    Example:
        >>> view = PairView({"base": "b", "tuned": "t"}, {"base": model})  # doctest: +SKIP
        >>> view.tokenize(prompt).n_prompt  # doctest: +SKIP
        9
    """

    def __init__(self, names: Mapping[str, str], models: Mapping[str, Any]) -> None:
        if not models:
            raise ShiftlensError("a PairView needs at least one resident model")
        bad = sorted(set(models) - set(MODEL_ROLES))
        if bad:
            raise ShiftlensError(f"PairView roles must be 'base'/'tuned', got {bad}")
        self.names = {r: str(names[r]) for r in MODEL_ROLES}
        self.models = dict(models)
        first = self.models[next(r for r in MODEL_ROLES if r in self.models)]
        if getattr(first, "tokenizer", None) is None:
            raise ShiftlensError("the resident model has no tokenizer")
        self.tokenizer = first.tokenizer
        self.cfg = first.cfg

    @property
    def prepend_bos(self) -> bool:
        """Whether prompts get a BOS token (``cfg.default_prepend_bos``)."""
        return bool(self.cfg.default_prepend_bos)

    def tokenize(self, prompt: Any, response: str | None = None) -> Any:
        """Tokenize exactly as :meth:`shiftlens.pair.ModelPair.tokenize` does.

        Example:
            >>> tp = view.tokenize(prompt, response="ok")  # doctest: +SKIP
        """
        from shiftlens.prompts import InstructionPrompt, tokenize_prompt

        if not isinstance(prompt, InstructionPrompt):
            raise ShiftlensError(f"expected an InstructionPrompt, got {type(prompt).__name__}")
        return tokenize_prompt(
            self.tokenizer, prompt, prepend_bos=self.prepend_bos, response=response,
            n_ctx=self.cfg.n_ctx,
            model_name=f"{self.names['base']!r}/{self.names['tuned']!r}",
        )

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        for role in MODEL_ROLES:
            if role in self.models:
                yield role, self.models[role]

    def __repr__(self) -> str:
        return (f"PairView(base={self.names['base']!r}, tuned={self.names['tuned']!r}, "
                f"resident={list(self.models)})")


def _check_units(units: Any, where: str) -> Any:
    missing = [m for m in ("plan", "compute", "assemble") if not callable(getattr(units, m, None))]
    if missing:
        raise ShiftlensError(f"{where} is not a LensUnits object (no {', '.join(missing)} "
                             "method); see docs/scale.md")
    name = getattr(units, "name", None)
    if not isinstance(name, str) or not name:
        raise ShiftlensError(f"{where}: LensUnits.name must be a non-empty string")
    roles = getattr(units, "roles", None)
    if not isinstance(roles, tuple) or roles not in (MODEL_ROLES, (PAIR_ROLE,)):
        raise ShiftlensError(f"{where}: LensUnits.roles must be {MODEL_ROLES} or "
                             f"({PAIR_ROLE!r},), got {roles!r}")
    return units


def _ref_of(units: Any) -> str | None:
    """``"module:NAME"`` under which ``units`` is importable (None when it is not)."""
    mod = sys.modules.get(type(units).__module__)
    for name, value in vars(mod).items() if mod is not None else ():
        if value is units and not name.startswith("__"):
            return f"{mod.__name__}:{name}"
    return None


def resolve_units(lens: Any) -> tuple[Any, str | None]:
    """The :class:`LensUnits` of a lens, and the reference that finds it again.

    Args:
        lens: A registered lens name (``"attribution"``), ``"lens.function"`` for a lens with
            several per-prompt functions (``"residual.output_shift"``), a ``"module:object"``
            reference, or a LensUnits object.

    Returns:
        ``(units, ref)``: ``ref`` is the string :func:`load_run` resolves later (None for an
        object that no module exports).

    Raises:
        ShiftlensError: unknown lens, a lens without units, or an object that is not LensUnits.

    Example:
        >>> units, ref = resolve_units("attribution")  # doctest: +SKIP
        >>> units.name, ref  # doctest: +SKIP
        ('attribution.instruction_sensitivity', 'attribution')
    """
    from shiftlens.lenses.registry import get_lens, registered_lenses, resolve_ref

    if not isinstance(lens, str):
        return _check_units(lens, f"{type(lens).__name__} object"), _ref_of(lens)
    if ":" in lens:
        try:
            obj = resolve_ref(lens)
        except (ImportError, AttributeError) as e:
            raise ShiftlensError(f"cannot import lens units {lens!r}: {e}") from e
        if isinstance(obj, Mapping):
            raise ShiftlensError(f"{lens!r} holds the units of several functions "
                                 f"({', '.join(map(str, obj))}); name one of them (module:OBJECT "
                                 "of that function's units, or LENS.FUNCTION of a registered "
                                 "lens)")
        return _check_units(obj, repr(lens)), lens
    name, _, function = lens.partition(".")
    spec = get_lens(name)
    if not spec.units:
        runnable = [n for n, s in registered_lenses().items() if s.units]
        raise ShiftlensError(f"lens {name!r} cannot be run prompt by prompt (no units); lenses "
                             f"that can: {', '.join(runnable) or 'none yet'}")
    obj = resolve_ref(spec.units)
    if isinstance(obj, Mapping):
        if not obj:
            raise ShiftlensError(f"lens {name!r} registers no units")
        function = function or next(iter(obj))
        if function not in obj:
            raise ShiftlensError(f"lens {name!r} has no per-prompt function {function!r}; "
                                 f"choose from {', '.join(obj)}")
        return _check_units(obj[function], f"lens {lens!r}"), f"{name}.{function}"
    if function and function != getattr(obj, "name", "").rpartition(".")[2]:
        raise ShiftlensError(f"lens {name!r} has one per-prompt function, "
                             f"{getattr(obj, 'name', '?')!r}, not {function!r}")
    return _check_units(obj, f"lens {name!r}"), name


def bind_params(units: Any, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """Every parameter of ``units.plan`` by name, the given ones over the defaults.

    The full set (defaults included) is what a run directory records, so a resumed run that
    would use another default (a newer release) is refused like one with another value.

    Raises:
        ShiftlensError: an unknown parameter (the message lists the accepted ones) or a
            required one missing.

    Example:
        >>> bind_params(units, {"max_new_tokens": 12})["max_new_tokens"]  # doctest: +SKIP
        12
    """
    params = dict(params or {})
    ps = list(inspect.signature(units.plan).parameters.values())
    positional = [p for p in ps if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) < 2:
        raise ShiftlensError(f"{units.name}: plan must take (pair, prompts, **params)")
    skip = {positional[0].name, positional[1].name}
    accepted = {p.name: p for p in ps if p.name not in skip
                and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    var_kw = any(p.kind == p.VAR_KEYWORD for p in ps)
    unknown = sorted(k for k in params if k not in accepted)
    if unknown and not var_kw:
        raise ShiftlensError(f"{units.name}: unknown parameter(s) {', '.join(unknown)}; "
                             f"accepted: {', '.join(accepted) or 'none'}")
    out: dict[str, Any] = {}
    for name, p in accepted.items():
        if name in params:
            out[name] = params[name]
        elif p.default is not p.empty:
            out[name] = p.default
        else:
            raise ShiftlensError(f"{units.name}: parameter {name!r} is required")
    out.update({k: params[k] for k in unknown})
    return out


def unit_keys(roles: Sequence[str], n_prompts: int) -> list[tuple[int, str]]:
    """Every ``(prompt index, role)`` of a run, role-major (all base records, then tuned).

    Example:
        >>> unit_keys(("base", "tuned"), 2)
        [(0, 'base'), (1, 'base'), (0, 'tuned'), (1, 'tuned')]
    """
    return [(i, role) for role in roles for i in range(n_prompts)]
