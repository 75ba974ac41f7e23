"""The shiftlens version (one place; ``shiftlens.__version__`` and pyproject read it)."""

__version__ = "0.2.0.dev0"
