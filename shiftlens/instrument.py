"""Check the instrument before measuring: :func:`selfcheck`.

A report is only as good as the decoding and the models behind it. Before ``shiftlens demo``,
``report`` and ``compare`` measure anything, :func:`selfcheck` verifies on the pair itself that

* ``decoding/<role>``: the greedy decoding every lens uses (:func:`shiftlens.generate.greedy`)
  gives the tokens of an independent no-cache argmax loop written here (one full forward pass
  per token), on two prompts per model;
* ``kv_cache/<role>``: incremental decoding with the key/value cache through the bridge agrees
  with that loop too. :func:`~shiftlens.generate.greedy` verifies and falls back on its own, so
  a failure here does not make a lens wrong, but it means the installed releases are not the
  ones shiftlens was tested with (e.g. a newer ``transformers`` than the lock pins): the self-
  check refuses them until you install from the lock or pass ``--skip-checks``;
* ``embedded_manifest`` (the embedded pair only): the tuned model still follows the toy
  instructions and the base model still does not, on a fixed sample of held-out prompts, within
  ``tolerance`` of the exact-match rates recorded in the pair's manifest.

A failed check raises :class:`~shiftlens.errors.SelfCheckError` from :meth:`SelfCheck.raise_if_failed`
naming the check and the installed versions of torch, transformers and transformer-lens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from shiftlens.errors import SelfCheckError, ShiftlensError
from shiftlens.generate import installed_versions

__all__ = ["Check", "SelfCheck", "selfcheck", "is_embedded_pair"]

#: Held-out prompts per task of the embedded pair's manifest check (7 tasks -> 28 prompts).
MANIFEST_PROMPTS_PER_TASK = 4
#: Greedy tokens compared per prompt by the decoding checks.
CHECK_TOKENS = 12


@dataclass(frozen=True)
class Check:
    """One check of :func:`selfcheck`.

    Attributes:
        name: ``"decoding/base"``, ``"kv_cache/tuned"``, ``"embedded_manifest"``, ...
        ok: Whether it passed.
        detail: What was compared and what came out, in words.

    Example:
        >>> Check("decoding/base", True, "2 prompts x 12 tokens equal").ok
        True
    """

    name: str
    ok: bool
    detail: str


@dataclass
class SelfCheck:
    """The outcome of :func:`selfcheck`: every check, the versions, pass or fail.

    Attributes:
        checks: The checks in the order they ran.
        versions: Installed versions of the packages that decide the numbers.
        skipped: True when the checks were skipped on request (``--skip-checks``).

    Example:
        >>> sc = SelfCheck([Check("decoding/base", True, "equal")], {"torch": "2.13.0"})
        >>> sc.passed, sc.to_dict()["passed"]
        (True, True)
    """

    checks: list[Check]
    versions: dict[str, str] = field(default_factory=dict)
    skipped: bool = False

    @property
    def passed(self) -> bool:
        """True when every check passed (and the checks ran)."""
        return not self.skipped and all(c.ok for c in self.checks)

    @property
    def failed(self) -> list[Check]:
        """The checks that failed."""
        return [c for c in self.checks if not c.ok]

    @classmethod
    def skipped_on_request(cls) -> SelfCheck:
        """The record of a run whose checks were skipped (``--skip-checks``).

        Example:
            >>> SelfCheck.skipped_on_request().to_dict()["skipped"]
            True
        """
        return cls([], installed_versions(), skipped=True)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record (what ``metrics.json`` holds under ``"selfcheck"``).

        Example:
            >>> SelfCheck([], {}).to_dict()["checks"]
            []
        """
        return {
            "passed": self.passed,
            "skipped": self.skipped,
            "versions": dict(self.versions),
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in self.checks],
        }

    def message(self) -> str:
        """One paragraph: which checks failed and the installed versions.

        Example:
            >>> SelfCheck([Check("x", False, "differs")], {"torch": "2.13.0"}).message()
            'self-check failed: x: differs (installed: torch 2.13.0)'
        """
        vers = ", ".join(f"{k} {v}" for k, v in self.versions.items())
        if self.skipped:
            return f"self-check skipped on request (installed: {vers})"
        if self.passed:
            return f"self-check passed: {len(self.checks)} checks (installed: {vers})"
        bad = "; ".join(f"{c.name}: {c.detail}" for c in self.failed)
        return f"self-check failed: {bad} (installed: {vers})"

    def raise_if_failed(self) -> None:
        """Raise :class:`~shiftlens.errors.SelfCheckError` naming the failed checks and versions.

        Example:
            >>> SelfCheck([Check("ok", True, "")], {}).raise_if_failed()
        """
        if not self.skipped and not self.passed:
            raise SelfCheckError(
                self.message() + ". shiftlens refuses to measure with a failing instrument: "
                "install the locked versions (requirements/lock.txt, see the README) or pass "
                "--skip-checks (recorded in the report)"
            )

    def __repr__(self) -> str:
        state = "skipped" if self.skipped else ("passed" if self.passed else "FAILED")
        return f"SelfCheck({state}, {len(self.checks)} checks)"


def _source_dir(model: Any) -> Path | None:
    hf = getattr(model, "original_model", model)
    p = getattr(getattr(hf, "config", None), "_name_or_path", None)
    if not p:
        return None
    try:
        return Path(p).resolve()
    except (OSError, RuntimeError):  # pragma: no cover
        return None


def is_embedded_pair(pair: Any) -> bool:
    """True when both models of ``pair`` were loaded from the embedded pair's directories.

    Example:
        >>> from shiftlens.zoo import toy_pair
        >>> is_embedded_pair(toy_pair())  # doctest: +SKIP
        True
    """
    from shiftlens.zoo import pair_dirs

    base, tuned = pair_dirs()
    return (_source_dir(pair.base) == base.resolve()
            and _source_dir(pair.tuned) == tuned.resolve())


@torch.no_grad()
def _reference_loop(model: Any, tokens: Int[Tensor, " pos"], n: int) -> list[int]:
    """Greedy decoding by definition: a full forward pass per token, no cache, no stop token.

    Written here on purpose, independent of :mod:`shiftlens.generate`.
    """
    dev = getattr(getattr(model, "cfg", None), "device", None) or "cpu"
    seq = tokens.detach().cpu().long().tolist()
    out: list[int] = []
    for _ in range(n):
        logits = model(torch.tensor([seq], device=dev), return_type="logits")
        nxt = int(logits[0, -1].argmax())
        out.append(nxt)
        seq.append(nxt)
    return out


def _check_prompts(pair: Any, prompts: Sequence[Any] | None) -> list[Tensor]:
    if prompts is None:
        if is_embedded_pair(pair):
            from shiftlens.zoo import toy_prompts

            prompts = toy_prompts(2)
        else:
            from shiftlens.prompts import default_prompts

            prompts = default_prompts()[:2]
    prompts = list(prompts)
    if not prompts:
        raise ShiftlensError("selfcheck: no prompts to decode")
    return [pair.tokenize(p).tokens for p in prompts[:2]]


def _decoding_checks(pair: Any, toks: list[Tensor], n: int) -> list[Check]:
    from shiftlens import generate as G

    checks = []
    for role, model in pair:
        refs = [_reference_loop(model, t, n) for t in toks]
        # (1) the decoding the lenses use
        ours = [G.greedy(model, t, n, stop_ids=[]).tokens.tolist() for t in toks]
        bad = [i for i, (a, b) in enumerate(zip(ours, refs)) if a != b]
        checks.append(Check(
            f"decoding/{role}", not bad,
            f"shiftlens.generate.greedy equals the no-cache argmax loop on {len(toks)} prompts "
            f"x {n} tokens" if not bad else
            f"shiftlens.generate.greedy gives {ours[bad[0]]} where the no-cache argmax loop gives "
            f"{refs[bad[0]]} (prompt {bad[0]})"))
        # (2) the raw cached path through the bridge, unverified
        raw = [G._cached_rows(model, [t], n, frozenset())[0] for t in toks]
        bad = [i for i, (a, b) in enumerate(zip(raw, refs)) if a != b]
        checks.append(Check(
            f"kv_cache/{role}", not bad,
            f"cached decoding through the bridge equals the no-cache loop on {len(toks)} prompts "
            f"x {n} tokens" if not bad else
            f"cached decoding through the bridge gives {raw[bad[0]]} where the no-cache loop "
            f"gives {refs[bad[0]]} (prompt {bad[0]}): these releases break key/value caching"))
    return checks


def _manifest_check(pair: Any, tolerance: float) -> Check:
    from shiftlens.zoo import grammar, manifest, toy_prompts
    from shiftlens.zoo.evaluate import task_accuracy

    n = MANIFEST_PROMPTS_PER_TASK * len(grammar.TASK_NAMES)
    prompts = toy_prompts(n)
    ev = manifest()["evaluation"]
    want_t = float(ev["tuned"]["exact"]["overall"])
    want_b = float(ev["base"]["exact"]["overall"])
    got_t = task_accuracy(pair.tuned, pair.tokenizer, prompts,
                          int(ev.get("max_new_tokens", 12)))["exact"]["overall"]
    got_b = task_accuracy(pair.base, pair.tokenizer, prompts,
                          int(ev.get("max_new_tokens", 12)))["exact"]["overall"]
    ok = got_t >= want_t - tolerance and got_b <= want_b + tolerance
    return Check(
        "embedded_manifest", ok,
        f"exact match on {n} held-out prompts: tuned {got_t:.3f} (manifest {want_t:.3f}, must be "
        f">= {want_t - tolerance:.3f}), base {got_b:.3f} (manifest {want_b:.3f}, must be <= "
        f"{want_b + tolerance:.3f})")


def selfcheck(
    pair: Any,
    *,
    prompts: Sequence[Any] | None = None,
    max_new_tokens: int = CHECK_TOKENS,
    embedded: bool | None = None,
    tolerance: float = 0.05,
) -> SelfCheck:
    """Verify the instrument on ``pair`` before measuring (see the module docstring).

    Args:
        pair: The :class:`shiftlens.ModelPair` about to be measured.
        prompts: Prompts for the decoding checks (the first two are used; default: two of the
            embedded pair's prompts for the embedded pair, else two shipped prompts).
        max_new_tokens: Tokens compared per prompt (stop tokens ignored).
        embedded: Run the manifest check (default: when ``pair`` is the embedded pair).
        tolerance: Allowed shortfall of the embedded pair's exact-match rates.

    Returns:
        The :class:`SelfCheck`; call :meth:`SelfCheck.raise_if_failed` to refuse on failure.

    Example:
        >>> from shiftlens.zoo import toy_pair
        >>> sc = selfcheck(toy_pair())  # doctest: +SKIP
        >>> sc.passed  # doctest: +SKIP
        True
    """
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise ShiftlensError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    if not 0 <= float(tolerance) <= 1:
        raise ShiftlensError(f"tolerance must lie in [0, 1], got {tolerance!r}")
    toks = _check_prompts(pair, prompts)
    checks = _decoding_checks(pair, toks, max_new_tokens)
    if embedded is None:
        embedded = is_embedded_pair(pair)
    if embedded:
        checks.append(_manifest_check(pair, float(tolerance)))
    return SelfCheck(checks, installed_versions())
