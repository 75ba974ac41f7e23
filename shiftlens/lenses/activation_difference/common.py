"""What the lens's pair functions share: the pair and argument checks, texts as token rows,
batches, and token labels.

Internal to :mod:`.compare` and :mod:`.mining` (their public checks are the same
:mod:`shiftlens.checks` validators every lens uses).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from shiftlens.checks import check_int, pad_token_id
from shiftlens.errors import ShiftlensError
from shiftlens.prompts import InstructionPrompt
from shiftlens.tokens import token_strings


def check_pair(pair: Any) -> None:
    """Refuse anything but a :class:`shiftlens.ModelPair` whose models compare position by position
    (its own check, plus one dtype)."""
    for attr in ("base", "tuned", "tokenize", "tokenizer", "check_compatible", "names"):
        if not hasattr(pair, attr):
            raise ShiftlensError(f"expected a shiftlens.ModelPair, got {type(pair).__name__}")
    pair.check_compatible(weights=False)
    tb, tt = getattr(pair.base.cfg, "dtype", None), getattr(pair.tuned.cfg, "dtype", None)
    if tb is not None and tt is not None and tb != tt:
        raise ShiftlensError(f"incompatible pair (base {pair.names['base']!r} vs tuned "
                             f"{pair.names['tuned']!r}): dtypes {tb} != {tt}")


def check_floats(name: str, values: Any, *, minimum: float | None = None,
                 allow_empty: bool = False) -> list[float]:
    """A list of finite numbers (each >= ``minimum``), duplicates dropped, order kept."""
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        values = [values]
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ShiftlensError(f"{name} must be a list of numbers, got {values!r}")
    out: list[float] = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not float(v) == float(v) \
                or abs(float(v)) == float("inf"):
            raise ShiftlensError(f"{name} must hold finite numbers, got {v!r}")
        if minimum is not None and float(v) < minimum:
            raise ShiftlensError(f"{name} must be >= {minimum}, got {v!r}")
        out.append(float(v))
    out = list(dict.fromkeys(out))
    if not out and not allow_empty:
        raise ShiftlensError(f"{name} is empty")
    return out


def text_tokens(pair: Any, texts: Any, *, what: str = "texts") -> list[Tensor]:
    """Each text (a string or an :class:`InstructionPrompt`, whose ``text`` is read) as the pair
    tokenizes it (BOS where the pair prepends one), one 1-D tensor per text."""
    if isinstance(texts, (str, InstructionPrompt)):
        texts = [texts]
    if not isinstance(texts, Sequence) or not texts:
        raise ShiftlensError(f"{what} must be a non-empty list of strings or InstructionPrompts")
    out = []
    for i, t in enumerate(texts):
        if isinstance(t, str):
            if not t.strip():
                raise ShiftlensError(f"{what}[{i}] is empty")
            t = InstructionPrompt(t, id=f"#{i}")
        elif not isinstance(t, InstructionPrompt):
            raise ShiftlensError(f"{what}[{i}] is a {type(t).__name__}, not a string or an "
                                 "InstructionPrompt")
        out.append(pair.tokenize(t).tokens.long())
    return out


def padded(rows: Sequence[Tensor], pad_id: int) -> tuple[Tensor, Tensor]:
    """Right-padded ``[batch, pos]`` token ids and the mask of real positions."""
    width = max(int(r.shape[0]) for r in rows)
    toks = torch.full((len(rows), width), pad_id, dtype=torch.long)
    valid = torch.zeros((len(rows), width), dtype=torch.bool)
    for j, r in enumerate(rows):
        toks[j, : r.shape[0]] = r
        valid[j, : r.shape[0]] = True
    return toks, valid


def batches(n: int, batch_size: int) -> list[list[int]]:
    """Index lists of consecutive batches."""
    check_int("batch_size", batch_size, minimum=1)
    return [list(range(i, min(n, i + batch_size))) for i in range(0, n, batch_size)]


def pad_id(pair: Any) -> int:
    """The pair's right-padding id."""
    return pad_token_id(pair.tokenizer)


def vocab_token(tokenizer: Any, token_id: int) -> str:
    """The text a vocabulary token adds after another token (a word-initial space kept, also
    for sentencepiece tokenizers, which drop it when a token is decoded alone)."""
    return token_strings(tokenizer, [token_id, token_id])[1]


def token_ids(tokenizer: Any, vocabulary: Any, d_vocab: int) -> list[int]:
    """A vocabulary given as token ids or token texts (each exactly one token) as ids."""
    if vocabulary is None:
        return []
    if isinstance(vocabulary, Tensor):
        vocabulary = vocabulary.tolist()
    if isinstance(vocabulary, (str, bytes)) or not isinstance(vocabulary, (Sequence, set,
                                                                           frozenset)):
        raise ShiftlensError(f"vocabulary must be a list of token ids or token texts, got "
                             f"{type(vocabulary).__name__}")
    out = []
    for v in vocabulary:
        if isinstance(v, str):
            ids = tokenizer(v, add_special_tokens=False).input_ids
            if len(ids) != 1:
                raise ShiftlensError(f"vocabulary entry {v!r} is {len(ids)} tokens, not 1")
            v = ids[0]
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < d_vocab:
            raise ShiftlensError(f"vocabulary entry {v!r} is not a token id in [0, {d_vocab})")
        out.append(int(v))
    return list(dict.fromkeys(out))
