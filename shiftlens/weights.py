"""Weight access shared by the weight-based lenses.

Which weights: these functions read the bridge's *current* weights. With raw checkpoint weights
(``ModelPair(processing="raw")``, the default) the normalization weight gamma in front of a
linear map is folded in here, as Wu et al. (2024) do for LLaMA (``diag(gamma) W``); Gemma's
``(1 + w)`` RMSNorm parameterisation is handled by probing the norm module numerically. When
TransformerLens has already processed the weights (``enable_compatibility_mode()``, which folds
the norms), nothing is folded again. Grouped-query K heads are expanded to their query heads.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import einops
import torch
from jaxtyping import Float
from torch import Tensor

from shiftlens.errors import ShiftlensError
from shiftlens.pair import model_name as _name

__all__ = [
    "is_processed",
    "norm_scale",
    "qk_weights",
    "mlp_out",
    "unembedding",
    "embedding",
    "WordVocab",
    "word_matrix",
]


def _arch(model: Any) -> str:
    cfg = model.cfg
    return str(
        getattr(cfg, "architecture", None) or getattr(cfg, "original_architecture", None)
        or "unknown architecture"
    )


def _block_weight(model: Any, layer: int, part: str, name: str) -> Tensor:
    """One layer's weight, read from its block (the model-level stacks rebuild every layer)."""
    comp = getattr(model.blocks[layer], part, None)
    w = getattr(comp, name, None) if comp is not None else None
    if w is None:
        w = getattr(model, name)[layer]
    return w


def is_processed(model: Any) -> bool:
    """True when TL compatibility-mode processing (norm folding) was applied to the weights.

    Example:
        >>> is_processed(pair.base)  # doctest: +SKIP
        False
    """
    return bool(getattr(model, "_weights_processed", False))


def check_layer(model: Any, layer: int, head: int | None = None) -> None:
    """Raise :class:`ShiftlensError` when ``layer`` (or ``head``) is out of range.

    Example:
        >>> check_layer(pair.base, 0)  # doctest: +SKIP
    """
    n = model.cfg.n_layers
    if not isinstance(layer, int) or not 0 <= layer < n:
        raise ShiftlensError(f"{_name(model)}: layer {layer} out of range (n_layers={n})")
    if head is not None:
        h = model.cfg.n_heads
        if not isinstance(head, int) or not 0 <= head < h:
            raise ShiftlensError(
                f"{_name(model)}: head {head} of layer {layer} out of range (n_heads={h})"
            )


@torch.no_grad()
def norm_scale(norm: Any, d_model: int) -> Float[Tensor, " d_model"]:
    """The elementwise scale gamma a normalization module applies after normalizing.

    LayerNorm modules return their weight; any other (RMSNorm variants, incl. Gemma's
    ``1 + w``) is probed: ``x = c * sqrt(d) * e_i`` has RMS ``c``, so ``norm(x)`` is
    ``sqrt(d) * gamma_i * e_i`` and its i-th entry divided by ``sqrt(d)`` is gamma_i (``c``
    large makes eps negligible).

    Args:
        norm: A bridge normalization component (``model.blocks[l].ln1``) or a torch module.
        d_model: Width of the residual stream.

    Example:
        >>> norm_scale(pair.base.blocks[0].ln1, pair.cfg.d_model).shape  # doctest: +SKIP
        torch.Size([64])
    """
    mod = getattr(norm, "original_component", norm)
    if isinstance(mod, torch.nn.LayerNorm):
        if mod.weight is None:
            return torch.ones(d_model)
        return mod.weight.detach().float().cpu()
    p = next(iter(mod.parameters()), None)
    dtype = p.dtype if p is not None else torch.float32
    device = p.device if p is not None else "cpu"
    c = 1e3
    x = torch.eye(d_model, device=device, dtype=torch.float32) * (c * d_model**0.5)
    y = mod(x.to(dtype)).float()
    return (torch.diagonal(y) / d_model**0.5).cpu()


def _block_norms(model: Any, layer: int) -> tuple[Any, Any]:
    block = model.blocks[layer]
    return getattr(block, "ln1", None), getattr(block, "ln2", None)


@torch.no_grad()
def qk_weights(
    model: Any, layer: int, *, fold_norm: bool = True
) -> tuple[Float[Tensor, "head d_model d_head"], Float[Tensor, "head d_model d_head"]]:
    """W_Q and W_K of every query head of a layer, K expanded for grouped-query attention.

    Args:
        model: A TransformerBridge.
        layer: Layer index.
        fold_norm: Multiply row d by the attention input norm's gamma_d (skipped when the
            weights are already TL-processed).

    Returns:
        ``(W_Q, W_K)``, each ``[n_heads, d_model, d_head]`` in float32 on the CPU.

    Example:
        >>> W_Q, W_K = qk_weights(pair.base, 0)  # doctest: +SKIP
    """
    check_layer(model, layer)
    W_Q = _block_weight(model, layer, "attn", "W_Q").detach().float().cpu()
    W_K = _block_weight(model, layer, "attn", "W_K").detach().float().cpu()
    n_heads = W_Q.shape[0]
    if W_K.shape[0] != n_heads:
        if n_heads % W_K.shape[0]:
            raise ShiftlensError(
                f"{_name(model)}: layer {layer} has {n_heads} query heads and {W_K.shape[0]} "
                "key heads, not a grouped-query layout"
            )
        W_K = einops.repeat(W_K, "kv d h -> (kv g) d h", g=n_heads // W_K.shape[0])
    ln1, _ = _block_norms(model, layer)
    if fold_norm and not is_processed(model) and ln1 is not None:
        g = norm_scale(ln1, model.cfg.d_model)
        W_Q = W_Q * g[None, :, None]
        W_K = W_K * g[None, :, None]
    return W_Q, W_K


@torch.no_grad()
def mlp_out(
    model: Any, layer: int, *, fold_norm: bool = True
) -> Float[Tensor, "d_mlp d_model"]:
    """The MLP output weight of a layer: row i is neuron i's value vector in d_model.

    Architectures that normalize the MLP output before adding it to the residual stream (Gemma
    2/3's post-feed-forward norm, ``blocks[l].ln2_post``) get that norm's gamma folded into the
    columns when ``fold_norm`` is set and the weights are not already TL-processed.

    Raises:
        ShiftlensError: the layer has no dense MLP output weight (e.g. a mixture of experts).

    Example:
        >>> mlp_out(pair.base, 0).shape  # doctest: +SKIP
        torch.Size([256, 64])
    """
    check_layer(model, layer)
    try:
        W = _block_weight(model, layer, "mlp", "W_out")
    except Exception as e:  # noqa: BLE001 - TL raises several types for missing weights
        raise ShiftlensError(
            f"{_name(model)} ({_arch(model)}): layer {layer} has no dense MLP output weight "
            f"W_out ({type(e).__name__}: {e})"
        ) from e
    if W is None or W.dim() != 2:
        raise ShiftlensError(
            f"{_name(model)} ({_arch(model)}): layer {layer} W_out has an unexpected shape; a "
            "dense (gated or standard) MLP is required"
        )
    W = W.detach().float().cpu()
    post = getattr(model.blocks[layer], "ln2_post", None)
    if fold_norm and post is not None and not is_processed(model):
        W = W * norm_scale(post, W.shape[1])[None, :]
    return W


@torch.no_grad()
def unembedding(model: Any, *, fold_norm: bool = True) -> Float[Tensor, "d_model d_vocab"]:
    """The unembedding W_U, with the final norm's gamma folded into its rows (raw weights).

    Example:
        >>> unembedding(pair.base).shape  # doctest: +SKIP
        torch.Size([64, 1024])
    """
    W_U = model.W_U.detach().float().cpu()
    ln_f = getattr(model, "ln_final", None)
    if fold_norm and not is_processed(model) and ln_f is not None:
        W_U = W_U * norm_scale(ln_f, model.cfg.d_model)[:, None]
    return W_U


@torch.no_grad()
def embedding(model: Any) -> Float[Tensor, "d_vocab d_model"]:
    """The input token embedding W_E (float32, CPU).

    Example:
        >>> embedding(pair.base).shape  # doctest: +SKIP
        torch.Size([1024, 64])
    """
    return model.W_E.detach().float().cpu()


@dataclass
class WordVocab:
    """A word vocabulary mapped to token ids (a word = the mean of its tokens' vectors).

    Attributes:
        words: The kept words.
        token_ids: For each kept word, its token ids (the variant with fewest tokens among
            ``word`` and ``" word"``; ties go to the leading-space variant, the form words take
            inside running text).
        skipped: Words the tokenizer cannot encode (unknown token, empty, or more than
            ``max_tokens`` tokens).

    Example:
        >>> v = WordVocab.build(tokenizer, ["cat", "dog"])  # doctest: +SKIP
        >>> v.words  # doctest: +SKIP
        ['cat', 'dog']
    """

    words: list[str]
    token_ids: list[list[int]]
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.words)

    @classmethod
    def build(
        cls, tokenizer: Any, words: Iterable[str], *, max_tokens: int | None = 4
    ) -> WordVocab:
        """Encode words with the tokenizer; unencodable words are skipped and listed.

        Args:
            tokenizer: A Hugging Face tokenizer.
            words: Candidate words (duplicates removed, order kept).
            max_tokens: Skip words needing more tokens than this (None: no limit).

        Raises:
            ShiftlensError: no word could be encoded (or the list is empty).

        Example:
            >>> WordVocab.build(tokenizer, ["cat"]).token_ids  # doctest: +SKIP
            [[412]]
        """
        unk = getattr(tokenizer, "unk_token_id", None)
        kept, ids, skipped = [], [], []
        seen = set()
        for w in words:
            w = w.strip()
            if not w or w in seen:
                continue
            seen.add(w)
            best = None
            for variant in (" " + w, w):
                t = tokenizer(variant, add_special_tokens=False)["input_ids"]
                t = [int(x) for x in t]
                if not t or (unk is not None and unk in t):
                    continue
                if best is None or len(t) < len(best):
                    best = t
            if best is None or (max_tokens is not None and len(best) > max_tokens):
                skipped.append(w)
                continue
            kept.append(w)
            ids.append(best)
        if not kept:
            raise ShiftlensError(
                "empty vocabulary: no word could be encoded"
                + (f" (skipped {len(skipped)})" if skipped else "")
            )
        return cls(kept, ids, skipped)

    def averaging_matrix(self, d_vocab: int) -> Tensor:
        """Sparse ``[n_words, d_vocab]`` matrix whose row w averages word w's tokens."""
        rows, cols, vals = [], [], []
        for i, t in enumerate(self.token_ids):
            for tok in t:
                if tok >= d_vocab:
                    raise ShiftlensError(
                        f"word {self.words[i]!r}: token id {tok} >= d_vocab {d_vocab}"
                    )
                rows.append(i)
                cols.append(tok)
                vals.append(1.0 / len(t))
        idx = torch.tensor([rows, cols], dtype=torch.long)
        return torch.sparse_coo_tensor(
            idx, torch.tensor(vals), (len(self), d_vocab), check_invariants=True
        ).coalesce()

    def subset(self, words: Sequence[str]) -> WordVocab:
        """The entries for ``words`` that are in this vocabulary (in the given order)."""
        pos = {w: i for i, w in enumerate(self.words)}
        keep = [w for w in words if w in pos]
        return WordVocab(keep, [self.token_ids[pos[w]] for w in keep], [])


def word_matrix(
    W: Float[Tensor, "d_vocab d"], vocab: WordVocab
) -> Float[Tensor, "n_words d"]:
    """Word vectors as the mean of their tokens' rows of ``W`` (one sparse matmul).

    Use ``W = embedding(model)`` for input embeddings or ``unembedding(model).T`` for
    unembedding columns.

    Example:
        >>> E = word_matrix(embedding(pair.base), vocab)  # doctest: +SKIP
    """
    A = vocab.averaging_matrix(W.shape[0]).to(W.dtype)
    return torch.sparse.mm(A, W)
