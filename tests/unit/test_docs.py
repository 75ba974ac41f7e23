"""Every public object: a docstring with an example, and a section in docs/."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest

import shiftlens

ROOT = Path(__file__).resolve().parents[2]
DOCS = "\n".join(p.read_text() for p in (ROOT / "docs").glob("*.md"))


def public_objects():
    for info in pkgutil.walk_packages(shiftlens.__path__, "shiftlens."):
        if info.name.endswith("__main__"):
            continue
        mod = importlib.import_module(info.name)
        for name in getattr(mod, "__all__", []):
            obj = getattr(mod, name)
            if inspect.isfunction(obj) or inspect.isclass(obj):
                if obj.__module__ == info.name:  # defined here, not re-exported
                    yield info.name, name, obj


OBJECTS = list(public_objects())


def test_found_public_objects():
    names = {n for _, n, _ in OBJECTS}
    assert {"ModelPair", "InstructionPrompt", "PairCache", "tokenize_prompt"} <= names


@pytest.mark.parametrize("mod,name,obj", OBJECTS, ids=[f"{m}.{n}" for m, n, _ in OBJECTS])
def test_documented(mod, name, obj):
    doc = inspect.getdoc(obj) or ""
    assert doc, f"{mod}.{name} has no docstring"
    if inspect.isfunction(obj) or (inspect.isclass(obj) and not issubclass(obj, Exception)):
        has_example = "Example" in doc or (
            inspect.isclass(obj)
            and any("Example" in (inspect.getdoc(m) or "") for _, m in inspect.getmembers(obj))
        )
        assert has_example, f"{mod}.{name}: docstring has no example"
    assert re.search(rf"\b{re.escape(name)}\b", DOCS), f"{mod}.{name} has no section in docs/"
