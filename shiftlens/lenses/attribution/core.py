"""Explain one model: gradient input->output attribution, importance density, instruction score.

Wu et al. (2024), "From Language Modeling to Instruction Following: Understanding the Behavior
Shift in LLMs after Instruction Tuning" (NAACL 2024), section 3. For a prompt ``x_1..x_N`` (a BOS
token is not among them) with input token embeddings ``e_n`` (the ``hook_embed`` output,
positional embeddings excluded) and a response ``y_1..y_M``:

- attribution ``a[n, m] = e_n . d p(y_m | x, y_<m) / d e_n`` (gradient of the probability),
- sparsified per response token: clip negatives, divide by the column max (+1e-9),
  ``s = ceil(L * value)``, ``s <= b`` set to 0 (``L = 10``, ``b = 7``),
- importance density ``I_n = ||s[n, :]||_1 / ||s[n, :]||_p`` (``p = 4``, +1e-9), divided by its
  max (+1e-9),
- instruction score ``sum_{n in instruction} I_n / log2(2 + |instruction|)``.

How the matrix is computed (:func:`attribute`): one forward pass with the input embeddings
replaced by a leaf tensor (a ``hook_embed`` hook) and the unembedding applied only at the
positions that predict response tokens (Hugging Face ``logits_to_keep``), giving the final
hidden states ``h_m`` and ``p_m = p(y_m | ...)``. The head gradient ``g_m = dp_m/dh_m`` (one
small backward through unembedding + softmax) turns the rest into Jacobian products of the
transformer body:

- reverse mode: ``a[:, m] = e . J_m^T g_m``, one vector-Jacobian product per response token,
  batched with ``torch.autograd.grad(..., is_grads_batched=True)``;
- forward mode: ``a[n, :] = g . (J e_n)``, one Jacobian-vector product per prompt token
  (tangent = the token's own embedding at its position), all response tokens at once;
  ``torch.func.vmap`` over ``torch.func.jvp`` so the primal runs once per chunk, with dual
  tensors (``torch.autograd.forward_ad``) over a batch of copies as the fallback.

``mode="auto"`` takes forward mode when ``N <= M`` (fewer products), reverse mode otherwise.
Gradients never reach the model parameters (``torch.autograd.grad`` / ``torch.func`` only).

Devices: the tokens go to :func:`shiftlens.bridge.device_of` (the input embedding's execution
device, also for a model dispatched over several devices or with offloaded weights); the
embeddings ``E`` live where the embedding ran and the hidden states ``H`` where the unembedding
runs, and every index tensor is moved to the device of the tensor it indexes.

Non-finite values: a matrix or probability that is NaN or infinite (NaN weights edited into a
model in memory, a float16 overflow) is never returned: the error names the prompt and the model,
the hook (and layer) where a forward pass first turns non-finite, and the non-finite weights.
"""

from __future__ import annotations

import contextlib
import inspect
import numbers
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from typing import Any

import einops
import numpy as np
import torch
import torch.autograd.forward_ad as fwAD
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from shiftlens.bridge import check_finite_weights, device_of
from shiftlens.bridge import model_name as _name
from shiftlens.checks import check_choice, check_int
from shiftlens.diagnose import locate_nonfinite, where_nonfinite
from shiftlens.errors import ShiftlensError, ShiftlensWarning
from shiftlens.generate import DEFAULT_MAX_NEW_TOKENS, greedy
from shiftlens.lenses.attribution.results import AttributionResult
from shiftlens.prompts import (
    BOS,
    RESPONSE,
    InstructionPrompt,
    TokenizedPrompt,
    tokenize_prompt,
)
from shiftlens.result import make_meta
from shiftlens.tokens import token_strings

__all__ = [
    "MODES",
    "check_model",
    "check_autograd",
    "locate_nonfinite",
    "greedy_response",
    "attribution_matrix",
    "attribute",
]

#: Attribution modes accepted by :func:`attribute`.
MODES: tuple[str, ...] = ("auto", "forward", "reverse")


# ====================================================================== checks and generation
def check_autograd(model: Any, label: str) -> None:
    """Raise a :class:`ShiftlensError` saying what to do when ``model`` cannot take gradients.

    Gradients must be enabled (no ``torch.no_grad``), inference mode off, and the weights must
    not be inference tensors.

    Example:
        >>> check_autograd(model, "prompt 'a' (base)")  # doctest: +SKIP
    """
    if torch.is_inference_mode_enabled():
        raise ShiftlensError(
            f"{label}: torch.inference_mode() is active; attribution needs gradients. Call "
            "attribute() outside inference mode"
        )
    if not torch.is_grad_enabled():
        raise ShiftlensError(
            f"{label}: gradients are disabled (torch.no_grad() or set_grad_enabled(False) is "
            "active); attribution needs them. Call attribute() outside no_grad"
        )
    p = next(iter(model.parameters()), None)
    if p is not None and p.is_inference():
        raise ShiftlensError(
            f"{label}: the model's weights are inference tensors (it was loaded or modified "
            "under torch.inference_mode()); reload it outside inference mode"
        )


def check_model(model: Any, who: str = "") -> None:
    """Raise a :class:`ShiftlensError` unless ``model`` looks like a TransformerBridge.

    Attribution needs ``cfg``, ``parameters()``, ``hooks()`` and a forward call; anything else
    (a Hugging Face model, a path, None) is named in the message.

    Example:
        >>> check_model(None, "attribute")
        Traceback (most recent call last):
        ...
        shiftlens.errors.ShiftlensError: attribute: model must be a TransformerBridge (load one with shiftlens.load_bridge), got NoneType
    """
    if not all(hasattr(model, a) for a in ("cfg", "parameters", "hooks")) or not callable(model):
        pre = f"{who}: " if who else ""
        raise ShiftlensError(f"{pre}model must be a TransformerBridge (load one with "
                             f"shiftlens.load_bridge), got {type(model).__name__}")


def _nonfinite_error(model: Any, tokens: Tensor, label: str, what: str) -> ShiftlensError:
    """The error for a non-finite attribution: prompt and model (``label``), where the forward
    pass first turns non-finite (hook, layer, position) and which weights are non-finite."""
    msg = f"{label}: {what}" + where_nonfinite(
        model, tokens, finite="; the forward pass is finite, so the gradients overflowed")
    try:
        check_finite_weights(model, name=_name(model))
        dtype = next(iter(model.parameters())).dtype
        msg += (f"; its weights are all finite, so a value overflowed ({dtype}"
                + ("): load the model in float32" if dtype in (torch.float16, torch.bfloat16)
                   else "): check the scale of the weights"))
    except ShiftlensError as e:
        msg += f"; {e} (edited after loading?)"
    return ShiftlensError(msg + ". No attribution is returned over non-finite values.")


@contextlib.contextmanager
def _quiet_torch_jit() -> Iterator[None]:
    """Forward-mode AD without torch's own deprecation noise.

    On first use in a process, ``torch.autograd.forward_ad.make_dual`` (also under
    ``torch.func.jvp``) imports ``torch._decomp.decompositions_for_jvp``, which registers its
    decompositions with ``torch.jit.script``; torch 2.13 then warns "`torch.jit.script` is
    deprecated" (a ``DeprecationWarning``, 18 times). It is torch talking to itself, nothing
    the user can act on, and under ``-W error`` it would break forward mode: that one message
    is ignored here, nothing else.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated",
                                category=DeprecationWarning)
        yield


def greedy_response(
    model: Any,
    tokens: Int[Tensor, " pos"],
    max_new_tokens: int = 64,
    *,
    stop_ids: Iterable[int] | None = None,
) -> tuple[Int[Tensor, " n_new"], bool]:
    """Deprecated: use :func:`shiftlens.generate.greedy` (the one greedy decoding).

    Kept for code written against 0.1: returns ``(new_tokens, stopped_at_eos)`` with the stop
    token excluded, computed by :func:`shiftlens.generate.greedy`.

    Example:
        >>> ids, eos = greedy_response(model, torch.tensor([0, 17, 42]), 8)  # doctest: +SKIP
    """
    warnings.warn("shiftlens.attribution.greedy_response is deprecated; use "
                  "shiftlens.generate.greedy", DeprecationWarning, stacklevel=2)
    g = greedy(model, tokens, max_new_tokens, stop_ids=stop_ids)
    return g.tokens, g.stopped


# ====================================================================== Jacobian products
class _Stop(Exception):
    """Raised inside a hook to end a forward pass once the final hidden states are seen."""


def _accepts_logits_to_keep(model: Any) -> bool:
    hf = getattr(model, "original_model", None)
    try:
        return hf is not None and "logits_to_keep" in inspect.signature(hf.forward).parameters
    except (TypeError, ValueError):
        return False


def _keep_kwargs(model: Any, q: Tensor) -> dict[str, Any]:
    # CPU indices: Hugging Face slices the final hidden states with them wherever those live
    # (a CPU index tensor indexes a tensor on any device; a CUDA one only its own device)
    return {"logits_to_keep": q.cpu()} if _accepts_logits_to_keep(model) else {}


def _head_pass(
    model: Any, toks: Tensor, q: Tensor, y: Tensor, *, reverse: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One forward: returns (E, H_sel, g = dp/dH_sel, p, rows of H kept).

    ``E`` is the ``hook_embed`` output (a leaf requiring grad when ``reverse``), on the
    embedding's device; ``H_sel`` the unembedding input at the positions predicting response
    tokens (with the graph back to ``E`` when ``reverse``), on the unembedding's device.
    """
    T, M = toks.shape[1], q.shape[0]
    state: dict[str, Tensor] = {}

    def embed_hook(x: Tensor, hook: Any = None) -> Tensor:
        e = x.detach().clone()
        if reverse:
            e.requires_grad_(True)
        state["E"] = e
        return e

    def head_hook(x: Tensor, hook: Any = None) -> Tensor:
        leaf = x.detach().requires_grad_(True)
        state["H"] = x
        state["leaf"] = leaf
        return leaf

    with model.hooks(fwd_hooks=[("hook_embed", embed_hook), ("unembed.hook_in", head_hook)]):
        logits = model(toks, return_type="logits", **_keep_kwargs(model, q))
    if "E" not in state or "leaf" not in state:
        raise ShiftlensError(f"{_name(model)}: hook_embed / unembed.hook_in did not fire")
    if logits.shape[1] not in (T, M):
        raise ShiftlensError(f"{_name(model)}: unexpected logits shape "
                             f"{tuple(logits.shape)}")
    rows = q if logits.shape[1] == T else torch.arange(M)
    lg = logits[0, rows.to(logits.device)].to(torch.float64)
    probs = torch.softmax(lg, dim=-1).gather(1, y.to(lg.device)[:, None])[:, 0]
    (g_full,) = torch.autograd.grad(probs.sum(), state["leaf"])
    H = state["H"]
    hrows = rows.to(H.device)
    return state["E"], H[0, hrows], g_full[0, hrows.to(g_full.device)], probs.detach(), hrows


def _reverse_matrix(
    E: Tensor, H: Tensor, g: Tensor, in_pos: Tensor, chunk: int, progress: bool, desc: str
) -> tuple[Tensor, bool]:
    """a[:, m] = e . J_m^T g_m via batched VJPs; returns (matrix [N, M] float64, batched_ok).

    ``E`` (and the matrix) live on the embedding's device, ``H`` and ``g`` on the
    unembedding's; each index goes to the device of the tensor it indexes.
    """
    M = H.shape[0]
    pos_e = in_pos.to(E.device)
    N = pos_e.shape[0]
    a = torch.zeros(N, M, dtype=torch.float64, device=E.device)
    e_in = E[0, pos_e].detach().to(torch.float64)
    batched = True
    for s in tqdm(range(0, M, chunk), desc=desc, disable=not progress, leave=False):
        ms = torch.arange(s, min(M, s + chunk), device=H.device)
        G = torch.zeros((len(ms),) + tuple(H.shape), dtype=H.dtype, device=H.device)
        G[torch.arange(len(ms), device=H.device), ms] = g[ms.to(g.device)].to(H.device)
        J = None
        if batched and len(ms) > 1:
            try:
                (J,) = torch.autograd.grad(H, E, G, retain_graph=True, is_grads_batched=True)
            except RuntimeError:  # an op without a vmap rule: loop instead
                batched = False
        if J is None:
            J = torch.stack(
                [torch.autograd.grad(H, E, G[k], retain_graph=True)[0] for k in range(len(ms))]
            )
        a[:, ms.to(a.device)] = einops.einsum(
            J[:, 0, pos_e.to(J.device)].to(torch.float64), e_in.to(J.device), "m n d, n d -> n m"
        ).to(a.device)
    return a, batched


def _tangents(E0: Tensor, pos: Tensor) -> Tensor:
    """One tangent per input position: that token's own embedding at its position, else 0."""
    pos = pos.to(E0.device)
    t = torch.zeros((len(pos),) + tuple(E0.shape), dtype=E0.dtype, device=E0.device)
    t[torch.arange(len(pos), device=E0.device), 0, pos] = E0[0, pos]
    return t


def _forward_matrix_vmap(
    model: Any, toks: Tensor, q: Tensor, E0: Tensor, g: Tensor, hrows: Tensor, in_pos: Tensor,
    chunk: int, progress: bool, desc: str,
) -> Tensor:
    """a[n, :] = g . (J e_n): ``torch.func.vmap`` over ``torch.func.jvp`` of the transformer body,
    so the primal pass runs once per chunk and only the tangents are batched."""
    N, M = in_pos.shape[0], g.shape[0]
    a = torch.zeros(N, M, dtype=torch.float64, device=g.device)
    g64 = g.to(torch.float64)
    kw = _keep_kwargs(model, q)

    def body(E: Tensor) -> Tensor:
        got: dict[str, Tensor] = {}

        def embed_hook(x: Tensor, hook: Any = None) -> Tensor:
            return E

        def head_hook(x: Tensor, hook: Any = None) -> Tensor:
            got["h"] = x
            raise _Stop

        try:
            with model.hooks(fwd_hooks=[("hook_embed", embed_hook),
                                        ("unembed.hook_in", head_hook)]):
                model(toks, return_type="logits", **kw)
        except _Stop:
            pass
        if "h" not in got:
            raise RuntimeError("the unembedding input hook did not fire")
        return got["h"][0, hrows.to(got["h"].device)]

    def one(t: Tensor) -> Tensor:
        return torch.func.jvp(body, (E0,), (t,))[1]

    for s in tqdm(range(0, N, chunk), desc=desc, disable=not progress, leave=False):
        idx = torch.arange(s, min(N, s + chunk))
        tangents = _tangents(E0, in_pos[idx.to(in_pos.device)])
        with torch.no_grad():
            tH = torch.func.vmap(one)(tangents)  # [B, M, d]
        a[idx.to(a.device)] = einops.einsum(tH.to(torch.float64), g64.to(tH.device),
                                            "b m d, m d -> b m").to(a.device)
    return a


def _forward_matrix_dual(
    model: Any, toks: Tensor, q: Tensor, g: Tensor, hrows: Tensor, in_pos: Tensor,
    chunk: int, progress: bool, desc: str,
) -> Tensor:
    """Forward mode with dual tensors, the sequence repeated along the batch (one row per input
    token). Slower than :func:`_forward_matrix_vmap` (the primal is recomputed per row); the
    fallback when ``torch.func.vmap`` fails on a model."""
    N, M = in_pos.shape[0], g.shape[0]
    a = torch.zeros(N, M, dtype=torch.float64, device=g.device)
    g64 = g.to(torch.float64)
    kw = _keep_kwargs(model, q)
    for s in tqdm(range(0, N, chunk), desc=desc, disable=not progress, leave=False):
        idx = torch.arange(s, min(N, s + chunk))
        B = len(idx)
        pos = in_pos[idx.to(in_pos.device)]
        got: dict[str, Tensor | None] = {}

        def embed_hook(x: Tensor, hook: Any = None, pos: Tensor = pos, B: int = B) -> Tensor:
            tangent = torch.zeros_like(x)
            r = torch.arange(B, device=x.device)
            pp = pos.to(x.device)
            tangent[r, pp] = x[r, pp]
            return fwAD.make_dual(x, tangent)

        def head_hook(x: Tensor, hook: Any = None, got: dict = got) -> Tensor:
            got["t"] = fwAD.unpack_dual(x).tangent
            raise _Stop

        with torch.no_grad(), fwAD.dual_level():
            try:
                with model.hooks(fwd_hooks=[("hook_embed", embed_hook),
                                            ("unembed.hook_in", head_hook)]):
                    model(toks.expand(B, -1), return_type="logits", **kw)
            except _Stop:
                pass
        t = got.get("t")
        if t is None:
            raise RuntimeError("forward-mode tangent did not reach the unembedding input")
        t = t[:, hrows.to(t.device)].to(torch.float64)  # [B, M, d]
        a[idx.to(a.device)] = einops.einsum(t, g64.to(t.device), "b m d, m d -> b m").to(a.device)
    return a


# ====================================================================== the attribution matrix
def _check_matrix_input(
    model: Any, tokens: Tensor, n_prompt: int, input_positions: Tensor | None, mode: str,
    chunk_size: int, label: str,
) -> Tensor:
    """Validate :func:`attribution_matrix`'s arguments; return the input positions (CPU)."""
    check_model(model, label)
    check_autograd(model, label)
    check_choice("mode", mode, MODES, who=label)
    check_int("chunk_size", chunk_size, minimum=1, who=label)
    _check_ids("tokens", tokens, model, label)
    T = int(tokens.shape[0])
    n_prompt = check_int("n_prompt", n_prompt, who=label)
    if not 1 <= n_prompt < T:
        raise ShiftlensError(
            f"{label}: need at least one prompt and one response token (n_prompt={n_prompt}, "
            f"{T} tokens)"
        )
    n_ctx = getattr(model.cfg, "n_ctx", None)
    if n_ctx is not None and T > n_ctx:
        raise ShiftlensError(f"{label}: {T} tokens exceed the context length {n_ctx}")
    if input_positions is not None and not (
            isinstance(input_positions, Tensor) and input_positions.ndim == 1
            and not input_positions.is_floating_point() and not input_positions.is_complex()
            and input_positions.dtype != torch.bool):
        raise ShiftlensError(f"{label}: input_positions must be a 1-D integer tensor, got "
                             f"{_describe(input_positions)}")
    in_pos = torch.arange(n_prompt) if input_positions is None else input_positions.cpu()
    if in_pos.numel() == 0:
        raise ShiftlensError(f"{label}: no input position to attribute to")
    if int(in_pos.min()) < 0 or int(in_pos.max()) >= n_prompt:
        raise ShiftlensError(f"{label}: input positions must lie in [0, {n_prompt})")
    return in_pos


def _describe(x: Any) -> str:
    if isinstance(x, Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    return f"{x!r:.60}" if isinstance(x, (str, int, float)) else type(x).__name__


def _check_ids(what: str, ids: Any, model: Any, label: str) -> Tensor:
    """``ids`` as a 1-D integer tensor of token ids inside the model's vocabulary."""
    if not isinstance(ids, Tensor) or ids.ndim != 1 or ids.is_floating_point() \
            or ids.is_complex() or ids.dtype == torch.bool:
        raise ShiftlensError(f"{label}: {what} must be a 1-D integer tensor of token ids, got "
                             f"{_describe(ids)}")
    d_vocab = getattr(model.cfg, "d_vocab", None)
    if ids.numel() and (int(ids.min()) < 0 or (d_vocab is not None
                                               and int(ids.max()) >= int(d_vocab))):
        bad = int(ids.min()) if int(ids.min()) < 0 else int(ids.max())
        raise ShiftlensError(f"{label}: {what} holds token id {bad}, outside the model's "
                             f"vocabulary [0, {d_vocab})")
    return ids


def _response_ids(response: Any, model: Any, label: str) -> Tensor:
    """Given response token ids (a sequence of ints, an integer array or tensor) as ``[n]``."""
    ids = response
    if isinstance(ids, np.ndarray):  # numbers -> a tensor (its dtype is checked below)
        ids = torch.from_numpy(np.ascontiguousarray(ids)) if ids.dtype.kind in "iubf" \
            else list(ids)
    if isinstance(ids, Tensor):
        if ids.ndim == 2 and ids.shape[0] == 1:  # [1, n]: one sequence with a batch axis
            ids = ids[0]
    elif isinstance(ids, Sequence) and not isinstance(ids, (str, bytes)):
        bad = [v for v in ids if isinstance(v, bool)
               or not isinstance(v, (numbers.Integral, np.integer))]
        if bad:
            raise ShiftlensError(f"{label}: response token ids must be integers, got "
                                 f"{bad[0]!r} ({type(bad[0]).__name__})")
        ids = torch.tensor([int(v) for v in ids], dtype=torch.long)
    else:
        raise ShiftlensError(f"{label}: response must be a text, token ids or None (generate), "
                             f"got {_describe(response)}")
    if isinstance(ids, Tensor) and ids.ndim == 1 and ids.numel() == 0:
        raise ShiftlensError(f"{label}: the response is empty")
    return _check_ids("response", ids, model, label).to(torch.long).cpu()


def _forward_or_fallback(
    model: Any, toks: Tensor, q: Tensor, y: Tensor, in_pos: Tensor, mode: str, chunk: int,
    progress: bool, label: str, info: dict[str, Any],
) -> tuple[Tensor, Tensor] | None:
    """Forward mode (vmap, else dual tensors); None when it failed and ``mode`` is ``"auto"``
    (``info`` then says why and reverse mode runs)."""
    desc = "attribute (forward)"
    E0, _, g, probs, hrows = _head_pass(model, toks, q, y, reverse=False)
    try:
        with _quiet_torch_jit():
            try:
                a = _forward_matrix_vmap(model, toks, q, E0, g, hrows, in_pos, chunk, progress,
                                         desc)
            except (RuntimeError, NotImplementedError) as e:
                info["forward_impl"] = f"dual tensors (vmap failed: {type(e).__name__})"
                a = _forward_matrix_dual(model, toks, q, g, hrows, in_pos, chunk, progress, desc)
    except (RuntimeError, NotImplementedError) as e:
        if mode == "forward":
            raise ShiftlensError(f"{label}: forward-mode AD failed on this model: {e}") from e
        warnings.warn(
            f"{label}: forward-mode AD failed ({type(e).__name__}: {str(e)[:120]}); using "
            "reverse mode", ShiftlensWarning, stacklevel=3,
        )
        info["mode_reason"] = f"forward-mode AD failed: {type(e).__name__}: {e}"
        return None
    return a, probs


def attribution_matrix(
    model: Any,
    tokens: Int[Tensor, " pos"],
    n_prompt: int,
    input_positions: Int[Tensor, " n_in"] | None = None,
    *,
    mode: str = "auto",
    chunk_size: int = 16,
    progress: bool = False,
    label: str | None = None,
) -> tuple[Float[Tensor, "n_in n_out"], Float[Tensor, " n_out"], dict[str, Any]]:
    """The raw attribution matrix of a token sequence: prompt ``tokens[:n_prompt]``, response after.

    The low-level entry point of :func:`attribute` (no tokenization, no generation). The
    tokens go to the model's input device (:func:`shiftlens.bridge.device_of`); a model spread
    over several devices is supported (indices follow the tensors they index).

    Args:
        model: A TransformerBridge.
        tokens: Prompt + response token ids (BOS included when the model uses one).
        n_prompt: Number of prompt positions; ``tokens[n_prompt:]`` is the response.
        input_positions: Prompt positions to attribute to (default: all of ``0..n_prompt-1``).
        mode: ``"auto"``, ``"forward"`` or ``"reverse"``.
        chunk_size: Jacobian products per batch.
        progress: Progress bar over chunks.
        label: Names the input in messages.

    Returns:
        ``(matrix [n_in, n_out], probs [n_out], info)``; ``info`` has ``mode``, ``mode_reason``
        and, when vector-Jacobian products could not be batched, ``vjp_batching``. The matrix
        is float64 for float64 models, else float32; on the CPU.

    Raises:
        ShiftlensError: tokens that are not a 1-D integer tensor inside the vocabulary, a bad
            ``n_prompt`` / ``input_positions`` / ``mode`` / ``chunk_size``, gradients disabled,
            or a non-finite matrix or probability (naming the prompt, the model, where the
            forward pass first turns non-finite and the non-finite weights).

    Example:
        >>> a, p, info = attribution_matrix(model, torch.tensor([0, 5, 9, 4, 7]), 3)  # doctest: +SKIP
        >>> a.shape, info["mode"]  # doctest: +SKIP
        (torch.Size([3, 2]), 'reverse')
    """
    label = label or _name(model)
    in_pos = _check_matrix_input(model, tokens, n_prompt, input_positions, mode, chunk_size,
                                 label)
    T = int(tokens.shape[0])
    N, M = int(in_pos.shape[0]), T - n_prompt
    toks = tokens[None].to(device_of(model))
    q = torch.arange(n_prompt - 1, T - 1)
    y = tokens[n_prompt:].cpu()
    if mode == "auto":
        chosen = "forward" if N <= M else "reverse"
        info: dict[str, Any] = {"mode_reason": f"auto: N={N} {'<=' if N <= M else '>'} M={M}"}
    else:
        chosen, info = mode, {"mode_reason": "requested"}
    got: tuple[Tensor, Tensor] | None = None
    if chosen == "forward":
        got = _forward_or_fallback(model, toks, q, y, in_pos, mode, chunk_size, progress, label,
                                   info)
        chosen = "forward" if got is not None else "reverse"
    if got is None:
        E, H, g, probs, _ = _head_pass(model, toks, q, y, reverse=True)
        a, batched = _reverse_matrix(E, H, g, in_pos, chunk_size, progress,
                                     "attribute (reverse)")
        if not batched:
            info["vjp_batching"] = "looped (is_grads_batched failed)"
        del E, H
    else:
        a, probs = got
    info = {"mode": chosen, **info}
    bad_a, bad_p = int((~torch.isfinite(a)).sum()), int((~torch.isfinite(probs)).sum())
    if bad_a or bad_p:
        raise _nonfinite_error(model, tokens, label, (
            f"{bad_a} of {a.numel()} attributions and {bad_p} of {probs.numel()} response "
            "probabilities are NaN or infinite"))
    wdtype = next(iter(model.parameters())).dtype
    out = torch.float64 if wdtype == torch.float64 else torch.float32
    return a.detach().to(out).cpu(), probs.to(out).cpu(), info


# ====================================================================== one prompt, one model
def _decode_tokens(tokenizer: Any, ids: Sequence[int]) -> tuple[str, ...]:
    """Raw vocabulary entries (``convert_ids_to_tokens``: byte-level ``Ġ``, sentencepiece ``▁``);
    kept beside the display strings for whoever needs the vocabulary's own spelling."""
    if tokenizer is None:
        return tuple(str(i) for i in ids)
    return tuple(str(t) for t in tokenizer.convert_ids_to_tokens([int(i) for i in ids]))


def _append(tp: TokenizedPrompt, ids: Tensor, n_ctx: int | None, label: str) -> TokenizedPrompt:
    tokens = torch.cat([tp.tokens, ids.to(tp.tokens.dtype)])
    if n_ctx is not None and tokens.shape[0] > n_ctx:
        raise ShiftlensError(
            f"{label}: {tokens.shape[0]} tokens (prompt {tp.n_prompt} + response "
            f"{ids.numel()}) exceed the context length {n_ctx}"
        )
    segs = torch.cat([tp.segments, torch.full((ids.numel(),), RESPONSE, dtype=tp.segments.dtype)])
    return replace(tp, tokens=tokens, segments=segs)


def _with_response(
    model: Any, tp: TokenizedPrompt, response: Any, max_new_tokens: int, label: str
) -> tuple[TokenizedPrompt, bool, bool | None]:
    """The prompt with its response appended: ``(tokenized, generated, stopped_at_eos)``.

    A text response is already in ``tp`` (tokenized with the prompt); token ids are appended;
    None generates greedily (:func:`shiftlens.generate.greedy`).
    """
    n_ctx = getattr(model.cfg, "n_ctx", None)
    if isinstance(response, str):
        return tp, False, None
    if response is None:
        room = max_new_tokens if n_ctx is None else min(max_new_tokens, n_ctx - tp.n_prompt)
        if room < 1:
            raise ShiftlensError(
                f"{label}: the prompt fills the context ({tp.n_prompt} of {n_ctx} tokens); no "
                "room for a response"
            )
        gen = greedy(model, tp.tokens, room)
        if gen.tokens.numel() == 0:
            if locate_nonfinite(model, tp.tokens) is not None:  # EOS chosen from NaN logits
                raise _nonfinite_error(model, tp.tokens, label, "the logits are not finite, "
                                       "so the greedy response means nothing")
            raise ShiftlensError(
                f"{label}: the model's greedy response is empty (it emits EOS first); nothing "
                "to attribute"
            )
        return _append(tp, gen.tokens, n_ctx, label), True, bool(gen.stopped)
    return _append(tp, _response_ids(response, model, label), n_ctx, label), False, None


def attribute(
    model: Any,
    prompt: InstructionPrompt | str,
    response: str | Sequence[int] | Int[Tensor, " n_resp"] | None = None,
    *,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    mode: str = "auto",
    chunk_size: int = 16,
    progress: bool = False,
    model_name: str | None = None,
) -> AttributionResult:
    """Gradient attribution ``a[n, m] = e_n . dp(y_m | x, y_<m)/de_n`` of one response (§3).

    The response is given (text or token ids) or generated greedily by ``model`` (until EOS or
    ``max_new_tokens``). Logits are computed only at the positions predicting response tokens;
    reverse mode batches one vector-Jacobian product per response token, forward mode one
    Jacobian-vector product per prompt token (see the module docstring). Model parameters never
    receive gradients.

    Args:
        model: A TransformerBridge (with a tokenizer).
        prompt: The prompt (a plain string is a prompt without instruction span).
        response: Response text, response token ids (a sequence of ints, or a 1-D integer
            tensor or array; ``[1, n]`` is read as one sequence), or None to generate greedily.
        max_new_tokens: Generation limit (>= 1; capped by the context length). Default
            :data:`shiftlens.generate.DEFAULT_MAX_NEW_TOKENS` (32).
        mode: ``"auto"`` (forward when ``N <= M``, else reverse), ``"forward"`` or ``"reverse"``.
        chunk_size: Products per batch (bounds memory: activations of ``chunk_size`` copies).
        progress: Show a progress bar over chunks.
        model_name: Name recorded in the result (default: :func:`shiftlens.bridge.model_name`).

    Returns:
        The :class:`~shiftlens.lenses.attribution.results.AttributionResult`.

    Raises:
        ShiftlensError: a model that is not a bridge, a prompt that is neither an
            InstructionPrompt nor a text, an empty response, response ids that are not integers
            or lie outside the vocabulary, prompt + response longer than the context, gradients
            disabled (``torch.no_grad``) or inference mode, bad mode / chunk size /
            ``max_new_tokens``, a non-finite attribution (naming the prompt, the model, where
            the forward pass first turns non-finite and the non-finite weights).

    Example:
        >>> from shiftlens.testing import tiny_bridge
        >>> model = tiny_bridge("llama")  # doctest: +SKIP
        >>> p = InstructionPrompt("Reverse the words: red cat", instruction=["Reverse the words:"])
        >>> att = attribute(model, p, max_new_tokens=8)  # doctest: +SKIP
        >>> att.matrix.shape == (att.n_input, att.n_output)  # doctest: +SKIP
        True
    """
    check_model(model, "attribute")
    if model_name is not None and not isinstance(model_name, str):
        raise ShiftlensError(f"attribute: model_name must be a text, got {_describe(model_name)}")
    name = model_name or _name(model)
    if isinstance(prompt, str):
        prompt = InstructionPrompt(prompt)
    if not isinstance(prompt, InstructionPrompt):
        raise ShiftlensError(f"attribute ({name}): prompt must be an InstructionPrompt or a "
                             f"text, got {_describe(prompt)}")
    label = f"prompt {prompt.label} ({name})"
    check_autograd(model, label)
    check_choice("mode", mode, MODES, who=label)
    check_int("max_new_tokens", max_new_tokens, minimum=1, who=label)
    check_int("chunk_size", chunk_size, minimum=1, who=label)
    if response is not None and not isinstance(response, str):
        _response_ids(response, model, label)  # checked before the prompt is tokenized
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        raise ShiftlensError(f"{name}: the model has no tokenizer")
    tp = tokenize_prompt(
        tok, prompt, prepend_bos=bool(model.cfg.default_prepend_bos),
        response=response if isinstance(response, str) else None,
        n_ctx=getattr(model.cfg, "n_ctx", None), model_name=name,
    )
    tp, generated, eos = _with_response(model, tp, response, max_new_tokens, label)
    in_pos = torch.nonzero(tp.segments[: tp.n_prompt] != BOS).flatten()
    if in_pos.numel() == 0:
        raise ShiftlensError(f"{label}: the prompt has no token besides BOS")
    a, probs, info = attribution_matrix(
        model, tp.tokens, tp.n_prompt, in_pos, mode=mode, chunk_size=chunk_size,
        progress=progress, label=label,
    )
    extra: dict[str, Any] = {
        "dtype": str(next(iter(model.parameters())).dtype),
        **{k: v for k, v in info.items() if k != "mode"},
    }
    if eos is not None:
        extra["stopped_at_eos"] = eos
    meta = make_meta(models={"model": name}, params={
        "chunk_size": chunk_size, "mode": mode,
        "max_new_tokens": max_new_tokens if response is None else None}, **extra)
    ids = tp.tokens.tolist()
    return AttributionResult(
        prompt=prompt, tokens=tp.tokens, segments=tp.segments, n_prompt=tp.n_prompt, matrix=a,
        probs=probs, response=tok.decode(ids[tp.n_prompt :]), mode=info["mode"],
        generated=generated, token_strings=tuple(token_strings(tok, ids)),
        raw_token_strings=_decode_tokens(tok, ids), meta=meta,
    )

