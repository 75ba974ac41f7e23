"""The amplification lens's Result: responses of ``base + a (tuned - base)`` and their tokens.

A diffing Result: ``top_tokens(k=20)`` ranks the tokens the most amplified model writes more
often than the base (``benchmarks/diffing_table.py`` scores them on the organisms).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from shiftlens.errors import ShiftlensError
from shiftlens.result import Result
from shiftlens.tokens import display_token

__all__ = ["AmplificationResult"]

_COLUMNS = ("alpha", "prompt_index", "prompt", "response", "token_ids", "n_tokens", "stopped")


@dataclass(eq=False, repr=False)
class AmplificationResult(Result):
    """Greedy responses of the amplified model at each amplification, and their token counts.

    Attributes:
        generations: One row per (alpha, prompt): ``prompt``, ``response`` (decoded),
            ``token_ids`` (space-separated ids), ``n_tokens``, ``stopped`` (a stop token ended
            it).
        counts: ``[alpha, d_vocab]``: how often each token occurs in the responses at each
            amplification (in the order of ``params["alphas"]``).
        token_text: Token id -> its text, for every token that occurs in a response.
        meta: Models, params (``alphas``, ``max_new_tokens``, ``decoding``), versions.

    Example:
        >>> res = amplification(pair, prompts)  # doctest: +SKIP
        >>> res.responses(4.0)  # doctest: +SKIP
    """

    diffing_sources: ClassVar[tuple[str, ...]] = ("generations",)
    diffing_runner: ClassVar[str] = "shiftlens.lenses.amplification.compare:amplification"

    generations: pd.DataFrame
    counts: Tensor
    token_text: dict[int, str]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def alphas(self) -> list[float]:
        """The amplifications, in the order of ``counts``."""
        return [float(a) for a in self.meta["params"]["alphas"]]

    def to_frame(self) -> pd.DataFrame:
        """One row per (alpha, prompt) with the response.

        Example:
            >>> res.to_frame().pivot(index="prompt_index", columns="alpha", values="response")  # doctest: +SKIP
        """
        return self.generations.copy()

    def responses(self, alpha: float) -> list[str]:
        """The responses at one amplification, in prompt order.

        Example:
            >>> res.responses(0.0)  # doctest: +SKIP
        """
        g = self.generations[self.generations.alpha == float(alpha)]
        if g.empty:
            raise ShiftlensError(f"no responses at alpha {alpha}; alphas: {self.alphas}")
        return g.sort_values("prompt_index").response.tolist()

    def token_scores(self) -> Float[Tensor, " d_vocab"]:
        """Per token: ``log`` of its smoothed frequency in the responses at the largest ``a``
        over that at the smallest (add-one smoothing over the vocabulary).

        Example:
            >>> res.token_scores().topk(5)  # doctest: +SKIP
        """
        lo, hi = int(np.argmin(self.alphas)), int(np.argmax(self.alphas))
        c_lo, c_hi = self.counts[lo].double(), self.counts[hi].double()
        v = c_lo.shape[0]
        return torch.log((c_hi + 1) / (c_hi.sum() + v)) - torch.log((c_lo + 1) / (c_lo.sum() + v))

    def top_tokens(self, k: int = 20, source: str = "generations") -> Int[Tensor, " k"]:
        """The tokens the most amplified model writes more often than the least amplified one,
        best first (:meth:`token_scores`; ties by the count at the largest ``a``).

        Example:
            >>> res.top_tokens(10)  # doctest: +SKIP
        """
        if source != "generations":
            raise ShiftlensError(f"amplification has one ranking, 'generations'; got {source!r}")
        s = self.token_scores()
        if not isinstance(k, int) or not 1 <= k <= s.shape[0]:
            raise ShiftlensError(f"k must be in [1, {s.shape[0]}], got {k!r}")
        hi = int(np.argmax(self.alphas))
        key = s + 1e-9 * torch.tanh(self.counts[hi].double())
        return key.topk(k).indices.long()

    def summary(self) -> dict[str, Any]:
        """Headline: the responses' tokens that rise with the amplification, and examples.

        Example:
            >>> print(res.summary()["sentence"])  # doctest: +SKIP
        """
        al = self.alphas
        hi = float(max(al))
        top = [int(t) for t in self.top_tokens(min(10, self.counts.shape[1]))]
        lo_i, hi_i = int(np.argmin(al)), int(np.argmax(al))
        words = [dict(token=self.token_text.get(t, f"#{t}"), token_id=t,
                      count_low=int(self.counts[lo_i, t]), count_high=int(self.counts[hi_i, t]))
                 for t in top]
        n_prompts = int(self.generations.prompt_index.nunique())
        ex = self.generations[(self.generations.alpha == hi)].sort_values("prompt_index").head(2)
        out: dict[str, Any] = {"models": self.model_names, "alphas": al, "n_prompts": n_prompts,
                               "rising_tokens": words,
                               "examples": ex[["prompt", "response"]].to_dict("records")}
        shown = [w for w in words if w["count_high"] > w["count_low"]][:5]
        names = ", ".join(f"{display_token(w['token'])!r} ({w['count_low']} -> "
                          f"{w['count_high']})" for w in shown) or "no token"
        out["sentence"] = (
            f"Decoding greedily from base + a (tuned - base) for a in "
            f"{', '.join(f'{a:g}' for a in al)} on {n_prompts} prompts: at a = {hi:g} the "
            f"responses use {names} more often than at a = {min(al):g} (counts over all "
            "responses)" + (f"; e.g. {ex.prompt.iloc[0]!r} -> {ex.response.iloc[0]!r}"
                            if len(ex) else "") + ".")
        return out

    def plot(self, n: int = 10) -> Any:
        """The rising tokens' counts against the amplification.

        Example:
            >>> fig = res.plot()  # doctest: +SKIP
        """
        from shiftlens.lenses.amplification.plots import amplification_figure

        return amplification_figure(self, n=n)

    def validate(self) -> None:
        """Refuse inconsistent fields (columns, counts against alphas and responses).

        Example:
            >>> res.validate()  # doctest: +SKIP
        """
        p = self.meta.get("params", {}) if isinstance(self.meta, dict) else {}
        if "alphas" not in p:
            raise ShiftlensError("AmplificationResult: meta['params'] lacks 'alphas'")
        if not isinstance(self.generations, pd.DataFrame) or any(
                c not in self.generations.columns for c in _COLUMNS):
            raise ShiftlensError(f"AmplificationResult.generations lacks columns of {_COLUMNS}")
        if self.counts.dim() != 2 or self.counts.shape[0] != len(p["alphas"]):
            raise ShiftlensError("AmplificationResult: counts must be [alpha, d_vocab]")
        for j, a in enumerate(p["alphas"]):
            n = int(self.generations.n_tokens[self.generations.alpha == a].sum())
            if not math.isclose(float(self.counts[j].sum()), n):
                raise ShiftlensError(f"AmplificationResult: counts at alpha {a} sum to "
                                     f"{float(self.counts[j].sum()):g}, the responses hold {n}")
