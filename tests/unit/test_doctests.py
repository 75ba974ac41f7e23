"""Run the docstring examples of the foundation modules (examples needing a model are skipped)."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "shiftlens.errors", "shiftlens.prompts", "shiftlens.capture", "shiftlens.stats",
    "shiftlens.io", "shiftlens.vocab", "shiftlens.checkpoints", "shiftlens.formats",
    "shiftlens.wu2024", "shiftlens.checks", "shiftlens.generate", "shiftlens.instrument",
    "shiftlens.result", "shiftlens.cliargs", "shiftlens.viz.style", "shiftlens.lenses.registry",
    "shiftlens.lenses.residual", "shiftlens.lenses.residual.core", "shiftlens.lenses.ffn.subspaces", "shiftlens.residual",
    "shiftlens.bridge", "shiftlens.devicemap", "shiftlens.weightfiles", "shiftlens.tokens", "shiftlens.diagnose",
    "shiftlens.lenses.attention.core", "shiftlens.lenses.attention.qk", "shiftlens.lenses.attention.filters",
    "shiftlens.lenses.attention.scores", "shiftlens.lenses.attention.compare",
]


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name):
    mod = importlib.import_module(name)
    res = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert res.attempted > 0, f"{name}: no runnable examples found"
    assert res.failed == 0, f"{res.failed} doctest failures in {name}"
