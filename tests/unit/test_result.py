"""The Result base: save/load by field type, atomic saves, integrity on load (issues 13 and 14)."""

from __future__ import annotations

import json
import math
import os
import signal
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from faults import save_killed_at  # tests/faults.py (shared with tools/reliability_probes.py)

import shiftlens
from shiftlens import ShiftlensError
from shiftlens.io import MANIFEST, atomic_write_text, verify_directory
from shiftlens.prompts import InstructionPrompt
from shiftlens.result import Result, make_meta, result_kinds


@dataclass(eq=False, repr=False)
class DemoResult(Result):
    """A Result exercising every saveable field type."""

    frame: pd.DataFrame
    mats: dict[str, list[Any]]
    masks: list[torch.Tensor]
    prompt: InstructionPrompt
    pairs: dict[Any, float]
    arr: np.ndarray
    labels: tuple[str, ...] = ()
    series: pd.Series | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        return self.frame.copy()

    def summary(self) -> dict[str, Any]:
        return {"n": len(self.frame), "sentence": f"{len(self.frame)} rows of demo values."}

    def plot(self, **opts: Any) -> Any:
        from shiftlens.viz.style import new_figure

        fig, ax = new_figure()
        ax[0, 0].plot(self.frame["v"].fillna(0).to_numpy())
        return fig

    def validate(self) -> None:
        if len(self.masks) != len(self.frame):
            raise ShiftlensError(f"{len(self.masks)} masks for {len(self.frame)} rows")


def make(n: int = 2, seed: int = 0) -> DemoResult:
    g = torch.Generator().manual_seed(seed)
    return DemoResult(
        frame=pd.DataFrame({"id": [f"p{i}" for i in range(n)],
                            "v": [float("nan") if i == 1 else 0.5 * i for i in range(n)],
                            "words": [["a", "b"][: i % 2 + 1] for i in range(n)]}),
        mats={"base": [torch.randn(2, 3, generator=g) if i != 1 else None for i in range(n)],
              "tuned": [torch.tensor([float("nan"), float(i)]) for i in range(n)]},
        masks=[torch.tensor([True, False][: 1 + i % 2]) for i in range(n)],
        prompt=InstructionPrompt("Sort: b a", instruction="Sort:", id="p"),
        pairs={(1, 2): 0.5, "x": float("inf"), 3: -1.0},
        arr=np.arange(6, dtype=np.int16).reshape(2, 3),
        labels=("a", "b"),
        series=pd.Series([1.0, 2.0], name="s"),
        meta=make_meta(models={"base": "b", "tuned": "t"}, seed=seed, params={"k": (1, 2)}),
    )


def test_round_trip_every_field_type(tmp_path):
    r = make()
    d = r.save(tmp_path / "r")
    back = shiftlens.load(d)
    assert type(back) is DemoResult and r.equals(back), r.differences(back)
    assert back.pairs[(1, 2)] == 0.5 and back.pairs[3] == -1.0 and math.isinf(back.pairs["x"])
    assert back.meta["params"]["k"] == (1, 2) and back.labels == ("a", "b")
    assert back.mats["base"][1] is None and back.arr.dtype == np.int16
    assert DemoResult.load(d).equals(r)
    assert result_kinds()["DemoResult"] is DemoResult
    # a second save replaces the first atomically
    r2 = make(3, seed=1)
    r2.save(d)
    assert shiftlens.load(d).equals(r2) and not shiftlens.load(d).equals(r)
    assert make().differences(make(3)) != []


def test_save_refuses_what_it_cannot_write_and_what_it_did_not_write(tmp_path):
    r = make()
    r.meta["bad"] = object()
    with pytest.raises(ShiftlensError, match="cannot save 'meta/bad'"):
        r.save(tmp_path / "x")
    assert not (tmp_path / "x").exists() and not list(tmp_path.iterdir())
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ShiftlensError, match="not a shiftlens result directory"):
        make().save(mine)
    assert (mine / "notes.txt").read_text() == "keep me"
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ShiftlensError, match="not a shiftlens result directory"):
        make().save(f)


@pytest.mark.parametrize("damage, match", [
    ("delete-tensors", "tensors.safetensors is missing"),
    ("truncate-tensors", "tensors.safetensors has .* bytes"),
    ("edit-json", "result.json does not match its SHA-256"),
    ("truncate-parquet", r"frame0.parquet has .* bytes"),
    ("add-file", "not listed in manifest.json"),
    ("delete-manifest", "manifest.json missing"),
    ("bad-manifest", "manifest.json is unreadable"),
    ("forged-tensors", "tensor .* has shape"),
    ("forged-n", "1 masks for 2 rows"),
])
def test_damaged_results_are_refused_naming_the_problem(tmp_path, damage, match):
    d = make().save(tmp_path / "r")
    man_path = d / MANIFEST
    man = json.loads(man_path.read_text())
    if damage == "delete-tensors":
        (d / "tensors.safetensors").unlink()
    elif damage == "truncate-tensors":
        b = (d / "tensors.safetensors").read_bytes()
        (d / "tensors.safetensors").write_bytes(b[:-9])
    elif damage == "edit-json":
        t = (d / "result.json").read_text()
        (d / "result.json").write_text(t.replace('"p0"', '"q0"') if '"p0"' in t else
                                       t.replace("Sort", "Tros", 1))
    elif damage == "truncate-parquet":
        b = (d / "frame0.parquet").read_bytes()
        (d / "frame0.parquet").write_bytes(b[: len(b) // 2])
    elif damage == "add-file":
        (d / "extra.bin").write_bytes(b"x")
    elif damage == "delete-manifest":
        man_path.unlink()
    elif damage == "bad-manifest":
        man_path.write_text("{not json")
    elif damage in ("forged-tensors", "forged-n"):
        # a consistent-looking forgery: rewrite a file AND its manifest entry
        from shiftlens.io import file_digest

        if damage == "forged-tensors":
            key = next(k for k in man["record"]["tensors"] if k.startswith("masks"))
            man["record"]["tensors"][key]["shape"] = [7]
        else:
            rj = json.loads((d / "result.json").read_text())
            rj["fields"]["masks"] = rj["fields"]["masks"][:1]
            (d / "result.json").write_text(json.dumps(rj))
            man["files"]["result.json"] = {"bytes": (d / "result.json").stat().st_size,
                                           "sha256": file_digest(d / "result.json")}
        man_path.write_text(json.dumps(man))
    with pytest.raises(ShiftlensError, match=match) as e:
        shiftlens.load(d)
    assert str(d) in str(e.value) or damage in ("forged-n",)




@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_sigkill_at_every_write_step_never_leaves_a_mixed_result(tmp_path):
    """Issue 14: kill a 3-row save over a 2-row result at each step; the old result still loads
    whole, or the new one does; never old pieces with new ones."""
    old, new = make(2), make(3, seed=1)
    d = tmp_path / "r"
    outcomes = []
    for k in range(1, 80):
        old.save(d)
        status = save_killed_at(k, new, d)
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        assert killed or (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0), status
        try:
            got = shiftlens.load(d)
        except ShiftlensError:
            outcomes.append("error")
        else:
            assert got.equals(old) or got.equals(new), got.differences(old)
            outcomes.append("old" if got.equals(old) else "new")
        if not killed:
            break
    else:
        pytest.fail("the save never completed")
    assert outcomes[-1] == "new" and outcomes.count("old") >= 5
    assert set(outcomes) <= {"old", "new"}  # with an atomic exchange no step leaves nothing
    # the stale temporary directories a SIGKILL leaves behind do not disturb later saves
    new.save(d)
    assert shiftlens.load(d).equals(new)


def test_atomic_write_text_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    f = tmp_path / "p.jsonl"
    atomic_write_text(f, "old\n")
    real = os.replace

    def boom(a, b):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(ShiftlensError, match="No space left"):
        atomic_write_text(f, "new\n")
    monkeypatch.setattr(os, "replace", real)
    assert f.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["p.jsonl"]


def test_repr_html_and_show(tmp_path):
    r = make()
    assert repr(r).startswith("DemoResult(b -> t;") and len(repr(r)) <= 200
    html = r._repr_html_()
    assert "2 rows of demo values." in html and "<img" in html and "<table" in html
    fig = r.show(tmp_path / "f.svg")
    assert (tmp_path / "f.svg").read_text().startswith("<?xml")
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_unknown_kind_and_manifest_only(tmp_path):
    d = make().save(tmp_path / "r")
    verify_directory(d, "DemoResult")
    rj = json.loads((d / "result.json").read_text())
    assert rj["kind"] == "DemoResult"
    with pytest.raises(ShiftlensError, match="holds a 'DemoResult', not a 'Other'"):
        verify_directory(d, "Other")
    with pytest.raises(ShiftlensError, match="does not exist"):
        shiftlens.load(tmp_path / "nothing")
