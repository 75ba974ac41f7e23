"""The weight-delta lens on a base/tuned pair: every matrix's change, read from checkpoint files one
parameter at a time.

Layer (2) of the lens: :func:`weight_delta` runs :mod:`.core` on both models' weights, in three
steps:

* **validate** - the two weight sources (checkpoint directories, bridges or a ModelPair) hold
  the same matrices with the same shapes, and the arguments;
* **accumulate** - matrix by matrix (in layer order): read the base and tuned tensor, take the
  change's spectrum and its ``r`` leading directions, read them as tokens, keep the numbers and
  drop the tensors: memory is one matrix pair plus the unembedding;
* **assemble** - the per-matrix table, the singular values, the directions' tokens and the three
  token rankings become a :class:`WeightDeltaResult`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from shiftlens.checks import check_int
from shiftlens.errors import ShiftlensError
from shiftlens.lenses.weight_delta.core import (
    WeightReader,
    _svd,
    effective_rank,
    energy_share,
    token_energy,
    vocab_zscores,
)
from shiftlens.lenses.weight_delta.results import SOURCES, WeightDeltaResult
from shiftlens.result import make_meta
from shiftlens.tokens import token_strings

__all__ = ["weight_delta"]


@dataclass
class _Acc:
    rows: list[dict[str, Any]] = field(default_factory=list)
    svals: dict[str, Tensor] = field(default_factory=dict)
    dirs: list[tuple[Any, ...]] = field(default_factory=list)
    scores: dict[str, Tensor] = field(default_factory=dict)


def _source(x: Any, from_files: bool = True) -> Any:
    """A checkpoint directory when the model was loaded from one (read from its files), else the
    loaded model itself."""
    if isinstance(x, (str, Path)) or not from_files:
        return x
    from shiftlens.bridge import model_source

    src = Path(model_source(x))
    if src.is_dir() and (any(src.glob("*.safetensors"))):
        return src
    return x


def weight_delta(
    base: Any,
    tuned: Any = None,
    *,
    r: int = 8,
    n_tokens: int = 20,
    from_files: bool = True,
    progress: bool = True,
) -> WeightDeltaResult:
    """Per layer and matrix: how much the weights changed, in how many directions, toward which tokens.

    For every matrix ``W`` (2-D parameter) of both models, ``Delta = W_tuned - W_base``: its
    relative norm, all its singular values, its effective rank and the energy share of its top
    ``r`` directions (:mod:`.core` defines them). The ``r`` leading singular vectors on each
    matrix's residual-stream side are read as tokens through the tuned model's unembedding (final
    norm folded); the embedding's and the unembedding's changes are read on their vocabulary
    side. Three token rankings (:meth:`WeightDeltaResult.top_tokens`):

    * ``"directions"``: ``score_t = sum over block matrices and i < r of e_i z_i(t)``, ``z_i`` the
      oriented z-scored projection of direction ``i`` and ``e_i = s_i^2 / |Delta|_F^2`` its share
      of its matrix's change;
    * ``"unembed"`` / ``"embed"``: each token's energy in the top ``r`` directions of the
      unembedding's / embedding's change (``sum_i s_i^2 u_{t,i}^2``).

    Weights are read with :class:`.core.WeightReader`: from checkpoint files one tensor at a time
    (a ModelPair loaded from local directories is read from its files, so the loaded weights are
    not touched), or from a loaded model.

    Args:
        base: A :class:`shiftlens.ModelPair` (then ``tuned`` is None), or the base model's
            checkpoint directory / ``.gguf`` / loaded bridge.
        tuned: The tuned model, same forms.
        r: Directions per matrix read as tokens (and the ``r`` of the energy share).
        n_tokens: Tokens kept per direction.
        from_files: For loaded bridges: read the checkpoint directory they were loaded from
            (when it is a local directory with safetensors files), not the loaded weights.
        progress: Show a progress bar.

    Returns:
        A :class:`WeightDeltaResult`.

    Raises:
        ShiftlensError: the models' matrices differ in names or shapes; a bad argument.

    Example:
        >>> from shiftlens.zoo import pair_dirs
        >>> res = weight_delta(*pair_dirs(), progress=False)  # doctest: +SKIP
        >>> res.to_frame().sort_values("relative_norm").tail()  # doctest: +SKIP
    """
    if tuned is None:
        if not hasattr(base, "base") or not hasattr(base, "tuned"):
            raise ShiftlensError("weight_delta takes a ModelPair, or the base and the tuned model")
        names = dict(getattr(base, "names", {}))
        base, tuned = base.base, base.tuned
    else:
        names = {}
    check_int("r", r, minimum=1)
    check_int("n_tokens", n_tokens, minimum=1)
    rb = WeightReader(_source(base, from_files))
    rt = WeightReader(_source(tuned, from_files))
    matrices = _check_same(rb, rt)
    tok, w_u = _unembedding(_source(tuned, from_files))
    check_int("n_tokens", n_tokens, maximum=rt.d_vocab)
    acc = _Acc(scores={s: torch.zeros(rt.d_vocab, dtype=torch.float64) for s in SOURCES})
    for name in tqdm(matrices, desc="weight delta", disable=not progress):
        _one_matrix(rb, rt, name, r, n_tokens, w_u, acc)
    res = WeightDeltaResult(
        matrices=pd.DataFrame(acc.rows), singular_values=acc.svals,
        directions=_direction_frame(acc.dirs, tok), scores=acc.scores,
        meta=make_meta(models=names or {"base": rb.name, "tuned": rt.name}, seed=None,
                       params=dict(r=r, n_tokens=n_tokens, unembedding="tuned, final norm folded"),
                       n_layers=rt.n_layers, d_model=rt.d_model, d_vocab=rt.d_vocab))
    res.validate()
    return res


def _check_same(rb: WeightReader, rt: WeightReader) -> list[str]:
    nb, nt = rb.names(), rt.names()
    if set(nb) != set(nt):
        only_b, only_t = sorted(set(nb) - set(nt))[:3], sorted(set(nt) - set(nb))[:3]
        raise ShiftlensError(f"the models' matrices differ (only in base: {only_b}; only in "
                             f"tuned: {only_t})")
    for n in nb:
        if rb._shape(n) != rt._shape(n):
            raise ShiftlensError(f"{n}: shape {rb._shape(n)} in base, {rt._shape(n)} in tuned")
    return sorted(nb, key=lambda n: (rb.layout(n)[0], nb.index(n)))


def _unembedding(tuned: Any) -> tuple[Any, Tensor]:
    from shiftlens.weights import unembedding, weight_source

    src = weight_source(tuned)
    return src.tokenizer, unembedding(src).double()


def _one_matrix(rb: WeightReader, rt: WeightReader, name: str, r: int, n_tokens: int,
                w_u: Tensor, acc: _Acc) -> None:
    layer, matrix, side, in_out = rt.layout(name)
    wb, wt = rb.read(name), rt.read(name)
    delta = wt - wb
    if in_out:  # [in, out] storage: work on [out, in] like nn.Linear
        wb, delta = wb.T, delta.T
    k = min(r, min(delta.shape))
    u_all, s, vh_all = _svd(delta)  # one decomposition: all singular values, top-k vectors
    u, s_top, vh = u_all[:, :k], s[:k], vh_all[:k]
    del u_all, vh_all
    total = float((s ** 2).sum())
    nb = float(wb.norm())
    acc.svals[name] = s
    acc.rows.append(dict(
        name=name, layer=layer, matrix=matrix, side=side, rows=int(delta.shape[0]),
        cols=int(delta.shape[1]), norm_base=nb, norm_delta=float(delta.norm()),
        relative_norm=float(delta.norm()) / nb if nb > 0 else float("nan"),
        top_singular_value=float(s[0]), effective_rank=effective_rank(s),
        energy_top_r=energy_share(s, r)))
    if side in ("write", "read"):
        vecs = u.T if side == "write" else vh  # [r, d_model]
        z = vocab_zscores(vecs, w_u)
        for i in range(z.shape[0]):
            e = float(s_top[i] ** 2) / total if total > 0 else 0.0
            acc.scores["directions"] += e * z[i]
            top = z[i].topk(n_tokens)
            acc.dirs += [(name, layer, matrix, side, i, float(s_top[i]), e, j, int(t), float(v))
                         for j, (t, v) in enumerate(zip(top.indices.tolist(),
                                                        top.values.tolist()))]
    elif side in ("embed", "unembed") and delta.shape[0] == rt.d_vocab:
        energy = token_energy(u, s_top)
        acc.scores[side] += energy / max(float(energy.sum()), 1e-300)
        for i in range(u.shape[1]):
            share = u[:, i] ** 2
            top = share.topk(n_tokens)
            e = float(s_top[i] ** 2) / total if total > 0 else 0.0
            acc.dirs += [(name, layer, matrix, side, i, float(s_top[i]), e, j, int(t), float(v))
                         for j, (t, v) in enumerate(zip(top.indices.tolist(),
                                                        top.values.tolist()))]


def _direction_frame(dirs: list[tuple[Any, ...]], tokenizer: Any) -> pd.DataFrame:
    cols = ["name", "layer", "matrix", "side", "direction", "singular_value", "energy", "rank",
            "token_id", "value"]
    df = pd.DataFrame(dirs, columns=cols)
    ids = sorted(set(df.token_id.tolist()))
    text = {i: token_strings(tokenizer, [i, i])[1] for i in ids}
    df.insert(9, "token", [text[i] for i in df.token_id])
    return df.astype({"layer": np.int64, "direction": np.int64, "rank": np.int64,
                      "token_id": np.int64})
