"""Lens 3, tensor level: how far a layer's principal subspace turned, and a shared cache.

:func:`principal_angles` and :func:`explained_share` put rotation in numbers (not in Wu et al.
2024: the paper reads the components as words only); :class:`ComponentCache` shares one model's
components and word directions between :func:`~shiftlens.lenses.ffn.compare.concept_shift` and
:func:`~shiftlens.lenses.ffn.compare.rotation`, so the report computes each only once.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from shiftlens.bridge import device_of, model_name
from shiftlens.errors import ShiftlensError
from shiftlens.lenses.ffn.core import (
    Components,
    _directions,
    _matrix,
    _pca,
    prefix_exact,
    read_w_out,
)
from shiftlens.weights import (
    CheckpointWeights,
    WordVocab,
)

__all__ = ["principal_angles", "explained_share", "ComponentCache"]


# ============================================================================ subspaces
def _orthonormal_cols(A: Tensor) -> Tensor:
    Q, _ = torch.linalg.qr(A.to(torch.float64).T)
    return Q


def principal_angles(
    A: Float[Tensor, "k d"], B: Float[Tensor, "m d"]
) -> Float[Tensor, " r"]:
    """Principal angles (radians, ascending) between the row spaces of ``A`` and ``B``.

    ``r = min(k, m)``; rows need not be orthonormal (they are orthonormalised by QR). Cosines
    come from the SVD of ``Qa^T Qb``; angles below 45 degrees are taken from the sines instead
    (accurate for tiny angles, Knyazev & Argentati 2002). Computed in float64 on ``A``'s
    device.

    Raises:
        ShiftlensError: inputs that are not 2-D floating tensors with rows, of the same width
            ``d``, with at most ``d`` rows, finite, and of full row rank.

    Example:
        >>> e = torch.eye(3)
        >>> principal_angles(e[:2], e[1:]).tolist()  # shares e1, orthogonal otherwise
        [0.0, 1.5707963267948966]
    """
    A, B = _matrix(A, "A", "principal_angles"), _matrix(B, "B", "principal_angles")
    if A.shape[1] != B.shape[1] or not 0 < A.shape[0] <= A.shape[1] \
            or not 0 < B.shape[0] <= B.shape[1]:
        raise ShiftlensError(f"principal_angles: need [k, d] and [m, d] with 1 <= k, m <= d; got "
                             f"{list(A.shape)} and {list(B.shape)}")
    if A.shape[0] < B.shape[0]:
        A, B = B, A
    Qa, Qb = _orthonormal_cols(A), _orthonormal_cols(B.to(A.device))
    M = Qa.T @ Qb
    cos = torch.linalg.svdvals(M).clamp(0, 1)  # descending -> angles ascending
    sin = torch.linalg.svdvals(Qb - Qa @ M).clamp(0, 1).flip(0)  # ascending
    return torch.where(cos**2 > 0.5, torch.arcsin(sin), torch.arccos(cos))


def explained_share(
    W: Float[Tensor, "n d"], basis: Float[Tensor, "k d"]
) -> float:
    """Share of the variance of ``W``'s rows (centred over rows) inside the span of ``basis``.

    Computed in float64 on ``W``'s device (so the share of ``W``'s own top-k components and of
    another model's are computed the same way: identical models give a ratio of exactly 1).

    Raises:
        ShiftlensError: inputs that are not finite 2-D floating tensors of the same width, or a
            ``W`` without variance (the share is undefined).

    Example:
        >>> W = torch.randn(50, 4) * torch.tensor([3.0, 1, 1, 1])
        >>> 0.0 < explained_share(W, torch.eye(4)[:1]) < 1.0
        True
    """
    W = _matrix(W, "W", "explained_share")
    basis = _matrix(basis, "basis", "explained_share")
    if W.shape[1] != basis.shape[1] or not 0 < basis.shape[0] <= basis.shape[1]:
        raise ShiftlensError(f"explained_share: W {list(W.shape)} and basis {list(basis.shape)} "
                             "need the same width d and 1 <= k <= d basis rows")
    X = W.to(torch.float64)
    X = X - X.mean(dim=0)
    tot = float((X * X).sum())
    if not tot > 0:
        raise ShiftlensError("explained_share: W has no variance (every row is the same), the "
                             "share is undefined")
    Q = _orthonormal_cols(basis.to(X.device))
    return float(((X @ Q) ** 2).sum()) / tot


# ============================================================================ shared cache
def _model_key(model: Any) -> tuple:
    if isinstance(model, CheckpointWeights):
        return ("checkpoint", str(model.path), str(model.dtype))
    return ("object", id(model))


class ComponentCache:
    """Principal components and word directions computed once and shared between calls.

    ``concept_shift`` and ``rotation`` take ``cache=``: the report passes one cache to both, so
    each layer's PCA (the expensive step: one float64 Gram matrix and eigensolve per layer and
    model) and each model's word directions are computed once. A request for ``k`` components
    is served from a cached larger ``K`` of the same model, layer, solver and device by taking
    the first ``k`` (bitwise what the exact solvers return for ``k``; the randomized solver and
    the Gram solver on wide matrices are cached per ``k``).

    The cache holds references to the models it was used with and assumes their weights do not
    change while it is in use (call :meth:`clear` after editing weights). Memory: the cached
    components, ``k x d_model`` floats per model and layer (300 x 4096 float32 = 4.9 MB).

    Attributes:
        hits: Requests served from the cache.
        misses: Requests that computed.

    Example:
        >>> cache = ComponentCache()
        >>> cs = concept_shift(pair, k=16, cache=cache)  # doctest: +SKIP
        >>> rot = rotation(pair, k=8, cache=cache)       # doctest: +SKIP
        >>> cache.hits                                   # doctest: +SKIP
        4
    """

    def __init__(self) -> None:
        self._components: dict[tuple, Components] = {}
        self._directions: dict[tuple, Tensor] = {}
        self._models: dict[tuple, Any] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._components) + len(self._directions)

    def __repr__(self) -> str:
        return (f"ComponentCache({len(self._components)} components, {len(self._directions)} "
                f"direction sets, hits={self.hits}, misses={self.misses})")

    def clear(self) -> None:
        """Forget everything (after editing a model's weights).

        Example:
            >>> c = ComponentCache(); c.clear(); len(c)
            0
        """
        self._components.clear()
        self._directions.clear()
        self._models.clear()

    def components(self, model: Any, layer: int, k: int, *, method: str = "auto",
                   device: torch.device | None = None, fold_post_norm: bool = True,
                   seed: int = 0, W: Tensor | None = None, who: str | None = None
                   ) -> Components:
        """The top-``k`` components of ``model``'s layer ``layer`` W_out (from the cache or
        computed; ``W``: that W_out when the caller already read it).

        Example:
            >>> ComponentCache().components(pair.base, 0, 4).k  # doctest: +SKIP
            4
        """
        key = _model_key(model)
        self._models.setdefault(key, model)
        meth = "gram" if method == "auto" else method
        dev = device if device is not None else device_of(model)
        n, d = int(model.cfg.d_mlp), int(model.cfg.d_model)
        exact = prefix_exact(meth, n, d)
        ck = (key, int(layer), meth, str(dev), bool(fold_post_norm),
              None if exact else int(k), None if meth != "lowrank" else int(seed))
        hit = self._components.get(ck)
        if hit is not None and hit.k >= k:
            self.hits += 1
            return hit.head(k)
        self.misses += 1
        name = model_name(model)
        if W is None:
            W = read_w_out(model, layer, fold_norm=fold_post_norm, who=who)
        pc = _pca(W, k, meth, dev, seed, f"{who or f'model {name!r}'} layer {layer} W_out")
        pc = dataclasses.replace(pc, layer=int(layer), model_name=name)
        self._components[ck] = pc
        return pc

    def directions(self, model: Any, vocab: WordVocab, *, fold_norm: bool = True,
                   who: str | None = None) -> Tensor:
        """``model``'s unit word vectors for ``vocab`` (from the cache or computed), on the CPU.

        Example:
            >>> ComponentCache().directions(pair.base, vocab).shape  # doctest: +SKIP
        """
        key = _model_key(model)
        self._models.setdefault(key, model)
        ck = (key, tuple(vocab.words), tuple(tuple(t) for t in vocab.token_ids), bool(fold_norm))
        hit = self._directions.get(ck)
        if hit is not None:
            self.hits += 1
            return hit
        self.misses += 1
        U = _directions(model, vocab, fold_norm, who or f"model {model_name(model)!r}")
        self._directions[ck] = U
        return U
