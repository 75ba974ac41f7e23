"""The weight-delta lens: definitions against independent computations, and a planted rank-1 change
it must find exactly."""

from __future__ import annotations

import math
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from shiftlens import ModelPair, ShiftlensError
from shiftlens.lenses.weight_delta import (
    WeightReader,
    delta_singular_values,
    effective_rank,
    energy_share,
    token_energy,
    vocab_zscores,
    weight_delta,
)
from shiftlens.lenses.weight_delta import core as wd_core
from shiftlens.weights import unembedding, weight_source


def test_singular_values_equal_svdvals_of_the_difference(tiny_dirs):
    base, tuned = tiny_dirs("llama")
    res = weight_delta(base, tuned, r=3, progress=False)
    wb, wt = load_file(str(base / "model.safetensors")), load_file(str(tuned / "model.safetensors"))
    mats = [k for k, v in wb.items() if v.dim() == 2]
    assert sorted(res.singular_values) == sorted(mats)
    frame = res.to_frame().set_index("name")
    for k in mats:
        d = wt[k].double() - wb[k].double()
        s = torch.linalg.svdvals(d)
        torch.testing.assert_close(res.singular_values[k], s, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(delta_singular_values(wb[k], wt[k]), s)
        row = frame.loc[k]
        assert math.isclose(row.relative_norm, float(d.norm() / wb[k].double().norm()),
                            rel_tol=1e-9)
        p = s / s.sum()
        assert math.isclose(row.effective_rank, math.exp(float(-(p * p.log()).sum())),
                            rel_tol=1e-9)
        assert math.isclose(row.energy_top_r, float((s[:3] ** 2).sum() / (s ** 2).sum()),
                            rel_tol=1e-9)


def test_spectrum_formulas():
    assert effective_rank(torch.tensor([1.0, 0.0, 0.0])) == 1.0
    assert effective_rank(torch.ones(7)) == pytest.approx(7.0)
    assert math.isnan(effective_rank(torch.zeros(3)))
    assert energy_share(torch.tensor([2.0, 1.0, 1.0]), 1) == pytest.approx(4 / 6)
    u = torch.linalg.qr(torch.randn(10, 3, dtype=torch.float64))[0]
    s = torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)
    e = token_energy(u, s)
    torch.testing.assert_close(e, ((u * s) ** 2).sum(1))  # the rows' squared norms of U S
    z = vocab_zscores(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0, -9.0, 0.5]] * 2))
    assert int(z.argmax()) == 2 and float(z.mean()) == pytest.approx(0.0, abs=1e-12)


def test_gram_path_equals_the_direct_svd(monkeypatch):
    g = torch.Generator().manual_seed(0)
    wb, wt = torch.randn(40, 12, generator=g), torch.randn(40, 12, generator=g)
    direct = delta_singular_values(wb, wt)
    u1, s1, v1 = wd_core.top_directions(wt.double() - wb.double(), 3)
    monkeypatch.setattr(wd_core, "_DIRECT", 10)
    torch.testing.assert_close(delta_singular_values(wb, wt), direct, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(delta_singular_values(wb.T, wt.T), direct, rtol=1e-9, atol=1e-10)
    u2, s2, v2 = wd_core.top_directions(wt.double() - wb.double(), 3)
    torch.testing.assert_close(s1, s2)
    # singular vectors agree up to sign
    torch.testing.assert_close((u1 * u2).sum(0).abs(), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close((v1 * v2).sum(1).abs(), torch.ones(3, dtype=torch.float64))


@pytest.fixture(scope="module")
def planted(tiny_dirs, tmp_path_factory):
    """The base with one rank-1 edit to layer 0's down_proj that writes token 7's unembedding
    direction: the lens must find that matrix, rank 1, and token 7."""
    base, _ = tiny_dirs("llama")
    out = tmp_path_factory.mktemp("planted") / "tuned"
    shutil.copytree(base, out)
    w = load_file(str(base / "model.safetensors"))
    w_u = unembedding(weight_source(base)).double()  # [d_model, vocab], final norm folded
    target = 7
    u = w_u[:, target] - w_u.mean(1)
    u = u / u.norm()
    v = torch.randn(w["model.layers.0.mlp.down_proj.weight"].shape[1], dtype=torch.float64,
                    generator=torch.Generator().manual_seed(3))
    name = "model.layers.0.mlp.down_proj.weight"
    w[name] = (w[name].double() + 0.5 * torch.outer(u, v / v.norm())).float()
    save_file(w, str(out / "model.safetensors"), metadata={"format": "pt"})
    return base, out, name, target


def test_planted_rank_one_change_is_found(planted):
    base, tuned, name, target = planted
    res = weight_delta(base, tuned, r=4, progress=False)
    f = res.to_frame().set_index("name")
    changed = f[f.norm_delta > 0]
    assert list(changed.index) == [name]
    # rank 1 up to the float32 rounding of the stored weights
    sv = res.singular_values[name]
    assert float(sv[1] / sv[0]) < 1e-5
    assert changed.loc[name, "effective_rank"] == pytest.approx(1.0, abs=1e-3)
    assert changed.loc[name, "energy_top_r"] == pytest.approx(1.0)
    assert changed.loc[name, "side"] == "write"
    assert res.singular_values[name][0] == pytest.approx(0.5, rel=1e-5)
    assert int(res.top_tokens(1)[0]) == target
    d = res.directions[(res.directions.name == name) & (res.directions.direction == 0)]
    assert int(d.sort_values("rank").token_id.iloc[0]) == target
    # unchanged matrices: no change, no direction, no token score from them
    assert math.isnan(f.loc["model.layers.1.mlp.down_proj.weight", "effective_rank"])


def test_files_and_loaded_models_agree(tiny_dirs, planted):
    base, tuned = tiny_dirs("llama")
    from_files = weight_delta(base, tuned, r=2, progress=False)
    pair = ModelPair.from_pretrained(base, tuned)
    from_pair = weight_delta(pair, r=2, progress=False)  # read from the pair's own files
    bridged = weight_delta(pair, r=2, from_files=False, progress=False)  # the loaded weights
    reader = WeightReader(pair.tuned)
    for name in reader.names():
        assert torch.equal(reader.read(name), WeightReader(tuned).read(name)), name
    for other in (from_pair, bridged):
        a = other.to_frame().set_index("name").sort_index()
        b = from_files.to_frame().set_index("name").sort_index()
        assert a.round(8).equals(b.round(8))
        for k, s in from_files.singular_values.items():
            torch.testing.assert_close(other.singular_values[k], s)


def test_gpt2_conv1d_layout(tiny_dirs):
    base, tuned = tiny_dirs("gpt2")
    r = WeightReader(base)
    lay = {n: r.layout(n) for n in r.names()}
    proj = [n for n in lay if n.endswith("attn.c_proj.weight")][0]
    fc = [n for n in lay if n.endswith("mlp.c_fc.weight")][0]
    assert lay[proj][2:] == ("write", True) and lay[fc][2:] == ("read", True)
    res = weight_delta(base, tuned, r=2, progress=False)
    assert res.to_frame().relative_norm.notna().all()
    wb, wt = load_file(str(base / "model.safetensors")), load_file(str(tuned / "model.safetensors"))
    key = [k for k in res.singular_values if k.endswith("mlp.c_fc.weight")][0]
    torch.testing.assert_close(res.singular_values[key],
                               torch.linalg.svdvals(wt[key].double() - wb[key].double()))


def test_mismatched_models_are_refused(tiny_dirs):
    with pytest.raises(ShiftlensError, match="matrices differ"):
        weight_delta(tiny_dirs("llama")[0], tiny_dirs("gpt2")[0], progress=False)
    with pytest.raises(ShiftlensError, match="ModelPair"):
        weight_delta(object(), progress=False)
    res = weight_delta(*tiny_dirs("llama"), r=2, progress=False)
    with pytest.raises(ShiftlensError, match="source"):
        res.top_tokens(3, source="bias")
