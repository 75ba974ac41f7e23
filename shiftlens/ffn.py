"""Lens 3: feed-forward concepts - what the MLP output weights encode, and how tuning rotates it.

Wu et al. (2024, "From Language Modeling to Instruction Following", NAACL, Sec. 5) read the
knowledge stored in a feed-forward layer from its output weight ``W_out`` (``[d_mlp, d_model]``,
row i = neuron i's *value vector*, the direction that neuron writes into the residual stream):

1. PCA of the value vectors of one layer (centred over neurons, via SVD): the principal
   components are the main directions the layer can write (:func:`principal_components`).
2. Each component is read in words: its cosine with the unembedding vector of every word of a
   vocabulary (a word = the mean of its tokens' unembedding columns, L2-normalised), top words by
   ``|cos|`` with the sign kept (:func:`concept_words`).
3. Each component's word list is annotated with a user-oriented task (writing, coding, math,
   translation, none) and a linguistic level (phonology, morphology, syntax, semantics): the
   paper asks ChatGPT, in two steps, over five seeds. Here the annotator is pluggable
   (:class:`Annotator`): an offline lexicon annotator by default (:class:`LexiconAnnotator`), or
   any text generator following the paper's two-step protocol (:class:`GenerativeAnnotator`).
4. The shares of concepts per task / level, base vs tuned, overall and per layer group
   (:func:`concept_shift` -> :class:`ConceptShift`).
5. Rotation as a number (not in the paper, which reads it off the concept shares): principal
   angles between the base and tuned top-k component subspaces, their overlap, the tuned
   variance the base components still explain, and the components that moved most
   (:func:`rotation` -> :class:`Rotation`).

Which weights: ``W_out`` as the bridge holds it (:func:`shiftlens.weights.mlp_out`); for Gemma 2
the post-feed-forward RMSNorm gain is folded into its columns (the direction each neuron writes
after that norm). The unembedding has the final norm's gain folded in
(:func:`shiftlens.weights.unembedding`), as the paper folds normalization weights.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import math
import os
import random
import re
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from shiftlens.errors import ShiftlensError, ShiftlensWarning
from shiftlens.io import load_bundle, save_bundle
from shiftlens.pair import ModelPair
from shiftlens.pair import model_name as _name
from shiftlens.stats import bootstrap_ci, layer_groups, welch_test
from shiftlens.vocab import default_vocab, english_words
from shiftlens.weights import (
    WordVocab,
    check_layer,
    mlp_out,
    unembedding,
    word_matrix,
)

__all__ = [
    "TASKS",
    "USER_TASKS",
    "LEVELS",
    "DEFAULT_CONCEPT_K",
    "DEFAULT_ROTATION_K",
    "Components",
    "pca",
    "principal_components",
    "normalized_word_vectors",
    "word_directions",
    "top_words",
    "ConceptWords",
    "concept_words",
    "Annotation",
    "Annotator",
    "Lexicons",
    "load_lexicons",
    "LexiconAnnotator",
    "GenerativeAnnotator",
    "ConceptShift",
    "concept_shift",
    "principal_angles",
    "explained_share",
    "Rotation",
    "rotation",
]

#: User-oriented tasks of Wu et al. (2024, Sec. 5), plus "none".
TASKS: tuple[str, ...] = ("writing", "coding", "math", "translation", "none")
#: The four user-oriented tasks (every task label but "none").
USER_TASKS: tuple[str, ...] = TASKS[:4]
#: Linguistic levels of Wu et al. (2024, Sec. 5).
LEVELS: tuple[str, ...] = ("phonology", "morphology", "syntax", "semantics")
#: Components per layer annotated by default (the paper keeps ranks <= 300).
DEFAULT_CONCEPT_K = 300
#: Components per layer compared by :func:`rotation` by default (capped at a quarter of the rank).
DEFAULT_ROTATION_K = 64

Method = Literal["auto", "gram", "svd", "lowrank"]
_SEP = "|"  # separates words inside one DataFrame cell


# =============================================================================================
# 1. PCA of W_out
# =============================================================================================


@dataclass(frozen=True)
class Components:
    """Principal components of a matrix's rows (for W_out: of the neurons' value vectors).

    Attributes:
        components: ``[k, d]`` orthonormal rows, by decreasing variance. Sign convention: the
            entry with the largest absolute value of each row is positive (as scikit-learn's
            PCA since 1.5), so the result is deterministic.
        explained_variance: ``[k]`` variance along each component (``S**2 / (n - 1)``).
        explained_variance_ratio: ``[k]`` its share of the total variance of the rows.
        mean: ``[d]`` the mean row that was subtracted.
        total_variance: Sum of the variances of all ``d`` coordinates.
        n_rows: Number of rows (neurons).
        method: Which solver computed it.
        layer: The layer (None for a bare matrix).
        model_name: The model (or matrix) name.

    Example:
        >>> comps = principal_components(model, 2, k=8)  # doctest: +SKIP
        >>> comps.components.shape  # doctest: +SKIP
        torch.Size([8, 128])
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


def _rank_bound(n: int, d: int) -> int:
    return max(0, min(n - 1, d))


def _check_k(k: int | None, n: int, d: int, what: str) -> int:
    bound = _rank_bound(n, d)
    if bound < 1:
        raise ShiftlensError(f"{what}: {n} rows x {d} columns has no principal component")
    if k is None:
        return bound
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ShiftlensError(f"{what}: k must be a positive integer, got {k!r}")
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
        W: ``[n, d]`` rows to analyse (for W_out: neurons x d_model).
        k: Components to keep (None: all, ``min(n - 1, d)``).
        method: Solver, see above.
        device: Where to compute (default: ``W``'s device). Results stay there, in float32.
        seed: Seed of the randomized solver.
        name: Used in error messages.

    Raises:
        ShiftlensError: ``k`` is not in ``1..min(n - 1, d)`` or exceeds the numerical rank.

    Example:
        >>> W = torch.randn(64, 16)
        >>> pc = pca(W, k=4)
        >>> pc.components.shape, bool(pc.explained_variance_ratio[0] >= pc.explained_variance_ratio[1])
        (torch.Size([4, 16]), True)
    """
    n, d = W.shape
    k = _check_k(k, n, d, name)
    dev = torch.device(device) if device is not None else W.device
    X = W.to(device=dev, dtype=torch.float64)
    mean = X.mean(dim=0)
    X = X - mean
    total = float((X * X).sum() / (n - 1))
    if method == "auto":
        method = "gram"
    if method == "gram":
        if d <= n:
            evals, evecs = torch.linalg.eigh(X.T @ X)
            evals, evecs = evals.flip(0)[:k].clamp_min(0), evecs.flip(1)[:, :k]
            V = evecs.T
        else:
            evals, U = torch.linalg.eigh(X @ X.T)
            evals, U = evals.flip(0)[:k].clamp_min(0), U.flip(1)[:, :k]
            V = (X.T @ U).T
            V = V / V.norm(dim=1, keepdim=True).clamp_min(1e-300)
        sv = evals.sqrt()
    elif method == "svd":
        _, S, Vh = torch.linalg.svd(X, full_matrices=False)
        sv, V = S[:k], Vh[:k]
    elif method == "lowrank":
        q = min(k + max(10, k // 2), min(n, d))
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            torch.manual_seed(seed)
            _, S, Vq = torch.svd_lowrank(X, q=q, niter=6)
        sv, V = S[:k], Vq[:, :k].T
    else:
        raise ShiftlensError(f"{name}: unknown PCA method {method!r}; use auto, gram, svd or lowrank")
    tol = float(sv[0]) * max(n, d) * float(torch.finfo(torch.float32).eps)
    if float(sv[-1]) <= tol:
        rank = int((sv > tol).sum())
        raise ShiftlensError(
            f"{name}: k={k} is larger than the numerical rank {rank} of the centred {n} x {d} matrix"
        )
    ev = sv**2 / (n - 1)
    V = _orient(V)
    return Components(
        components=V.float(),
        explained_variance=ev.float(),
        explained_variance_ratio=(ev / total).float(),
        mean=mean.float(),
        total_variance=total,
        n_rows=n,
        method=method,
        model_name=name,
    )


def principal_components(
    model: Any,
    layer: int,
    k: int | None = None,
    *,
    method: Method = "auto",
    device: str | torch.device = "cpu",
    fold_post_norm: bool = True,
    seed: int = 0,
) -> Components:
    """PCA of a layer's MLP output weight W_out: the neurons' value vectors (Wu et al. Sec. 5).

    Args:
        model: A TransformerBridge.
        layer: Layer index.
        k: Components to keep (None: all, ``min(d_mlp - 1, d_model)``).
        method: PCA solver (see :func:`pca`).
        device: Where to compute; results are float32 there.
        fold_post_norm: Fold a post-MLP norm's gain (Gemma 2's ``post_feedforward_layernorm``)
            into W_out's columns (skipped for TL-processed weights).
        seed: Seed of the randomized solver.

    Raises:
        ShiftlensError: bad layer, ``k`` larger than the rank, or no dense MLP weight (the
            message names the architecture).

    Example:
        >>> pc = principal_components(pair.base, 0, k=8)  # doctest: +SKIP
        >>> pc.components.shape  # doctest: +SKIP
        torch.Size([8, 32])
    """
    check_layer(model, layer)
    W = mlp_out(model, layer, fold_norm=fold_post_norm)
    pc = pca(W, k, method=method, device=device, seed=seed,
             name=f"{_name(model)} layer {layer} W_out")
    return Components(**{**pc.__dict__, "layer": layer, "model_name": _name(model)})


# =============================================================================================
# 2. Concept words
# =============================================================================================


def _check_vocab(vocab: WordVocab, where: str) -> None:
    if len(vocab) == 0:
        raise ShiftlensError(f"{where}: empty vocabulary (no words to read components with)")


def normalized_word_vectors(
    W_U: Float[Tensor, "d_model d_vocab"], vocab: WordVocab
) -> Float[Tensor, "n_words d_model"]:
    """Unit-length word vectors from an unembedding: mean of the word's token columns, L2-normalised.

    Example:
        >>> U = normalized_word_vectors(unembedding(pair.base), vocab)  # doctest: +SKIP
    """
    _check_vocab(vocab, "normalized_word_vectors")
    U = word_matrix(W_U.T, vocab)
    return U / U.norm(dim=1, keepdim=True).clamp_min(1e-12)


def word_directions(
    model: Any, vocab: WordVocab, *, fold_norm: bool = True
) -> Float[Tensor, "n_words d_model"]:
    """The model's unit word vectors u_w (final-norm gain folded into W_U, as the paper folds norms).

    Example:
        >>> U = word_directions(pair.base, vocab)  # doctest: +SKIP
    """
    _check_vocab(vocab, _name(model))
    return normalized_word_vectors(unembedding(model, fold_norm=fold_norm), vocab)


def top_words(
    components: Float[Tensor, "k d"], directions: Float[Tensor, "n_words d"], n: int = 50
) -> tuple[Float[Tensor, "k t"], Int[Tensor, "k t"]]:
    """Each component's ``n`` words of largest ``|component . u_w|``, sign kept (one matmul).

    Args:
        components: ``[k, d]`` unit rows.
        directions: ``[n_words, d]`` unit word vectors.
        n: Words per component (capped at the vocabulary size).

    Returns:
        ``(scores, indices)``, each ``[k, min(n, n_words)]``, by decreasing ``|score|``.

    Example:
        >>> s, i = top_words(torch.eye(3), torch.eye(3), 2)
        >>> i[:, 0].tolist(), s[:, 0].tolist()
        ([0, 1, 2], [1.0, 1.0, 1.0])
    """
    if directions.shape[0] == 0:
        raise ShiftlensError("top_words: empty vocabulary")
    if n < 1:
        raise ShiftlensError(f"top_words: n must be >= 1, got {n}")
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
                "words": [_SEP.join(w) for w in self.words],
                "scores": [_SEP.join(f"{s:+.4f}" for s in row) for row in self.scores.tolist()],
            }
        )


def concept_words(
    model: Any,
    layer: int,
    k: int | None = None,
    top_words: int = 50,
    vocab: WordVocab | None = None,
    *,
    method: Method = "auto",
    device: str | torch.device = "cpu",
    directions: Float[Tensor, "n_words d_model"] | None = None,
) -> ConceptWords:
    """Each principal component of a layer's W_out read as its top words (Wu et al. Sec. 5).

    Score of word w on component c: ``c . u_w`` with ``u_w`` the L2-normalised unembedding
    vector of w (mean of its tokens' columns, final-norm gain folded); words ranked by
    ``|score|``, the sign kept. All components x all words in one matmul.

    Args:
        model: A TransformerBridge.
        layer: Layer index.
        k: Components (None: all).
        top_words: Words per component.
        vocab: Words to read with (default: :func:`shiftlens.vocab.default_vocab` of the
            model's tokenizer, 5000 frequent English words).
        method: PCA solver (see :func:`pca`).
        device: Where to compute.
        directions: Precomputed :func:`word_directions` for ``vocab`` (saves the projection
            when reading many layers).

    Raises:
        ShiftlensError: empty vocabulary, bad layer, ``k`` larger than the rank.

    Example:
        >>> cw = concept_words(pair.base, 1, k=4, top_words=10)  # doctest: +SKIP
        >>> cw.words[0][:3]  # doctest: +SKIP
        ['story', 'write', 'poem']
    """
    if vocab is None:
        vocab = default_vocab(model.tokenizer)
    _check_vocab(vocab, f"{_name(model)} layer {layer}")
    pc = principal_components(model, layer, k, method=method, device=device)
    if directions is None:
        directions = word_directions(model, vocab)
    directions = directions.to(pc.components.device)
    if directions.shape[0] != len(vocab):
        raise ShiftlensError(
            f"{_name(model)}: {directions.shape[0]} word directions for {len(vocab)} words"
        )
    scores, idx = top_words_fn(pc.components, directions, top_words)
    words = [[vocab.words[i] for i in row] for row in idx.tolist()]
    return ConceptWords(_name(model), layer, words, scores.cpu(), pc.explained_variance_ratio.cpu())


top_words_fn = top_words  # alias: ``concept_words`` has an argument named ``top_words``


# =============================================================================================
# 3. Annotation
# =============================================================================================


@dataclass(frozen=True)
class Annotation:
    """What one concept (a component's word list) is about.

    Attributes:
        task: One of :data:`TASKS`.
        level: One of :data:`LEVELS`; None only for an unexplainable concept.
        task_confidence: In [0, 1].
        level_confidence: In [0, 1].
        explainable: False when the annotator could not name a concept (the paper's
            "Cannot Tell"); such concepts are left out of the shares.
        description: The concept's description (generative annotators) or the cues that
            fired (lexicon annotator).

    Raises:
        ShiftlensError: an unknown task or level label, or a confidence outside [0, 1].

    Example:
        >>> Annotation("coding", "semantics", 0.8, 0.6).task
        'coding'
    """

    task: str
    level: str | None
    task_confidence: float = 1.0
    level_confidence: float = 1.0
    explainable: bool = True
    description: str = ""

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ShiftlensError(f"unknown task label {self.task!r}; expected one of {TASKS}")
        if self.level is None:
            if self.explainable:
                raise ShiftlensError(
                    "an explainable concept needs a linguistic level; got level None "
                    f"(expected one of {LEVELS})"
                )
        elif self.level not in LEVELS:
            raise ShiftlensError(f"unknown linguistic level {self.level!r}; expected one of {LEVELS}")
        for nm in ("task_confidence", "level_confidence"):
            v = getattr(self, nm)
            if not isinstance(v, (int, float)) or not 0.0 <= float(v) <= 1.0:
                raise ShiftlensError(f"{nm} must be in [0, 1], got {v!r}")


@runtime_checkable
class Annotator(Protocol):
    """Maps a component's word list to an :class:`Annotation`.

    ``seeds``: the seeds :func:`concept_shift` runs the annotator with (one entry for a
    deterministic annotator; several for a stochastic one, whose shares are then reported as
    mean and spread over seeds, as Wu et al. do with five ChatGPT runs).

    Example:
        >>> class AllCode:
        ...     seeds = (0,)
        ...     def annotate(self, words, *, seed=0):
        ...         return Annotation("coding", "semantics")
        >>> isinstance(AllCode(), Annotator)
        True
    """

    seeds: Sequence[int]

    def annotate(self, words: Sequence[str], *, seed: int = 0) -> Annotation:
        """Annotate one concept given its words (most aligned first)."""
        ...


# ---------------------------------------------------------------------------- lexicons


@dataclass(frozen=True)
class Lexicons:
    """The word lists behind :class:`LexiconAnnotator` (``shiftlens/data/lexicons/*.json``).

    Attributes:
        tasks: task -> set of words.
        phonology: sound words and onomatopoeia.
        rhyme_min_group: words needed for a rhyme group.
        prefixes, suffixes: affixes (suffixes longest first).
        affix_min_shared: an affix must be shared by at least this many words to count...
        affix_alpha: ...and by more words than chance: binomial tail probability below this,
            given the affix's rate among the shipped 30,000 English words.
        abbreviations: abbreviations.
        function_words: determiners, pronouns, prepositions, conjunctions, auxiliaries, particles.
        fields: semantic field -> set of words (the task lists are added as fields).

    Example:
        >>> lex = load_lexicons()  # doctest: +SKIP
    """

    tasks: dict[str, frozenset[str]]
    phonology: frozenset[str]
    rhyme_min_group: int
    prefixes: tuple[str, ...]
    suffixes: tuple[str, ...]
    affix_min_shared: int
    affix_alpha: float
    abbreviations: frozenset[str]
    function_words: frozenset[str]
    fields: dict[str, frozenset[str]]


def _read_json(src: str | Path | Mapping | None, default: str) -> dict:
    if isinstance(src, Mapping):
        return dict(src)
    if src is None:
        text = (resources.files("shiftlens") / "data" / "lexicons" / default).read_text("utf-8")
    else:
        p = Path(src)
        if not p.exists():
            raise ShiftlensError(f"lexicon file {str(p)!r} not found")
        text = p.read_text("utf-8")
    return json.loads(text)


def _lower_set(words: Sequence[str]) -> frozenset[str]:
    return frozenset(w.strip().lower() for w in words if w.strip())


def load_lexicons(
    tasks: str | Path | Mapping | None = None, linguistic: str | Path | Mapping | None = None
) -> Lexicons:
    """Load the task and linguistic lexicons (default: the shipped ones).

    Args:
        tasks: Path to (or dict of) a ``tasks.json``-shaped lexicon.
        linguistic: Path to (or dict of) a ``linguistic.json``-shaped lexicon.

    Raises:
        ShiftlensError: a missing file, a task outside :data:`USER_TASKS`, or a missing section.

    Example:
        >>> lex = load_lexicons()
        >>> "python" in lex.tasks["coding"] and "the" in lex.function_words
        True
    """
    t = _read_json(tasks, "tasks.json")
    g = _read_json(linguistic, "linguistic.json")
    try:
        task_sets = {name: _lower_set(v["words"]) for name, v in t["tasks"].items()}
        bad = set(task_sets) - set(USER_TASKS)
        if bad:
            raise ShiftlensError(f"task lexicon has unknown tasks {sorted(bad)}; expected {USER_TASKS}")
        ph, mo, sy, se = g["phonology"], g["morphology"], g["syntax"], g["semantics"]
        fields = {name: _lower_set(v) for name, v in se["fields"].items()}
        for name, ws in task_sets.items():
            fields[f"task:{name}"] = ws
        fw: set[str] = set()
        for ws in sy["function_words"].values():
            fw |= _lower_set(ws)
        return Lexicons(
            tasks=task_sets,
            phonology=_lower_set(ph["words"]),
            rhyme_min_group=int(ph.get("rhyme", {}).get("min_group", 3)),
            prefixes=tuple(sorted(_lower_set(mo["prefixes"]), key=len, reverse=True)),
            suffixes=tuple(sorted(_lower_set(mo["suffixes"]), key=len, reverse=True)),
            affix_min_shared=int(mo.get("min_shared", 3)),
            affix_alpha=float(mo.get("alpha", 0.01)),
            abbreviations=_lower_set(mo.get("abbreviations", [])),
            function_words=frozenset(fw),
            fields=fields,
        )
    except KeyError as e:
        raise ShiftlensError(f"lexicon is missing the section {e}") from e


@functools.lru_cache(maxsize=1)
def _default_lexicons() -> Lexicons:
    return load_lexicons()


@functools.lru_cache(maxsize=1)
def _english() -> frozenset[str]:
    return frozenset(english_words())


def _clean_word(w: str) -> str:
    return w.strip().lower().lstrip("\u2581\u0120 ")


def _forms(w: str) -> set[str]:
    """A word and its naive inflectional stems (plural, past, -ing, -ly)."""
    out = {w}
    for suf, reps in (("ies", ("y",)), ("es", ("",)), ("s", ("",)), ("ed", ("", "e")),
                      ("ing", ("", "e")), ("ly", ("",))):
        if w.endswith(suf) and len(w) - len(suf) >= 3:
            out.update(w[: -len(suf)] + r for r in reps)
    return out


_VOWELS = frozenset("aeiouy")


@functools.lru_cache(maxsize=8)
def _affix_rates(suffixes: tuple[str, ...], prefixes: tuple[str, ...]) -> dict[tuple[str, str], float]:
    """Share of the shipped English words carrying each affix (stem >= 3 letters)."""
    words = english_words()
    out = {}
    for kind, affixes, test in (("suffix", suffixes, str.endswith),
                                ("prefix", prefixes, str.startswith)):
        for a in affixes:
            c = sum(1 for w in words if len(w) - len(a) >= 3 and test(w, a))
            out[kind, a] = (c + 1) / (len(words) + 2)
    return out


def _binom_sf(c: int, n: int, p: float) -> float:
    """P(X >= c) for X ~ Binomial(n, p)."""
    return float(sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(c, n + 1)))


def _rime(w: str) -> str | None:
    """The rhyming part of a spelling: the last vowel group and what follows (cat -> at,
    night -> ight, make -> ake). None for words without letters or a vowel."""
    if not w.isalpha() or len(w) < 2:
        return None
    stem, tail = w, ""
    if len(w) > 3 and w.endswith("e") and w[-2] not in _VOWELS:
        stem, tail = w[:-1], "e"
    i = len(stem) - 1
    while i >= 0 and stem[i] not in _VOWELS:
        i -= 1
    if i < 0:
        return None
    while i > 0 and stem[i - 1] in _VOWELS:
        i -= 1
    r = stem[i:] + tail
    return r if len(r) >= 2 else None


class LexiconAnnotator:
    """Offline annotator: task and linguistic level from shipped word lists and spelling cues.

    Deterministic (``seeds == (0,)``). It reads the first ``top_n`` words of a concept (the
    paper shows its annotator 15) and scores:

    * task t: share of words whose form (or naive stem) is in the task-t lexicon. The best
      task wins when it has at least ``min_hits`` words and a share >= ``min_share``;
      otherwise "none".
    * phonology: words in the sound/onomatopoeia list, or in a rhyme group (>= 3 words with
      the same spelled rime - last vowel group and what follows: c-at, fl-at - where the rime
      is not explained by a listed suffix the word carries, as in kind-ness);
    * morphology: words carrying a listed prefix/suffix that at least 3 words of the list
      share, more often than chance (binomial tail p < 0.01 given the affix's rate among the
      shipped 30,000 English words: three plurals in 15 words are not a concept, 6 are),
      abbreviations, and non-words (neither in the shipped English list nor in any lexicon);
    * syntax: function words;
    * semantics: the largest number of words from one semantic field (the task lexicons
      count as fields).

    The level with the largest share wins (ties: semantics, syntax, morphology, phonology).
    Confidence = purity (winner's share / sum of shares) x strength (winner's share /
    ``saturation``, capped at 1); for "none", ``1 - best task share / min_share``. A concept
    whose best level share is below ``min_share`` and that has no task is unexplainable
    (level None).

    Args:
        top_n: Words read per concept.
        min_share: Minimum share of words for a label.
        min_hits: Minimum number of words for a task label.
        saturation: Share at which strength is full.
        lexicons: A :class:`Lexicons` (default: the shipped ones).

    Example:
        >>> a = LexiconAnnotator()
        >>> ann = a.annotate(["python", "code", "function", "variable", "the", "loop"])
        >>> ann.task, ann.level
        ('coding', 'semantics')
    """

    name = "lexicon"
    seeds: tuple[int, ...] = (0,)

    def __init__(
        self,
        *,
        top_n: int = 15,
        min_share: float = 0.2,
        min_hits: int = 2,
        saturation: float = 0.5,
        lexicons: Lexicons | None = None,
    ) -> None:
        if top_n < 1:
            raise ShiftlensError(f"top_n must be >= 1, got {top_n}")
        self.top_n = top_n
        self.min_share = min_share
        self.min_hits = min_hits
        self.saturation = saturation
        self.lexicons = lexicons or _default_lexicons()
        lx = self.lexicons
        self._known = frozenset().union(lx.phonology, lx.function_words, lx.abbreviations,
                                        *lx.fields.values())

    def __repr__(self) -> str:
        return f"LexiconAnnotator(top_n={self.top_n}, min_share={self.min_share})"

    # -- cues
    def _affix_hits(self, ws: list[str]) -> set[int]:
        lx = self.lexicons
        rates = _affix_rates(lx.suffixes, lx.prefixes)
        n = len(ws)
        hits: set[int] = set()
        for kind, affixes, test in (("suffix", lx.suffixes, str.endswith),
                                    ("prefix", lx.prefixes, str.startswith)):
            for a in affixes:
                carriers = {i for i, w in enumerate(ws) if len(w) - len(a) >= 3 and test(w, a)}
                c = len({ws[i] for i in carriers})
                if c >= lx.affix_min_shared and _binom_sf(c, n, rates[kind, a]) < lx.affix_alpha:
                    hits |= carriers
        return hits

    def _rhyme_hits(self, ws: list[str]) -> set[int]:
        lx = self.lexicons
        groups: dict[str, set[int]] = {}
        for i, w in enumerate(ws):
            r = _rime(w)
            if r is None or self._suffix_explains(w, r):
                continue
            groups.setdefault(r, set()).add(i)
        hits: set[int] = set()
        for idx in groups.values():
            if len({ws[i] for i in idx}) >= lx.rhyme_min_group:
                hits |= idx
        return hits

    def _suffix_explains(self, w: str, rime: str) -> bool:
        """True when the word's rime is (the tail of) a listed suffix it carries: kind-ness."""
        return any(
            w.endswith(s) and len(w) - len(s) >= 3 and s.endswith(rime)
            for s in self.lexicons.suffixes
        )

    def scores(self, words: Sequence[str]) -> dict[str, dict[str, float]]:
        """Shares of the first ``top_n`` words hitting each task's and each level's cues.

        Example:
            >>> LexiconAnnotator().scores(["cat", "hat", "bat", "mat"])["level"]["phonology"]
            1.0
        """
        lx = self.lexicons
        ws = [_clean_word(w) for w in list(words)[: self.top_n]]
        ws = [w for w in ws if w]
        n = len(ws)
        if n == 0:
            raise ShiftlensError("LexiconAnnotator: empty word list")
        forms = [_forms(w) for w in ws]
        task = {}
        for t in USER_TASKS:
            lex = lx.tasks.get(t, frozenset())
            task[t] = sum(1 for i, f in enumerate(forms) if f & lex or (t == "math" and ws[i].isdigit())) / n
        phon = {i for i, f in enumerate(forms) if f & lx.phonology} | self._rhyme_hits(ws)
        morph = self._affix_hits(ws) | {i for i, w in enumerate(ws) if w in lx.abbreviations}
        english = _english()
        morph |= {
            i for i, w in enumerate(ws)
            if not w.isdigit() and w not in english and not (forms[i] & self._known)
        }
        syn = {i for i, w in enumerate(ws) if w in lx.function_words}
        field_counts = [
            sum(1 for i, f in enumerate(forms) if f & fw or (name == "task:math" and ws[i].isdigit()))
            for name, fw in lx.fields.items()
        ]
        sem = max(field_counts, default=0)
        level = {"phonology": len(phon) / n, "morphology": len(morph) / n,
                 "syntax": len(syn) / n, "semantics": sem / n}
        return {"task": task, "level": level, "n_words": {"n": float(n)}}

    def _confidence(self, best: float, total: float) -> float:
        if best <= 0:
            return 0.0
        return float(min(1.0, (best / total) * min(1.0, best / self.saturation)))

    def annotate(self, words: Sequence[str], *, seed: int = 0) -> Annotation:
        """Annotate one concept (``seed`` is ignored: the annotator is deterministic).

        Example:
            >>> LexiconAnnotator().annotate(["the", "of", "and", "to", "in"]).level
            'syntax'
        """
        sc = self.scores(words)
        n = sc["n_words"]["n"]
        task_s, level_s = sc["task"], sc["level"]
        best_t = max(USER_TASKS, key=lambda t: task_s[t])  # first wins ties
        t_share = task_s[best_t]
        if t_share >= self.min_share and t_share * n >= self.min_hits:
            task = best_t
            t_conf = self._confidence(t_share, sum(task_s.values()))
        else:
            task = "none"
            t_conf = float(1.0 - min(1.0, t_share / self.min_share)) if self.min_share > 0 else 1.0
        order = ("semantics", "syntax", "morphology", "phonology")
        best_l = max(order, key=lambda lv: level_s[lv])
        l_share = level_s[best_l]
        explainable = l_share >= self.min_share or task != "none"
        cues = ", ".join(f"{lv} {level_s[lv]:.2f}" for lv in LEVELS if level_s[lv] > 0)
        tcues = ", ".join(f"{t} {task_s[t]:.2f}" for t in USER_TASKS if task_s[t] > 0)
        desc = f"level cues: {cues or 'none'}; task cues: {tcues or 'none'}"
        if not explainable:
            return Annotation("none", None, t_conf, 0.0, False, desc)
        return Annotation(task, best_l, t_conf,
                          self._confidence(l_share, sum(level_s.values())), True, desc)


# ---------------------------------------------------------------------------- generative

#: Step 1 of the paper's protocol: describe the concept from its words.
DESCRIBE_PROMPT = (
    "You interpret one direction inside a language model. These are the words most aligned "
    "with it:\n{words}\n"
    "Name, in a few words, the single concept, topic or pattern that most of these words share. "
    "Do not repeat the words. If no single concept covers more than half of them, answer "
    "exactly: cannot tell.\nConcept:"
)
#: Step 2a: classify the description into a user-oriented task.
TASK_PROMPT = (
    "A group of words has this concept: {description}\n"
    "Which assistant task could this concept serve? Choose one of: writing, coding, math, "
    "translation, none.\nTask:"
)
#: Step 2b: classify the description into a linguistic level.
LEVEL_PROMPT = (
    "A group of words has this concept: {description}\n"
    "Which level of linguistics does the concept belong to? Choose one of: phonology, "
    "morphology, syntax, semantics.\nLevel:"
)

_TASK_PATTERNS: tuple[tuple[str, str], ...] = (
    ("writing", r"\bwrit(e|es|ing|ings|ten|ers?)\b"),
    ("coding", r"\b(cod(e|es|ing)|programm(ing|er)?|software)\b"),
    ("math", r"\b(math(s|ematics|ematical)?|arithmetic|calculation)\b"),
    ("translation", r"\btranslat(e|es|ed|ions?|ing|ors?)\b"),
    ("none", r"\b(none|no task|not applicable|n/a)\b"),
)
_LEVEL_PATTERNS: tuple[tuple[str, str], ...] = (
    ("phonology", r"\bphono(logy|logical|logic|etic|etics)\b"),
    ("morphology", r"\bmorpholog(y|ical|ic)\b"),
    ("syntax", r"\bsynta(x|ctic|ctical)\b"),
    ("semantics", r"\bsemantic(s|al)?\b"),
)


def _labels_in(reply: str, patterns: Sequence[tuple[str, str]]) -> list[str]:
    """Labels mentioned in a reply, in order of first mention."""
    text = reply.lower()
    found = []
    for label, pat in patterns:
        m = re.search(pat, text)
        if m:
            found.append((m.start(), label))
    return [lab for _, lab in sorted(found)]


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed python, numpy and torch RNGs inside the block; restore their states afterwards."""
    # the legacy global numpy RNG is what a generator without a seed argument would use
    py_state, np_state = random.getstate(), np.random.get_state()  # noqa: NPY002
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.random.fork_rng():
            random.seed(seed)
            np.random.seed(seed % 2**32)  # noqa: NPY002
            torch.manual_seed(seed)
            try:
                yield
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)  # noqa: NPY002


class GenerativeAnnotator:
    """Annotate concepts with any text generator, following Wu et al.'s two-step protocol (Sec. 5).

    Step 1: the generator describes the concept from its top words (or says "cannot tell":
    the concept is then unexplainable). Step 2: the description alone is classified into a
    task and a linguistic level. Run over several ``seeds``; :func:`concept_shift` reports the
    mean and spread of the shares over seeds, and tests base vs tuned across seeds (the paper:
    five ChatGPT runs).

    The generator is any ``generate(prompt) -> str`` (a local chat model, an API client). If
    it accepts a ``seed`` keyword it is called with ``seed=...``; otherwise python's, numpy's
    and torch's global RNGs are seeded around each call and restored afterwards.

    Args:
        generate: ``Callable[[str], str]``.
        seeds: Seeds to run (default five, as the paper).
        top_n: Words shown per concept (the paper: 15).
        describe_prompt, task_prompt, level_prompt: Templates with ``{words}`` /
            ``{description}`` fields (defaults: :data:`DESCRIBE_PROMPT`, :data:`TASK_PROMPT`,
            :data:`LEVEL_PROMPT`).
        name: Recorded in results.

    Raises:
        ShiftlensError: (from :meth:`annotate`) the generator returns something that is not a
            string, or a reply that names no known task / level.

    Example:
        >>> def fake(prompt):
        ...     if "Concept:" in prompt:
        ...         return "programming keywords"
        ...     return "coding" if "Task:" in prompt else "semantics"
        >>> GenerativeAnnotator(fake, seeds=(0,)).annotate(["def", "class", "return"])
        Annotation(task='coding', level='semantics', task_confidence=1.0, level_confidence=1.0, explainable=True, description='programming keywords')
    """

    def __init__(
        self,
        generate: Callable[[str], str],
        seeds: Sequence[int] = (0, 1, 2, 3, 4),
        *,
        top_n: int = 15,
        describe_prompt: str = DESCRIBE_PROMPT,
        task_prompt: str = TASK_PROMPT,
        level_prompt: str = LEVEL_PROMPT,
        name: str = "generative",
    ) -> None:
        if not callable(generate):
            raise ShiftlensError("GenerativeAnnotator: generate must be callable")
        seeds = tuple(int(s) for s in seeds)
        if not seeds:
            raise ShiftlensError("GenerativeAnnotator: at least one seed is needed")
        self.generate = generate
        self.seeds = seeds
        self.top_n = top_n
        self.describe_prompt = describe_prompt
        self.task_prompt = task_prompt
        self.level_prompt = level_prompt
        self.name = name
        try:
            params = inspect.signature(generate).parameters.values()
            self._takes_seed = any(
                p.name == "seed" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params
            )
        except (TypeError, ValueError):
            self._takes_seed = False

    def __repr__(self) -> str:
        return f"GenerativeAnnotator({self.name!r}, seeds={self.seeds})"

    def _call(self, prompt: str, seed: int) -> str:
        if self._takes_seed:
            out = self.generate(prompt, seed=seed)
        else:
            with _seeded(seed):
                out = self.generate(prompt)
        if not isinstance(out, str):
            raise ShiftlensError(
                f"{self.name}: the generator returned {type(out).__name__}, not a string"
            )
        return out.strip()

    def describe(self, words: Sequence[str], *, seed: int = 0) -> str:
        """Step 1: the concept's description (may be "cannot tell").

        Example:
            >>> GenerativeAnnotator(lambda p: "colours").describe(["red", "blue"])
            'colours'
        """
        shown = ", ".join(list(words)[: self.top_n])
        return self._call(self.describe_prompt.format(words=shown), seed)

    def annotate(self, words: Sequence[str], *, seed: int = 0) -> Annotation:
        """Describe, then classify the description into a task and a level.

        Example:
            >>> GenerativeAnnotator(lambda p: "cannot tell").annotate(["x"]).explainable
            False
        """
        desc = self.describe(words, seed=seed)
        if not desc or "cannot tell" in desc.lower():
            return Annotation("none", None, 1.0, 0.0, False, desc)
        labels = {}
        for kind, prompt, pats, allowed in (
            ("task", self.task_prompt, _TASK_PATTERNS, TASKS),
            ("level", self.level_prompt, _LEVEL_PATTERNS, LEVELS),
        ):
            reply = self._call(prompt.format(description=desc), seed)
            found = _labels_in(reply, pats)
            if kind == "task" and len(found) > 1 and "none" in found:
                found.remove("none")
            if not found:
                raise ShiftlensError(
                    f"{self.name}: unknown {kind} label in the reply {reply[:200]!r} "
                    f"(concept {desc[:80]!r}); expected one of {allowed}"
                )
            labels[kind] = (found[0], 1.0 / len(found))
        return Annotation(labels["task"][0], labels["level"][0], labels["task"][1],
                          labels["level"][1], True, desc)


# =============================================================================================
# 4. Concept shift (pair)
# =============================================================================================


def _layers(model: Any, layers: Sequence[int] | None) -> list[int]:
    n = model.cfg.n_layers
    if layers is None:
        return list(range(n))
    out = []
    for layer in layers:
        check_layer(model, layer)
        out.append(int(layer))
    if not out:
        raise ShiftlensError(f"{_name(model)}: no layers selected")
    return out


def _pair_k(pair: ModelPair, k: int | None, default: int, cap_frac: float | None) -> int:
    n, d = pair.cfg.d_mlp, pair.cfg.d_model
    bound = _rank_bound(n, d)
    if k is None:
        k = min(default, bound if cap_frac is None else max(1, int(bound * cap_frac)))
    return _check_k(k, n, d, f"{pair.names['base']!r}/{pair.names['tuned']!r} W_out")


def _progress(it: Any, total: int, desc: str, progress: bool) -> Any:
    if not progress:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, total=total, desc=desc, leave=False)


def _plt() -> Any:
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules and not os.environ.get("DISPLAY"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@dataclass
class ConceptShift:
    """Shares of concepts per task and per linguistic level, base vs tuned (Wu et al. Sec. 5).

    Attributes:
        annotations: One row per (model, layer, component, seed): the concept's words, its
            annotation and the variance it explains.
        meta: Models, layers, k, top_words, annotator, seeds, vocabulary size, method.

    Shares are taken over *explainable* concepts (the paper drops "Cannot Tell" concepts),
    per seed; with several seeds they are reported as mean and spread (std) over seeds and
    the tuned-vs-base Welch t-test runs across seeds (as the paper's t-test over its five
    ChatGPT runs). With one seed (a deterministic annotator) the test runs across concepts
    (0/1 indicators), which treats components as independent samples.

    Example:
        >>> res = concept_shift(pair, layers=[0, 1], k=8)  # doctest: +SKIP
        >>> res.summary()["sentence"]  # doctest: +SKIP
    """

    annotations: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)

    KIND = "ConceptShift"

    # -- frames
    def to_frame(self) -> pd.DataFrame:
        """One row per (model, layer, component, seed).

        Example:
            >>> res.to_frame().columns[:4].tolist()  # doctest: +SKIP
            ['model', 'layer', 'group', 'component']
        """
        return self.annotations.copy()

    def _groups(self) -> list[str]:
        present = list(dict.fromkeys(self.annotations["group"].tolist()))
        return ["all", *present]

    def _indicators(self, df: pd.DataFrame, kind: str, label: str) -> pd.Series:
        col = "task" if kind == "task" else "level"
        if label == "user-oriented":
            return df[col].isin(USER_TASKS).astype(float)
        return (df[col] == label).astype(float)

    def _labels(self, kind: str) -> tuple[str, ...]:
        return (*TASKS, "user-oriented") if kind == "task" else LEVELS

    def shares(self) -> pd.DataFrame:
        """Share of explainable concepts per (model, seed, group, kind, label).

        ``group`` is "all" or a layer group (lower/middle/upper); ``kind`` is "task" (labels:
        the tasks and "user-oriented" = any of the four) or "level"; plus kind "explainable"
        (share of all concepts that were explainable).

        Example:
            >>> res.shares().query("kind == 'task' and group == 'all'")  # doctest: +SKIP
        """
        df = self.annotations
        rows = []
        for group in self._groups():
            g = df if group == "all" else df[df["group"] == group]
            for (model, seed), sub in g.groupby(["model", "seed"], sort=True):
                ex = sub[sub["explainable"]]
                rows.append(dict(model=model, seed=int(seed), group=group, kind="explainable",
                                 label="explainable", share=float(sub["explainable"].mean()),
                                 n=len(sub)))
                for kind in ("task", "level"):
                    for label in self._labels(kind):
                        share = float(self._indicators(ex, kind, label).mean()) if len(ex) else float("nan")
                        rows.append(dict(model=model, seed=int(seed), group=group, kind=kind,
                                         label=label, share=share, n=len(ex)))
        return pd.DataFrame(rows)

    def stats(self) -> pd.DataFrame:
        """Per (group, kind, label): base and tuned mean/std over seeds, diff, Welch test.

        Example:
            >>> res.stats().query("group == 'all' and label == 'coding'")  # doctest: +SKIP
        """
        sh = self.shares()
        df = self.annotations
        n_seeds = df["seed"].nunique()
        rows = []
        for (group, kind, label), sub in sh.groupby(["group", "kind", "label"], sort=False):
            b = sub[sub["model"] == "base"]["share"].to_numpy()
            t = sub[sub["model"] == "tuned"]["share"].to_numpy()
            if n_seeds >= 2:
                a_s, b_s, unit = t, b, "seeds"
            else:
                g = df if group == "all" else df[df["group"] == group]
                if kind == "explainable":
                    a_s = g[g["model"] == "tuned"]["explainable"].astype(float).to_numpy()
                    b_s = g[g["model"] == "base"]["explainable"].astype(float).to_numpy()
                else:
                    ex = g[g["explainable"]]
                    a_s = self._indicators(ex[ex["model"] == "tuned"], kind, label).to_numpy()
                    b_s = self._indicators(ex[ex["model"] == "base"], kind, label).to_numpy()
                unit = "components"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                test = welch_test(a_s, b_s, seed=int(self.meta.get("seed", 0)))
                rows.append(dict(
                    group=group, kind=kind, label=label,
                    base_mean=float(np.nanmean(b)) if len(b) else float("nan"),
                    base_std=float(np.nanstd(b, ddof=1)) if len(b) >= 2 else float("nan"),
                    tuned_mean=float(np.nanmean(t)) if len(t) else float("nan"),
                    tuned_std=float(np.nanstd(t, ddof=1)) if len(t) >= 2 else float("nan"),
                    diff=float(np.nanmean(t) - np.nanmean(b)) if len(t) and len(b) else float("nan"),
                    t=test.statistic, p=test.pvalue, df=test.df, ci_low=test.ci_low,
                    ci_high=test.ci_high, n_base=test.n_b, n_tuned=test.n_a, unit=unit,
                ))
        return pd.DataFrame(rows)

    def summary(self) -> dict[str, Any]:
        """Headline numbers: task and level shares base -> tuned (overall and per layer group).

        Example:
            >>> res.summary()["task"]["user-oriented"]["diff"]  # doctest: +SKIP
        """
        st = self.stats()
        out: dict[str, Any] = {"models": self.meta.get("models"),
                               "annotator": self.meta.get("annotator"),
                               "seeds": self.meta.get("seeds"), "k": self.meta.get("k"),
                               "layers": self.meta.get("layers")}
        cols = ["base_mean", "base_std", "tuned_mean", "tuned_std", "diff", "t", "p", "df",
                "ci_low", "ci_high", "n_base", "n_tuned", "unit"]
        for kind in ("task", "level", "explainable"):
            sub = st[(st["group"] == "all") & (st["kind"] == kind)]
            out[kind] = {r["label"]: {c: r[c] for c in cols} for _, r in sub.iterrows()}
        out["by_group"] = {
            g: {r["label"]: {"base": r["base_mean"], "tuned": r["tuned_mean"], "diff": r["diff"],
                             "p": r["p"]} for _, r in sub.iterrows()}
            for g, sub in st[st["group"] != "all"].groupby("group", sort=False)
        }
        uo = out["task"].get("user-oriented", {})
        tasks = {k: v for k, v in out["task"].items() if k in USER_TASKS}
        top_task = max(tasks, key=lambda k: abs(np.nan_to_num(tasks[k]["diff"])), default="none")
        levels = out["level"]
        top_level = max(levels, key=lambda k: abs(np.nan_to_num(levels[k]["diff"])), default="semantics")
        if uo:
            out["sentence"] = (
                f"User-oriented concepts: {uo['base_mean']:.1%} of explainable components in base "
                f"-> {uo['tuned_mean']:.1%} in tuned ({uo['diff']:+.1%}, Welch p={uo['p']:.2g} "
                f"across {uo['unit']}); largest task change: {top_task} "
                f"({tasks[top_task]['diff']:+.1%}); largest linguistic-level change: {top_level} "
                f"({levels[top_level]['diff']:+.1%})."
            )
        return out

    # -- io
    def save(self, directory: str | Path) -> Path:
        """Write JSON + Parquet (never pickle).

        Example:
            >>> res.save("out/concepts")  # doctest: +SKIP
        """
        return save_bundle(directory, self.KIND, self.meta, {"annotations": self.annotations})

    @classmethod
    def load(cls, directory: str | Path) -> ConceptShift:
        """Read a result written by :meth:`save`.

        Example:
            >>> ConceptShift.load("out/concepts")  # doctest: +SKIP
        """
        meta, frames, _ = load_bundle(directory, cls.KIND)
        return cls(frames["annotations"], meta)

    def show(self) -> Any:
        """Bar charts of task and level shares, base vs tuned (error bars: std over seeds).

        Example:
            >>> fig = res.show(); fig.savefig("concepts.png")  # doctest: +SKIP
        """
        plt = _plt()
        st = self.stats()
        groups = [g for g in self._groups() if g != "all"]
        fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
        for ax, kind, labels in ((axes[0], "task", TASKS), (axes[1], "level", LEVELS)):
            sub = st[(st["group"] == "all") & (st["kind"] == kind)].set_index("label")
            x = np.arange(len(labels))
            for off, role, color in ((-0.2, "base", "tab:gray"), (0.2, "tuned", "tab:blue")):
                m = [sub.loc[lab, f"{role}_mean"] for lab in labels]
                e = [np.nan_to_num(sub.loc[lab, f"{role}_std"]) for lab in labels]
                ax.bar(x + off, m, 0.4, yerr=e, label=role, color=color)
            ax.set_xticks(x, labels, rotation=20)
            ax.set_ylabel("share of explainable concepts")
            ax.set_title(f"{kind} (all layers)")
            ax.legend()
        ax = axes[2]
        sub = st[(st["kind"] == "task") & (st["label"] == "user-oriented") & (st["group"] != "all")]
        sub = sub.set_index("group").reindex(groups)
        ax.plot(groups, sub["base_mean"], "s--", color="tab:gray", label="base")
        ax.plot(groups, sub["tuned_mean"], "o-", color="tab:blue", label="tuned")
        ax.set_title("user-oriented concepts by layer group")
        ax.set_ylabel("share")
        ax.legend()
        fig.suptitle(f"Concept shift: {self.meta.get('models', {})}", fontsize=9)
        fig.tight_layout()
        return fig


def _annotator_name(annotator: Any) -> str:
    return str(getattr(annotator, "name", None) or type(annotator).__name__)


def concept_shift(
    pair: ModelPair,
    annotator: Any = None,
    *,
    layers: Sequence[int] | None = None,
    k: int | None = None,
    top_words: int = 50,
    vocab: WordVocab | None = None,
    method: Method = "auto",
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> ConceptShift:
    """Annotate the top-k W_out components of each layer of both models; compare shares.

    For each model and layer: :func:`principal_components`, then each component's
    ``top_words`` words (:func:`concept_words`), then ``annotator.annotate(words, seed=s)``
    for every seed of the annotator. Identical word lists are annotated once per seed.

    Args:
        pair: The base/tuned pair.
        annotator: An :class:`Annotator` (default: :class:`LexiconAnnotator`).
        layers: Layers to read (default: all).
        k: Components per layer (default: ``min(300, rank)``, the paper's cut).
        top_words: Words per component handed to the annotator (most aligned first).
        vocab: Word vocabulary (default: :func:`shiftlens.vocab.default_vocab` of the pair's
            tokenizer).
        method: PCA solver (see :func:`pca`).
        device: Where to compute.
        progress: Show a progress bar.

    Raises:
        ShiftlensError: bad layers, ``k`` larger than the rank, an empty vocabulary, an
            annotator without ``annotate``, or an annotation with an unknown label (the message
            names model, layer, component and seed).

    Example:
        >>> res = concept_shift(pair, k=8)  # doctest: +SKIP
        >>> res.summary()["task"]["coding"]["diff"]  # doctest: +SKIP
    """
    annotator = annotator if annotator is not None else LexiconAnnotator()
    if not callable(getattr(annotator, "annotate", None)):
        raise ShiftlensError(f"annotator {annotator!r} has no annotate(words, seed=...) method")
    seeds = tuple(int(s) for s in getattr(annotator, "seeds", (0,)))
    if not seeds:
        raise ShiftlensError(f"annotator {_annotator_name(annotator)!r} has no seeds")
    if vocab is None:
        vocab = default_vocab(pair.tokenizer)
    _check_vocab(vocab, f"concept_shift {pair.names['base']!r}/{pair.names['tuned']!r}")
    sel = _layers(pair.base, layers)
    k = _pair_k(pair, k, DEFAULT_CONCEPT_K, None)
    groups = layer_groups(pair.cfg.n_layers)
    cache: dict[tuple[tuple[str, ...], int], Annotation] = {}
    rows = []
    jobs = [(role, model, layer) for role, model in pair for layer in sel]
    dirs: dict[str, Tensor] = {}
    for role, model, layer in _progress(jobs, len(jobs), "concept_shift", progress):
        if role not in dirs:
            dirs[role] = word_directions(model, vocab).to(device)
        pc = principal_components(model, layer, k, method=method, device=device)
        scores, idx = top_words_fn(pc.components, dirs[role], top_words)
        evr = pc.explained_variance_ratio.tolist()
        for c, (row_idx, row_s) in enumerate(zip(idx.tolist(), scores.tolist())):
            words = tuple(vocab.words[i] for i in row_idx)
            for s in seeds:
                key = (words, s)
                if key not in cache:
                    where = (f"annotator {_annotator_name(annotator)!r} on {role} model "
                             f"{pair.names[role]!r} layer {layer} component {c} seed {s}")
                    try:
                        ann = annotator.annotate(list(words), seed=s)
                    except ShiftlensError as e:
                        raise ShiftlensError(f"{where}: {e}") from e
                    if isinstance(ann, Mapping):
                        try:
                            ann = Annotation(**ann)
                        except (TypeError, ShiftlensError) as e:
                            raise ShiftlensError(f"{where}: bad annotation {dict(ann)!r}: {e}") from e
                    if not isinstance(ann, Annotation):
                        raise ShiftlensError(
                            f"{where}: returned {type(ann).__name__}, not an Annotation"
                        )
                    cache[key] = ann
                ann = cache[key]
                rows.append(dict(
                    model=role, layer=layer, group=groups[layer], component=c,
                    explained_variance_ratio=evr[c], seed=s, task=ann.task,
                    task_confidence=float(ann.task_confidence), level=ann.level,
                    level_confidence=float(ann.level_confidence),
                    explainable=bool(ann.explainable), description=ann.description,
                    words=_SEP.join(words), scores=_SEP.join(f"{x:+.4f}" for x in row_s),
                ))
    meta = dict(
        models=dict(pair.names), layers=sel, n_layers=pair.cfg.n_layers, k=k,
        top_words=top_words, annotator=_annotator_name(annotator), annotator_repr=repr(annotator),
        seeds=list(seeds), seed=seeds[0], vocab_size=len(vocab), method=method,
        processing=pair.processing, tasks=list(TASKS), levels=list(LEVELS),
    )
    return ConceptShift(pd.DataFrame(rows), meta)


# =============================================================================================
# 5. Rotation
# =============================================================================================


def _orthonormal_cols(A: Tensor) -> Tensor:
    Q, _ = torch.linalg.qr(A.to(torch.float64).T)
    return Q


def principal_angles(
    A: Float[Tensor, "k d"], B: Float[Tensor, "m d"]
) -> Float[Tensor, " r"]:
    """Principal angles (radians, ascending) between the row spaces of ``A`` and ``B``.

    ``r = min(k, m)``. Cosines come from the SVD of ``Qa^T Qb``; angles below 45 degrees are
    taken from the sines instead (accurate for tiny angles, as in Knyazev & Argentati 2002).

    Example:
        >>> e = torch.eye(3)
        >>> principal_angles(e[:2], e[1:]).tolist()  # shares e1, orthogonal otherwise
        [0.0, 1.5707963267948966]
    """
    if A.shape[0] < B.shape[0]:
        A, B = B, A
    Qa, Qb = _orthonormal_cols(A), _orthonormal_cols(B)
    M = Qa.T @ Qb
    cos = torch.linalg.svdvals(M).clamp(0, 1)  # descending -> angles ascending
    sin = torch.linalg.svdvals(Qb - Qa @ M).clamp(0, 1).flip(0)  # ascending
    ang = torch.where(cos**2 > 0.5, torch.arcsin(sin), torch.arccos(cos))
    return ang


def explained_share(
    W: Float[Tensor, "n d"], basis: Float[Tensor, "k d"]
) -> float:
    """Share of the variance of ``W``'s rows (centred over rows) inside the span of ``basis`` rows.

    Example:
        >>> W = torch.randn(50, 4) * torch.tensor([3.0, 1, 1, 1])
        >>> 0.0 < explained_share(W, torch.eye(4)[:1]) < 1.0
        True
    """
    X = W.to(torch.float64)
    X = X - X.mean(dim=0)
    Q = _orthonormal_cols(basis.to(X.device))
    tot = float((X * X).sum())
    return float(((X @ Q) ** 2).sum()) / tot if tot > 0 else float("nan")


@dataclass
class Rotation:
    """How far tuning rotated each layer's W_out principal subspace.

    Attributes:
        layers: One row per layer: ``overlap`` (mean cos^2 of the principal angles between
            the base and tuned top-k subspaces: 1 = same subspace, ``k/d_model`` = chance for
            random subspaces), ``mean_angle_deg``, ``max_angle_deg``, ``grassmann``
            (sqrt of the sum of squared angles, radians), ``tuned_var_by_base`` (share of the
            tuned W_out variance inside the base top-k subspace), ``tuned_var_by_tuned`` (its
            upper bound, the tuned top-k's own share), ``var_retained`` (their ratio),
            ``base_var_by_base``, ``base_var_by_tuned``.
        moved: The components that moved most, per layer and side: ``side="tuned"`` rows are
            tuned components least inside the base subspace (new directions), with their words
            (``words_after``) and the best-matching base component's words
            (``words_before``, sign aligned); ``side="base"`` rows are base components least
            inside the tuned subspace (lost directions).
        angles: ``[n_layers, k]`` principal angles (radians, ascending).
        meta: Models, k, d_model, vocabulary size, method, seed.

    Example:
        >>> rot = rotation(pair, k=8)  # doctest: +SKIP
        >>> rot.summary()["most_rotated_layer"]  # doctest: +SKIP
    """

    layers: pd.DataFrame
    moved: pd.DataFrame
    angles: Float[Tensor, "n_layers k"]
    meta: dict[str, Any] = field(default_factory=dict)

    KIND = "Rotation"

    def to_frame(self) -> pd.DataFrame:
        """One row per layer.

        Example:
            >>> rotation(pair, k=8).to_frame()[["layer", "overlap"]]  # doctest: +SKIP
        """
        return self.layers.copy()

    def summary(self) -> dict[str, Any]:
        """Most rotated layer, overlap overall and per layer group (bootstrap CI over layers).

        Example:
            >>> rot.summary()["sentence"]  # doctest: +SKIP
        """
        df = self.layers
        worst = df.loc[df["overlap"].idxmin()]
        chance = self.meta.get("chance_overlap", float("nan"))
        by_group = {}
        for g, sub in df.groupby("group", sort=False):
            lo, hi = bootstrap_ci(sub["overlap"].to_numpy(), seed=int(self.meta.get("seed", 0)))
            by_group[g] = {"overlap": float(sub["overlap"].mean()), "ci_low": lo, "ci_high": hi,
                           "var_retained": float(sub["var_retained"].mean()),
                           "n_layers": len(sub)}
        lo, hi = bootstrap_ci(df["overlap"].to_numpy(), seed=int(self.meta.get("seed", 0)))
        out = {
            "models": self.meta.get("models"), "k": self.meta.get("k"),
            "chance_overlap": chance,
            "mean_overlap": float(df["overlap"].mean()), "overlap_ci": (lo, hi),
            "min_overlap": float(worst["overlap"]),
            "most_rotated_layer": int(worst["layer"]),
            "most_rotated_mean_angle_deg": float(worst["mean_angle_deg"]),
            "mean_var_retained": float(df["var_retained"].mean()),
            "by_group": by_group,
        }
        out["sentence"] = (
            f"Top-{out['k']} W_out subspaces: mean overlap {out['mean_overlap']:.3f} "
            f"(95% CI over layers [{lo:.3f}, {hi:.3f}]; 1 = unchanged, chance {chance:.3f}); "
            f"most rotated layer {out['most_rotated_layer']} (overlap {out['min_overlap']:.3f}, "
            f"mean angle {out['most_rotated_mean_angle_deg']:.1f} deg); base components explain "
            f"{out['mean_var_retained']:.1%} of the variance tuned components explain."
        )
        return out

    def save(self, directory: str | Path) -> Path:
        """Write JSON + Parquet + safetensors (never pickle).

        Example:
            >>> rot.save("out/rotation")  # doctest: +SKIP
        """
        return save_bundle(directory, self.KIND, self.meta,
                           {"layers": self.layers, "moved": self.moved},
                           {"angles": self.angles.float().contiguous()})

    @classmethod
    def load(cls, directory: str | Path) -> Rotation:
        """Read a result written by :meth:`save`.

        Example:
            >>> Rotation.load("out/rotation")  # doctest: +SKIP
        """
        meta, frames, tensors = load_bundle(directory, cls.KIND)
        return cls(frames["layers"], frames["moved"], tensors["angles"], meta)

    def show(self) -> Any:
        """Overlap and retained variance per layer, with the chance overlap.

        Example:
            >>> rot.show().savefig("rotation.png")  # doctest: +SKIP
        """
        plt = _plt()
        df = self.layers
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
        ax = axes[0]
        ax.plot(df["layer"], df["overlap"], "o-", label="overlap (mean cos$^2$)")
        ax.plot(df["layer"], df["var_retained"], "s--", label="tuned variance kept by base PCs")
        ax.axhline(self.meta.get("chance_overlap", float("nan")), color="gray", ls=":",
                   label="chance overlap k/d")
        ax.set_xlabel("layer")
        ax.set_xticks(df["layer"].tolist())
        ax.set_ylim(0, 1.05)
        ax.legend(fontsize=8)
        ax.set_title(f"W_out top-{self.meta.get('k')} subspace: base vs tuned")
        ax = axes[1]
        ang = np.degrees(self.angles.float().numpy())
        im = ax.imshow(ang.T, aspect="auto", origin="lower", cmap="viridis", vmin=0, vmax=90,
                       extent=(df["layer"].min() - 0.5, df["layer"].max() + 0.5, 0.5, ang.shape[1] + 0.5))
        ax.set_xlabel("layer")
        ax.set_xticks(df["layer"].tolist())
        ax.set_ylabel("principal angle #")
        ax.set_title("principal angles (deg)")
        fig.colorbar(im, ax=ax)
        fig.tight_layout()
        return fig


def rotation(
    pair: ModelPair,
    k: int | None = None,
    *,
    layers: Sequence[int] | None = None,
    vocab: WordVocab | None = None,
    top_words: int = 10,
    n_moved: int = 3,
    method: Method = "auto",
    device: str | torch.device = "cpu",
    seed: int = 0,
    progress: bool = True,
) -> Rotation:
    """Rotation of each layer's W_out principal subspace from base to tuned, as numbers.

    Per layer: principal angles between the base and tuned top-k component subspaces,
    overlap = mean cos^2, share of the tuned W_out variance explained by the base
    components, and the components that moved most with their words before and after.

    Args:
        pair: The base/tuned pair.
        k: Subspace dimension (default: ``min(64, rank // 4)``; ``k`` = d_model would make
            both subspaces the whole space).
        layers: Layers (default: all).
        vocab: Words for the moved components (default: ``default_vocab``).
        top_words: Words shown per moved component.
        n_moved: Moved components reported per layer and side.
        method: PCA solver (see :func:`pca`).
        device: Where to compute.
        seed: Seed of the randomized solver and the bootstrap.
        progress: Show a progress bar.

    Raises:
        ShiftlensError: bad layers, ``k`` larger than the rank, empty vocabulary.

    Example:
        >>> rot = rotation(pair, k=8)  # doctest: +SKIP
        >>> rot.to_frame()["overlap"].round(3).tolist()  # doctest: +SKIP
    """
    sel = _layers(pair.base, layers)
    k = _pair_k(pair, k, DEFAULT_ROTATION_K, 0.25)
    d_model = pair.cfg.d_model
    if k >= d_model:
        warnings.warn(f"rotation with k={k} >= d_model={d_model}: both subspaces are the whole "
                      "space, every angle is zero", ShiftlensWarning, stacklevel=2)
    if vocab is None:
        vocab = default_vocab(pair.tokenizer)
    _check_vocab(vocab, f"rotation {pair.names['base']!r}/{pair.names['tuned']!r}")
    dirs = {role: word_directions(m, vocab).to(device) for role, m in pair}
    groups = layer_groups(pair.cfg.n_layers)
    rows, moved, angles = [], [], []

    def words_of(v: Tensor, role: str) -> tuple[str, str]:
        s, i = top_words_fn(v[None].float(), dirs[role], top_words)
        return (_SEP.join(vocab.words[j] for j in i[0].tolist()),
                _SEP.join(f"{x:+.3f}" for x in s[0].tolist()))

    for layer in _progress(sel, len(sel), "rotation", progress):
        Wb = mlp_out(pair.base, layer).to(device)
        Wt = mlp_out(pair.tuned, layer).to(device)
        name = f"layer {layer} W_out"
        pb = pca(Wb, k, method=method, device=device, seed=seed, name=f"base {name}")
        pt = pca(Wt, k, method=method, device=device, seed=seed, name=f"tuned {name}")
        Vb, Vt = pb.components.double(), pt.components.double()
        ang = principal_angles(Vb, Vt)
        cos2 = torch.cos(ang) ** 2
        t_by_b, b_by_t = explained_share(Wt, Vb), explained_share(Wb, Vt)
        t_by_t = float(pt.explained_variance_ratio.double().sum())
        b_by_b = float(pb.explained_variance_ratio.double().sum())
        rows.append(dict(
            layer=layer, group=groups[layer], k=k, overlap=float(cos2.mean()),
            mean_angle_deg=float(torch.rad2deg(ang).mean()),
            max_angle_deg=float(torch.rad2deg(ang).max()),
            grassmann=float(ang.norm()),
            tuned_var_by_base=t_by_b, tuned_var_by_tuned=t_by_t,
            var_retained=t_by_b / t_by_t if t_by_t > 0 else float("nan"),
            base_var_by_base=b_by_b, base_var_by_tuned=b_by_t,
        ))
        angles.append(ang.float().cpu())
        M = Vb @ Vt.T  # [base comp, tuned comp]
        for side in ("tuned", "base"):
            inside = (M**2).sum(0) if side == "tuned" else (M**2).sum(1)
            order = torch.argsort(inside)[: min(n_moved, k)]
            for j in order.tolist():
                col = M[:, j] if side == "tuned" else M[j, :]
                i = int(col.abs().argmax())
                c = float(col[i])
                sgn = 1.0 if c >= 0 else -1.0
                if side == "tuned":
                    after, after_s = words_of(Vt[j], "tuned")
                    before, before_s = words_of(sgn * Vb[i], "base")
                    evr = float(pt.explained_variance_ratio[j])
                else:
                    before, before_s = words_of(Vb[j], "base")
                    after, after_s = words_of(sgn * Vt[i], "tuned")
                    evr = float(pb.explained_variance_ratio[j])
                moved.append(dict(
                    layer=layer, side=side, component=j, explained_variance_ratio=evr,
                    inside_other=float(inside[j]), best_match=i, best_cos=c,
                    words_before=before, scores_before=before_s,
                    words_after=after, scores_after=after_s,
                ))
    meta = dict(
        models=dict(pair.names), layers=sel, n_layers=pair.cfg.n_layers, k=k, d_model=d_model,
        chance_overlap=k / d_model, vocab_size=len(vocab), top_words=top_words,
        n_moved=n_moved, method=method, seed=seed, processing=pair.processing,
    )
    return Rotation(pd.DataFrame(rows), pd.DataFrame(moved), torch.stack(angles), meta)
