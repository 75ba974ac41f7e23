"""The weight-delta lens on one model's weights and on tensors: reading parameters one at a time,
the spectrum of a change and its directions read as tokens.

Layer (1) of the lens (see :mod:`shiftlens.lenses.weight_delta`). Definitions:

* **relative norm** of a change: ``|W_tuned - W_base|_F / |W_base|_F``;
* **singular values** of the change ``Delta = W_tuned - W_base`` (float64; exactly
  ``torch.linalg.svdvals(Delta)``, through the smaller Gram matrix for large matrices);
* **effective rank** (Roy & Vetterli 2007): ``exp(H(p))`` with ``p_i = s_i / sum_j s_j``, the
  entropy of the normalised singular values: 1 for a rank-1 change, ``n`` for ``n`` equal ones;
* **energy share of the top r**: ``sum_{i<r} s_i^2 / sum_i s_i^2`` (the share of
  ``|Delta|_F^2`` a rank-``r`` truncation keeps, Eckart-Young);
* **a direction read as tokens**: the singular vector on the residual-stream side of the matrix
  (the output side of a matrix that writes to the residual stream, ``o_proj``/``down_proj``; the
  input side of one that reads from it) projected on the vocabulary through the unembedding,
  with the final norm's gain folded in (the logit lens of a direction; parameters read in
  embedding space as in Dar et al. 2023, "Analyzing Transformers in Embedding Space"). A singular
  vector's sign is arbitrary: the projection is standardised over the vocabulary (z-scores) and
  oriented so that its most extreme entry is positive (:func:`vocab_zscores`). The embedding and
  the unembedding have a vocabulary side of their own: a token's share of the change is its row's
  energy ``sum_{i<r} s_i^2 u_{i,t}^2`` (:func:`token_energy`).

:class:`WeightReader` reads one parameter at a time from a checkpoint's safetensors files
(:class:`shiftlens.weightfiles.SafetensorsCheckpoint`: only that tensor is read) or from a loaded
bridge, and knows each matrix's layout from the model's module classes (an empty, meta-device
model for checkpoints).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from shiftlens.errors import ShiftlensError

__all__ = [
    "WRITE_PATTERN",
    "WeightReader",
    "relative_norm",
    "delta_singular_values",
    "effective_rank",
    "energy_share",
    "top_directions",
    "vocab_zscores",
    "token_energy",
]

#: Matrices that write into the residual stream (their output side is d_model).
WRITE_PATTERN = re.compile(r"(o_proj|down_proj|c_proj|out_proj|dense_4h_to_h|fc2|\.wo\b|\.w2\b"
                           r"|attention\.dense|mlp\.dense_out)")
_LAYER = re.compile(r"\.(?:layers|h|blocks|layer)\.(\d+)\.")
_EMBED = re.compile(r"(embed_tokens|wte|word_embeddings|tok_embeddings|embed_in)")
_UNEMBED = re.compile(r"(lm_head|unembed|embed_out|output\.weight$)")

#: Largest matrix (entries) decomposed directly; larger ones go through their Gram matrix.
_DIRECT = 1 << 24


class WeightReader:
    """One model's parameters, read one at a time, with each matrix's layout.

    Args:
        source: A checkpoint directory (safetensors, single file or sharded) or ``.gguf`` file,
            or a loaded TransformerBridge / Hugging Face model.

    Attributes:
        name: Display name.
        n_layers, d_model, d_vocab: From the model's config.

    Example:
        >>> from shiftlens.zoo import pair_dirs
        >>> r = WeightReader(pair_dirs()[0])
        >>> r.read("model.layers.0.mlp.down_proj.weight").shape
        torch.Size([128, 384])
        >>> r.layout("model.layers.0.mlp.down_proj.weight")
        (0, 'mlp.down_proj', 'write', False)
    """

    def __init__(self, source: Any) -> None:
        from shiftlens.bridge import empty_model, model_name

        self._files = None
        self._params: dict[str, Tensor] | None = None
        if isinstance(source, (str, Path)):
            p = str(source)
            if p.endswith(".gguf"):
                from shiftlens.checkpoints import gguf_to_hf_dir

                p = str(gguf_to_hf_dir(p))
            if not (Path(p) / "config.json").is_file():
                raise ShiftlensError(f"{p!r} is not a Hugging Face model directory "
                                     "(no config.json)")
            from shiftlens.weightfiles import SafetensorsCheckpoint

            self._files = SafetensorsCheckpoint(p)
            self._hf = empty_model(p)
            self.name = p
        else:
            from shiftlens.bridge import named_weights

            self._hf = getattr(source, "original_model", source)
            self._params = dict(named_weights(source))
            self.name = model_name(source) if hasattr(source, "cfg") else type(source).__name__
        cfg = self._hf.config
        self.n_layers = int(cfg.num_hidden_layers)
        self.d_model = int(cfg.hidden_size)
        self.d_vocab = int(cfg.vocab_size)
        self._prefix = str(getattr(self._hf, "base_model_prefix", "") or "")

    def __repr__(self) -> str:
        return f"WeightReader({self.name!r}, n_layers={self.n_layers})"

    def names(self) -> list[str]:
        """Every stored 2-D parameter (a matrix), in the order of the files / the model.

        Example:
            >>> len(WeightReader(pair_dirs()[0]).names())  # doctest: +SKIP
            30
        """
        if self._files is not None:
            return [n for n in self._files.keys() if len(self._files.entry(n).shape) == 2]
        assert self._params is not None
        return [n for n, p in self._params.items() if p.dim() == 2]

    def read(self, name: str) -> Float[Tensor, "rows cols"]:
        """One parameter in float64 on the CPU (from the files: just that tensor is read).

        Example:
            >>> WeightReader(pair_dirs()[0]).read("lm_head.weight").dtype  # doctest: +SKIP
            torch.float64
        """
        if self._files is not None:
            if name not in self._files:
                raise ShiftlensError(f"{self.name}: the checkpoint has no tensor {name!r}")
            w = self._files.read(name).double()
        else:
            assert self._params is not None
            if name not in self._params:
                raise ShiftlensError(f"{self.name}: the model has no parameter {name!r}")
            w = self._params[name].detach().double().cpu()
        bad = ~torch.isfinite(w)
        if bool(bad.any()):
            first = tuple(int(i) for i in torch.nonzero(bad)[0])
            raise ShiftlensError(
                f"{self.name}: weight {name!r} holds {int(bad.sum())} non-finite value(s) (first "
                f"at {first}); no weight delta is computed from non-finite weights")
        return w

    def _module(self, name: str) -> Any:
        path = name.rsplit(".", 1)[0]
        for p in (path, path.removeprefix(self._prefix + ".") if self._prefix else path):
            try:
                return self._hf.get_submodule(p)
            except AttributeError:
                continue
        return None

    def layout(self, name: str) -> tuple[int, str, str, bool]:
        """``(layer, matrix, side, in_out)`` of a matrix.

        ``layer`` is -1 outside the blocks; ``matrix`` the name inside its block (or the whole
        name); ``side`` what its residual-stream side is: ``"write"`` (output side,
        :data:`WRITE_PATTERN`), ``"read"`` (input side), ``"embed"`` / ``"unembed"`` (rows are
        tokens) or ``"none"``; ``in_out`` whether it is stored ``[in, out]`` (GPT-2's ``Conv1D``)
        rather than ``[out, in]`` (``nn.Linear``).

        Example:
            >>> WeightReader(pair_dirs()[0]).layout("lm_head.weight")  # doctest: +SKIP
            (-1, 'lm_head.weight', 'unembed', False)
        """
        m = _LAYER.search("." + name)
        layer = int(m.group(1)) if m else -1
        matrix = ("." + name)[m.end():].removesuffix(".weight") if m else name
        from transformers.pytorch_utils import Conv1D

        in_out = isinstance(self._module(name), Conv1D)
        if layer < 0 and _UNEMBED.search(name):
            return layer, matrix, "unembed", in_out
        if layer < 0 and _EMBED.search(name):
            return layer, matrix, "embed", in_out
        out_dim, in_dim = self._shape(name)[::-1] if in_out else self._shape(name)
        if WRITE_PATTERN.search(name) and out_dim == self.d_model:
            return layer, matrix, "write", in_out
        if in_dim == self.d_model:
            return layer, matrix, "read", in_out
        if out_dim == self.d_model:
            return layer, matrix, "write", in_out
        return layer, matrix, "none", in_out

    def _shape(self, name: str) -> tuple[int, int]:
        if self._files is not None:
            s = self._files.entry(name).shape
        else:
            assert self._params is not None
            s = tuple(self._params[name].shape)
        return int(s[0]), int(s[1])


def relative_norm(w_base: Float[Tensor, "m n"], w_tuned: Float[Tensor, "m n"]) -> float:
    """``|W_tuned - W_base|_F / |W_base|_F`` (NaN for an all-zero base).

    Example:
        >>> relative_norm(torch.ones(2, 2), 1.5 * torch.ones(2, 2))
        0.5
    """
    if w_base.shape != w_tuned.shape:
        raise ShiftlensError(f"shapes differ: {tuple(w_base.shape)} vs {tuple(w_tuned.shape)}")
    nb = float(w_base.double().norm())
    return float((w_tuned.double() - w_base.double()).norm()) / nb if nb > 0 else float("nan")


def _svd(delta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Thin SVD ``(U, S, Vh)`` of a float64 matrix; through the smaller Gram matrix when large."""
    if delta.numel() <= _DIRECT:
        return torch.linalg.svd(delta, full_matrices=False)
    tall = delta.shape[0] >= delta.shape[1]
    g = delta.T @ delta if tall else delta @ delta.T
    evals, evecs = torch.linalg.eigh(g)
    order = torch.argsort(evals, descending=True)
    s = evals[order].clamp(min=0).sqrt()
    small = evecs[:, order]  # the smaller side's singular vectors
    other = (delta @ small if tall else delta.T @ small) / s.clamp(min=1e-300)
    return (other, s, small.T) if tall else (small, s, other.T)


def delta_singular_values(
    w_base: Float[Tensor, "m n"], w_tuned: Float[Tensor, "m n"]
) -> Float[Tensor, " k"]:
    """The singular values of ``W_tuned - W_base`` in float64, largest first.

    Equal to ``torch.linalg.svdvals`` of the difference (computed in float64; matrices over
    2^24 entries through the eigenvalues of the smaller Gram matrix, exact to float64 rounding of
    the squared values).

    Example:
        >>> delta_singular_values(torch.zeros(3, 2), torch.diag(torch.tensor([3.0, 1.0]))[[0, 1, 1]])
        tensor([3.0000, 1.4142], dtype=torch.float64)
    """
    if w_base.shape != w_tuned.shape:
        raise ShiftlensError(f"shapes differ: {tuple(w_base.shape)} vs {tuple(w_tuned.shape)}")
    delta = w_tuned.double() - w_base.double()
    if delta.numel() <= _DIRECT:
        return torch.linalg.svdvals(delta)
    return _svd(delta)[1]


def effective_rank(s: Float[Tensor, " k"]) -> float:
    """Roy & Vetterli's effective rank ``exp(-sum p_i log p_i)``, ``p_i = s_i / sum s`` (NaN for 0).

    Example:
        >>> effective_rank(torch.tensor([2.0, 2.0, 2.0, 0.0]))
        3.0
    """
    s = s.double().clamp(min=0)
    total = float(s.sum())
    if not total > 0:
        return float("nan")
    p = s[s > 0] / total
    return round(math.exp(float(-(p * p.log()).sum())), 12)


def energy_share(s: Float[Tensor, " k"], r: int) -> float:
    """The share of ``|Delta|_F^2 = sum s_i^2`` in the ``r`` largest singular values.

    Example:
        >>> energy_share(torch.tensor([3.0, 1.0]), 1)
        0.9
    """
    e = s.double() ** 2
    total = float(e.sum())
    return float(e[:r].sum()) / total if total > 0 else float("nan")


def top_directions(
    delta: Float[Tensor, "m n"], r: int
) -> tuple[Float[Tensor, "m r"], Float[Tensor, " r"], Float[Tensor, "r n"]]:
    """The ``r`` leading singular triplets ``(U[:, :r], S[:r], Vh[:r])`` of a change (float64).

    Example:
        >>> u, s, vh = top_directions(torch.outer(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])), 1)
        >>> s.tolist(), vh.abs().tolist()
        ([2.0], [[0.0, 1.0]])
    """
    u, s, vh = _svd(delta.double())
    return u[:, :r], s[:r], vh[:r]


def vocab_zscores(
    vectors: Float[Tensor, "r d_model"], w_u: Float[Tensor, "d_model d_vocab"]
) -> Float[Tensor, "r d_vocab"]:
    """Each direction's projection on the vocabulary, standardised and oriented.

    ``p = v W_U`` is z-scored over the vocabulary and its sign chosen so that the most extreme
    entry is positive (a singular vector's sign is arbitrary; the distinctive end of a direction
    is the one that sticks out).

    Example:
        >>> z = vocab_zscores(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 0.0, -5.0], [1.0, 1.0, 1.0]]))
        >>> int(z.argmax())
        2
    """
    p = vectors.double() @ w_u.double()
    z = (p - p.mean(-1, keepdim=True)) / p.std(-1, keepdim=True).clamp(min=1e-300)
    flip = z.max(-1).values < -z.min(-1).values
    return torch.where(flip[:, None], -z, z)


def token_energy(
    u: Float[Tensor, "d_vocab r"], s: Float[Tensor, " r"]
) -> Float[Tensor, " d_vocab"]:
    """Each token's energy in a vocabulary-side change's top directions: ``sum_i s_i^2 u_{t,i}^2``.

    With every direction kept it is the squared norm of the token's row of the change.

    Example:
        >>> token_energy(torch.eye(3)[:, :2], torch.tensor([2.0, 1.0])).tolist()
        [4.0, 1.0, 0.0]
    """
    return (u.double() ** 2 * s.double()[None] ** 2).sum(-1)
