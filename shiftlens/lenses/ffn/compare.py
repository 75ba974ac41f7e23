"""Lens 3 on a pair: did tuning rotate the feed-forward knowledge? (Wu et al. 2024, §5).

* :func:`concept_shift` - every selected layer's top-k W_out components of both models read as
  words and annotated with a user-oriented task and a linguistic level; the shares compared
  base vs tuned (-> :class:`~shiftlens.lenses.ffn.results.ConceptShiftResult`).
* :func:`rotation` - rotation as a number (not in the paper, which reads it off the concept
  shares): principal angles between the base and tuned top-k subspaces, their overlap, the
  tuned variance the base components still explain, and the components that moved most
  (-> :class:`~shiftlens.lenses.ffn.results.RotationResult`).

Each is split into validate (every argument checked before any weight is read), accumulate
(one layer at a time) and assemble (the Result with its ``meta``). Both compute on ``device``
when given, else on the base model's device (:func:`shiftlens.bridge.device_of`).

The pair: a :class:`shiftlens.ModelPair`, or ``(base, tuned)`` where each is a bridge, a
:class:`~shiftlens.weights.WeightSource` or a checkpoint directory. Given directories, the
weights are read from the files one layer at a time (:class:`shiftlens.weights.CheckpointWeights`),
so the lens runs on models that do not fit in memory, with bitwise the numbers of the bridge path.

Nothing silent: a NaN or infinite weight stops the lens with a :class:`ShiftlensError` naming the
role, the model, the layer and the weight (W_out, or the unembedding W_U); no statistic is
computed over a model with a broken layer.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from shiftlens.bridge import model_name
from shiftlens.checks import check_choice, check_device, check_int, check_layers
from shiftlens.errors import ShiftlensError, ShiftlensWarning
from shiftlens.lenses.ffn.annotators import (
    Annotation,
    annotator_name,
    annotator_seeds,
    as_annotation,
)
from shiftlens.lenses.ffn.core import (
    DEFAULT_CONCEPT_K,
    DEFAULT_ROTATION_K,
    LEVELS,
    METHODS,
    TASKS,
    Components,
    Method,
    as_model,
    check_bool,
    check_k,
    join_scores,
    join_words,
    model_vocab,
    rank_bound,
    read_w_out,
)
from shiftlens.lenses.ffn.core import top_words as read_top_words
from shiftlens.lenses.ffn.lexicon import LexiconAnnotator
from shiftlens.lenses.ffn.results import (
    ALTERNATIVES,
    ANNOTATION_COLUMNS,
    LAYER_COLUMNS,
    MOVED_COLUMNS,
    ConceptShiftResult,
    RotationResult,
)
from shiftlens.lenses.ffn.subspaces import (
    ComponentCache,
    explained_share,
    principal_angles,
)
from shiftlens.result import make_meta
from shiftlens.stats import layer_groups
from shiftlens.weights import WordVocab, is_processed

__all__ = ["concept_shift", "rotation"]

_SHAPES = ("n_layers", "d_model", "d_mlp", "d_vocab")


# ============================================================================ the pair
@dataclass
class _Pair:
    """The two models of a comparison, whatever was given (a ModelPair, bridges, sources, paths)."""

    base: Any
    tuned: Any
    names: dict[str, str]
    processing: str | None
    _tokenizer: Any = field(default=None, repr=False)

    @property
    def cfg(self) -> Any:
        return self.base.cfg

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = getattr(self.base, "tokenizer", None)
        return self._tokenizer

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        yield "base", self.base
        yield "tuned", self.tuned

    def who(self, role: str) -> str:
        return f"{role} model {self.names[role]!r}"


def _as_pair(pair: Any, what: str) -> _Pair:
    """Validate: ``pair`` as a :class:`_Pair` (shapes checked equal for separately given models)."""
    if all(hasattr(pair, a) for a in ("base", "tuned", "names", "cfg")):
        return _Pair(pair.base, pair.tuned, dict(pair.names), getattr(pair, "processing", None),
                     getattr(pair, "tokenizer", None))
    if isinstance(pair, Mapping) and set(pair) == {"base", "tuned"}:
        models = (pair["base"], pair["tuned"])
    elif isinstance(pair, (tuple, list)) and len(pair) == 2:
        models = tuple(pair)
    else:
        raise ShiftlensError(f"{what}: pair must be a shiftlens.ModelPair or (base, tuned) models "
                             "(bridges, weight sources or checkpoint directories), got "
                             f"{type(pair).__name__}")
    base, tuned = (as_model(m, f"{what}: {role} model") for role, m in zip(("base", "tuned"),
                                                                          models))
    names = {"base": model_name(base), "tuned": model_name(tuned)}
    for f in _SHAPES:
        vb, vt = getattr(base.cfg, f, None), getattr(tuned.cfg, f, None)
        if vb != vt:
            raise ShiftlensError(f"{what}: incompatible pair (base {names['base']!r} vs tuned "
                                 f"{names['tuned']!r}): {f} {vb} != {vt}")
    tb, tt = getattr(base, "tokenizer", None), getattr(tuned, "tokenizer", None)
    if tb is not None and tt is not None and tb is not tt and tb.get_vocab() != tt.get_vocab():
        raise ShiftlensError(f"{what}: incompatible tokenizers (base {names['base']!r} vs tuned "
                             f"{names['tuned']!r}): the vocabularies differ")
    processed = {is_processed(base), is_processed(tuned)}
    return _Pair(base, tuned, names, "compat" if processed == {True} else
                 "raw" if processed == {False} else None, tb)


# ============================================================================ shared checks
def _pair_names(pair: _Pair) -> str:
    return f"{pair.names['base']!r}/{pair.names['tuned']!r}"


def _pair_k(pair: _Pair, k: Any, default: int, cap_frac: float | None) -> int:
    """``k`` for both models' W_out (default: ``default``, capped at ``cap_frac`` of the rank)."""
    n, d = pair.cfg.d_mlp, pair.cfg.d_model
    if k is None:
        bound = rank_bound(n, d)
        k = min(default, bound if cap_frac is None else max(1, int(bound * cap_frac)))
    return check_k(k, n, d, f"{_pair_names(pair)} W_out")


def _check_common(pair: _Pair, layers: Any, top_words: Any, method: Any, progress: Any,
                  cache: Any, what: str) -> tuple[list[int], int]:
    check_choice("method", method, METHODS, who=what)
    check_bool("progress", progress, what)
    if cache is not None and not isinstance(cache, ComponentCache):
        raise ShiftlensError(f"{what}: cache must be a ComponentCache or None, got "
                             f"{type(cache).__name__}")
    if layers is not None and isinstance(layers, (bool, float)):
        raise ShiftlensError(f"{what}: layers must be a list of layer indices or None, got "
                             f"{layers!r}")
    return (check_layers(pair.base, layers),
            check_int("top_words", top_words, minimum=1, who=what))


def _progress(items: Sequence[Any], desc: str, progress: bool) -> Any:
    return tqdm(items, total=len(items), desc=desc, disable=not progress, leave=False)


# ============================================================================ concept shift
@dataclass(frozen=True)
class _ConceptPlan:
    """The checked arguments of :func:`concept_shift`."""

    annotator: Any
    seeds: tuple[int, ...]
    vocab: WordVocab
    layers: list[int]
    groups: list[str]
    k: int
    top_words: int
    method: str
    device: torch.device
    alternative: str
    cache: ComponentCache


def _concept_plan(pair: _Pair, annotator: Any, layers: Any, k: Any, top_words: Any,
                  vocab: WordVocab | None, method: Any, device: Any, alternative: Any,
                  progress: Any, cache: Any) -> _ConceptPlan:
    """Validate: every argument of :func:`concept_shift`, before any weight is read."""
    annotator = annotator if annotator is not None else LexiconAnnotator()
    seeds = annotator_seeds(annotator)
    sel, top = _check_common(pair, layers, top_words, method, progress, cache, "concept_shift")
    check_choice("alternative", alternative, ALTERNATIVES, who="concept_shift")
    vocab = model_vocab(pair, vocab, f"concept_shift {_pair_names(pair)}")
    return _ConceptPlan(annotator, seeds, vocab, sel, layer_groups(pair.cfg.n_layers),
                        _pair_k(pair, k, DEFAULT_CONCEPT_K, None), top, method,
                        check_device(device, pair.base, who="concept_shift"), alternative,
                        cache if cache is not None else ComponentCache())


def _annotation(plan: _ConceptPlan, cache: dict, words: tuple[str, ...], seed: int,
                where: str) -> Annotation:
    """One concept's annotation (identical word lists are annotated once per seed)."""
    key = (words, seed)
    if key not in cache:
        try:
            value = plan.annotator.annotate(list(words), seed=seed)
        except ShiftlensError as e:
            raise ShiftlensError(f"{where}: {e}") from e
        except Exception as e:  # noqa: BLE001 - a user's annotator: say where it failed
            raise ShiftlensError(f"{where}: the annotator raised {type(e).__name__}: {e}") from e
        cache[key] = as_annotation(value, where)
    return cache[key]


def _annotate_layer(pair: _Pair, plan: _ConceptPlan, role: str, model: Any, layer: int,
                    directions: Tensor, cache: dict) -> list[dict[str, Any]]:
    """Accumulate: one model layer's components, their words, and one row per seed."""
    pc = plan.cache.components(model, layer, plan.k, method=plan.method, device=plan.device,
                               who=pair.who(role))
    scores, idx = read_top_words(pc.components, directions, plan.top_words)
    evr = pc.explained_variance_ratio.tolist()
    name = annotator_name(plan.annotator)
    rows = []
    for c, (row_idx, row_s) in enumerate(zip(idx.tolist(), scores.tolist())):
        words = tuple(plan.vocab.words[i] for i in row_idx)
        for s in plan.seeds:
            where = (f"annotator {name!r} on {role} model {pair.names[role]!r} layer {layer} "
                     f"component {c} seed {s}")
            ann = _annotation(plan, cache, words, s, where)
            rows.append(dict(
                model=role, layer=layer, group=plan.groups[layer], component=c,
                explained_variance_ratio=evr[c], seed=s, task=ann.task,
                task_confidence=float(ann.task_confidence), level=ann.level,
                level_confidence=float(ann.level_confidence),
                explainable=bool(ann.explainable), description=ann.description,
                words=join_words(words), scores=join_scores(row_s),
            ))
    return rows


def _concept_result(pair: _Pair, plan: _ConceptPlan, rows: list[dict]) -> ConceptShiftResult:
    """Assemble: the annotations frame and the meta block."""
    params = dict(layers=plan.layers, k=plan.k, top_words=plan.top_words,
                  annotator=annotator_name(plan.annotator), annotator_repr=repr(plan.annotator),
                  seeds=list(plan.seeds), vocab_size=len(plan.vocab), method=plan.method,
                  device=str(plan.device), alternative=plan.alternative)
    meta = make_meta(pair, seed=plan.seeds[0], params=params, n_layers=pair.cfg.n_layers,
                     processing=pair.processing, tasks=list(TASKS), levels=list(LEVELS))
    return ConceptShiftResult(pd.DataFrame(rows, columns=list(ANNOTATION_COLUMNS)), meta)


def concept_shift(
    pair: Any,
    annotator: Any = None,
    *,
    layers: Sequence[int] | None = None,
    k: int | None = None,
    top_words: int = 50,
    vocab: WordVocab | None = None,
    method: Method = "auto",
    device: str | torch.device | None = None,
    alternative: str = "two-sided",
    progress: bool = True,
    cache: ComponentCache | None = None,
) -> ConceptShiftResult:
    """Annotate the top-k W_out components of each layer of both models; compare the shares.

    For each model and layer (Wu et al. 2024, §5): the principal components of W_out
    (:func:`~shiftlens.lenses.ffn.core.principal_components`), each component's ``top_words``
    words (:func:`~shiftlens.lenses.ffn.core.top_words` against the model's own
    :func:`~shiftlens.lenses.ffn.core.word_directions`), then
    ``annotator.annotate(words, seed=s)`` for every seed of the annotator.

    Args:
        pair: The base/tuned :class:`shiftlens.ModelPair`, or ``(base, tuned)`` bridges,
            weight sources or checkpoint directories (read layer by layer from the files).
        annotator: An :class:`~shiftlens.lenses.ffn.annotators.Annotator` (default:
            :class:`~shiftlens.lenses.ffn.lexicon.LexiconAnnotator`).
        layers: Layers to read (default: all).
        k: Components per layer (default: ``min(300, rank)``, the paper's cut).
        top_words: Words per component handed to the annotator (most aligned first).
        vocab: Word vocabulary (default: :func:`shiftlens.vocab.default_vocab` of the pair's
            tokenizer).
        method: PCA solver (see :func:`~shiftlens.lenses.ffn.core.pca`).
        device: Where to compute (default: the base model's device).
        alternative: The share tests' alternative (recorded in ``params``): ``"two-sided"``
            (default), ``"greater"`` (tuned > base) or ``"less"``; sentences name it.
        progress: Show a progress bar.
        cache: A :class:`~shiftlens.lenses.ffn.subspaces.ComponentCache` to share components and
            word directions with other calls (e.g. :func:`rotation` on the same pair).

    Returns:
        The :class:`~shiftlens.lenses.ffn.results.ConceptShiftResult`.

    Raises:
        ShiftlensError: bad layers, ``k`` larger than the rank, an empty vocabulary, a bad
            argument (naming it and its value), an annotator without ``annotate`` or with bad
            seeds, an annotation with an unknown label or an annotator that raised (the message
            names model, layer, component and seed), or a NaN/inf weight (naming role, model,
            layer and weight).

    Example:
        >>> res = concept_shift(pair, k=8)  # doctest: +SKIP
        >>> res.summary()["task"]["coding"]["diff"]  # doctest: +SKIP
        >>> concept_shift(("/models/base", "/models/tuned"), k=300)  # doctest: +SKIP
    """
    pair = _as_pair(pair, "concept_shift")
    plan = _concept_plan(pair, annotator, layers, k, top_words, vocab, method, device,
                         alternative, progress, cache)
    memo: dict = {}
    directions: dict[str, Tensor] = {}
    rows: list[dict] = []
    jobs = [(role, model, layer) for role, model in pair for layer in plan.layers]
    for role, model, layer in _progress(jobs, "concept_shift", progress):
        if role not in directions:
            directions[role] = plan.cache.directions(model, plan.vocab,
                                                     who=pair.who(role)).to(plan.device)
        rows += _annotate_layer(pair, plan, role, model, layer, directions[role], memo)
    return _concept_result(pair, plan, rows)


# ============================================================================ rotation
@dataclass(frozen=True)
class _RotationPlan:
    """The checked arguments of :func:`rotation`."""

    vocab: WordVocab
    layers: list[int]
    groups: list[str]
    k: int
    top_words: int
    n_moved: int
    method: str
    device: torch.device
    seed: int
    cache: ComponentCache


def _rotation_plan(pair: _Pair, k: Any, layers: Any, vocab: WordVocab | None, top_words: Any,
                   n_moved: Any, method: Any, device: Any, seed: Any, progress: Any,
                   cache: Any) -> _RotationPlan:
    """Validate: every argument of :func:`rotation`, before any weight is read."""
    sel, top = _check_common(pair, layers, top_words, method, progress, cache, "rotation")
    k = _pair_k(pair, k, DEFAULT_ROTATION_K, 0.25)
    n_moved = check_int("n_moved", n_moved, minimum=0, who="rotation")
    seed = check_int("seed", seed, minimum=0, who="rotation")
    vocab = model_vocab(pair, vocab, f"rotation {_pair_names(pair)}")
    dev = check_device(device, pair.base, who="rotation")
    d_model = pair.cfg.d_model
    if k >= d_model:
        warnings.warn(f"rotation with k={k} >= d_model={d_model}: both subspaces are the whole "
                      "space, every angle is zero", ShiftlensWarning, stacklevel=3)
    return _RotationPlan(vocab, sel, layer_groups(pair.cfg.n_layers), k, top, n_moved, method,
                         dev, seed, cache if cache is not None else ComponentCache())


def _words_of(plan: _RotationPlan, direction: Tensor, dirs: Tensor) -> tuple[str, str]:
    s, i = read_top_words(direction[None].float(), dirs, plan.top_words)
    return join_words(plan.vocab.words[j] for j in i[0].tolist()), join_scores(s[0].tolist(), 3)


def _moved(plan: _RotationPlan, layer: int, pb: Components, pt: Components,
           dirs: dict[str, Tensor]) -> list[dict[str, Any]]:
    """The ``n_moved`` components of each side least inside the other side's subspace."""
    Vb, Vt = pb.components.double(), pt.components.double()
    M = Vb @ Vt.T  # [base component, tuned component]
    rows = []
    for side in ("tuned", "base"):
        inside = (M**2).sum(0) if side == "tuned" else (M**2).sum(1)
        for j in torch.argsort(inside)[: min(plan.n_moved, plan.k)].tolist():
            col = M[:, j] if side == "tuned" else M[j, :]
            i = int(col.abs().argmax())
            c = float(col[i])
            sgn = 1.0 if c >= 0 else -1.0
            if side == "tuned":  # a new direction, and the base component closest to it
                after, after_s = _words_of(plan, Vt[j], dirs["tuned"])
                before, before_s = _words_of(plan, sgn * Vb[i], dirs["base"])
                evr = float(pt.explained_variance_ratio[j])
            else:  # a lost direction, and the tuned component closest to it
                before, before_s = _words_of(plan, Vb[j], dirs["base"])
                after, after_s = _words_of(plan, sgn * Vt[i], dirs["tuned"])
                evr = float(pb.explained_variance_ratio[j])
            rows.append(dict(
                layer=layer, side=side, component=j, explained_variance_ratio=evr,
                inside_other=float(inside[j]), best_match=i, best_cos=c,
                words_before=before, scores_before=before_s,
                words_after=after, scores_after=after_s,
            ))
    return rows


def _rotate_layer(pair: _Pair, plan: _RotationPlan, layer: int,
                  dirs: dict[str, Tensor]) -> tuple[dict[str, Any], Tensor, list[dict]]:
    """Accumulate: one layer's angles, overlap, variance shares and moved components."""
    W, comps = {}, {}
    for role, model in pair:
        W[role] = read_w_out(model, layer, who=pair.who(role))
        comps[role] = plan.cache.components(model, layer, plan.k, method=plan.method,
                                            device=plan.device, seed=plan.seed, W=W[role],
                                            who=pair.who(role))
        W[role] = W[role].to(plan.device)
    pb, pt = comps["base"], comps["tuned"]
    Vb, Vt = pb.components.double(), pt.components.double()
    ang = principal_angles(Vb, Vt)
    # every variance share from the weights, in float64 and the same way (explained_share), so
    # that identical models give var_retained == 1 exactly
    t_by_b, t_by_t = explained_share(W["tuned"], Vb), explained_share(W["tuned"], Vt)
    b_by_b, b_by_t = explained_share(W["base"], Vb), explained_share(W["base"], Vt)
    row = dict(
        layer=layer, group=plan.groups[layer], k=plan.k,
        overlap=float((torch.cos(ang) ** 2).mean()),
        mean_angle_deg=float(torch.rad2deg(ang).mean()),
        max_angle_deg=float(torch.rad2deg(ang).max()),
        grassmann=float(ang.norm()),
        tuned_var_by_base=t_by_b, tuned_var_by_tuned=t_by_t,
        var_retained=t_by_b / t_by_t,
        base_var_by_base=b_by_b, base_var_by_tuned=b_by_t,
    )
    return row, ang.float().cpu(), _moved(plan, layer, pb, pt, dirs)


def _rotation_result(pair: _Pair, plan: _RotationPlan, rows: list[dict], angles: list[Tensor],
                     moved: list[dict]) -> RotationResult:
    """Assemble: the per-layer frame, the moved components, the angles and the meta block."""
    d_model = pair.cfg.d_model
    params = dict(layers=plan.layers, k=plan.k, top_words=plan.top_words, n_moved=plan.n_moved,
                  method=plan.method, vocab_size=len(plan.vocab), device=str(plan.device))
    meta = make_meta(pair, seed=plan.seed, params=params, n_layers=pair.cfg.n_layers,
                     d_model=d_model, chance_overlap=plan.k / d_model,
                     processing=pair.processing)
    return RotationResult(pd.DataFrame(rows, columns=list(LAYER_COLUMNS)),
                          pd.DataFrame(moved, columns=list(MOVED_COLUMNS)),
                          torch.stack(angles), meta)


def rotation(
    pair: Any,
    k: int | None = None,
    *,
    layers: Sequence[int] | None = None,
    vocab: WordVocab | None = None,
    top_words: int = 10,
    n_moved: int = 3,
    method: Method = "auto",
    device: str | torch.device | None = None,
    seed: int = 0,
    progress: bool = True,
    cache: ComponentCache | None = None,
) -> RotationResult:
    """Rotation of each layer's W_out principal subspace from base to tuned, as numbers.

    Per layer: principal angles between the base and tuned top-k component subspaces
    (:func:`~shiftlens.lenses.ffn.subspaces.principal_angles`), overlap = mean cos^2, the share of
    the tuned W_out variance explained by the base components next to its upper bound, the
    tuned components' own share (:func:`~shiftlens.lenses.ffn.subspaces.explained_share`, float64),
    and the components that moved most with their words before and after.

    Args:
        pair: The base/tuned :class:`shiftlens.ModelPair`, or ``(base, tuned)`` bridges,
            weight sources or checkpoint directories (read layer by layer from the files).
        k: Subspace dimension (default: ``min(64, rank // 4)``; ``k`` = d_model would make
            both subspaces the whole space).
        layers: Layers (default: all).
        vocab: Words for the moved components (default: ``default_vocab``).
        top_words: Words shown per moved component.
        n_moved: Moved components reported per layer and side (an integer >= 0).
        method: PCA solver (see :func:`~shiftlens.lenses.ffn.core.pca`).
        device: Where to compute (default: the base model's device).
        seed: Seed of the randomized solver and the bootstrap (an integer >= 0).
        progress: Show a progress bar.
        cache: A :class:`~shiftlens.lenses.ffn.subspaces.ComponentCache` to share components and
            word directions with other calls (e.g. :func:`concept_shift` on the same pair).

    Returns:
        The :class:`~shiftlens.lenses.ffn.results.RotationResult`.

    Raises:
        ShiftlensError: bad layers, ``k`` larger than the rank, empty vocabulary, a bad
            argument (naming it and its value), or a NaN/inf weight (naming role, model, layer
            and weight).

    Warns:
        ShiftlensWarning: ``k >= d_model`` (every angle is then zero).

    Example:
        >>> rot = rotation(pair, k=8)  # doctest: +SKIP
        >>> rot.to_frame()["overlap"].round(3).tolist()  # doctest: +SKIP
        >>> rotation(("/models/base", "/models/tuned"), k=64)  # doctest: +SKIP
    """
    pair = _as_pair(pair, "rotation")
    plan = _rotation_plan(pair, k, layers, vocab, top_words, n_moved, method, device, seed,
                          progress, cache)
    dirs = {role: plan.cache.directions(m, plan.vocab, who=pair.who(role)).to(plan.device)
            for role, m in pair}
    rows: list[dict] = []
    angles: list[Tensor] = []
    moved: list[dict] = []
    for layer in _progress(plan.layers, "rotation", progress):
        row, ang, mv = _rotate_layer(pair, plan, layer, dirs)
        rows.append(row)
        angles.append(ang)
        moved += mv
    return _rotation_result(pair, plan, rows, angles, moved)
