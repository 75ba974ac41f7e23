"""Tokens as people read them: one helper for every frame, figure, HTML view and CLI table.

:func:`token_strings` gives the text each token adds (the decoded growth of the prefix, so a
sentencepiece ``▁cat`` reads `` cat`` and a byte-level ``Ġreverse`` reads `` reverse``, never
the raw vocabulary entry); :func:`display_token` makes invisible characters visible for labels
(a newline token is ``⏎``, a tab ``⇥``, a lone space ``␣``), so no label is blank.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["token_strings", "display_token", "display_tokens"]

_VISIBLE = {"\n": "⏎", "\r": "␍", "\t": "⇥"}


def token_strings(tokenizer: Any, ids: Sequence[int] | Tensor) -> list[str]:
    """The text each token adds, for display (word-initial spaces kept, also for Metaspace).

    Decoding tokens one at a time drops the leading space of sentencepiece-style tokens
    ("▁cat" -> "cat"), so each token's string is the growth of the decoded prefix; where that
    is not a clean extension (byte fragments of one character) the token is decoded alone.

    Example:
        >>> token_strings(pair.tokenizer, pair.tokenize(prompt).tokens)  # doctest: +SKIP
        ['<bos>', 'Sort', ' the', ' words']
    """
    if isinstance(ids, torch.Tensor):
        ids = ids.tolist()
    ids = [int(i) for i in ids]

    def dec(x: list[int]) -> str:
        return tokenizer.decode(x, clean_up_tokenization_spaces=False)

    out = []
    prev = ""
    for k in range(len(ids)):
        cur = dec(ids[: k + 1])
        if cur.startswith(prev) and len(cur) > len(prev) and "\ufffd" not in cur[len(prev):]:
            out.append(cur[len(prev):])
        else:
            out.append(dec([ids[k]]) or str(tokenizer.convert_ids_to_tokens(ids[k])))
        prev = cur
    return out


def display_token(s: str) -> str:
    """A token string with invisible characters made visible (for axis labels and tables).

    Newlines, carriage returns and tabs become ``⏎``, ``␍``, ``⇥``; a token of spaces only
    becomes ``␣`` per space; an empty string becomes ``∅``. Any other character that does not
    print (control characters such as NUL or ESC, format characters such as a zero-width
    space, non-ASCII spaces) is escaped as Python writes it (``\\x00``, ``\\u200b``): fonts have
    no glyph for them, so a label would otherwise be blank. Other text is unchanged (a leading
    space stays a space, which reads naturally in running text). The result is printable, and
    applying the function again leaves it as it is.

    Example:
        >>> [display_token(t) for t in [" cat", "\\n", "\\n\\n", "  ", ""]]
        [' cat', '⏎', '⏎⏎', '␣␣', '∅']
        >>> print(display_token("\\x00"), display_token("a\\x1b[0m"), display_token("\\u200b"))
        \\x00 a\\x1b[0m \\u200b
    """
    if s == "":
        return "∅"
    if s.strip(" ") == "":
        return "␣" * len(s)
    return "".join(_VISIBLE.get(c) or _escape(c) for c in s)


def _escape(c: str) -> str:
    """One character as it prints: itself, or its Python escape when it has no glyph."""
    if c == " " or c.isprintable():
        return c
    o = ord(c)
    return f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}"


def display_tokens(tokenizer: Any, ids: Sequence[int] | Tensor) -> list[str]:
    """:func:`token_strings` passed through :func:`display_token`.

    Example:
        >>> display_tokens(pair.tokenizer, [17, 3])  # doctest: +SKIP
        [' cat', '⏎']
    """
    return [display_token(s) for s in token_strings(tokenizer, ids)]
