"""Crosscoder lens, tensors and training: BatchTopK, Latent Scaling, classification, a planted
dictionary, bit-identical resume.

Every definition is checked against an independent computation or a known truth: BatchTopK
against a sort, the closed-form beta against a least-squares solver and against the explicit
targets, the classes against hand-built crosscoders whose artefacts are known, and training
against a planted dictionary of shared and model-specific directions.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import shiftlens.lenses.crosscoder  # noqa: F401 - registers the lens
from shiftlens.errors import ShiftlensError
from shiftlens.lenses.crosscoder.compare import latent_statistics
from shiftlens.lenses.crosscoder.core import (
    Crosscoder,
    CrosscoderConfig,
    LatentThresholds,
    batch_topk,
    classify_latents,
    closed_form_beta,
    logit_lens_directions,
    relative_norm,
)
from shiftlens.lenses.crosscoder.store import InMemoryActivations
from shiftlens.lenses.crosscoder.train import (
    latest_checkpoint,
    load_crosscoder,
    save_crosscoder,
    train_crosscoder,
)


# ============================================================================ BatchTopK
@pytest.mark.parametrize("batch,n_latents,k", [(1, 5, 2), (7, 13, 3), (64, 32, 4), (16, 8, 8)])
def test_batch_topk_keeps_exactly_k_times_batch_largest(batch, n_latents, k):
    g = torch.Generator().manual_seed(batch * 100 + k)
    s = torch.rand(batch, n_latents, generator=g) + 0.01  # all positive, distinct
    mask = batch_topk(s, k)
    assert int(mask.sum()) == k * batch
    cutoff = s.flatten().sort(descending=True).values[k * batch - 1]
    assert torch.equal(mask, s >= cutoff)  # exactly the k*batch largest of the whole batch


def test_batch_topk_is_per_batch_not_per_example():
    s = torch.tensor([[9.0, 8.0, 7.0], [0.1, 0.2, 0.3]])
    mask = batch_topk(s, 1)  # 2 kept in all: both from the first example
    assert mask.tolist() == [[True, True, False], [False, False, False]]


def test_batch_topk_never_keeps_zeros():
    s = torch.zeros(4, 6)
    s[0, 1] = 1.0
    assert int(batch_topk(s, 2).sum()) == 1


# ============================================================================ the model
def test_crosscoder_shapes_modes_and_initialisation():
    cc = Crosscoder(8, 16, 3, seed=1, init_norm=0.2)
    assert torch.allclose(cc.decoder_norms(), torch.full((2, 16), 0.2))
    assert torch.equal(cc.W_enc, cc.W_dec.transpose(1, 2))  # encoder starts as the transpose
    x = torch.randn(10, 2, 8)
    f_dense = cc.encode(x, mode="dense")
    f_batch = cc.encode(x, mode="batch")
    assert int((f_batch > 0).sum()) <= 3 * 10
    assert torch.equal(f_batch[f_batch > 0], f_dense[f_batch > 0])  # kept values unchanged
    with pytest.raises(ShiftlensError, match="threshold is not fitted"):
        cc.encode(x, mode="threshold")
    cc.threshold.fill_(0.05)
    f_th = cc.encode(x, mode="threshold")
    assert torch.equal(f_th > 0, cc.scores(f_dense) > 0.05)
    xh = cc.decode(f_th)
    manual = torch.stack([f_th @ cc.W_dec[m] + cc.b_dec[m] for m in range(2)], 1)
    assert torch.allclose(xh, manual, atol=1e-6)
    assert Crosscoder(8, 16, 3, seed=1).tensors()["W_dec"].equal(
        Crosscoder(8, 16, 3, seed=1).tensors()["W_dec"])
    with pytest.raises(ShiftlensError, match="mode must be"):
        cc.encode(x, mode="topk")


def test_config_checks_and_schedule():
    with pytest.raises(ShiftlensError, match="k"):
        CrosscoderConfig(n_latents=4, k=5)
    with pytest.raises(ShiftlensError, match="no fields"):
        CrosscoderConfig().replace(kk=1)
    cfg = CrosscoderConfig(steps=10, warmup_steps=2, decay_fraction=0.5, lr=2.0)
    assert [cfg.lr_at(s) for s in range(10)] == [1.0, 2.0, 2.0, 2.0, 2.0, 2.0, 1.6, 1.2,
                                                  0.8, 0.4]
    assert CrosscoderConfig.from_dict(cfg.to_dict()) == cfg


def test_relative_norm_bins():
    norms = torch.tensor([[1.0, 0.0, 2.0, 1.0, 0.0], [0.0, 3.0, 1.0, 1.0, 0.0]])
    d = relative_norm(norms)
    assert d[:4].tolist() == [0.0, 1.0, 0.25, 0.5] and math.isnan(float(d[4]))


# ============================================================================ Latent Scaling
def test_closed_form_beta_equals_least_squares():
    g = torch.Generator().manual_seed(0)
    n, d = 50, 6
    f = torch.rand(n, generator=g, dtype=torch.float64)
    f[::3] = 0.0  # inactive rows count for nothing
    u = torch.randn(d, generator=g, dtype=torch.float64)
    y = 0.7 * f[:, None] * u + 0.3 * torch.randn(n, d, generator=g, dtype=torch.float64)
    design = (f[:, None] * u).reshape(-1, 1)  # the model beta * f_i * u, flattened over (i, d)
    lstsq = torch.linalg.lstsq(design, y.reshape(-1, 1)).solution.item()
    assert closed_form_beta(f, u, y) == pytest.approx(lstsq, rel=1e-10)
    assert math.isnan(closed_form_beta(torch.zeros(n), u, y))


def _handmade():
    """Four latents whose Latent Scaling verdicts are known (d_model 6, scale 1, threshold 0).

    0: tuned-only by norm, but the base carries its direction at half strength (complete
       shrinkage: ν_ε = 0.5).
    1: tuned-only, the base carries nothing (ν_ε = ν_r = 0).
    2 and 3: one concept present in both models, split into a tuned-only latent (2) and a
       base-only latent (3) that fire together (latent decoupling: ν_r = 1).
    4: never fires (dead).
    """
    e = torch.eye(6)
    cc = Crosscoder(6, 5, 2, seed=0)
    with torch.no_grad():
        cc.W_enc.zero_()
        cc.W_dec.zero_()
        cc.b_dec.zero_()
        cc.b_enc.zero_()
        cc.W_enc[1, :, 0] = e[0]
        cc.W_dec[1, 0] = e[0]
        cc.W_enc[1, :, 1] = e[1]
        cc.W_dec[1, 1] = e[1]
        cc.W_enc[1, :, 2] = e[2]
        cc.W_dec[1, 2] = e[2]
        cc.W_enc[0, :, 3] = e[2]
        cc.W_dec[0, 3] = e[2]
        cc.W_enc[1, :, 4] = e[5]
        cc.W_dec[1, 4] = e[5]  # direction 5 never occurs
        cc.threshold.fill_(0.0)
    g = torch.Generator().manual_seed(3)
    rows = []
    for i in range(300):
        f = float(torch.rand((), generator=g)) + 0.5
        x = torch.zeros(2, 6)
        kind = i % 3
        if kind == 0:
            x[1, 0], x[0, 0] = f, 0.5 * f
        elif kind == 1:
            x[1, 1] = f
            x[0, 3] = f  # the base does something unrelated there
        else:
            x[0, 2] = x[1, 2] = f
        rows.append(x)
    return cc, torch.stack(rows)


def test_latent_statistics_betas_equal_the_definition_on_explicit_targets():
    cc, acts = _handmade()
    src = InMemoryActivations(acts, shard_rows=64)
    st = latent_statistics(cc, src, batch_size=37, progress=False)
    with torch.no_grad():
        x = cc.normalize(acts)
        f = cc.encode(x)
        xh = cc.decode(f)
    own = (relative_norm(cc.decoder_norms().detach()) >= 0.5).long()
    for j in range(4):
        u = cc.W_dec[own[j], j].detach()
        for m in range(2):
            err = x[:, m] - xh[:, m] + f[:, j:j + 1] * cc.W_dec[m, j].detach()
            rec = xh[:, m] - cc.b_dec[m].detach()
            assert float(st.beta_err[m, j]) == pytest.approx(closed_form_beta(f[:, j], u, err),
                                                             abs=1e-9)
            assert float(st.beta_rec[m, j]) == pytest.approx(closed_form_beta(f[:, j], u, rec),
                                                             abs=1e-9)
    assert int(st.count[4]) == 0
    assert st.n_rows == 300


def test_latent_scaling_separates_real_from_artefact_tuned_only_latents():
    cc, acts = _handmade()
    st = latent_statistics(cc, InMemoryActivations(acts), progress=False)
    nu_err, nu_rec = st.ratios()
    assert float(nu_err[0]) == pytest.approx(0.5, abs=1e-9)  # half strength in the base
    assert float(nu_err[1]) == pytest.approx(0.0, abs=1e-9)
    assert float(nu_rec[1]) == pytest.approx(0.0, abs=1e-9)
    assert float(nu_rec[2]) == pytest.approx(1.0, abs=1e-9)  # carried by latent 3 in the base
    assert float(nu_rec[3]) == pytest.approx(1.0, abs=1e-9)
    delta = relative_norm(cc.decoder_norms().detach())
    norm_class, cls, reason = classify_latents(delta, nu_err, nu_rec, st.count > 0)
    assert norm_class == ["tuned_only", "tuned_only", "tuned_only", "base_only", "dead"]
    assert cls == ["shared", "tuned_only", "shared", "shared", "dead"]
    assert reason[0].startswith("complete shrinkage") and "0.50" in reason[0]
    assert reason[2].startswith("latent decoupling") and reason[3].startswith("latent decoupling")
    strict = classify_latents(delta, nu_err, nu_rec, st.count > 0, LatentThresholds(nu_max=0.6))
    assert strict[1][0] == "tuned_only"  # a looser threshold accepts the half-strength one


def test_classify_latents_bins():
    d = torch.tensor([0.05, 0.2, 0.45, 0.55, 0.65, 0.95, float("nan")])
    zero = torch.zeros(7)
    norm_class, cls, _ = classify_latents(d, zero, zero, torch.ones(7, dtype=torch.bool))
    assert norm_class == ["base_only", "other", "shared", "shared", "other", "tuned_only", "dead"]
    assert cls == norm_class
    undefined = classify_latents(d, torch.full((7,), float("nan")), zero,
                                 torch.ones(7, dtype=torch.bool))
    assert undefined[1][0] == "other" and "undefined" in undefined[2][0]


def test_logit_lens_directions_reads_through_the_unembedding():
    W_U = torch.randn(5, 11)
    u = torch.randn(3, 5)
    assert torch.allclose(logit_lens_directions(u, W_U), u @ W_U)
    centred = logit_lens_directions(u, W_U, center=True)
    assert torch.allclose(centred, (u - u.mean(-1, keepdim=True)) @ W_U, atol=1e-6)


# ============================================================================ training
def _planted(seed: int = 0, n: int = 8000):
    """Activations from a known dictionary in d_model = 16: 4 shared concepts (a different
    direction in each model, the same activation), 2 tuned-only and 2 base-only directions. A
    row holds at most one concept (60% of rows; activation 1-2), the rest are empty, so the
    decoder biases are pinned at 0 and BatchTopK's budget (k = 1) leaves no room to split a
    concept over two latents."""
    g = torch.Generator().manual_seed(seed)
    d = 16
    dirs = torch.linalg.qr(torch.randn(d, d, generator=g))[0].T  # orthonormal rows
    rot = torch.linalg.qr(torch.randn(d, d, generator=g))[0]
    shared_b = dirs[:4]
    shared_t = torch.nn.functional.normalize(shared_b + 0.5 * (shared_b @ rot), dim=-1)
    tuned_only, base_only = dirs[4:6], dirs[6:8]
    on = torch.nn.functional.one_hot(torch.randint(0, 8, (n,), generator=g), 8).bool()
    on &= (torch.rand(n, generator=g) < 0.6)[:, None]
    mag = (1 + torch.rand(n, 8, generator=g)) * on
    xb = mag[:, :4] @ shared_b + mag[:, 6:8] @ base_only
    xt = mag[:, :4] @ shared_t + mag[:, 4:6] @ tuned_only
    truth = dict(shared=(shared_b, shared_t), tuned_only=tuned_only, base_only=base_only)
    return torch.stack([xb, xt], 1), truth


def test_planted_dictionary_is_recovered_and_labelled():
    """The trained crosscoder finds every planted direction; Latent Scaling finds the
    model-specific ones absent from the other model (ν ≈ 0) and the shared ones present (ν > 0.5);
    the tuned-only ones, and only they, are classified tuned-only. (The same holds for seeds 0-3;
    what varies between seeds is the base-only latents' unused tuned decoder, which BatchTopK does
    not push to zero: their Δ ends between 0 and 0.46, so only Latent Scaling is asserted for
    them.)"""
    acts, truth = _planted()
    src = InMemoryActivations(acts, shard_rows=4000)
    cfg = CrosscoderConfig(n_latents=16, k=1, steps=400, batch_size=256, lr=1e-2,
                           warmup_steps=10, dead_steps=20, init_norm=0.1, log_every=50)
    cc = train_crosscoder(src, cfg, progress=False)
    assert cc.log[-1]["fvu_base"] < 0.02 and cc.log[-1]["fvu_tuned"] < 0.02
    st = latent_statistics(cc, src, progress=False)
    nu_err, nu_rec = st.ratios()
    alive = st.count > 0
    delta = relative_norm(cc.decoder_norms().detach())
    _, cls, _ = classify_latents(delta, nu_err, nu_rec, alive)
    W = cc.W_dec.detach()

    def match(role, v):
        cos = torch.nn.functional.cosine_similarity(W[role], v[None], dim=-1)
        cos[~alive] = -2.0
        j = int(cos.argmax())
        return j, float(cos[j])

    found_tuned = set()
    for v in truth["tuned_only"]:
        j, c = match(1, v)
        assert c > 0.95 and delta[j] >= 0.9, (j, c, float(delta[j]))
        assert abs(nu_err[j]) < 0.1 and abs(nu_rec[j]) < 0.1, (float(nu_err[j]), float(nu_rec[j]))
        assert cls[j] == "tuned_only"
        found_tuned.add(j)
    for v in truth["base_only"]:
        j, c = match(0, v)
        assert c > 0.95 and float(delta[j]) < 0.5, (j, c, float(delta[j]))
        assert abs(nu_err[j]) < 0.1 and abs(nu_rec[j]) < 0.1, (float(nu_err[j]), float(nu_rec[j]))
    shared_delta = []
    for vb, vt in zip(*truth["shared"]):
        j, c = match(0, vb)
        ct = float(torch.nn.functional.cosine_similarity(W[1, j], vt, dim=0))
        assert c > 0.75 and ct > 0.75, (j, c, ct)
        assert nu_err[j] > 0.5 and nu_rec[j] > 0.5, (float(nu_err[j]), float(nu_rec[j]))
        assert cls[j] != "tuned_only"
        shared_delta.append(float(delta[j]))
    assert min(float(delta[j]) for j in found_tuned) > max(shared_delta)
    assert {j for j, c in enumerate(cls) if c == "tuned_only"} == found_tuned  # no false ones


def test_training_is_seeded_and_refuses_too_little_data():
    acts = torch.randn(512, 2, 8)
    src = InMemoryActivations(acts)
    cfg = CrosscoderConfig(n_latents=16, k=2, steps=12, batch_size=64, log_every=4)
    a = train_crosscoder(src, cfg, progress=False)
    b = train_crosscoder(src, cfg, progress=False)
    c = train_crosscoder(src, cfg.replace(seed=1), progress=False)
    assert all(torch.equal(a.tensors()[k], b.tensors()[k]) for k in a.tensors())
    assert not torch.equal(a.W_dec, c.W_dec)
    assert [r["step"] for r in a.log] == [4, 8, 12]
    with pytest.raises(ShiftlensError, match="fewer than one batch"):
        train_crosscoder(InMemoryActivations(acts[:10]), cfg, progress=False)


def test_resume_is_bit_identical(tmp_path):
    """Training 2N steps equals training N, stopping, and resuming for N (streamed store)."""
    from shiftlens.lenses.crosscoder.store import ActivationStore, ActivationWriter

    g = torch.Generator().manual_seed(5)
    acts = torch.randn(1000, 2, 12, generator=g)
    with ActivationWriter(tmp_path / "acts", 12, shard_rows=300) as w:  # batches straddle shards
        for k in range(0, 1000, 170):
            w.add(acts[k:k + 170])
    store = ActivationStore(tmp_path / "acts")
    cfg = CrosscoderConfig(n_latents=20, k=3, steps=40, batch_size=64, checkpoint_every=10,
                           log_every=5, dead_steps=5, warmup_steps=4)
    full = train_crosscoder(store, cfg, out_dir=tmp_path / "a", progress=False)
    half = train_crosscoder(store, cfg, out_dir=tmp_path / "b", stop_at=20, progress=False)
    assert not math.isfinite(float(half.threshold))  # not finished: no threshold yet
    assert latest_checkpoint(tmp_path / "b").name == "step-0000020"
    assert not (tmp_path / "b" / "crosscoder").exists()
    with pytest.raises(ShiftlensError, match="holds checkpoints"):
        train_crosscoder(store, cfg, out_dir=tmp_path / "b", progress=False)
    with pytest.raises(ShiftlensError, match="another configuration"):
        train_crosscoder(store, cfg.replace(lr=2e-3), out_dir=tmp_path / "b", resume=True,
                         progress=False)
    resumed = train_crosscoder(store, cfg, out_dir=tmp_path / "b", resume=True, progress=False)
    for name, t in full.tensors().items():
        assert torch.equal(t, resumed.tensors()[name]), name
    assert full.log == resumed.log
    on_disk = load_crosscoder(tmp_path / "b" / "crosscoder")
    assert all(torch.equal(on_disk.tensors()[k], full.tensors()[k]) for k in full.tensors())
    again = train_crosscoder(store, cfg, out_dir=tmp_path / "b", resume=True, progress=False)
    assert torch.equal(again.W_dec, full.W_dec)  # a finished run is loaded, not retrained
    kept = sorted(p.name for p in (tmp_path / "a" / "checkpoints").iterdir())
    assert kept == ["step-0000020", "step-0000030"]  # the last two


def test_saved_crosscoder_round_trips_and_detects_tampering(tmp_path):
    src = InMemoryActivations(torch.randn(256, 2, 8))
    cc = train_crosscoder(src, CrosscoderConfig(n_latents=8, k=2, steps=4, batch_size=32),
                          progress=False)
    d = save_crosscoder(cc, tmp_path / "cc")
    back = load_crosscoder(d)
    assert all(torch.equal(back.tensors()[k], cc.tensors()[k]) for k in cc.tensors())
    assert back.config == cc.config and back.log == cc.log
    data = bytearray((d / "crosscoder.safetensors").read_bytes())
    data[-1] ^= 1
    (d / "crosscoder.safetensors").write_bytes(bytes(data))
    with pytest.raises(ShiftlensError, match="SHA-256"):
        load_crosscoder(d)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_explicit_dtype(dtype):
    src = InMemoryActivations(torch.randn(256, 2, 8))
    cc = train_crosscoder(src, CrosscoderConfig(n_latents=8, k=2, steps=3, batch_size=32),
                          dtype=dtype, progress=False)
    assert cc.W_dec.dtype == dtype and cc.info["dtype"] == str(dtype)
    assert np.isfinite(cc.log[-1]["loss"])
