"""The weight-delta lens's Result: per matrix, how much the weights changed and toward which tokens.

A diffing Result: ``top_tokens(k=20, source=...)`` returns the token ids the weight change points
to, best first (``benchmarks/diffing_table.py`` scores them on the organisms).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from jaxtyping import Int
from torch import Tensor

from shiftlens.errors import ShiftlensError
from shiftlens.result import Result
from shiftlens.tokens import display_token

__all__ = ["WeightDeltaResult", "SOURCES"]

#: The token rankings of the lens (``top_tokens(source=...)``), the default first.
SOURCES: tuple[str, ...] = ("directions", "unembed", "embed")

_MATRIX_COLUMNS = ("name", "layer", "matrix", "side", "rows", "cols", "norm_base", "norm_delta",
                   "relative_norm", "top_singular_value", "effective_rank", "energy_top_r")
_DIRECTION_COLUMNS = ("name", "layer", "matrix", "side", "direction", "singular_value", "energy",
                      "rank", "token_id", "token", "value")


@dataclass(eq=False, repr=False)
class WeightDeltaResult(Result):
    """Every matrix's change ``W_tuned - W_base``: size, spectrum, directions read as tokens.

    Attributes:
        matrices: One row per matrix (2-D parameter): ``name`` (checkpoint name), ``layer`` (-1
            outside the blocks), ``matrix``, ``side`` (``"write"``/``"read"``: its residual-stream
            side; ``"embed"``/``"unembed"``: rows are tokens), ``rows``/``cols`` (as
            ``[out, in]``), ``norm_base``, ``norm_delta``, ``relative_norm``,
            ``top_singular_value``, ``effective_rank`` (Roy & Vetterli 2007) and
            ``energy_top_r`` (share of ``|Delta|_F^2`` in the top ``r`` singular values).
        singular_values: Matrix name -> all singular values of its change (float64, largest
            first).
        directions: One row per (matrix, direction, rank): the direction's ``singular_value``
            and ``energy`` share, and its top tokens: ``value`` is the oriented z-score of the
            projection through the unembedding (write/read matrices) or the token's share
            ``u_{t,i}^2`` of the direction (embed/unembed).
        scores: Source -> ``[d_vocab]`` token scores (see :data:`SOURCES` and
            :func:`~shiftlens.lenses.weight_delta.weight_delta`).
        meta: Models, params (``r``, ``n_tokens``, ``unembedding``), versions, ``n_layers``,
            ``d_model``, ``d_vocab``.

    Example:
        >>> res = weight_delta(pair)  # doctest: +SKIP
        >>> res.top_tokens(20)  # doctest: +SKIP
    """

    diffing_sources: ClassVar[tuple[str, ...]] = SOURCES
    diffing_runner: ClassVar[str] = "shiftlens.lenses.weight_delta.compare:weight_delta"

    matrices: pd.DataFrame
    singular_values: dict[str, Tensor]
    directions: pd.DataFrame
    scores: dict[str, Tensor]
    meta: dict[str, Any] = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        """One row per matrix (size, spectrum summaries).

        Example:
            >>> res.to_frame().pivot(index="layer", columns="matrix", values="relative_norm")  # doctest: +SKIP
        """
        return self.matrices.copy()

    def top_tokens(self, k: int = 20, source: str = "directions") -> Int[Tensor, " k"]:
        """The ``k`` tokens the change points to most, best first.

        Args:
            k: How many.
            source: ``"directions"`` (the block matrices' leading directions read through the
                unembedding), ``"unembed"`` or ``"embed"`` (the vocabulary side of those
                matrices' changes).

        Raises:
            ShiftlensError: an unknown source, or one without a change to read (a model whose
                unembedding is tied to its embedding has one of the two).

        Example:
            >>> res.top_tokens(10, source="unembed")  # doctest: +SKIP
        """
        if source not in SOURCES:
            raise ShiftlensError(f"source must be one of {SOURCES}, got {source!r}")
        s = self.scores[source]
        if not isinstance(k, int) or not 1 <= k <= s.shape[0]:
            raise ShiftlensError(f"k must be in [1, {s.shape[0]}], got {k!r}")
        if not bool((s != 0).any()):
            raise ShiftlensError(f"no {source} change to read (no such matrix, or tied to "
                                 "another one)")
        return s.topk(k).indices.long()

    def token_frame(self, source: str = "directions", k: int = 20, tokenizer: Any = None
                    ) -> pd.DataFrame:
        """The top ``k`` tokens of a source with their scores (texts where the directions name
        them, else from ``tokenizer``).

        Example:
            >>> res.token_frame("unembed", 10)  # doctest: +SKIP
        """
        ids = self.top_tokens(k, source).tolist()
        known = dict(zip(self.directions.token_id, self.directions.token))
        text = [known.get(i) if known.get(i) is not None else (
            tokenizer.decode([i]) if tokenizer is not None else f"#{i}") for i in ids]
        return pd.DataFrame(dict(rank=np.arange(len(ids)), token_id=np.asarray(ids, np.int64),
                                 token=text, score=self.scores[source][ids].numpy()))

    def summary(self) -> dict[str, Any]:
        """Headline: where the change is largest, how many directions it spans, its tokens.

        Example:
            >>> print(res.summary()["sentence"])  # doctest: +SKIP
        """
        m = self.matrices
        blocks = m[m.layer >= 0]
        per_layer = blocks.groupby("layer").relative_norm.mean()
        big = m.loc[m.relative_norm.idxmax()]
        r = int(self.meta["params"]["r"])
        out: dict[str, Any] = {
            "models": self.model_names,
            "largest": dict(name=big["name"], relative_norm=float(big.relative_norm),
                            effective_rank=float(big.effective_rank),
                            energy_top_r=float(big.energy_top_r)),
            "relative_norm_per_layer": {int(k): float(v) for k, v in per_layer.items()},
            "median_effective_rank": float(m.effective_rank.median()),
            "median_energy_top_r": float(m.energy_top_r.median()),
        }
        toks: dict[str, list[str]] = {}
        for s in SOURCES:
            try:
                toks[s] = self.token_frame(s, 10).token.tolist()
            except ShiftlensError:
                toks[s] = []
        out["tokens"] = toks
        where = f"{big['name']} (relative change {big.relative_norm:.0%})"
        dirs = ", ".join(repr(display_token(t)) for t in toks["directions"][:6])
        un = ", ".join(repr(display_token(t)) for t in toks["unembed"][:4])
        out["sentence"] = (
            f"Across {len(m)} matrices the weights moved by {m.relative_norm.median():.0%} of "
            f"their norm (median), most in {where}; the changes are spread over many "
            f"directions (median effective rank {m.effective_rank.median():.1f}, the top {r} "
            f"hold {m.energy_top_r.median():.0%} of a change's energy). Read through the "
            f"unembedding, the block matrices' leading directions point to {dirs}"
            + (f"; the unembedding changed most for {un}" if un else "") + ".")
        return out

    def plot(self, n: int = 15) -> Any:
        """Relative change per layer and matrix, and the directions' top tokens.

        Example:
            >>> fig = res.plot()  # doctest: +SKIP
        """
        from shiftlens.lenses.weight_delta.plots import weight_delta_figure

        return weight_delta_figure(self, n=n)

    def validate(self) -> None:
        """Refuse inconsistent fields (columns, names, score shapes).

        Example:
            >>> res.validate()  # doctest: +SKIP
        """
        for df, cols, what in ((self.matrices, _MATRIX_COLUMNS, "matrices"),
                               (self.directions, _DIRECTION_COLUMNS, "directions")):
            if not isinstance(df, pd.DataFrame) or any(c not in df.columns for c in cols):
                raise ShiftlensError(f"WeightDeltaResult.{what} lacks columns of {cols}")
        if set(self.singular_values) != set(self.matrices.name):
            raise ShiftlensError("WeightDeltaResult: singular values and matrices disagree")
        if set(self.scores) != set(SOURCES) or len({int(v.shape[0]) for v in
                                                    self.scores.values()}) != 1:
            raise ShiftlensError(f"WeightDeltaResult: scores must hold {SOURCES}, one length")
        if not set(self.directions.name) <= set(self.matrices.name):
            raise ShiftlensError("WeightDeltaResult: directions of unknown matrices")
