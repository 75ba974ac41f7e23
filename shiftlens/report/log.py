"""What a run said along the way: warnings and dependency log records, captured and listed once.

A report should not scatter its caveats over a terminal. :func:`capture_warnings` records, for
the duration of a block, every warning that would have been shown (the active warning filters
still decide which) and every WARNING-or-worse record of the dependencies' loggers
(transformers, TransformerLens, accelerate, huggingface_hub, torch; and of any logger that
would otherwise fall through to Python's last-resort stderr handler). Repeats are counted,
not listed again. The report lists the entries in its **Log** section and in ``metrics.json``
(``"log"``); the command line prints them on stderr only with ``--verbose``.

Captures nest: an entry is recorded by every capture active when it is raised, so the CLI's
capture around a whole command sees what the report's own capture sees.

Importing this module imports neither torch nor numpy.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["LogEntry", "CapturedLog", "capture_warnings", "nested", "DEPENDENCY_LOGGERS"]

#: Loggers whose WARNING+ records are captured (their own handlers are muted meanwhile).
DEPENDENCY_LOGGERS: tuple[str, ...] = (
    "transformers", "transformer_lens", "accelerate", "huggingface_hub", "torch", "datasets",
    "safetensors", "circuitsvis", "matplotlib",
)

_ACTIVE: list[CapturedLog] = []


@dataclass
class LogEntry:
    """One distinct warning or log record.

    Attributes:
        kind: ``"warning"`` (Python's ``warnings``) or ``"log"`` (a ``logging`` record).
        category: The warning class (``"FutureWarning"``, ``"ShiftlensWarning"``) or the
            record's level (``"WARNING"``, ``"ERROR"``).
        message: The text, whitespace collapsed.
        source: Where it came from: ``"transformers/modeling_utils.py:4411"`` for a warning, the
            logger's name for a record.
        origin: ``"shiftlens"`` (raised by shiftlens itself) or ``"dependency"``.
        count: How many times it was raised during the capture.

    Example:
        >>> LogEntry("warning", "UserWarning", "x", "a.py:1", "dependency").line()
        'UserWarning (a.py:1): x'
    """

    kind: str
    category: str
    message: str
    source: str
    origin: str
    count: int = 1

    @property
    def key(self) -> tuple[str, str, str]:
        """What makes two entries the same: category, message and source."""
        return self.category, self.message, self.source

    def line(self) -> str:
        """The entry in one line (``Category (source): message [xN]``).

        Example:
            >>> LogEntry("log", "WARNING", "slow", "transformers", "dependency", 3).line()
            'WARNING (transformers): slow [x3]'
        """
        times = f" [x{self.count}]" if self.count > 1 else ""
        return f"{self.category} ({self.source}): {self.message}{times}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (what ``metrics.json["log"]`` holds).

        Example:
            >>> sorted(LogEntry("log", "WARNING", "m", "torch", "dependency").to_dict())
            ['category', 'count', 'kind', 'message', 'origin', 'source']
        """
        return asdict(self)


@dataclass
class CapturedLog:
    """The entries recorded by :func:`capture_warnings`, in first-seen order, repeats counted.

    Attributes:
        entries: The distinct entries.
        echo: Called with each new entry as it is first recorded (the CLI's ``--verbose``).

    Example:
        >>> log = CapturedLog()
        >>> log.add(LogEntry("warning", "UserWarning", "x", "a.py:1", "dependency"))
        >>> log.add(LogEntry("warning", "UserWarning", "x", "a.py:1", "dependency"))
        >>> len(log), log.entries[0].count
        (1, 2)
    """

    entries: list[LogEntry] = field(default_factory=list)
    echo: Callable[[LogEntry], None] | None = None
    _index: dict[tuple[str, str, str], LogEntry] = field(default_factory=dict, repr=False)

    def add(self, entry: LogEntry) -> None:
        """Record one entry (a repeat raises the count of the first one).

        Example:
            >>> CapturedLog().add(LogEntry("log", "WARNING", "m", "torch", "dependency"))
        """
        old = self._index.get(entry.key)
        if old is not None:
            old.count += entry.count
            return
        entry = LogEntry(**entry.to_dict())
        self._index[entry.key] = entry
        self.entries.append(entry)
        if self.echo is not None:
            self.echo(entry)

    def extend(self, entries: Sequence[LogEntry]) -> None:
        """Record several entries.

        Example:
            >>> CapturedLog().extend([])
        """
        for e in entries:
            self.add(e)

    @property
    def ours(self) -> list[LogEntry]:
        """The entries raised by shiftlens itself."""
        return [e for e in self.entries if e.origin == "shiftlens"]

    @property
    def dependencies(self) -> list[LogEntry]:
        """The entries raised by dependencies."""
        return [e for e in self.entries if e.origin != "shiftlens"]

    def __len__(self) -> int:
        return len(self.entries)

    def __repr__(self) -> str:
        return (f"CapturedLog({len(self.ours)} from shiftlens, {len(self.dependencies)} from "
                "dependencies)")


def _squash(text: Any) -> str:
    return " ".join(str(text).split())


def _source_of(filename: str, lineno: int) -> str:
    """``.../site-packages/transformers/x.py`` -> ``transformers/x.py:N`` (no machine paths)."""
    parts = str(filename).replace("\\", "/").split("/")
    for marker in ("site-packages", "dist-packages", "shiftlens"):
        if marker in parts:
            i = len(parts) - 1 - parts[::-1].index(marker)
            keep = parts[i + 1:] if marker != "shiftlens" else parts[i:]
            if keep:
                return "/".join(keep) + f":{lineno}"
    return "/".join(parts[-2:]) + f":{lineno}"


def _origin(category: type) -> str:
    """``"shiftlens"`` for shiftlens' own warnings, else ``"dependency"``.

    By class, not by file: a dependency's deprecation warning points (``stacklevel``) at the
    shiftlens line that called it, and a shiftlens warning at the user's line.
    """
    from shiftlens.errors import ShiftlensWarning

    return "shiftlens" if issubclass(category, ShiftlensWarning) else "dependency"


def _record(entry: LogEntry) -> None:
    for log in list(_ACTIVE):
        log.add(entry)


def _showwarning(message: Any, category: type, filename: str, lineno: int, file: Any = None,
                 line: Any = None) -> None:
    _record(LogEntry("warning", category.__name__, _squash(message),
                     _source_of(filename, lineno), _origin(category)))


class _Handler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record must not break the run
            msg = str(record.msg)
        origin = "shiftlens" if record.name.split(".")[0] == "shiftlens" else "dependency"
        _record(LogEntry("log", record.levelname, _squash(msg), record.name, origin))


@contextlib.contextmanager
def capture_warnings(*, echo: Callable[[LogEntry], None] | None = None,
                     loggers: Sequence[str] = DEPENDENCY_LOGGERS) -> Iterator[CapturedLog]:
    """Record warnings and dependency log records inside the block instead of printing them.

    The active warning filters still decide which warnings count (an ignored one stays
    ignored); each one that would have been shown is recorded once with its count. The named
    loggers (and the root logger, when it has no handler of its own, so that records would have
    reached Python's last-resort stderr handler) get a capturing handler for the block; their
    own handlers, levels and ``propagate`` flags are restored afterwards.

    Args:
        echo: Called with each new entry when it is first recorded (e.g. print it).
        loggers: Logger names whose WARNING+ records are captured.

    Yields:
        The :class:`CapturedLog`, filled as the block runs.

    Example:
        >>> import warnings
        >>> with capture_warnings() as log:
        ...     warnings.warn("old API", FutureWarning)
        >>> log.entries[0].category, log.entries[0].message
        ('FutureWarning', 'old API')
    """
    import sys

    log = CapturedLog(echo=echo)
    handler = _Handler(level=logging.WARNING)
    if "transformers" in sys.modules:
        # transformers gives its logger a stderr handler on first use; do that now, so that the
        # handler is muted with the others rather than added (and printing) inside the block
        from transformers.utils import logging as hf_logging

        hf_logging.get_verbosity()
    saved: list[tuple[logging.Logger, list[logging.Handler], bool]] = []
    targets = [logging.getLogger(n) for n in loggers]
    root = logging.getLogger()
    if not root.handlers:
        targets.append(root)
    with warnings.catch_warnings():
        warnings.showwarning = _showwarning  # catch_warnings restores the original
        for lg in targets:
            saved.append((lg, list(lg.handlers), lg.propagate))
            for h in list(lg.handlers):
                lg.removeHandler(h)
            lg.addHandler(handler)
            if lg is not root:
                lg.propagate = False
        _ACTIVE.append(log)
        try:
            yield log
        finally:
            _ACTIVE.remove(log)
            for lg, handlers, propagate in saved:
                lg.removeHandler(handler)
                for h in handlers:  # handlers added inside the block stay
                    if h not in lg.handlers:
                        lg.addHandler(h)
                lg.propagate = propagate


def nested() -> bool:
    """Whether a capture is active now (an outer caller will report the entries).

    Example:
        >>> nested()
        False
    """
    return bool(_ACTIVE)
