"""The worked example of docs/adding-a-lens.md: one file registers a lens that the report, the
command line, ``shiftlens lenses`` and ``shiftlens.load`` then know (issue 13)."""

from __future__ import annotations

import importlib
import json
import re
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = ROOT / "examples" / "lens_plugin"


@pytest.fixture(scope="module")
def norms_lens():
    from shiftlens.lenses import registered_lenses
    from shiftlens.lenses.registry import unregister_lens

    sys.path.insert(0, str(PLUGIN))
    try:
        mod = importlib.import_module("shiftlens_norms")
        assert "norms" in registered_lenses()
        yield mod
    finally:
        unregister_lens("norms")
        sys.modules.pop("shiftlens_norms", None)
        sys.path.remove(str(PLUGIN))


@pytest.fixture(scope="module")
def pair():
    from shiftlens.zoo import toy_pair

    return toy_pair()


@pytest.fixture(scope="module")
def prompts():
    from shiftlens.zoo import toy_prompts

    return toy_prompts()[:4]


def test_docs_show_the_file_as_it_is():
    """The page's code block is the example file, character for character (no drift)."""
    doc = (ROOT / "docs" / "adding-a-lens.md").read_text(encoding="utf-8")
    m = re.search(r"<!-- begin:shiftlens_norms.py -->\n```python\n(.*?)```\n"
                  r"<!-- end:shiftlens_norms.py -->", doc, re.S)
    assert m, "docs/adding-a-lens.md lacks the marked copy of shiftlens_norms.py"
    assert m.group(1) == (PLUGIN / "shiftlens_norms.py").read_text(encoding="utf-8")


def test_norms_equal_the_hugging_face_hidden_states(norms_lens, pair, prompts):
    """Independent computation: the HF model's own hidden states after each block (all but the
    last, to which HF applies the final norm)."""
    from transformers import AutoModelForCausalLM

    from shiftlens.zoo import pair_dirs

    res = norms_lens.norms(pair, prompts)
    n_layers = pair.cfg.n_layers
    assert res.base.shape == res.tuned.shape == (len(prompts), n_layers)
    for role, d in zip(("base", "tuned"), pair_dirs()):
        hf = AutoModelForCausalLM.from_pretrained(d).eval()
        for i, p in enumerate(prompts):
            ids = pair.tokenize(p).tokens[None]
            with torch.no_grad():
                hs = hf(ids, output_hidden_states=True).hidden_states
            want = torch.stack([hs[k + 1][0].norm(dim=-1).mean() for k in range(n_layers - 1)])
            got = getattr(res, role)[i, : n_layers - 1]
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    df = res.to_frame()
    assert df.ratio.tolist() == pytest.approx((df.tuned / df.base).tolist())


def test_report_runs_the_registered_lens(norms_lens, pair, prompts, tmp_path):
    import shiftlens
    from shiftlens.report import build_report

    rep = build_report(pair, prompts, tmp_path / "r", lenses=["norms"], progress=False,
                       selfcheck="skip")
    sec = {s.name: s for s in rep.sections}["norms"]
    assert sec.status == "ok", sec
    html = (tmp_path / "r" / "report.html").read_text(encoding="utf-8")
    assert "Residual norms: did tuning rescale the residual stream?" in html
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text(encoding="utf-8"))
    text = json.dumps(metrics)
    assert "The residual stream's norm changes most at layer" in text
    back = shiftlens.load(tmp_path / "r" / "results" / "norms")
    assert type(back).__name__ == "NormsResult"
    assert torch.equal(back.tuned, norms_lens.norms(pair, prompts).tuned)


def test_cli_lists_and_runs_the_registered_lens(norms_lens, capsys):
    from shiftlens import cli

    assert cli.main(["lenses"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^norms\s+available\s+Residual norms", out, re.M), out
    assert cli.main(["norms", "toy"]) == 0
    out = capsys.readouterr().out
    assert out.split("\n")[0].split() == ["layer", "base", "tuned", "ratio", "p"]
    assert len([ln for ln in out.splitlines() if ln.strip()]) == 1 + 4  # header + 4 layers
