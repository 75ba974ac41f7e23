"""Lens 3, one model: the principal components of a layer's W_out, read as words.

Wu et al. (2024, "From Language Modeling to Instruction Following", NAACL, §5) read the
knowledge stored in a feed-forward layer from its output weight ``W_out`` (``[d_mlp, d_model]``;
row i is neuron i's *value vector*, the direction that neuron writes into the residual stream):

1. PCA of the value vectors of one layer, centred over neurons (:func:`pca`,
   :func:`principal_components`): the main directions the layer can write.
2. Each component read in words: its cosine with the unit unembedding vector of every word of
   a vocabulary (a word = the mean of its tokens' unembedding columns), top words by ``|cos|``
   with the sign kept (:func:`word_directions`, :func:`top_words`, :func:`concept_words`).

The tensor-level helpers of the pair comparison (:func:`principal_angles`,
:func:`explained_share`) and :class:`ComponentCache` are in :mod:`shiftlens.lenses.ffn.subspaces`.

Which weights: ``W_out`` and ``W_U`` come from :mod:`shiftlens.weights`: every model-level
function takes a TransformerBridge, any :class:`shiftlens.weights.WeightSource`, or a checkpoint
directory (read layer by layer by :class:`shiftlens.weights.CheckpointWeights`, so a model that
does not fit in memory can be read; the numbers are bitwise those of the bridge path). For
Gemma 2/3 the post-feed-forward norm gain is folded into W_out's columns, and the final norm's
gain into the unembedding, as the paper folds normalization weights.

Nothing silent: a NaN or infinite weight (a model built or edited in memory; checkpoints are
checked at load) raises :class:`~shiftlens.errors.ShiftlensError` naming the model, the layer and
the weight, before any number is computed from it; so do the tensor-level functions given
non-finite input.

Devices: every model-level function computes on ``device`` when given, else on the model's
input device (:func:`shiftlens.bridge.device_of`, ``cfg.device`` for a bridge); the weights
are read on the CPU by :mod:`shiftlens.weights` and moved there explicitly.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from shiftlens.bridge import model_name
from shiftlens.checks import (
    check_choice,
    check_device,
    check_finite,
    check_int,
    check_layer,
    check_vocab,
)
from shiftlens.errors import ShiftlensError
from shiftlens.vocab import default_vocab
from shiftlens.weights import (
    WeightSource,
    WordVocab,
    mlp_out,
    unembedding,
    weight_source,
    word_matrix,
)

__all__ = [
    "TASKS",
    "USER_TASKS",
    "LEVELS",
    "DEFAULT_CONCEPT_K",
    "DEFAULT_ROTATION_K",
    "METHODS",
    "Components",
    "pca",
    "principal_components",
    "normalized_word_vectors",
    "word_directions",
    "top_words",
    "ConceptWords",
    "concept_words",
]

#: User-oriented tasks of Wu et al. (2024, §5), plus "none".
TASKS: tuple[str, ...] = ("writing", "coding", "math", "translation", "none")
#: The four user-oriented tasks (every task label but "none").
USER_TASKS: tuple[str, ...] = TASKS[:4]
#: Linguistic levels of Wu et al. (2024, §5).
LEVELS: tuple[str, ...] = ("phonology", "morphology", "syntax", "semantics")
#: Components per layer annotated by default (the paper keeps ranks <= 300).
DEFAULT_CONCEPT_K = 300
#: Components per layer compared by ``rotation`` by default (capped at a quarter of the rank).
DEFAULT_ROTATION_K = 64
#: The PCA solvers of :func:`pca`.
METHODS: tuple[str, ...] = ("auto", "gram", "svd", "lowrank")

Method = Literal["auto", "gram", "svd", "lowrank"]
SEP = "|"  # separates words (and scores) inside one DataFrame cell


def join_words(words: Any) -> str:
    """Words as one ``|``-separated cell."""
    return SEP.join(words)


def join_scores(scores: Any, digits: int = 4) -> str:
    """Signed scores as one ``|``-separated cell."""
    return SEP.join(f"{float(s):+.{digits}f}" for s in scores)


def check_bool(name: str, value: Any, who: str) -> bool:
    """``value`` if it is a bool (``True``/``False``, numpy bools too), else a ShiftlensError."""
    if not isinstance(value, (bool, np.bool_)):
        raise ShiftlensError(f"{who}: {name} must be True or False, got {value!r}")
    return bool(value)




def as_model(model: Any, who: str = "ffn") -> Any:
    """A model to read weights from: a bridge or weight source as given, a path as
    :class:`~shiftlens.weights.CheckpointWeights` (nothing loaded but config and headers).

    Raises:
        ShiftlensError: anything else, or a path that is not a checkpoint directory.
    """
    if isinstance(model, (str, os.PathLike)):
        return weight_source(model)
    if hasattr(model, "cfg") and (hasattr(model, "blocks") or isinstance(model, WeightSource)):
        return model
    raise ShiftlensError(f"{who}: model must be a TransformerBridge, a checkpoint directory or a "
                         f"shiftlens.weights.WeightSource, got {type(model).__name__}")


def _finite(x: Tensor, what: str) -> Tensor:
    """``x`` if every entry is finite, else a ShiftlensError naming ``what`` and the first entry."""
    if not isinstance(x, Tensor):
        raise ShiftlensError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    return check_finite(x, what=what)


def _matrix(x: Any, what: str, who: str) -> Tensor:
    """A finite 2-D floating tensor (the tensor-level functions' input check)."""
    if not isinstance(x, Tensor) or x.dim() != 2 or not x.is_floating_point():
        got = (f"a {x.dim()}-D {x.dtype} tensor" if isinstance(x, Tensor)
               else type(x).__name__)
        raise ShiftlensError(f"{who}: {what} must be a 2-D floating-point tensor, got {got}")
    return _finite(x, f"{who}: {what}")


def read_w_out(model: Any, layer: int, *, fold_norm: bool = True, who: str | None = None
               ) -> Float[Tensor, "d_mlp d_model"]:
    """One layer's W_out (``[d_mlp, d_model]``, float32, CPU), refused when not finite.

    Raises:
        ShiftlensError: a NaN/inf weight, naming ``who`` (default: the model), the layer and the
            first bad entry (``[neuron, dim]``).
    """
    W = mlp_out(model, layer, fold_norm=fold_norm)
    who = who or f"model {model_name(model)!r}"
    return _finite(W, f"{who} layer {layer} W_out (MLP output weight, [d_mlp, d_model]"
                      f"{', post-norm gain folded' if fold_norm else ''})")


def read_unembedding(model: Any, *, fold_norm: bool = True, who: str | None = None
                     ) -> Float[Tensor, "d_model d_vocab"]:
    """The unembedding W_U (``[d_model, d_vocab]``), refused when not finite."""
    W_U = unembedding(model, fold_norm=fold_norm)
    who = who or f"model {model_name(model)!r}"
    return _finite(W_U, f"{who} unembedding W_U ([d_model, d_vocab]"
                        f"{', final-norm gain folded' if fold_norm else ''})")


# ============================================================================ PCA of W_out
@dataclass(frozen=True)
class Components:
    """Principal components of a matrix's rows (for W_out: of the neurons' value vectors).

    Attributes:
        components: ``[k, d]`` orthonormal rows, by decreasing variance. Sign convention: the
            entry with the largest absolute value of each row is positive (scikit-learn's PCA
            since 1.5), so the result is deterministic.
        explained_variance: ``[k]`` variance along each component (``S**2 / (n - 1)``).
        explained_variance_ratio: ``[k]`` its share of the total variance of the rows.
        mean: ``[d]`` the mean row that was subtracted.
        total_variance: Sum of the variances of all ``d`` coordinates.
        n_rows: Number of rows (neurons).
        method: Which solver computed it.
        layer: The layer (None for a bare matrix).
        model_name: The model (or matrix) name.

    Example:
        >>> pc = pca(torch.randn(40, 8), k=3)
        >>> pc.k, pc.components.shape
        (3, torch.Size([3, 8]))
    """

    components: Float[Tensor, "k d"]
    explained_variance: Float[Tensor, " k"]
    explained_variance_ratio: Float[Tensor, " k"]
    mean: Float[Tensor, " d"]
    total_variance: float
    n_rows: int
    method: str
    layer: int | None = None
    model_name: str = ""

    @property
    def k(self) -> int:
        """Number of components."""
        return int(self.components.shape[0])

    def head(self, k: int) -> Components:
        """The first ``k`` components (bitwise what an exact solver returns for ``k``).

        Example:
            >>> pca(torch.randn(40, 8), k=5).head(2).k
            2
        """
        k = check_int("k", k, minimum=1, maximum=self.k, who=f"{self.model_name}: Components.head")
        if k == self.k:
            return self
        return dataclasses.replace(
            self, components=self.components[:k], explained_variance=self.explained_variance[:k],
            explained_variance_ratio=self.explained_variance_ratio[:k])


def rank_bound(n: int, d: int) -> int:
    """The rank bound of a centred ``n x d`` matrix: ``min(n - 1, d)``."""
    return max(0, min(n - 1, d))


def check_k(k: Any, n: int, d: int, what: str) -> int:
    """``k`` (None: the rank bound) checked against the rank bound of a centred ``n x d`` matrix.

    Raises:
        ShiftlensError: no component at all, ``k`` not a positive integer, or ``k`` above
            ``min(n - 1, d)``.
    """
    bound = rank_bound(n, d)
    if bound < 1:
        raise ShiftlensError(f"{what}: {n} rows x {d} columns has no principal component")
    if k is None:
        return bound
    k = check_int("k", k, minimum=1, who=what)
    if k > bound:
        raise ShiftlensError(
            f"{what}: k={k} is larger than the rank of the centred {n} x {d} matrix "
            f"(at most min(n_rows - 1, d) = {bound})"
        )
    return k


def _orient(V: Tensor) -> Tensor:
    """Flip each row so that its largest-|.| entry is positive."""
    idx = V.abs().argmax(dim=1, keepdim=True)
    s = torch.sign(V.gather(1, idx))
    s[s == 0] = 1
    return V * s


def prefix_exact(method: str, n: int, d: int) -> bool:
    """Whether the solver's top-``k`` result is the first ``k`` rows of its top-``K`` result
    bitwise for every ``k <= K`` (so a cached larger PCA can serve a smaller ``k``): the exact
    solvers, except the Gram solver with more columns than rows (a matmul over ``k`` vectors)."""
    method = "gram" if method == "auto" else method
    return method == "svd" or (method == "gram" and d <= n)


def _solve(X: Tensor, k: int, method: str, seed: int) -> tuple[Tensor, Tensor]:
    """Top-``k`` singular values and right singular vectors (rows) of the centred ``X``."""
    n, d = X.shape
    if method == "gram":
        if d <= n:
            evals, evecs = torch.linalg.eigh(X.T @ X)
            return evals.flip(0)[:k].clamp_min(0).sqrt(), evecs.flip(1)[:, :k].T
        evals, U = torch.linalg.eigh(X @ X.T)
        evals, U = evals.flip(0)[:k].clamp_min(0), U.flip(1)[:, :k]
        V = (X.T @ U).T
        return evals.sqrt(), V / V.norm(dim=1, keepdim=True).clamp_min(1e-300)
    if method == "svd":
        _, S, Vh = torch.linalg.svd(X, full_matrices=False)
        return S[:k], Vh[:k]
    q = min(k + max(10, k // 2), min(n, d))
    with torch.random.fork_rng(devices=[X.device] if X.device.type == "cuda" else []):
        torch.manual_seed(seed)
        _, S, Vq = torch.svd_lowrank(X, q=q, niter=6)
    return S[:k], Vq[:, :k].T


def _pca(W: Tensor, k: Any, method: Any, dev: torch.device, seed: int, name: str) -> Components:
    """:func:`pca` on a checked (finite, 2-D) ``W``."""
    n, d = W.shape
    k = check_k(k, n, d, name)
    check_choice("method", method, METHODS, who=f"{name}: PCA")
    method = "gram" if method == "auto" else method
    X = W.to(device=dev, dtype=torch.float64)
    mean = X.mean(dim=0)
    X = X - mean
    total = float((X * X).sum() / (n - 1))
    sv, V = _solve(X, k, method, seed)
    tol = float(sv[0]) * max(n, d) * float(torch.finfo(torch.float32).eps)
    if float(sv[-1]) <= tol:
        rank = int((sv > tol).sum())
        raise ShiftlensError(
            f"{name}: k={k} is larger than the numerical rank {rank} of the centred {n} x {d} "
            "matrix"
        )
    ev = sv**2 / (n - 1)
    out = Components(
        components=_orient(V).float(),
        explained_variance=ev.float(),
        explained_variance_ratio=(ev / total).float(),
        mean=mean.float(),
        total_variance=total,
        n_rows=n,
        method=method,
        model_name=name,
    )
    if not (math.isfinite(total) and bool(torch.isfinite(out.explained_variance).all())
            and bool(torch.isfinite(out.components).all())):
        raise ShiftlensError(f"{name}: the variance of the rows overflows float32 (total "
                             f"{total:.3g}); rescale the matrix")
    return out


def pca(
    W: Float[Tensor, "n d"],
    k: int | None = None,
    *,
    method: Method = "auto",
    device: str | torch.device | None = None,
    seed: int = 0,
    name: str = "matrix",
) -> Components:
    """PCA of the rows of ``W`` (centred over rows), in float64.

    Solvers (all exact except ``"lowrank"``): ``"gram"`` eigen-decomposes the ``d x d`` (or
    ``n x n``, whichever is smaller) Gram matrix of the centred rows in float64 - the fastest
    exact solver on CPU in ``benchmarks/ffn.py``; ``"svd"`` runs ``torch.linalg.svd`` on the
    centred matrix; ``"lowrank"`` runs the randomized ``torch.svd_lowrank`` (seeded; accurate
    only when the spectrum decays - use it for a few top components of big matrices).
    ``"auto"`` is ``"gram"``.

    Args:
        W: ``[n, d]`` rows to analyse (for W_out: neurons x d_model). Must be finite.
        k: Components to keep (None: all, ``min(n - 1, d)``).
        method: Solver, see above.
        device: Where to compute (default: ``W``'s device). Results stay there, in float32.
        seed: Seed of the randomized solver (an integer >= 0).
        name: Used in error messages.

    Returns:
        The :class:`Components`.

    Raises:
        ShiftlensError: ``W`` not a 2-D floating tensor or holding a NaN/inf (the message gives
            the count and the first entry), ``k`` not in ``1..min(n - 1, d)`` or above the
            numerical rank, an unknown ``method``, a bad ``seed`` or ``device``.

    Example:
        >>> W = torch.randn(64, 16)
        >>> pc = pca(W, k=4)
        >>> pc.components.shape, bool(pc.explained_variance_ratio[0] >= pc.explained_variance_ratio[1])
        (torch.Size([4, 16]), True)
    """
    name = str(name)
    W = _matrix(W, "W", name)
    seed = check_int("seed", seed, minimum=0, who=f"{name}: PCA")
    dev = check_device(device, who=name) if device is not None else W.device
    return _pca(W, k, method, dev, seed, name)


def principal_components(
    model: Any,
    layer: int,
    k: int | None = None,
    *,
    method: Method = "auto",
    device: str | torch.device | None = None,
    fold_post_norm: bool = True,
    seed: int = 0,
) -> Components:
    """PCA of a layer's MLP output weight W_out: the neurons' value vectors (Wu et al. §5).

    Args:
        model: A TransformerBridge, a :class:`shiftlens.weights.WeightSource`, or a checkpoint
            directory (read with :class:`shiftlens.weights.CheckpointWeights`: only this
            layer's output projection is read; bitwise the bridge's numbers).
        layer: Layer index.
        k: Components to keep (None: all, ``min(d_mlp - 1, d_model)``).
        method: PCA solver (see :func:`pca`).
        device: Where to compute (default: the model's device, :func:`shiftlens.bridge.device_of`);
            the results are float32 there.
        fold_post_norm: Fold a post-MLP norm's gain (Gemma 2's ``post_feedforward_layernorm``)
            into W_out's columns (skipped for TL-processed weights).
        seed: Seed of the randomized solver (an integer >= 0).

    Returns:
        The :class:`Components`, with ``layer`` and ``model_name`` set.

    Raises:
        ShiftlensError: bad layer, ``k`` larger than the rank, a NaN/inf in W_out (naming the
            model, the layer and the first bad entry), no dense MLP weight (the message names
            the architecture), or a bad argument.

    Example:
        >>> pc = principal_components(pair.base, 0, k=8)  # doctest: +SKIP
        >>> pc.components.shape  # doctest: +SKIP
        torch.Size([8, 32])
        >>> principal_components("/models/Llama-3.1-70B", 40, k=64)  # doctest: +SKIP
    """
    model = as_model(model, "principal_components")
    layer = check_layer(model, layer)
    name = model_name(model)
    fold = check_bool("fold_post_norm", fold_post_norm, f"{name}: principal_components")
    seed = check_int("seed", seed, minimum=0, who=f"{name}: principal_components")
    dev = check_device(device, model, who=f"{name}: principal_components")
    check_choice("method", method, METHODS, who=f"{name}: principal_components")
    W = read_w_out(model, layer, fold_norm=fold)
    pc = _pca(W, k, method, dev, seed, f"model {name!r} layer {layer} W_out")
    return dataclasses.replace(pc, layer=layer, model_name=name)


# ============================================================================ words
def normalized_word_vectors(
    W_U: Float[Tensor, "d_model d_vocab"], vocab: WordVocab
) -> Float[Tensor, "n_words d_model"]:
    """Unit word vectors from an unembedding: mean of the word's token columns, L2-normalised.

    Args:
        W_U: ``[d_model, d_vocab]`` unembedding (finite).
        vocab: The words (:class:`shiftlens.weights.WordVocab`).

    Returns:
        ``[n_words, d_model]`` unit rows, in ``vocab`` order.

    A word whose tokens' mean column is zero has no direction: its vector stays zero, so it
    scores 0 on every component.

    Raises:
        ShiftlensError: an empty vocabulary, token ids outside ``W_U``'s columns, or a NaN/inf
            in ``W_U``.

    Example:
        >>> v = WordVocab(["a", "bc"], [[0], [1, 2]], [])
        >>> U = normalized_word_vectors(torch.eye(3), v)  # "bc" = mean of tokens 1 and 2
        >>> U.shape, [round(x, 4) for x in U[1].tolist()]
        (torch.Size([2, 3]), [0.0, 0.7071, 0.7071])
    """
    W_U = _matrix(W_U, "W_U", "normalized_word_vectors")
    check_vocab(vocab, where="normalized_word_vectors")
    flat = [t for ids in vocab.token_ids for t in ids]
    if flat and (min(flat) < 0 or max(flat) >= W_U.shape[1]):
        raise ShiftlensError(f"normalized_word_vectors: vocabulary token ids outside [0, "
                             f"{W_U.shape[1]}) (W_U is [d_model, d_vocab])")
    return _normalize(W_U, vocab)


def _normalize(W_U: Tensor, vocab: WordVocab) -> Tensor:
    U = word_matrix(W_U.T, vocab)
    return U / U.norm(dim=1, keepdim=True).clamp_min(1e-12)


def word_directions(
    model: Any, vocab: WordVocab, *, fold_norm: bool = True
) -> Float[Tensor, "n_words d_model"]:
    """The model's unit word vectors u_w (final-norm gain folded into W_U, as the paper folds
    norms), on the CPU.

    Args:
        model: A TransformerBridge, a :class:`shiftlens.weights.WeightSource`, or a checkpoint
            directory.
        vocab: The words.
        fold_norm: Fold the final norm's gain into the unembedding.

    Raises:
        ShiftlensError: an empty vocabulary, token ids outside the model's vocabulary, or a
            NaN/inf in the unembedding (naming the model).

    Example:
        >>> U = word_directions(pair.base, vocab)  # doctest: +SKIP
    """
    model = as_model(model, "word_directions")
    name = model_name(model)
    check_vocab(vocab, model, where=name)
    fold = check_bool("fold_norm", fold_norm, f"{name}: word_directions")
    return _directions(model, vocab, fold, f"model {name!r}")


def _directions(model: Any, vocab: WordVocab, fold: bool, who: str) -> Tensor:
    return _normalize(read_unembedding(model, fold_norm=fold, who=who), vocab)


def top_words(
    components: Float[Tensor, "k d"], directions: Float[Tensor, "n_words d"], n: int = 50
) -> tuple[Float[Tensor, "k t"], Int[Tensor, "k t"]]:
    """Each component's ``n`` words of largest ``|component . u_w|``, sign kept (one matmul).

    Args:
        components: ``[k, d]`` unit rows (finite).
        directions: ``[n_words, d]`` unit word vectors (finite; same device).
        n: Words per component (capped at the vocabulary size).

    Returns:
        ``(scores, indices)``, each ``[k, min(n, n_words)]``, by decreasing ``|score|``.

    Raises:
        ShiftlensError: an empty vocabulary, tensors that are not 2-D with the same ``d``, a
            NaN/inf, or ``n`` not a positive integer.

    Example:
        >>> s, i = top_words(torch.eye(3), torch.eye(3), 2)
        >>> i[:, 0].tolist(), s[:, 0].tolist()
        ([0, 1, 2], [1.0, 1.0, 1.0])
    """
    components = _matrix(components, "components", "top_words")
    directions = _matrix(directions, "directions", "top_words")
    if directions.shape[0] == 0:
        raise ShiftlensError("top_words: empty vocabulary")
    if components.shape[1] != directions.shape[1]:
        raise ShiftlensError(f"top_words: components have d={components.shape[1]}, directions "
                             f"d={directions.shape[1]}")
    n = check_int("n", n, minimum=1, who="top_words")
    t = min(n, directions.shape[0])
    S = components.to(directions.dtype) @ directions.T
    idx = S.abs().topk(t, dim=1).indices
    return S.gather(1, idx), idx


@dataclass
class ConceptWords:
    """One model layer's components read in words.

    Attributes:
        model_name: The model.
        layer: The layer.
        words: ``words[c]`` = component c's top words by ``|score|``.
        scores: ``[k, t]`` cosines with the sign kept.
        explained_variance_ratio: ``[k]``.

    Example:
        >>> cw = ConceptWords("m", 0, [["a", "b"]], torch.tensor([[0.5, -0.25]]), torch.tensor([0.3]))
        >>> cw.to_frame()[["words", "scores"]].iloc[0].tolist()
        ['a|b', '+0.5000|-0.2500']
    """

    model_name: str
    layer: int
    words: list[list[str]]
    scores: Float[Tensor, "k t"]
    explained_variance_ratio: Float[Tensor, " k"]

    def to_frame(self) -> pd.DataFrame:
        """One row per component: variance share, words (``|``-separated) and signed scores.

        Example:
            >>> concept_words(pair.base, 0, k=4).to_frame().columns.tolist()  # doctest: +SKIP
            ['model', 'layer', 'component', 'explained_variance_ratio', 'words', 'scores']
        """
        return pd.DataFrame(
            {
                "model": self.model_name,
                "layer": self.layer,
                "component": range(len(self.words)),
                "explained_variance_ratio": self.explained_variance_ratio.tolist(),
                "words": [join_words(w) for w in self.words],
                "scores": [join_scores(row) for row in self.scores.tolist()],
            }
        )


def model_vocab(model: Any, vocab: Any, where: str) -> WordVocab:
    """``vocab``, or the default vocabulary of the model's tokenizer, checked against the model."""
    if vocab is None:
        tok = getattr(model, "tokenizer", None)
        if tok is None:
            raise ShiftlensError(f"{where}: the model has no tokenizer; pass vocab=")
        vocab = default_vocab(tok)
    return check_vocab(vocab, model, where=where)


def concept_words(
    model: Any,
    layer: int,
    k: int | None = None,
    top_words: int = 50,
    vocab: WordVocab | None = None,
    *,
    method: Method = "auto",
    device: str | torch.device | None = None,
    directions: Float[Tensor, "n_words d_model"] | None = None,
) -> ConceptWords:
    """Each principal component of a layer's W_out read as its top words (Wu et al. §5).

    Score of word w on component c: ``c . u_w`` with ``u_w`` the L2-normalised unembedding
    vector of w (mean of its tokens' columns, final-norm gain folded); words ranked by
    ``|score|``, the sign kept. All components x all words in one matmul.

    Args:
        model: A TransformerBridge, a :class:`shiftlens.weights.WeightSource`, or a checkpoint
            directory (its tokenizer gives the default vocabulary).
        layer: Layer index.
        k: Components (None: all).
        top_words: Words per component.
        vocab: Words to read with (default: :func:`shiftlens.vocab.default_vocab` of the
            model's tokenizer, 5000 frequent English words).
        method: PCA solver (see :func:`pca`).
        device: Where to compute (default: the model's device).
        directions: Precomputed :func:`word_directions` for ``vocab`` (saves the projection
            when reading many layers).

    Returns:
        The :class:`ConceptWords` (tensors on the CPU).

    Raises:
        ShiftlensError: empty vocabulary, bad layer, ``k`` larger than the rank, a NaN/inf in
            W_out or W_U (naming model and layer), or ``directions`` that do not match
            ``vocab``.

    Example:
        >>> cw = concept_words(pair.base, 1, k=4, top_words=10)  # doctest: +SKIP
        >>> cw.words[0][:3]  # doctest: +SKIP
        ['story', 'write', 'poem']
    """
    model = as_model(model, "concept_words")
    name = model_name(model)
    where = f"{name} layer {layer}"
    vocab = model_vocab(model, vocab, where)
    check_int("top_words", top_words, minimum=1, who=f"{name}: concept_words")
    pc = principal_components(model, layer, k, method=method, device=device)
    if directions is None:
        directions = _directions(model, vocab, True, f"model {name!r}")
    directions = _matrix(directions, "directions", f"{name}: concept_words")
    if directions.shape != (len(vocab), pc.components.shape[1]):
        raise ShiftlensError(f"{name}: directions of shape {list(directions.shape)} for "
                             f"{len(vocab)} words x d_model={pc.components.shape[1]}")
    scores, idx = _top_words(pc.components, directions.to(pc.components.device), top_words)
    words = [[vocab.words[i] for i in row] for row in idx.tolist()]
    return ConceptWords(name, pc.layer, words, scores.cpu(), pc.explained_variance_ratio.cpu())


_top_words = top_words  # ``concept_words`` has an argument named ``top_words``
