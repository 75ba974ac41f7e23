"""The command line starts fast (issue 15.7): --help, --version and `lenses` import no torch.

Counted with ``python -X importtime`` in a fresh interpreter (every module imported is one line);
the bound is generous (measured: 166 modules, 0.2 s CPU, where torch alone is over 1000), so the
test fails only when something heavy is imported again, not when the machine is slow.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

#: Modules imported by `shiftlens --help` at most (measured 166 on Python 3.11).
MAX_MODULES = 400
HEAVY = ("torch", "numpy", "pandas", "transformers", "transformer_lens", "matplotlib", "scipy",
         "circuitsvis", "safetensors", "jaxtyping")


def imported(*argv: str) -> tuple[list[str], subprocess.CompletedProcess]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONWARNINGS", None)
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "shiftlens", *argv],
                       capture_output=True, text=True, env=env, timeout=120)
    mods = [m.group(1) for m in re.finditer(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)\s*$",
                                            r.stderr, flags=re.M)]
    return mods, r


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["lenses"], ["demo", "--help"],
                                  ["report", "--help"], ["attribute", "--help"],
                                  ["run", "--help"], ["merge", "--help"]])
def test_startup_imports_nothing_heavy(argv):
    mods, r = imported(*argv)
    assert r.returncode == 0, r.stderr[-2000:]
    assert mods, "no -X importtime output"
    heavy = sorted({m.split(".")[0] for m in mods} & set(HEAVY))
    assert not heavy, f"`shiftlens {' '.join(argv)}` imports {heavy}"
    assert len(mods) <= MAX_MODULES, f"{len(mods)} modules imported"


def test_lenses_listing_without_import_agrees_with_the_import_check(capsys):
    from shiftlens.cli import main

    assert main(["lenses"]) == 0
    quick = capsys.readouterr().out
    assert main(["lenses", "--check"]) == 0
    checked = capsys.readouterr().out
    line = re.compile(r"^(\w+)\s+(available|NOT AVAILABLE)", flags=re.M)
    assert line.findall(quick) == line.findall(checked)
    from shiftlens.lenses import registered_lenses

    assert [n for n, _ in line.findall(quick)] == list(registered_lenses())  # every lens, once
    assert len({m.start(2) - m.start() for m in line.finditer(quick)}) == 1  # one column
    assert "judged from the source" in quick and "judged" not in checked


def test_lenses_listing_names_a_missing_function(capsys, monkeypatch, tmp_path):
    """The source check finds a section function that is not defined, without importing."""
    from shiftlens.lenses import LensSpec, register_lens, unregister_lens

    pkg = tmp_path / "probe_pkg_for_lenses"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "section.py").write_text("import torch\n\ndef other():\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    register_lens(LensSpec("probe_listing", "Probe", "x", "probe_pkg_for_lenses.section:section",
                           order=997), replace=True)
    try:
        from shiftlens.cli import main

        assert main(["lenses"]) == 0
    finally:
        unregister_lens("probe_listing")
    out = capsys.readouterr().out
    assert re.search(r"^probe_listing\s+NOT AVAILABLE", out, flags=re.M)
    assert "probe_pkg_for_lenses.section does not define 'section'" in out
    assert "probe_pkg_for_lenses.section" not in sys.modules  # judged without importing
