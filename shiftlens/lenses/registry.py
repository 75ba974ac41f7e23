"""The lens registry: one :class:`LensSpec` per lens, from which the report's sections, the CLI's
subcommands, the runner and the contract tests are generated.

A lens package registers itself when imported (its ``__init__.py`` calls :func:`register_lens`
with string references ``"module:attribute"``, so registering imports nothing heavy: listing the
lenses and ``shiftlens --help`` stay fast). Third-party lenses register the same way from their
own package, or through the ``shiftlens.lenses`` entry-point group (each entry point names a
module to import). See docs/adding-a-lens.md.

The report building blocks a lens's section runner fills (:class:`Finding`, :class:`Section`) live
here too, below the report, so a lens never imports the report.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from shiftlens.errors import ShiftlensError

__all__ = [
    "LensSpec",
    "Finding",
    "Section",
    "ReportContext",
    "register_lens",
    "unregister_lens",
    "registered_lenses",
    "get_lens",
    "available_lenses",
    "resolve_ref",
    "lazy_api",
    "example_prompt",
]

_REGISTRY: dict[str, LensSpec] = {}


def resolve_ref(ref: str) -> Any:
    """Import ``"package.module:attribute"`` and return the attribute.

    Example:
        >>> resolve_ref("shiftlens.errors:ShiftlensError").__name__
        'ShiftlensError'
    """
    if not isinstance(ref, str) or ":" not in ref:
        raise ShiftlensError(f"a lens reference must read 'module:attribute', got {ref!r}")
    mod, _, attr = ref.partition(":")
    obj: Any = importlib.import_module(mod)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class LensSpec:
    """Everything the report, the CLI and the runner need to know about one lens.

    Attributes:
        name: Key used by ``--lenses`` and in ``metrics.json`` (lowercase, ``[a-z0-9_]``).
        title: The report section's heading.
        about: One paragraph: what the lens computes (and which paper it follows).
        section: ``"module:function"``: ``function(ctx, section)`` runs the lens on the report's
            pair and prompts and fills the :class:`Section` (see :class:`ReportContext`).
        results: ``"module:Class"`` of each Result class the lens returns (the contract test
            runs over them; :func:`shiftlens.load` finds them).
        cli: Optional ``"module:function"``: ``function(subparsers)`` adds the lens's own
            subcommands (argparse only: it must not import torch), each with
            ``set_defaults(handler="module:function")``.
        limits: Default prompt caps for the report (``{"attribution": 12}``; None = no cap); the
            keys are what ``--lens-prompts KEY=N`` accepts.
        requires: ``"module:attribute"`` names that must import for the lens to be available.
        units: Optional ``"module:object"`` with the per-prompt plan ``shiftlens run`` uses.
        examples: ``"module:function"``: ``function(pair, prompts)`` returns one small instance
            of each Result class in ``results`` (computed on the given pair; the contract test
            runs every Result through save/load, summary, show and ``_repr_html_``).
        order: Position in the report (lower first).

    Example:
        >>> spec = LensSpec("demo", "Demo lens", "Counts tokens.", "mypkg.demo:section")
        >>> spec.name
        'demo'
    """

    name: str
    title: str
    about: str
    section: str
    results: tuple[str, ...] = ()
    cli: str | None = None
    limits: Mapping[str, int | None] = field(default_factory=dict)
    requires: tuple[str, ...] = ()
    units: str | None = None
    examples: str | None = None
    order: int = 100

    def __post_init__(self) -> None:
        import re

        if not isinstance(self.name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", self.name):
            raise ShiftlensError(f"lens name must match [a-z][a-z0-9_]*, got {self.name!r}")
        for ref in (self.section, *self.results, *self.requires,
                    *(r for r in (self.cli, self.units, self.examples) if r)):
            if not isinstance(ref, str) or ":" not in ref:
                raise ShiftlensError(f"lens {self.name!r}: reference {ref!r} must read "
                                     "'module:attribute'")

    def run_section(self) -> Callable[[Any, Any], None]:
        """The imported section runner.

        Example:
            >>> get_lens("ffn").run_section()  # doctest: +SKIP
        """
        return resolve_ref(self.section)

    def result_classes(self) -> list[type]:
        """The imported Result classes.

        Example:
            >>> [c.__name__ for c in get_lens("ffn").result_classes()]  # doctest: +SKIP
            ['ConceptShiftResult', 'RotationResult']
        """
        return [resolve_ref(r) for r in self.results]


def register_lens(spec: LensSpec, *, replace: bool = False) -> LensSpec:
    """Add a lens to the registry (the report and CLI pick it up).

    Args:
        spec: The lens.
        replace: Allow replacing a registered lens of the same name.

    Raises:
        ShiftlensError: a different lens is already registered under that name.

    Example:
        >>> register_lens(LensSpec("demo", "Demo", "A demo.", "mypkg.demo:section"))  # doctest: +SKIP
    """
    if not isinstance(spec, LensSpec):
        raise ShiftlensError(f"register_lens takes a LensSpec, got {type(spec).__name__}")
    old = _REGISTRY.get(spec.name)
    if old is not None and old != spec and not replace:
        raise ShiftlensError(f"a lens named {spec.name!r} is already registered (pass "
                             "replace=True to replace it)")
    _REGISTRY[spec.name] = spec
    return spec


def unregister_lens(name: str) -> None:
    """Remove a lens from the registry (tests, plugins being reloaded).

    Example:
        >>> unregister_lens("demo")  # doctest: +SKIP
    """
    _REGISTRY.pop(name, None)


def _load_builtin_and_plugins() -> None:
    from shiftlens.lenses import BUILTIN_LENSES

    for name in BUILTIN_LENSES:
        importlib.import_module(f"shiftlens.lenses.{name}")
    try:
        from importlib.metadata import entry_points

        for ep in entry_points(group="shiftlens.lenses"):
            try:
                ep.load()
            except Exception as e:  # noqa: BLE001 - a broken plugin must not break shiftlens
                import warnings

                from shiftlens.errors import ShiftlensWarning

                warnings.warn(f"lens plugin {ep.name!r} ({ep.value}) failed to load: "
                              f"{type(e).__name__}: {e}", ShiftlensWarning, stacklevel=3)
    except Exception:  # noqa: BLE001 # pragma: no cover - metadata unavailable
        pass


def registered_lenses() -> dict[str, LensSpec]:
    """Every registered lens in report order (built-in lenses and plugins are imported first).

    Example:
        >>> list(registered_lenses())[:4]
        ['attribution', 'attention', 'ffn', 'residual']
    """
    from shiftlens.lenses import BUILTIN_LENSES

    _load_builtin_and_plugins()
    # ties in ``order``: built-in lenses in BUILTIN_LENSES order, then plugins as registered
    # (never the order in which packages happened to be imported)
    builtin = {n: i for i, n in enumerate(BUILTIN_LENSES)}
    seen = {n: i for i, n in enumerate(_REGISTRY)}
    return dict(sorted(_REGISTRY.items(), key=lambda kv: (
        kv[1].order, builtin.get(kv[0], len(builtin)), seen[kv[0]])))


def get_lens(name: str) -> LensSpec:
    """The registered lens called ``name``.

    Raises:
        ShiftlensError: no such lens (the message lists the registered ones).

    Example:
        >>> get_lens("ffn").title  # doctest: +SKIP
    """
    lenses = registered_lenses()
    if name not in lenses:
        raise ShiftlensError(f"unknown lens {name!r}; choose from {', '.join(lenses)}")
    return lenses[name]


def available_lenses() -> dict[str, tuple[bool, str]]:
    """Which lenses can run now: ``{name: (available, reason)}``.

    A lens is available when its section runner and every ``requires`` reference import.

    Example:
        >>> all(ok for ok, _ in available_lenses().values())  # doctest: +SKIP
        True
    """
    out: dict[str, tuple[bool, str]] = {}
    for name, spec in registered_lenses().items():
        try:
            for ref in (spec.section, *spec.requires):
                resolve_ref(ref)
        except Exception as e:  # noqa: BLE001 - any import failure means "not available"
            out[name] = (False, f"{ref} cannot be imported ({type(e).__name__}: {e})")
            continue
        out[name] = (True, "available")
    return out


# ============================================================================ report pieces
@dataclass
class Finding:
    """One statement of the report, with the figure that shows it.

    Attributes:
        text: The statement in words, with its numbers and statistics.
        figure: HTML of the figure beside it ("" for none).
        key: The short version listed under "Key findings" at the top ("" = not listed).
        files: Figure files written (PNG/SVG).
        wide: Lay the figure out below the text at full width (wide figures).

    Example:
        >>> Finding("Score rose from 0.2 to 0.5 (p = 0.01).", key="Score rose.").headline
        True
    """

    text: str
    figure: str = ""
    key: str = ""
    files: list[str] = field(default_factory=list)
    wide: bool = False

    @property
    def headline(self) -> bool:
        """Whether the finding is listed under "Key findings"."""
        return bool(self.key)


@dataclass
class Section:
    """One lens's part of the report.

    Attributes:
        name, title, about: The lens.
        status: ``"ok"``, ``"partial"`` (some analyses failed), ``"failed"`` or ``"skipped"``.
        note: Why it was skipped / what was limited.
        findings: The statements with figures.
        views: circuitsvis visualizations.
        tables: CSV files written (relative paths).
        summaries: Each Result's ``summary()`` (for metrics.json).
        errors: Error messages of failed analyses.
        n_prompts: Prompts used per analysis.
        seconds: Wall time.

    Example:
        >>> Section("ffn", "Feed-forward concepts").status
        'ok'
    """

    name: str
    title: str
    about: str = ""
    status: str = "ok"
    note: str = ""
    findings: list[Finding] = field(default_factory=list)
    views: list[Any] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)
    summaries: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    n_prompts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


@runtime_checkable
class ReportContext(Protocol):
    """What the report hands a lens's section runner (implemented by :mod:`shiftlens.report`).

    Attributes:
        pair: The :class:`shiftlens.ModelPair`.
        prompts: All prompts of the report.
        seed: The report's seed (pass it to every lens).
        progress: Whether to show progress bars.
        debug: Re-raise instead of recording failures.
        options: Extra lens options (``build_report(options=...)``).

    Example:
        >>> def section(ctx: ReportContext, sec: Section) -> None:  # doctest: +SKIP
        ...     res = my_lens(ctx.pair, ctx.prompts_for("mylens"), seed=ctx.seed)
        ...     ctx.record(sec, res, "mylens")
    """

    pair: Any
    prompts: list[Any]
    seed: int
    progress: bool
    debug: bool
    options: dict[str, Any]

    def prompts_for(self, key: str) -> list[Any]:
        """The prompts capped for ``key`` (``--lens-prompts KEY=N``)."""
        ...

    def limit_note(self, key: str, used: int) -> str:
        """Words saying how many of the prompts were used and how to use more."""
        ...

    def figure(self, sec: Section, fig: Any, name: str, text: str, *, key: str = "",
               alt: str = "") -> Finding:
        """Save a figure, embed it, and add the finding ``text`` beside it."""
        ...

    def csv(self, sec: Section, frame: Any, name: str) -> str:
        """Write a table as CSV next to the report; return its relative path."""
        ...

    def save_result(self, result: Any, name: str) -> None:
        """Save a Result under ``results/name`` next to the report."""
        ...

    def attempt(self, sec: Section, what: str, fn: Callable[[], Any]) -> Any:
        """Run one analysis; on failure record the error in ``sec`` and return None."""
        ...


# ============================================================================ lazy public API
def lazy_api(package: str, api: Mapping[str, str]) -> tuple[Callable[[str], Any],
                                                          Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for a lens package whose public names load on first use.

    Importing a lens package then imports only its registry entry (``shiftlens --help`` and
    ``shiftlens lenses`` stay light); ``package.name`` imports the module that defines ``name``
    and caches the value in the package.

    Args:
        package: The package's ``__name__``.
        api: Public name -> the submodule (relative to ``package``) that defines it.

    Returns:
        ``(__getattr__, __dir__)`` to bind at the package's top level.

    Example:
        >>> __getattr__, __dir__ = lazy_api("shiftlens.lenses.residual", {"similarity": "compare"})
        >>> __getattr__("similarity").__module__
        'shiftlens.lenses.residual.compare'
    """
    def __getattr__(name: str) -> Any:
        mod = api.get(name)
        if mod is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{mod}"), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(api))

    return __getattr__, __dir__


def example_prompt(prompts: Sequence[Any], pair: Any) -> Any:
    """The prompt a section shows in detail: the shortest (with its reference response) that has
    instruction tokens, so that the page stays light; the first prompt if none has any.

    Args:
        prompts: The section's prompts.
        pair: The :class:`shiftlens.ModelPair` that tokenizes them.

    Returns:
        One of ``prompts``, or None when there are none.

    Example:
        >>> example_prompt(ctx.prompts_for("attribution"), ctx.pair)  # doctest: +SKIP
        InstructionPrompt(id='reverse-0', ...)
    """
    best, best_n = None, None
    for p in prompts:
        try:
            tp = pair.tokenize(p, response=p.reference or None)
        except Exception:  # noqa: BLE001 - e.g. too long; try the next
            continue
        n = int(tp.tokens.shape[0])
        if bool(tp.mask("instruction").any()) and (best_n is None or n < best_n):
            best, best_n = p, n
    return best if best is not None else (prompts[0] if prompts else None)
