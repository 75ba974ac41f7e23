"""Results built on instruction sensitivity (Wu et al. 2024, §3): both response settings side by
side, followed vs unfollowed responses, and the position of the instruction.

- :class:`ResponseSettingsResult`: the same prompts scored with the same reference response for
  both models and with each model's own greedy response (the paper's setting), with the
  response lengths, and which one the headline uses and why;
- :class:`FollowedResult`: instruction scores of responses that follow the instruction vs those
  that do not;
- :class:`PositionResult`: the instruction at the start, middle or end of a long context.

Tests are two-sided unless ``alternative`` asks otherwise (the sentence then names the one-sided
test); values without a score are left out, counted and named in the summary and its sentence.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from shiftlens.checks import check_choice, check_int
from shiftlens.errors import ShiftlensError
from shiftlens.lenses.attribution.results import (
    ALTERNATIVES,
    POSITIONS,
    ROLES,
    SensitivityResult,
    alternative_of,
    left_out_sentence,
    welch_block,
)
from shiftlens.result import Result, make_meta
from shiftlens.stats import change_sentence, fmt_number, paired_test

__all__ = [
    "HEADLINES",
    "ResponseSettingsResult",
    "FollowedResult",
    "PositionResult",
]

#: Which setting :class:`ResponseSettingsResult` puts first: ``"auto"`` (the same reference
#: response when at least two prompts are scored with it, else each model's own), or forced.
HEADLINES: tuple[str, ...] = ("auto", "reference", "own")

_FOLLOWED_COLUMNS = ("id", "category", "role", "score", "followed")
_POSITION_COLUMNS = ("item", "id", "position", "role", "score", "n_input", "n_instruction",
                     "n_response", "response")  # and "note" (why a score is missing), optional
_PAPER = "each model's own greedy response (the paper's setting, Wu et al. §3)"


def _seed(meta: Mapping[str, Any] | None) -> int:
    s = (meta or {}).get("seed")
    return int(s) if s is not None else 0


def _params(meta: Mapping[str, Any] | None) -> dict[str, Any]:
    return dict((meta or {}).get("params") or {})


def _missing(frame: pd.DataFrame, cols: Sequence[str], what: str) -> None:
    gone = [c for c in cols if c not in frame.columns]
    if gone:
        raise ShiftlensError(f"{what}: frame lacks columns {gone}")


def _lower_first(s: str) -> str:
    return s[:1].lower() + s[1:]


def _lengths(ln: Mapping[str, float]) -> str:
    return f"base {fmt_number(ln['base'], '.1f')}, tuned {fmt_number(ln['tuned'], '.1f')} tokens"


def versus_sentence(what_a: str, what_b: str, r: Mapping[str, Any], test: str,
                    alternative: str = "two-sided", alpha: float = 0.05) -> str:
    """"<A> is significantly lower than <B>: x (n) vs y (n) (difference, CI, test p)" in words.

    Like :func:`shiftlens.stats.change_sentence`, but for two groups that are not base and
    tuned (followed vs unfollowed responses): the direction and the verdict are words, a
    one-sided test names its direction, and one that looked the other way says so.

    Args:
        what_a, what_b: The two groups (``mean_a`` is ``what_a``'s).
        r: A :class:`shiftlens.stats.TestResult` dict.
        test: The test's name (``"Welch t-test"``).
        alternative: ``"two-sided"``, ``"greater"`` (a > b) or ``"less"``.
        alpha: The significance level.

    Example:
        >>> r = {"mean_a": 0.2, "mean_b": 0.5, "n_a": 6, "n_b": 8, "diff": -0.3,
        ...      "ci_low": -0.45, "ci_high": -0.13, "pvalue": 0.006}
        >>> versus_sentence("followed responses", "unfollowed ones", r, "Welch t-test")
        'Followed responses score significantly lower than unfollowed ones: 0.200 (n = 6) vs 0.500 (n = 8) (difference -0.300, 95% CI [-0.450, -0.130], two-sided Welch t-test p = 0.006; significant at 0.05).'
    """
    a, b, p = float(r["mean_a"]), float(r["mean_b"]), float(r["pvalue"])
    head = f"{what_a[:1].upper()}{what_a[1:]}"
    if not (math.isfinite(a) and math.isfinite(b)):
        return (f"{head} and {what_b} could not be compared (n = {r['n_a']} and {r['n_b']}: "
                "a group has no score).")
    tested = math.isfinite(p)
    against = (alternative == "greater" and a < b) or (alternative == "less" and a > b)
    sig = tested and p < alpha and not against
    rel = "higher than" if a > b else "lower than" if a < b else "the same as"
    verdict = "significantly " if sig else ""
    if alternative == "two-sided":
        name = f"two-sided {test}"
    else:
        name = f"one-sided ({'>' if alternative == 'greater' else '<'}) {test}"
    extra = [f"difference {a - b:+.3f}"]
    if math.isfinite(float(r.get("ci_low", float("nan")))):
        extra.append(f"95% CI [{float(r['ci_low']):.3f}, {float(r['ci_high']):.3f}]")
    extra.append(f"{name} p = {fmt_number(p, '.3g')}")
    tail = ""
    if tested:
        tail = (f"; the test looked for the opposite direction ({alternative}), so it cannot call "
                "this difference significant: use a two-sided test") if against else \
            f"; {'significant' if sig else 'not significant'} at {alpha:g}"
    return (f"{head} score {verdict}{rel} {what_b}: {a:.3f} (n = {r['n_a']}) vs {b:.3f} "
            f"(n = {r['n_b']}) ({', '.join(extra)}{tail}).")


# ====================================================================== both response settings
@dataclass(eq=False, repr=False)
class ResponseSettingsResult(Result):
    """Instruction sensitivity of the same prompts in both response settings, side by side.

    The instruction score depends on which response a model explains. With the **same
    reference response** for both models, a difference between them is how each model's
    prediction of that text rests on the prompt. With **each model's own greedy response** (the
    paper's setting, Wu et al. §3) the two models explain different texts, so their lengths
    and contents are part of the difference; on the embedded toy pair the two settings point in
    opposite directions. This Result keeps both, with the response lengths, and says which one
    the headline uses and why (:attr:`headline`, :meth:`why`).

    Attributes:
        reference: The prompts scored with their reference response (both models the same).
        own: The same prompts, each model on its own greedy response.
        meta: ``models``, ``seed``, ``params`` (``headline``: ``"auto"``, ``"reference"`` or
            ``"own"``; ``left_out``: ids of prompts without a reference; the shared
            parameters), ``versions``.

    Example:
        >>> rs = response_settings(pair, prompts)  # doctest: +SKIP
        >>> rs.summary()["headline"], rs.summary()["response_lengths"]  # doctest: +SKIP
        ('reference', {'reference': {...}, 'own': {'base': 12.0, 'tuned': 2.1}})
    """

    reference: SensitivityResult
    own: SensitivityResult
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_results(cls, reference: SensitivityResult, own: SensitivityResult, *,
                     headline: str = "auto", left_out: Sequence[str] = ()
                     ) -> ResponseSettingsResult:
        """Put two :class:`SensitivityResult` of the same prompts side by side.

        Args:
            reference: Scored with the same (reference) response for both models.
            own: Scored with each model's own greedy response.
            headline: ``"auto"``, ``"reference"`` or ``"own"`` (see :data:`HEADLINES`).
            left_out: Ids of prompts left out of both (no reference response).

        Example:
            >>> rs = ResponseSettingsResult.from_results(ref_res, own_res)  # doctest: +SKIP
        """
        check_choice("headline", headline, HEADLINES, who="response settings")
        for name, r in (("reference", reference), ("own", own)):
            if not isinstance(r, SensitivityResult):
                raise ShiftlensError(f"response settings: {name} must be a SensitivityResult, "
                                     f"got {type(r).__name__}")
        params = {"headline": headline, "left_out": [str(i) for i in left_out],
                  **{k: v for k, v in own.params.items()
                     if k in ("levels", "threshold", "p", "max_new_tokens", "alternative")}}
        out = cls(reference, own, make_meta(models=own.model_names,
                                            seed=_seed(own.meta), params=params))
        out.validate()
        return out

    @property
    def headline(self) -> str:
        """``"reference"`` or ``"own"``: the setting the headline (and the report) leads with."""
        h = str(_params(self.meta).get("headline", "auto"))
        if h != "auto":
            return h
        return "reference" if int(self.reference.scored().sum()) >= 2 else "own"

    def why(self) -> str:
        """Why the headline uses its setting, in words, with the response lengths.

        Example:
            >>> rs.why()  # doctest: +SKIP
        """
        asked = str(_params(self.meta).get("headline", "auto")) != "auto"
        own_len = _lengths(self.own.response_lengths())
        if self.headline == "reference":
            return ("The headline holds the response fixed: both models explain the same "
                    "reference response, so a difference is how each model's prediction of that "
                    "text rests on the prompt" + (" (as asked)" if asked else "") + ". With "
                    f"{_PAPER} the models explain different texts (mean length: {own_len}), so "
                    "response length and content enter that comparison.")
        reason = ("as asked (headline='own')" if asked else
                  "since fewer than two prompts could be scored with a reference response")
        return (f"The headline uses {_PAPER}, {reason}; the models explain different texts "
                f"(mean length: {own_len}), so response length and content are part of that "
                "difference, and the same-response setting beside it holds them fixed.")

    def _setting_text(self, key: str) -> str:
        res = self.reference if key == "reference" else self.own
        s = res.summary()
        o = s["overall"]
        words = ("With the same reference response for both models (mean length: "
                 if key == "reference" else "With each model's own greedy response (the paper's "
                 "setting, Wu et al. §3; mean length: ")
        change = _lower_first(change_sentence(
            "the instruction score", o["mean_b"], o["mean_a"], p=o["pvalue"], test="Welch t-test",
            alternative=s["alternative"], ci=(o["ci_low"], o["ci_high"]), n=s["n_scored"]))
        text = f"{words}{_lengths(s['response_lengths'])}), {change}"
        if s["excluded"]:
            text += " " + left_out_sentence(s["excluded"], s["n_prompts"])
        return text

    def summary(self) -> dict[str, Any]:
        """Both settings' summaries, their response lengths, the headline and why.

        Returns:
            ``{"headline", "why", "agree" (same direction in both), "reference": summary,
            "own": summary, "response_lengths": {"reference": {...}, "own": {...}},
            "left_out", "sentence"}``.

        Example:
            >>> rs.summary()["sentence"]  # doctest: +SKIP
        """
        h = self.headline
        other = "own" if h == "reference" else "reference"
        ref, own = self.reference.summary(), self.own.summary()
        d_ref, d_own = ref["overall"]["diff"], own["overall"]["diff"]
        agree = bool(np.sign(d_ref) == np.sign(d_own)) if all(
            math.isfinite(d) for d in (d_ref, d_own)) else False
        sentence = (f"{self._setting_text(h)} {self._setting_text(other)} "
                    + ("" if agree else "The two settings point in different directions. ")
                    + self.why())
        left = list(_params(self.meta).get("left_out") or [])
        if left:
            sentence += (f" {len(left)} prompts without a reference response are left out of "
                         f"both settings ({', '.join(left[:6])}).")
        names = self.model_names
        if names:
            sentence = f"{names.get('tuned', 'tuned')} vs {names.get('base', 'base')}: " + sentence
        return {"headline": h, "why": self.why(), "agree": agree, "reference": ref, "own": own,
                "response_lengths": {"reference": ref["response_lengths"],
                                     "own": own["response_lengths"]},
                "left_out": left, "sentence": sentence}

    def to_frame(self) -> pd.DataFrame:
        """Both settings' per-prompt frames, one above the other, with a ``setting`` column
        (``"reference"`` / ``"own"``) first.

        Example:
            >>> rs.to_frame().pivot_table("tuned_score", "id", "setting")  # doctest: +SKIP
        """
        parts = [r.frame.assign(setting=k) for k, r in (("reference", self.reference),
                                                        ("own", self.own))]
        df = pd.concat(parts, ignore_index=True)
        return df[["setting", *[c for c in df.columns if c != "setting"]]]

    def plot(self) -> Any:
        """Base and tuned in both settings side by side, the mean response lengths under the
        bars (:func:`~shiftlens.lenses.attribution.plots.settings_figure`).

        Example:
            >>> fig = rs.show("out/settings.png")  # doctest: +SKIP
        """
        from shiftlens.lenses.attribution.plots import settings_figure

        return settings_figure(self)

    def validate(self) -> None:
        """Both are SensitivityResults of the same prompts; the headline is known.

        Example:
            >>> rs.validate()  # doctest: +SKIP
        """
        for name in ("reference", "own"):
            r = getattr(self, name)
            if not isinstance(r, SensitivityResult):
                raise ShiftlensError(f"{name} must be a SensitivityResult, got "
                                     f"{type(r).__name__}")
            r.validate()
        a, b = list(map(str, self.reference.frame["id"])), list(map(str, self.own.frame["id"]))
        if a != b:
            raise ShiftlensError(f"the two settings score different prompts ({len(a)} vs "
                                 f"{len(b)}; first ids {a[:3]} vs {b[:3]})")
        h = _params(self.meta).get("headline", "auto")
        if h not in HEADLINES:
            raise ShiftlensError(f"headline must be one of {HEADLINES}, got {h!r}")

    def _repr_info(self) -> str:
        return f"{len(self.own.frame)} prompts, headline {self.headline}"


# ====================================================================== followed vs unfollowed
@dataclass(eq=False, repr=False)
class FollowedResult(Result):
    """Instruction scores of responses labelled followed / not followed (Wu et al. 2024, §3).

    Attributes:
        frame: One row per labelled response: ``id, category, role, score, followed``.
        n_unlabelled: Responses left out for want of a label.
        meta: ``models``, ``seed`` (bootstrap), ``params`` (``roles``, ``alternative`` and the
            density parameters of the source), ``versions``.

    Example:
        >>> fr = followed_comparison(res, labels)  # doctest: +SKIP
        >>> fr.summary()["pooled"]["pvalue"]  # doctest: +SKIP
    """

    frame: pd.DataFrame
    n_unlabelled: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def params(self) -> dict[str, Any]:
        """``roles``, ``alternative``, ``seed``, ``n_unlabelled``, the density parameters and
        ``model_names``.

        Example:
            >>> fr.params["roles"]  # doctest: +SKIP
            ['base', 'tuned']
        """
        p = _params(self.meta)
        return {"roles": p.pop("roles", list(ROLES)), "alternative": alternative_of(self.meta),
                "seed": _seed(self.meta), "n_unlabelled": self.n_unlabelled,
                **{k: v for k, v in p.items() if k != "alternative"},
                "model_names": self.model_names}

    @property
    def alternative(self) -> str:
        """The alternative of the tests (followed vs unfollowed; ``"two-sided"`` by default)."""
        return alternative_of(self.meta)

    def to_frame(self) -> pd.DataFrame:
        """The per-response DataFrame (a copy).

        Example:
            >>> fr.to_frame().groupby("followed")["score"].mean()  # doctest: +SKIP
        """
        return self.frame.copy()

    def scored(self) -> pd.Series:
        """True for the responses with a finite score (the statistics' sample)."""
        return pd.Series(np.isfinite(self.frame["score"].to_numpy(float)), index=self.frame.index)

    def _block(self, sub: pd.DataFrame) -> dict[str, Any]:
        f = sub.loc[sub["followed"], "score"].to_numpy(float)
        u = sub.loc[~sub["followed"], "score"].to_numpy(float)
        return welch_block(f, u, _seed(self.meta), self.alternative)

    def summary(self) -> dict[str, Any]:
        """Welch's t-test followed vs unfollowed (two-sided unless ``alternative`` says
        otherwise), pooled over roles and per role, over the responses with a score.

        Returns:
            ``{"pooled": TestResult dict (mean_a = followed), "by_role": {...}, "counts",
            "excluded": [{"role", "id", "reason"}], "n_unlabelled", "alternative",
            "sentence"}``.

        Example:
            >>> fr.summary()["sentence"]  # doctest: +SKIP
        """
        ok = self.scored()
        df = self.frame[ok]
        pooled = self._block(df)
        by_role = {str(r): self._block(sub) for r, sub in df.groupby("role", sort=True)}
        counts = {
            str(r): {"followed": int(sub["followed"].sum()),
                     "unfollowed": int((~sub["followed"]).sum())}
            for r, sub in df.groupby("role", sort=True)
        }
        excluded = [{"role": str(r["role"]), "id": str(r["id"]), "reason": "no score"}
                    for _, r in self.frame[~ok].iterrows()]
        sentence = versus_sentence("followed responses", "unfollowed ones", pooled,
                                   "Welch t-test", self.alternative)
        if excluded:
            sentence += " " + left_out_sentence(
                [{**e, "where": f"{e['id']} ({e['role']})"} for e in excluded], len(self.frame),
                "responses", key="where")
        if self.n_unlabelled:
            sentence += f" {self.n_unlabelled} responses had no followed/unfollowed label."
        return {"pooled": pooled, "by_role": by_role, "counts": counts, "excluded": excluded,
                "n_unlabelled": self.n_unlabelled, "alternative": self.alternative,
                "sentence": sentence}

    def plot(self) -> Any:
        """Box plot of the instruction score of followed vs unfollowed responses per role.

        Example:
            >>> fig = fr.show()  # doctest: +SKIP
        """
        from shiftlens.lenses.attribution.plots import followed_figure

        return followed_figure(self)

    def validate(self) -> None:
        """Columns present, ``followed`` boolean, roles base/tuned, a known alternative.

        Example:
            >>> fr.validate()  # doctest: +SKIP
        """
        _missing(self.frame, _FOLLOWED_COLUMNS, "FollowedResult")
        if self.frame["followed"].dtype != bool:
            raise ShiftlensError(f"followed must be boolean, got {self.frame['followed'].dtype}")
        bad = sorted(set(map(str, self.frame["role"])) - set(ROLES))
        if bad:
            raise ShiftlensError(f"unknown roles {bad}")
        if self.alternative not in ALTERNATIVES:
            raise ShiftlensError(f"alternative must be one of {ALTERNATIVES}, got "
                                 f"{self.alternative!r}")


# ====================================================================== position of the instruction
def _position_rows(res: SensitivityResult) -> list[dict[str, Any]]:
    """The (item, position, role) rows of a SensitivityResult whose ids are ``item@position``.

    Example:
        >>> rows = _position_rows(res)  # doctest: +SKIP
    """
    rows = []
    for _, r in res.frame.iterrows():
        item, sep, pos = str(r["id"]).rpartition("@")
        if not sep or pos not in POSITIONS:
            raise ShiftlensError(f"prompt id {r['id']!r} is not '<item>@<position>' with a "
                                 f"position among {POSITIONS}")
        for role in ROLES:
            rows.append({"item": item, "id": str(r["id"]), "position": pos, "role": role,
                         "score": float(r[f"{role}_score"]), "n_input": int(r["n_input"]),
                         "n_instruction": int(r["n_instruction"]),
                         "n_response": int(r[f"{role}_n_response"]),
                         "response": r[f"{role}_response"], "note": str(r["note"] or "")})
    return rows


@dataclass(eq=False, repr=False)
class PositionResult(Result):
    """Instruction score with the same instruction at the start, middle or end of the context.

    Attributes:
        frame: One row per (item, position, role): ``item, id, position, role, score,
            n_input, n_instruction, n_response, response, note``.
        meta: ``models``, ``seed`` (bootstrap), ``params`` (``positions``, density parameters,
            response source, suffix, generation limit, ``alternative``), ``versions``.

    Example:
        >>> pr = position_sensitivity(pair, items)  # doctest: +SKIP
        >>> pr.summary()["means"]  # doctest: +SKIP
    """

    frame: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_sensitivity(cls, result: SensitivityResult, *,
                         positions: Sequence[str] | None = None,
                         alternative: str | None = None, seed: int | None = None
                         ) -> PositionResult:
        """The position analysis of a :class:`SensitivityResult` whose prompt ids are
        ``"<item>@<position>"`` (what :func:`position_sensitivity` builds, or your own
        matrices through :meth:`SensitivityResult.from_matrices`).

        Args:
            result: The scores, one prompt per (item, placement).
            positions: Placements in order (default: those present, in :data:`POSITIONS`
                order).
            alternative: Of the tests (default: the result's).
            seed: Bootstrap seed (default: the result's).

        Example:
            >>> pr = PositionResult.from_sensitivity(SensitivityResult.from_matrices(...))  # doctest: +SKIP
        """
        if not isinstance(result, SensitivityResult):
            raise ShiftlensError(f"from_sensitivity takes a SensitivityResult, got "
                                 f"{type(result).__name__}")
        rows = _position_rows(result)
        present = {r["position"] for r in rows}
        if positions is None:
            positions = [p for p in POSITIONS if p in present]
        elif isinstance(positions, str) or set(positions) - set(POSITIONS):
            raise ShiftlensError(f"positions must be a list out of {POSITIONS}, got "
                                 f"{positions!r}")
        alternative = result.alternative if alternative is None else alternative
        check_choice("alternative", alternative, ALTERNATIVES, who="from_sensitivity")
        seed = _seed(result.meta) if seed is None else check_int("seed", seed)
        src = _params(result.meta)
        params = {"positions": list(positions), **{k: src.get(k) for k in (
            "levels", "threshold", "p", "response", "max_new_tokens")}, "alternative": alternative}
        return cls(pd.DataFrame(rows, columns=[*_POSITION_COLUMNS, "note"]),
                   make_meta(models=result.model_names, seed=seed, params=params))

    @property
    def positions(self) -> list[str]:
        """The placements compared, in order."""
        return list(_params(self.meta).get("positions", POSITIONS))

    @property
    def alternative(self) -> str:
        """The alternative of the paired tests (``"two-sided"`` by default)."""
        return alternative_of(self.meta)

    @property
    def params(self) -> dict[str, Any]:
        """The parameters, ``seed`` and ``model_names`` as one dict (read-only view of ``meta``).

        Example:
            >>> pr.params["positions"]  # doctest: +SKIP
        """
        return {**_params(self.meta), "alternative": self.alternative,
                "seed": _seed(self.meta), "model_names": self.model_names}

    def to_frame(self) -> pd.DataFrame:
        """The per-(item, position, role) DataFrame (a copy).

        Example:
            >>> pr.to_frame().pivot_table("score", "position", "role")  # doctest: +SKIP
        """
        return self.frame.copy()

    def exclusions(self) -> list[dict[str, str]]:
        """Items left out because one of their scores is missing: ``{"item", "reason"}``.

        Example:
            >>> pr.exclusions()  # doctest: +SKIP
        """
        df = self.frame[self.frame["position"].isin(self.positions)]
        out = []
        for item, g in df.groupby("item", sort=False):
            bad = g[~np.isfinite(g["score"].to_numpy(float))]
            if len(bad):
                first = bad.iloc[0]
                why = str(first.get("note") or "") or "no score"
                out.append({"item": str(item), "reason": f"{first['role']} at "
                            f"{first['position']}: {why}"})
        return out

    def _wide(self, role: str, keep: set[str]) -> pd.DataFrame:
        sub = self.frame[(self.frame["role"] == role) & self.frame["item"].isin(keep)]
        return sub.pivot_table(index="item", columns="position", values="score", dropna=False)

    def summary(self) -> dict[str, Any]:
        """Mean score per position and role, and paired t-tests (two-sided unless
        ``alternative`` says otherwise) over the items with every score.

        ``edges_vs_middle``: per role, ``"start-middle"`` and ``"end-middle"`` (the "lost in the
        middle" question; ``mean_a`` is the edge). ``tuned_vs_base``: per position, tuned vs
        base (``mean_a`` = tuned). Items with a missing score (no instruction span, an empty
        response) are left out of every number and listed in ``excluded``.

        Example:
            >>> pr.summary()["sentence"]  # doctest: +SKIP
        """
        seed, positions, alt = _seed(self.meta), self.positions, self.alternative
        excluded = self.exclusions()
        gone = {e["item"] for e in excluded}
        keep = set(map(str, self.frame["item"])) - gone
        df = self.frame[self.frame["item"].isin(keep)]
        means = {role: {pos: float(df.loc[(df["role"] == role) & (df["position"] == pos),
                                          "score"].mean()) for pos in positions}
                 for role in ROLES}
        edges: dict[str, dict[str, Any]] = {}
        if "middle" in positions:
            for role in ROLES:
                w = self._wide(role, keep)
                edges[role] = {
                    f"{pos}-middle": paired_test(w[pos], w["middle"], alternative=alt,
                                                 seed=seed).to_dict()
                    for pos in positions if pos != "middle" and pos in w and "middle" in w
                }
        tvb = {}
        wb, wt = self._wide("base", keep), self._wide("tuned", keep)
        for pos in positions:
            if pos in wb and pos in wt:
                tvb[pos] = paired_test(wt[pos], wb[pos], alternative=alt, seed=seed).to_dict()
        parts = [f"{role}: " + ", ".join(f"{pos} {fmt_number(means[role][pos], '.3f')}"
                                         for pos in positions) for role in ROLES]
        sentence = (f"Mean instruction score by placement over {len(keep)} "
                    f"item{'' if len(keep) == 1 else 's'} - "
                    + "; ".join(parts) + ".")
        if tvb:
            name = "two-sided" if alt == "two-sided" else f"one-sided ({alt})"
            sentence += (f" Tuned - base ({name} paired t-tests over items): "
                         + ", ".join(f"{pos} {t['diff']:+.3f} (p = {fmt_number(t['pvalue'])})"
                                     for pos, t in tvb.items()) + ".")
        if excluded:
            sentence += " " + left_out_sentence(excluded, len(keep) + len(gone), "items",
                                                key="item")
        return {"means": means, "edges_vs_middle": edges, "tuned_vs_base": tvb,
                "n_items": len(keep), "excluded": excluded, "alternative": alt,
                "sentence": sentence}

    def plot(self) -> Any:
        """Mean score (± standard error) against placement, one line per model.

        Example:
            >>> fig = pr.show()  # doctest: +SKIP
        """
        from shiftlens.lenses.attribution.plots import position_figure

        return position_figure(self)

    def validate(self) -> None:
        """Columns present, positions among :data:`POSITIONS`, roles base/tuned.

        Example:
            >>> pr.validate()  # doctest: +SKIP
        """
        _missing(self.frame, _POSITION_COLUMNS, "PositionResult")
        bad = sorted(set(map(str, self.frame["position"])) - set(POSITIONS))
        if bad:
            raise ShiftlensError(f"unknown positions {bad}")
        bad = sorted(set(map(str, self.frame["role"])) - set(ROLES))
        if bad:
            raise ShiftlensError(f"unknown roles {bad}")
        if self.alternative not in ALTERNATIVES:
            raise ShiftlensError(f"alternative must be one of {ALTERNATIVES}, got "
                                 f"{self.alternative!r}")

