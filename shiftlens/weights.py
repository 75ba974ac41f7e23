"""Weight access shared by the weight-based lenses: from a bridge, or streamed from files.

Two sources, one set of numbers. The public functions (:func:`qk_weights`, :func:`mlp_out`,
:func:`unembedding`, :func:`embedding`) take either a TransformerBridge or a
:class:`WeightSource`. :class:`CheckpointWeights` is the source that reads a checkpoint
directory's safetensors files one tensor at a time (memory: about one layer, whatever the model
size; no model is loaded), with exactly the arithmetic of the bridge path: the same reshapes,
the same grouped-query expansion, and norm gains probed on the same Hugging Face norm module
class with the same weights, so the results are bitwise equal to the bridge's. Offloaded
bridges (accelerate CPU/disk ``device_map``) are read one component at a time too.

Which weights: with a bridge, these functions read the bridge's *current* weights. With raw checkpoint weights
(``ModelPair(processing="raw")``, the default) the normalization weight gamma in front of a
linear map is folded in here, as Wu et al. (2024) do for LLaMA (``diag(gamma) W``); Gemma's
``(1 + w)`` RMSNorm parameterisation is handled by probing the norm module numerically. When
TransformerLens has already processed the weights (``enable_compatibility_mode()``, which folds
the norms), nothing is folded again. Grouped-query K heads are expanded to their query heads.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import einops
import torch
from jaxtyping import Float
from torch import Tensor

from shiftlens.bridge import empty_model, materialized
from shiftlens.bridge import model_name as _name
from shiftlens.errors import ShiftlensError
from shiftlens.vocab import WordVocab, word_matrix  # noqa: F401 - re-exported
from shiftlens.weightfiles import SafetensorsCheckpoint

__all__ = [
    "WeightSource",
    "BridgeWeights",
    "CheckpointWeights",
    "weight_source",
    "is_processed",
    "norm_scale",
    "qk_weights",
    "mlp_out",
    "unembedding",
    "embedding",
    "WordVocab",
    "word_matrix",
    "check_layer",
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
    if comp is not None:
        with materialized(comp):  # offloaded layers: their data, for this read only
            w = getattr(comp, name, None)
            if w is not None:
                return w.detach().float().cpu()
    return getattr(model, name)[layer].detach().float().cpu()


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


def _bridge_gain(model: Any, norm: Any, d: int) -> Tensor:
    with materialized(norm):
        return norm_scale(norm, d)


# ------------------------------------------------------------------- the shared arithmetic
def _finish_qk(
    who: str, layer: int, W_Q: Tensor, W_K: Tensor, gain: Tensor | None
) -> tuple[Tensor, Tensor]:
    """float32 CPU, K heads expanded to their query heads, then ``diag(gain)`` folded in."""
    W_Q = W_Q.detach().float().cpu()
    W_K = W_K.detach().float().cpu()
    n_heads = W_Q.shape[0]
    if W_K.shape[0] != n_heads:
        if n_heads % W_K.shape[0]:
            raise ShiftlensError(
                f"{who}: layer {layer} has {n_heads} query heads and {W_K.shape[0]} "
                "key heads, not a grouped-query layout"
            )
        W_K = einops.repeat(W_K, "kv d h -> (kv g) d h", g=n_heads // W_K.shape[0])
    if gain is not None:
        W_Q = W_Q * gain[None, :, None]
        W_K = W_K * gain[None, :, None]
    return W_Q, W_K


def _finish_out(W: Tensor, gain: Tensor | None) -> Tensor:
    W = W.detach().float().cpu()
    if gain is not None:
        W = W * gain[None, :]
    return W


def _finish_unembed(W_U: Tensor, gain: Tensor | None) -> Tensor:
    W_U = W_U.detach().float().cpu()
    if gain is not None:
        W_U = W_U * gain[:, None]
    return W_U


# ------------------------------------------------------------------- sources
@runtime_checkable
class WeightSource(Protocol):
    """Anything the weight lenses can read weights from: a bridge's or a checkpoint's.

    The public functions of this module accept a TransformerBridge or a ``WeightSource``;
    ``qk_weights(source, layer)`` is ``source.qk_weights(layer)``. Implementations:
    :class:`BridgeWeights` (a loaded bridge) and :class:`CheckpointWeights` (safetensors files
    read layer by layer). A source has ``cfg`` (``n_layers``, ``n_heads``, ``d_model``, ...,
    ``model_name``) and ``tokenizer`` like a bridge.

    Example:
        >>> src = weight_source(pair_dirs()[0])  # doctest: +SKIP
        >>> isinstance(src, WeightSource)  # doctest: +SKIP
        True
    """

    cfg: Any

    def qk_weights(self, layer: int, *, fold_norm: bool = True) -> tuple[Tensor, Tensor]:
        """``(W_Q, W_K)`` of a layer, each ``[n_heads, d_model, d_head]``."""
        ...

    def mlp_out(self, layer: int, *, fold_norm: bool = True) -> Tensor:
        """``W_out`` of a layer, ``[d_mlp, d_model]``."""
        ...

    def unembedding(self, *, fold_norm: bool = True) -> Tensor:
        """``W_U``, ``[d_model, d_vocab]``."""
        ...

    def embedding(self) -> Tensor:
        """``W_E``, ``[d_vocab, d_model]``."""
        ...


def _as_source(model: Any) -> Any:
    """The source's methods apply (not a bridge): the object itself, else None."""
    if hasattr(model, "blocks"):
        return None
    return model if isinstance(model, WeightSource) else None


@torch.no_grad()
def qk_weights(
    model: Any, layer: int, *, fold_norm: bool = True
) -> tuple[Float[Tensor, "head d_model d_head"], Float[Tensor, "head d_model d_head"]]:
    """W_Q and W_K of every query head of a layer, K expanded for grouped-query attention.

    Args:
        model: A TransformerBridge or a :class:`WeightSource`.
        layer: Layer index.
        fold_norm: Multiply row d by the attention input norm's gamma_d (skipped when the
            weights are already TL-processed).

    Returns:
        ``(W_Q, W_K)``, each ``[n_heads, d_model, d_head]`` in float32 on the CPU.

    Example:
        >>> W_Q, W_K = qk_weights(pair.base, 0)  # doctest: +SKIP
        >>> W_Q, W_K = qk_weights(CheckpointWeights("path/to/base"), 0)  # doctest: +SKIP
    """
    src = _as_source(model)
    if src is not None:
        return src.qk_weights(layer, fold_norm=fold_norm)
    check_layer(model, layer)
    W_Q = _block_weight(model, layer, "attn", "W_Q")
    W_K = _block_weight(model, layer, "attn", "W_K")
    ln1, _ = _block_norms(model, layer)
    gain = None
    if fold_norm and not is_processed(model) and ln1 is not None:
        gain = _bridge_gain(model, ln1, model.cfg.d_model)
    return _finish_qk(_name(model), layer, W_Q, W_K, gain)


@torch.no_grad()
def mlp_out(
    model: Any, layer: int, *, fold_norm: bool = True
) -> Float[Tensor, "d_mlp d_model"]:
    """The MLP output weight of a layer: row i is neuron i's value vector in d_model.

    Architectures that normalize the MLP output before adding it to the residual stream (Gemma
    2/3's post-feed-forward norm, ``blocks[l].ln2_post``) get that norm's gamma folded into the
    columns when ``fold_norm`` is set and the weights are not already TL-processed.

    Args:
        model: A TransformerBridge or a :class:`WeightSource`.
        layer: Layer index.
        fold_norm: Fold the post-feed-forward norm's gamma (where there is one).

    Raises:
        ShiftlensError: the layer has no dense MLP output weight (e.g. a mixture of experts).

    Example:
        >>> mlp_out(pair.base, 0).shape  # doctest: +SKIP
        torch.Size([256, 64])
    """
    src = _as_source(model)
    if src is not None:
        return src.mlp_out(layer, fold_norm=fold_norm)
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
    post = getattr(model.blocks[layer], "ln2_post", None)
    gain = None
    if fold_norm and post is not None and not is_processed(model):
        gain = _bridge_gain(model, post, W.shape[1])
    return _finish_out(W, gain)


@torch.no_grad()
def unembedding(model: Any, *, fold_norm: bool = True) -> Float[Tensor, "d_model d_vocab"]:
    """The unembedding W_U, with the final norm's gamma folded into its rows (raw weights).

    Args:
        model: A TransformerBridge or a :class:`WeightSource`.
        fold_norm: Fold the final norm's gamma.

    Example:
        >>> unembedding(pair.base).shape  # doctest: +SKIP
        torch.Size([64, 1024])
    """
    src = _as_source(model)
    if src is not None:
        return src.unembedding(fold_norm=fold_norm)
    with materialized(model.unembed):
        W_U = model.W_U.detach().float().cpu()
    ln_f = getattr(model, "ln_final", None)
    gain = None
    if fold_norm and not is_processed(model) and ln_f is not None:
        gain = _bridge_gain(model, ln_f, model.cfg.d_model)
    return _finish_unembed(W_U, gain)


@torch.no_grad()
def embedding(model: Any) -> Float[Tensor, "d_vocab d_model"]:
    """The input token embedding W_E (float32, CPU).

    Args:
        model: A TransformerBridge or a :class:`WeightSource`.

    Example:
        >>> embedding(pair.base).shape  # doctest: +SKIP
        torch.Size([1024, 64])
    """
    src = _as_source(model)
    if src is not None:
        return src.embedding()
    with materialized(model.embed):
        return model.W_E.detach().float().cpu()


class BridgeWeights:
    """A loaded TransformerBridge as a :class:`WeightSource` (the functions above, as methods).

    Args:
        model: The bridge.

    Attributes:
        model: The bridge.
        cfg: Its TransformerLens config.
        tokenizer: Its tokenizer.

    Example:
        >>> src = BridgeWeights(pair.base)  # doctest: +SKIP
        >>> torch.equal(src.mlp_out(0), mlp_out(pair.base, 0))  # doctest: +SKIP
        True
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self.cfg = model.cfg
        self.tokenizer = getattr(model, "tokenizer", None)
        self._weights_processed = is_processed(model)

    def __repr__(self) -> str:
        return f"BridgeWeights({_name(self.model)!r})"

    def qk_weights(self, layer: int, *, fold_norm: bool = True) -> tuple[Tensor, Tensor]:
        """:func:`qk_weights` of the bridge."""
        return qk_weights(self.model, layer, fold_norm=fold_norm)

    def mlp_out(self, layer: int, *, fold_norm: bool = True) -> Tensor:
        """:func:`mlp_out` of the bridge."""
        return mlp_out(self.model, layer, fold_norm=fold_norm)

    def unembedding(self, *, fold_norm: bool = True) -> Tensor:
        """:func:`unembedding` of the bridge."""
        return unembedding(self.model, fold_norm=fold_norm)

    def embedding(self) -> Tensor:
        """:func:`embedding` of the bridge."""
        return embedding(self.model)

    def norm_scale(self, norm: str, layer: int | None = None) -> Tensor:
        """The gain of ``"ln1"``, ``"ln2"``, ``"ln1_post"``, ``"ln2_post"`` (of ``layer``) or
        ``"ln_final"``, as :func:`norm_scale` computes it.

        Example:
            >>> BridgeWeights(pair.base).norm_scale("ln1", 0).shape  # doctest: +SKIP
            torch.Size([128])
        """
        if norm == "ln_final":
            mod = getattr(self.model, "ln_final", None)
        else:
            if layer is None:
                raise ShiftlensError(f"{_name(self.model)}: norm {norm!r} needs a layer")
            check_layer(self.model, layer)
            mod = getattr(self.model.blocks[layer], norm, None)
        if mod is None:
            raise ShiftlensError(
                f"{_name(self.model)} ({_arch(self.model)}) has no norm {norm!r}"
                + (f" in layer {layer}" if layer is not None else "")
            )
        return _bridge_gain(self.model, mod, self.cfg.d_model)


_FUSED_QKV_OK = ("GPT2LMHeadModel",)  # c_attn: Conv1D [d_model, 3 d_model], split in thirds


class CheckpointWeights:
    """A checkpoint directory's weights, read from its safetensors files one layer at a time.

    Nothing is loaded when it is created: the config is read, TransformerLens' architecture
    adapter says which checkpoint tensors hold ``W_Q``, ``W_K``, ``W_out``, ``W_U``, ``W_E``
    and the norms, and an empty (meta-device) Hugging Face model supplies module classes and
    tied-weight links. Each call reads just the tensors it needs (``mlp_out(l)``: that layer's
    ``down_proj.weight`` and, for Gemma 2/3, its post-feed-forward norm), so memory stays at
    about one layer whatever the model size, and computes exactly what the bridge path
    computes on a model loaded with the same ``dtype``: bitwise equal results.

    Args:
        path: A local Hugging Face directory with safetensors weights (single file or sharded
            with ``model.safetensors.index.json``), or a ``.gguf`` file (converted once,
            see :mod:`shiftlens.checkpoints`).
        dtype: The dtype a bridge would have been loaded in; tensors are cast to it before the
            float32 arithmetic, as loading would (default float32).
        name: Display name (default: the path).

    Attributes:
        path: The directory.
        files: Its :class:`~shiftlens.weightfiles.SafetensorsCheckpoint`.
        cfg: The TransformerLens config a bridge of this checkpoint would have.
        dtype: See above.

    Raises:
        ShiftlensError: not a directory with a config and safetensors files, files truncated or
            corrupt (checked on opening), an architecture TransformerLens does not support.

    Example:
        >>> from shiftlens.zoo import pair_dirs
        >>> src = CheckpointWeights(pair_dirs()[0])  # doctest: +SKIP
        >>> src.mlp_out(3).shape, src.qk_weights(0)[1].shape  # doctest: +SKIP
        (torch.Size([384, 128]), torch.Size([4, 128, 32]))
    """

    def __init__(
        self, path: str | Path, *, dtype: torch.dtype = torch.float32, name: str | None = None
    ) -> None:
        p = str(path)
        if p.endswith(".gguf"):
            from shiftlens.checkpoints import gguf_to_hf_dir

            p = str(gguf_to_hf_dir(p))
        self.path = Path(p)
        if not (self.path / "config.json").is_file():
            raise ShiftlensError(
                f"{str(self.path)!r} is not a Hugging Face model directory (no config.json)"
            )
        self.files = SafetensorsCheckpoint(self.path)
        self.dtype = dtype
        from transformers import AutoConfig

        hf_config = AutoConfig.from_pretrained(self.path)
        try:
            from transformer_lens.factories.architecture_adapter_factory import (
                ArchitectureAdapterFactory,
            )
            from transformer_lens.model_bridge.sources._bridge_builder import (
                build_bridge_config_from_hf,
            )
            from transformer_lens.model_bridge.sources.transformers import (
                determine_architecture_from_hf_config,
            )

            arch = determine_architecture_from_hf_config(hf_config)
            self.cfg = build_bridge_config_from_hf(hf_config, arch, name or str(self.path), dtype)
            adapter = ArchitectureAdapterFactory.select_architecture_adapter(self.cfg)
        except (ImportError, ValueError, KeyError, NotImplementedError) as e:
            raise ShiftlensError(
                f"{str(self.path)!r}: TransformerLens cannot map this architecture "
                f"({type(e).__name__}: {e})"
            ) from e
        self.cfg.device = "cpu"
        self._arch = arch
        self._map = adapter.component_mapping
        self._empty = empty_model(hf_config, dtype=dtype)
        self._tied = dict(getattr(self._empty, "all_tied_weights_keys", None) or {})
        self._prefix = str(getattr(self._empty, "base_model_prefix", "") or "")
        self._tokenizer: Any = None
        self._weights_processed = False

    def __repr__(self) -> str:
        return (f"CheckpointWeights({str(self.path)!r}, {self._arch}, "
                f"n_layers={self.cfg.n_layers}, dtype={self.dtype})")

    @property
    def name(self) -> str:
        """The display name (``cfg.model_name``)."""
        return _name(self)

    @property
    def tokenizer(self) -> Any:
        """The checkpoint's tokenizer (``AutoTokenizer``, loaded on first use)."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.path)
        return self._tokenizer

    # ---------------------------------------------------------------- names and tensors
    def _key(self, param: str) -> str:
        """The checkpoint key holding model parameter ``param`` (tied weights followed)."""
        seen = set()
        while param not in self.files and param in self._tied and param not in seen:
            seen.add(param)
            param = self._tied[param]
        if param in self.files:
            return param
        if self._prefix and param.startswith(self._prefix + "."):
            short = param[len(self._prefix) + 1:]
            if short in self.files:  # saved from the base model (no "model." prefix)
                return short
        return param  # entry() raises, naming it

    def tensor(self, param: str) -> Tensor:
        """One parameter of the model, read from the files and cast to ``dtype``.

        Args:
            param: The Hugging Face parameter name (``"model.layers.3.mlp.down_proj.weight"``);
                a tied parameter is read from the tensor it is tied to.

        Raises:
            ShiftlensError: the checkpoint lacks it.

        Example:
            >>> CheckpointWeights(d).tensor("model.norm.weight").shape  # doctest: +SKIP
            torch.Size([128])
        """
        key = self._key(param)
        if key not in self.files:
            raise ShiftlensError(
                f"{self.name} ({self._arch}): the checkpoint has no tensor {param!r}"
                + (f" (nor {key!r}, tied to it)" if key != param else "")
            )
        return self.files.read(key).to(self.dtype)

    def _component(self, name: str) -> Any:
        comp = self._map.get(name)
        if comp is None:
            raise ShiftlensError(f"{self.name} ({self._arch}) has no {name!r} component")
        return comp

    def _block_path(self, layer: int, part: str, sub: str | None = None) -> str | None:
        comp = self._component("blocks").submodules.get(part)
        if comp is None:
            return None
        path = f"{self._component('blocks').name}.{layer}.{comp.name}"
        if sub is not None:
            s = comp.submodules.get(sub)
            if s is None:
                return None
            path = f"{path}.{s.name}"
        return path

    def _module(self, path: str) -> torch.nn.Module | None:
        try:
            return self._empty.get_submodule(path)
        except AttributeError:
            return None

    def _linear(self, path: str, what: str) -> tuple[Tensor, bool]:
        """``(weight, in_out)``: the weight of a linear module and whether it is [in, out]."""
        from transformers.pytorch_utils import Conv1D

        mod = self._module(path)
        if isinstance(mod, Conv1D):
            in_out = True
        elif isinstance(mod, torch.nn.Linear):
            in_out = False
        else:
            raise ShiftlensError(
                f"{self.name} ({self._arch}): {what} module {path!r} is a "
                f"{type(mod).__name__}, not a linear layer"
            )
        return self.tensor(f"{path}.weight"), in_out

    @torch.no_grad()
    def _gain(self, path: str, d: int) -> Tensor:
        """:func:`norm_scale` of the norm module at ``path``, built with the file's weights."""
        meta = self._module(path)
        if meta is None:
            raise ShiftlensError(f"{self.name} ({self._arch}): no norm module {path!r}")
        if any(True for _ in meta.buffers()):
            raise ShiftlensError(
                f"{self.name} ({self._arch}): norm {path!r} ({type(meta).__name__}) has buffers; "
                "read it through a bridge"
            )
        mod = copy.deepcopy(meta).to_empty(device="cpu")
        for pname, _ in list(mod.named_parameters()):
            owner, _, attr = pname.rpartition(".")
            target = mod.get_submodule(owner) if owner else mod
            target._parameters[attr] = torch.nn.Parameter(
                self.tensor(f"{path}.{pname}"), requires_grad=False
            )
        return norm_scale(mod.eval(), d)

    def norm_scale(self, norm: str, layer: int | None = None) -> Tensor:
        """The gain of a norm (``"ln1"``, ``"ln2"``, ``"ln1_post"``, ``"ln2_post"`` of ``layer``,
        or ``"ln_final"``), equal to :func:`norm_scale` on the bridge's norm.

        Example:
            >>> CheckpointWeights(d).norm_scale("ln_final").shape  # doctest: +SKIP
            torch.Size([128])
        """
        if norm == "ln_final":
            path = self._component("ln_final").name
        else:
            if layer is None:
                raise ShiftlensError(f"{self.name}: norm {norm!r} needs a layer")
            check_layer(self, layer)
            path = self._block_path(layer, norm)
            if path is None:
                raise ShiftlensError(f"{self.name} ({self._arch}) has no norm {norm!r}")
        return self._gain(path, self.cfg.d_model)

    # ---------------------------------------------------------------- the weights
    @torch.no_grad()
    def qk_weights(self, layer: int, *, fold_norm: bool = True) -> tuple[Tensor, Tensor]:
        """:func:`qk_weights` from the files (reads this layer's query/key weights and norm).

        Example:
            >>> W_Q, W_K = CheckpointWeights(d).qk_weights(0)  # doctest: +SKIP
        """
        check_layer(self, layer)
        n_heads = int(self.cfg.n_heads)
        n_kv = int(getattr(self.cfg, "n_key_value_heads", None) or n_heads)
        q_path = self._block_path(layer, "attn", "q")
        k_path = self._block_path(layer, "attn", "k")
        if q_path is not None and self._module(q_path) is not None and k_path is not None:
            Wq, q_in_out = self._linear(q_path, "query")
            Wk, k_in_out = self._linear(k_path, "key")
            W_Q = _to_heads(Wq, n_heads, q_in_out)
            W_K = _to_heads(Wk, n_kv, k_in_out)
        else:
            qkv_path = self._block_path(layer, "attn", "qkv")
            if qkv_path is None or self._arch not in _FUSED_QKV_OK:
                raise ShiftlensError(
                    f"{self.name} ({self._arch}): layer {layer} has no separate query/key "
                    "projections and its fused layout is not known to shiftlens; read W_Q/W_K "
                    "through a bridge"
                )
            W, in_out = self._linear(qkv_path, "fused QKV")
            if not in_out or W.shape[1] % 3:
                raise ShiftlensError(
                    f"{self.name} ({self._arch}): fused QKV {qkv_path!r} has shape "
                    f"{list(W.shape)}, expected [d_model, 3 * n_heads * d_head]"
                )
            q, k, _ = torch.tensor_split(W, 3, dim=1)
            W_Q, W_K = _to_heads(q, n_heads, True), _to_heads(k, n_heads, True)
        gain = None
        if fold_norm and self._block_path(layer, "ln1") is not None:
            gain = self._gain(self._block_path(layer, "ln1"), self.cfg.d_model)
        return _finish_qk(self.name, layer, W_Q, W_K, gain)

    @torch.no_grad()
    def mlp_out(self, layer: int, *, fold_norm: bool = True) -> Tensor:
        """:func:`mlp_out` from the files (reads this layer's output projection and post-norm).

        Example:
            >>> CheckpointWeights(d).mlp_out(3).shape  # doctest: +SKIP
            torch.Size([384, 128])
        """
        check_layer(self, layer)
        path = self._block_path(layer, "mlp", "out")
        if path is None or self._module(path) is None:
            raise ShiftlensError(
                f"{self.name} ({self._arch}): layer {layer} has no dense MLP output weight W_out"
            )
        W, in_out = self._linear(path, "MLP output")
        W = W if in_out else W.T
        post = self._block_path(layer, "ln2_post")
        gain = self._gain(post, W.shape[1]) if fold_norm and post is not None else None
        return _finish_out(W, gain)

    @torch.no_grad()
    def unembedding(self, *, fold_norm: bool = True) -> Tensor:
        """:func:`unembedding` from the files (the unembedding and the final norm).

        Example:
            >>> CheckpointWeights(d).unembedding().shape  # doctest: +SKIP
            torch.Size([128, 818])
        """
        W_U = self.tensor(f"{self._component('unembed').name}.weight").T
        ln_f = self._map.get("ln_final")
        gain = self._gain(ln_f.name, self.cfg.d_model) if fold_norm and ln_f is not None else None
        return _finish_unembed(W_U, gain)

    @torch.no_grad()
    def embedding(self) -> Tensor:
        """:func:`embedding` from the files.

        Example:
            >>> CheckpointWeights(d).embedding().shape  # doctest: +SKIP
            torch.Size([818, 128])
        """
        return self.tensor(f"{self._component('embed').name}.weight").detach().float().cpu()


def _to_heads(W: Tensor, n: int, in_out: bool) -> Tensor:
    """A projection's weight as ``[head, d_model, d_head]`` (pure data movement)."""
    if in_out:
        return einops.rearrange(W, "d (h e) -> h d e", h=n)
    return einops.rearrange(W, "(h e) d -> h d e", h=n)


def weight_source(model: Any, *, dtype: torch.dtype = torch.float32) -> WeightSource:
    """A :class:`WeightSource` for a bridge, a checkpoint path, or a source (returned as is).

    Args:
        model: A TransformerBridge (-> :class:`BridgeWeights`), a checkpoint directory or
            ``.gguf`` file (-> :class:`CheckpointWeights`), or a ``WeightSource``.
        dtype: For a path: the dtype a bridge would have been loaded in.

    Example:
        >>> from shiftlens.zoo import pair_dirs
        >>> src = weight_source(pair_dirs()[0])  # doctest: +SKIP
        >>> [src.mlp_out(l).shape for l in range(src.cfg.n_layers)]  # doctest: +SKIP
    """
    if isinstance(model, (str, Path)):
        return CheckpointWeights(model, dtype=dtype)
    if hasattr(model, "blocks") and hasattr(model, "cfg"):
        return BridgeWeights(model)
    if isinstance(model, WeightSource):
        return model
    raise ShiftlensError(
        f"cannot read weights from a {type(model).__name__}: give a TransformerBridge, a "
        "checkpoint directory or a WeightSource"
    )
