"""The one exception type shiftlens raises for bad input."""

from __future__ import annotations

__all__ = ["ShiftlensError", "ShiftlensWarning", "SelfCheckError"]


class ShiftlensError(ValueError):
    """A bad input or an incompatible pair.

    Every message names what it is about: the prompt id, the layer/head, or the model.

    Example:
        >>> try:
        ...     raise ShiftlensError("prompt 'w-01': span 'foo' not found in the text")
        ... except ValueError as e:
        ...     print(e)
        prompt 'w-01': span 'foo' not found in the text
    """


class ShiftlensWarning(UserWarning):
    """A result that is still usable but should be read with care (e.g. identical weights)."""


class SelfCheckError(ShiftlensError):
    """The instrument failed its self-check (:func:`shiftlens.selfcheck`): nothing was measured.

    The CLI exits with code 3 on it.

    Example:
        >>> issubclass(SelfCheckError, ShiftlensError)
        True
    """
