"""Nothing silent, nothing noisy (issue 15.6): warnings are captured and listed once in the log.

A probe lens (registered for the test) raises a dependency FutureWarning on every prompt, a
ShiftlensWarning and a transformers log record; the report lists each once with its count, the
terminal shows none of them, and the Python API re-issues shiftlens' own warning once.
"""

from __future__ import annotations

import json
import logging
import sys
import types
import warnings

import pytest

from shiftlens import ShiftlensWarning, default_prompts
from shiftlens.lenses import LensSpec, register_lens, unregister_lens
from shiftlens.report.log import CapturedLog, LogEntry, capture_warnings, nested


def _probe_section(ctx, sec):
    for _ in ctx.prompts_for("probe"):
        warnings.warn_explicit("`old_arg` is deprecated and will be removed in v6",
                               FutureWarning, "/venv/site-packages/transformers/x.py", 41)
    warnings.warn("2 prompts had no instruction tokens and were left out", ShiftlensWarning,
                  stacklevel=2)
    logging.getLogger("accelerate.utils.modeling").warning("Device 1 is not available")
    sec.n_prompts["probe"] = len(ctx.prompts_for("probe"))
    sec.findings.append(__import__("shiftlens.lenses", fromlist=["Finding"]).Finding(
        "The probe ran.", key="The probe ran."))


@pytest.fixture
def probe_lens():
    mod = types.ModuleType("_shiftlens_probe_lens")
    mod.section = _probe_section
    sys.modules[mod.__name__] = mod
    register_lens(LensSpec("probe", "Probe lens", "Raises warnings.", f"{mod.__name__}:section",
                           limits={"probe": 3}, order=999), replace=True)
    yield "probe"
    unregister_lens("probe")
    sys.modules.pop(mod.__name__, None)


@pytest.fixture
def transformers_at_warning():
    """A model loaded earlier in the session may have set transformers' logger to ERROR
    (TransformerLens does): the capture is tested at transformers' default level."""
    tl = logging.getLogger("transformers")
    level = tl.level
    tl.setLevel(logging.WARNING)
    yield
    tl.setLevel(level)


def test_capture_counts_repeats_nests_and_restores_loggers(transformers_at_warning):
    tl = logging.getLogger("transformers")
    handlers, propagate = list(tl.handlers), tl.propagate
    seen = []
    with capture_warnings() as outer:
        assert nested()
        with capture_warnings(echo=seen.append) as inner:
            for _ in range(3):
                warnings.warn_explicit("dup", UserWarning, "/x/site-packages/pkg/m.py", 7)
            warnings.warn("ours", ShiftlensWarning, stacklevel=1)
            logging.getLogger("transformers.modeling_utils").warning("loaded %d shards", 2)
    assert not nested()
    assert [e.line() for e in inner.entries] == [  # warn_explicit: each repeat is raised
        "UserWarning (pkg/m.py:7): dup [x3]", f"ShiftlensWarning ({inner.entries[1].source}): ours",
        "WARNING (transformers.modeling_utils): loaded 2 shards"]
    assert [e.origin for e in inner.entries] == ["dependency", "shiftlens", "dependency"]
    assert [e.message for e in outer.entries] == [e.message for e in inner.entries]  # nested
    assert seen == inner.entries
    assert tl.handlers == handlers and tl.propagate == propagate
    log = CapturedLog()
    for _ in range(3):
        log.add(LogEntry("warning", "UserWarning", "dup", "pkg/m.py:7", "dependency"))
    assert len(log) == 1 and log.entries[0].count == 3 and log.entries[0].line().endswith("[x3]")


def test_report_lists_warnings_once_and_prints_none(llama_pair, tmp_path, probe_lens, capfd):
    from shiftlens.report import build_report

    capfd.readouterr()
    with pytest.warns(ShiftlensWarning, match="left out .listed in the report's log.") as rec:
        rep = build_report(llama_pair, default_prompts()[:5], tmp_path / "r", lenses="probe",
                           selfcheck="skip", progress=False)
    assert len([w for w in rec if issubclass(w.category, ShiftlensWarning)]) == 1
    err = capfd.readouterr().err
    assert "deprecated" not in err and "Device 1" not in err
    cats = {(e.category, e.origin): e for e in rep.log}
    dep = cats[("FutureWarning", "dependency")]
    assert dep.source == "transformers/x.py:41" and dep.message.startswith("`old_arg` is deprecated")
    assert ("ShiftlensWarning", "shiftlens") in cats and ("WARNING", "dependency") in cats
    m = json.loads(rep.metrics_path.read_text())
    assert [e["message"] for e in m["log"]] == [e.message for e in rep.log]
    html = rep.html_path.read_text()
    log_html = html[html.index('<section id="log">'):]
    assert log_html.count("is deprecated and will be removed in v6") == 1
    assert "From shiftlens" in log_html and "From dependencies" in log_html
    assert '<a href="#log">Log</a>' in html


def test_empty_log_says_so(llama_pair, tmp_path, monkeypatch):
    from shiftlens.report import build_report

    def quiet(ctx, sec):
        sec.note = "quiet"

    mod = types.ModuleType("_shiftlens_quiet_lens")
    mod.section = quiet
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    register_lens(LensSpec("quiet", "Quiet", "Says nothing.", f"{mod.__name__}:section",
                           order=998), replace=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            rep = build_report(llama_pair, default_prompts()[:2], tmp_path / "q", lenses="quiet",
                               selfcheck="skip", progress=False)
    finally:
        unregister_lens("quiet")
    assert rep.log == [] and "No warnings or dependency log messages" in rep.html_path.read_text()


@pytest.mark.filterwarnings("default")
def test_cli_keeps_warnings_off_stderr_unless_verbose(capsys, probe_lens, tiny_dirs, tmp_path):
    from shiftlens import save_prompts
    from shiftlens.cli import main

    base, tuned = tiny_dirs("llama")
    pf = save_prompts(default_prompts()[:4], tmp_path / "p.jsonl")
    args = ["report", str(base), str(tuned), "--prompts", str(pf), "--lenses", "probe",
            "--skip-checks", "--no-progress", "--no-estimate"]
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert "log: 3 warning(s) (1 from shiftlens, 2 from dependencies), listed in the report's Log " \
           "section; --verbose prints them" in out
    assert main(["--verbose", *args, "--out", str(tmp_path / "b")]) == 0
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 3 and all(ln.startswith("shiftlens: warning: ") for ln in lines)
    assert "FutureWarning (transformers/x.py:41)" in err
