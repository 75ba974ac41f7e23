"""The activation difference lens's Results: the mean residual difference read as tokens, and diff
mining's token counts.

Both are diffing Results: ``top_tokens(k=20)`` returns the token ids the method surfaces, best
first (``benchmarks/diffing_table.py`` scores them on the organisms), ``diffing_sources`` lists
the rankings ``top_tokens`` can return and ``diffing_runner`` names the function that computes
the Result from ``(pair, texts)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from jaxtyping import Int
from torch import Tensor

from shiftlens.errors import ShiftlensError
from shiftlens.result import Result
from shiftlens.tokens import display_token

__all__ = ["ActivationDifferenceResult", "DiffMiningResult"]

_TOKEN_COLUMNS = ("layer", "position", "source", "model", "rank", "token_id", "token",
                  "probability", "stability")
_STEER_COLUMNS = ("model", "strength", "prompt_index", "prompt", "response", "n_tokens",
                  "stopped")
_MINING_COLUMNS = ("rank", "token_id", "token", "count", "rate", "rate_low", "rate_high",
                   "stability", "count_bottom", "mean_logprob_diff", "fraction_positive")
_SOURCES = ("logit_lens", "patchscope")
_ROLES = ("base", "tuned")


def _params(res: Result, *keys: str) -> dict[str, Any]:
    p = res.meta.get("params") if isinstance(res.meta, dict) else None
    if not isinstance(p, dict) or any(k not in p for k in keys):
        raise ShiftlensError(f"{type(res).__name__}: meta['params'] lacks one of {keys}")
    return p


def _columns(df: Any, cols: tuple[str, ...], what: str) -> None:
    if not isinstance(df, pd.DataFrame):
        raise ShiftlensError(f"{what} is a {type(df).__name__}, not a DataFrame")
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ShiftlensError(f"{what} lacks the columns {missing}")


def _tok(s: str) -> str:
    return repr(display_token(s))


def _pct(x: float) -> str:
    return "n/a" if not np.isfinite(x) else f"{x:.0%}"


@dataclass(eq=False, repr=False)
class ActivationDifferenceResult(Result):
    """The mean tuned-minus-base residual difference on unrelated text, read as tokens.

    Attributes:
        mean_diff: ``[layer, position, d_model]``: per layer of ``params["layers"]`` and each of
            the first positions read (token positions ``start_position ...``), the mean over
            texts of ``h_tuned - h_base`` after the layer.
        resid_norm: ``[model, layer, position]``: each model's (base, tuned) mean residual norm
            there (the scale of Patchscope and steering vectors).
        tokens: One row per ranked token: ``layer``, ``position`` (the token position, or -1 for
            the ranking of the probabilities averaged over the positions), ``source``
            (``"logit_lens"`` / ``"patchscope"``), ``model`` whose lens reads it, ``rank``,
            ``token_id``, ``token``, ``probability``, ``stability`` (at the lens layer, logit
            lens, position -1: the share of bootstrap resamples of the texts in which the token is
            among the ``top_k``; NaN elsewhere).
        steering: One row per greedy response of a steered model: ``model``, ``strength``
            (multiple of the residual norm; 0 = unsteered), ``prompt_index``, ``prompt``,
            ``response``, ``n_tokens``, ``stopped``.
        relevance: With a ``vocabulary``: per ranking at the lens layer, the share of its
            ``top_k`` in it (``source``, ``model``, ``k``, ``n_relevant``, ``share``,
            ``vocabulary_size``); else empty.
        n_texts: Texts averaged over.
        meta: Models, seed, params (``layers``, ``lens_layer``, ``n_positions``,
            ``start_position``, ``patch_prompt``, ``patch_scales``, ``steer_strengths``,
            ``top_k``, ``n_tokens``, ``n_boot``, ...), versions, ``n_layers``, ``n_dropped``.

    Example:
        >>> res = activation_difference(pair, texts)  # doctest: +SKIP
        >>> res.top_tokens(10)  # doctest: +SKIP
        >>> print(res.summary()["sentence"])  # doctest: +SKIP
    """

    #: The rankings :meth:`top_tokens` returns (the first is the default).
    diffing_sources: ClassVar[tuple[str, ...]] = _SOURCES
    #: The function computing this Result from ``(pair, texts)``.
    diffing_runner: ClassVar[str] = (
        "shiftlens.lenses.activation_difference.compare:activation_difference")

    mean_diff: Tensor
    resid_norm: Tensor
    tokens: pd.DataFrame
    steering: pd.DataFrame
    relevance: pd.DataFrame
    n_texts: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def lens_layer(self) -> int:
        """The layer of the headline ranking, the stability and the steering."""
        return int(_params(self, "lens_layer")["lens_layer"])

    def to_frame(self) -> pd.DataFrame:
        """Every ranked token (one row per layer, position, source, model and rank).

        Example:
            >>> res.to_frame().query("position == -1 and source == 'patchscope'")  # doctest: +SKIP
        """
        return self.tokens.copy()

    def ranking(self, source: str = "logit_lens", model: str = "tuned",
                layer: int | None = None, position: int = -1) -> pd.DataFrame:
        """One ranking's rows, best first.

        Args:
            source: ``"logit_lens"`` or ``"patchscope"``.
            model: Whose lens reads the difference: ``"tuned"`` or ``"base"``.
            layer: Default the lens layer.
            position: A token position, or -1 (averaged over the positions).

        Example:
            >>> res.ranking("patchscope", layer=1).head()  # doctest: +SKIP
        """
        if source not in _SOURCES or model not in _ROLES:
            raise ShiftlensError(f"source must be one of {_SOURCES} and model one of {_ROLES}, "
                                 f"got {source!r}, {model!r}")
        layer = self.lens_layer if layer is None else int(layer)
        t = self.tokens
        g = t[(t.source == source) & (t.model == model) & (t.layer == layer)
              & (t.position == position)]
        if g.empty:
            raise ShiftlensError(f"no {source} ranking of the {model} model at layer {layer}, "
                                 f"position {position} (layers {sorted(set(t.layer))})")
        return g.sort_values("rank").reset_index(drop=True)

    def top_tokens(self, k: int = 20, source: str = "logit_lens", model: str = "tuned",
                   layer: int | None = None) -> Int[Tensor, " k"]:
        """The token ids the lens surfaces, best first: the ``source`` reading (by ``model``) of
        the position-averaged difference at ``layer`` (default the lens layer).

        Raises:
            ShiftlensError: ``k`` exceeds the tokens kept (``params["n_tokens"]``).

        Example:
            >>> organism_score(res.top_tokens(20), "topic")  # doctest: +SKIP
        """
        g = self.ranking(source, model, layer)
        if not isinstance(k, int) or not 1 <= k <= len(g):
            raise ShiftlensError(f"k must be in [1, {len(g)}] (the tokens kept), got {k!r}")
        return torch.tensor(g.token_id.to_numpy()[:k], dtype=torch.long)

    def relative_norm(self) -> pd.DataFrame:
        """``|mean difference| / mean |h_base|`` per layer and position (how large the trace is).

        Example:
            >>> res.relative_norm().groupby("layer").relative_norm.mean()  # doctest: +SKIP
        """
        p = _params(self, "layers", "start_position")
        d = self.mean_diff.double().norm(dim=-1) / self.resid_norm[0].double().clamp(min=1e-30)
        rows = [(layer, p["start_position"] + i, float(d[j, i]))
                for j, layer in enumerate(p["layers"]) for i in range(d.shape[1])]
        return pd.DataFrame(rows, columns=["layer", "position", "relative_norm"])

    def summary(self) -> dict[str, Any]:
        """Headline: the lens layer's top tokens (logit lens and Patchscope of the tuned model),
        their stability, the size of the difference per layer, the steering and relevance.

        Example:
            >>> print(res.summary()["sentence"])  # doctest: +SKIP
        """
        p = _params(self, "n_positions", "top_k", "n_boot")
        ll = self.ranking("logit_lens").head(10)
        ps = self.ranking("patchscope").head(10)
        rel = self.relative_norm().groupby("layer").relative_norm.mean()
        out: dict[str, Any] = {
            "models": self.model_names, "n_texts": self.n_texts, "lens_layer": self.lens_layer,
            "logit_lens": [dict(token=r.token, token_id=int(r.token_id),
                                probability=float(r.probability), stability=float(r.stability))
                           for r in ll.itertuples()],
            "patchscope": [dict(token=r.token, token_id=int(r.token_id),
                                probability=float(r.probability)) for r in ps.itertuples()],
            "relative_norm_per_layer": {int(k): float(v) for k, v in rel.items()},
            "n_steered": int(len(self.steering)),
            "relevance": self.relevance.to_dict("records"),
        }
        k, n_boot = int(p["top_k"]), int(p["n_boot"])
        full = self.ranking("logit_lens").head(k)
        n_stable = int((full.stability >= 0.9).sum())
        out["n_stable"] = n_stable
        names = ", ".join(f"{_tok(r.token)} (p = {r.probability:.2f}, stable {_pct(r.stability)})"
                          for r in ll.head(5).itertuples())
        sure = (f" {n_stable} of those top {k} stay in the top {k} in at least 90% of "
                f"{n_boot} bootstrap resamples of the texts." if n_boot else "")
        out["sentence"] = (
            f"On the first {p['n_positions']} tokens of {self.n_texts} unrelated texts, the mean "
            f"residual difference tuned - base after layer {self.lens_layer} is "
            f"{rel.get(self.lens_layer, float('nan')):.0%} of the base residual norm; read "
            f"through the tuned model's logit lens it names {names}.{sure} Patchscope names "
            + ", ".join(_tok(t) for t in ps.token.head(5)) + ".")
        return out

    def plot(self, n: int = 15) -> Any:
        """The lens layer's top tokens (logit lens, Patchscope) and the difference's size by layer.

        Example:
            >>> fig = res.plot()  # doctest: +SKIP
        """
        from shiftlens.lenses.activation_difference.plots import activation_difference_figure

        return activation_difference_figure(self, n=n)

    def validate(self) -> None:
        """Refuse inconsistent fields (shapes against the params, columns, sources).

        Example:
            >>> res.validate()  # doctest: +SKIP
        """
        p = _params(self, "layers", "lens_layer", "n_positions")
        _columns(self.tokens, _TOKEN_COLUMNS, "ActivationDifferenceResult.tokens")
        _columns(self.steering, _STEER_COLUMNS, "ActivationDifferenceResult.steering")
        n_l, n_p = len(p["layers"]), int(p["n_positions"])
        if self.mean_diff.dim() != 3 or tuple(self.mean_diff.shape[:2]) != (n_l, n_p):
            raise ShiftlensError(f"ActivationDifferenceResult: mean_diff has shape "
                                 f"{tuple(self.mean_diff.shape)}, params say [{n_l}, {n_p}, d]")
        if tuple(self.resid_norm.shape) != (2, n_l, n_p):
            raise ShiftlensError(f"ActivationDifferenceResult: resid_norm has shape "
                                 f"{tuple(self.resid_norm.shape)}, expected (2, {n_l}, {n_p})")
        if p["lens_layer"] not in p["layers"] or not set(self.tokens.layer) <= set(p["layers"]):
            raise ShiftlensError("ActivationDifferenceResult: layers disagree with the params")
        if not set(self.tokens.source) <= set(_SOURCES) or not set(self.tokens.model) <= set(
                _ROLES):
            raise ShiftlensError("ActivationDifferenceResult: unknown source or model in tokens")


@dataclass(eq=False, repr=False)
class DiffMiningResult(Result):
    """Tokens ranked by how often their logit rose among the ``k`` most (tuned - base).

    Attributes:
        tokens: The top ``n_tokens`` tokens, best first: ``rank``, ``token_id``, ``token``,
            ``count`` (positions where it was among the ``k`` largest logit rises), ``rate``
            (count / positions) with a 95% Poisson-bootstrap interval over texts
            (``rate_low``/``rate_high``), ``stability`` (share of resamples in which it is among
            the ``top_k`` ranked tokens), ``count_bottom`` (positions where its logit fell among
            the ``k`` most), ``mean_logprob_diff`` (mean over all positions of log p_tuned -
            log p_base) and ``fraction_positive`` (share of positions where that is positive).
        n_positions: Positions counted.
        n_texts: Texts read.
        meta: Models, seed, params (``k``, ``top_k``, ``n_tokens``, ``n_boot``), versions.

    Example:
        >>> res = diff_mining(pair, texts)  # doctest: +SKIP
        >>> res.top_tokens(5)  # doctest: +SKIP
    """

    diffing_sources: ClassVar[tuple[str, ...]] = ("logits",)
    diffing_runner: ClassVar[str] = "shiftlens.lenses.activation_difference.mining:diff_mining"

    tokens: pd.DataFrame
    n_positions: int = 0
    n_texts: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        """The ranked tokens (one row per token).

        Example:
            >>> res.to_frame().head(20)  # doctest: +SKIP
        """
        return self.tokens.copy()

    def top_tokens(self, k: int = 20, source: str = "logits") -> Int[Tensor, " k"]:
        """The ``k`` most often rising tokens, best first.

        Example:
            >>> res.top_tokens(20)  # doctest: +SKIP
        """
        if source != "logits":
            raise ShiftlensError(f"diff mining has one ranking, 'logits'; got {source!r}")
        if not isinstance(k, int) or not 1 <= k <= len(self.tokens):
            raise ShiftlensError(f"k must be in [1, {len(self.tokens)}] (the tokens kept), "
                                 f"got {k!r}")
        return torch.tensor(self.tokens.sort_values("rank").token_id.to_numpy()[:k],
                            dtype=torch.long)

    def summary(self) -> dict[str, Any]:
        """Headline: the most often rising tokens, with intervals and stability.

        Example:
            >>> print(res.summary()["sentence"])  # doctest: +SKIP
        """
        p = _params(self, "k", "top_k", "n_boot")
        t = self.tokens.sort_values("rank")
        k, top_k = int(p["k"]), int(p["top_k"])
        head = t.head(top_k)
        n_stable = int((head.stability >= 0.9).sum())
        out: dict[str, Any] = {
            "models": self.model_names, "n_positions": self.n_positions, "n_texts": self.n_texts,
            "top": [dict(token=r.token, token_id=int(r.token_id), rate=float(r.rate),
                         rate_ci=[float(r.rate_low), float(r.rate_high)],
                         stability=float(r.stability), mean_logprob_diff=float(
                             r.mean_logprob_diff)) for r in t.head(10).itertuples()],
            "n_stable": n_stable,
        }
        names = ", ".join(
            f"{_tok(r.token)} ({r.rate:.0%} of positions"
            + (f", 95% CI [{r.rate_low:.0%}, {r.rate_high:.0%}]" if np.isfinite(r.rate_low)
               else "") + ")" for r in t.head(5).itertuples())
        sure = (f" {n_stable} of the top {top_k} stay in the top {top_k} in at least 90% of "
                f"{p['n_boot']} bootstrap resamples of the texts." if p["n_boot"] else "")
        out["sentence"] = (
            f"Over {self.n_positions} positions of {self.n_texts} texts, the tokens whose logit "
            f"most often rose among the {k} largest rises (tuned - base) are {names}.{sure}")
        return out

    def plot(self, n: int = 20) -> Any:
        """The top tokens' rates with their intervals.

        Example:
            >>> fig = res.plot()  # doctest: +SKIP
        """
        from shiftlens.lenses.activation_difference.plots import diff_mining_figure

        return diff_mining_figure(self, n=n)

    def validate(self) -> None:
        """Refuse inconsistent fields (columns, ranks, counts against positions).

        Example:
            >>> res.validate()  # doctest: +SKIP
        """
        _params(self, "k", "top_k", "n_boot")
        _columns(self.tokens, _MINING_COLUMNS, "DiffMiningResult.tokens")
        if list(self.tokens["rank"]) != list(range(len(self.tokens))):
            raise ShiftlensError("DiffMiningResult: ranks are not 0..n-1 in order")
        if len(self.tokens) and int(self.tokens["count"].max()) > self.n_positions:
            raise ShiftlensError("DiffMiningResult: a count exceeds the positions counted")
