"""Crosscoder lens, bad inputs: each one a ShiftlensError that names the bad value."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import shiftlens.lenses.crosscoder  # noqa: F401 - registers the lens
from shiftlens.errors import ShiftlensError
from shiftlens.lenses.crosscoder.core import Crosscoder, CrosscoderConfig, LatentThresholds
from shiftlens.lenses.crosscoder.results import CrosscoderResult
from shiftlens.lenses.crosscoder.store import ActivationWriter, InMemoryActivations, hook_for
from shiftlens.lenses.crosscoder.train import train_crosscoder


@pytest.mark.parametrize("field,value,match", [
    ("n_latents", 0, "n_latents must be >= 1, got 0"),
    ("k", 0, "k must be >= 1, got 0"),
    ("steps", 1.5, "steps must be an integer, got 1.5"),
    ("batch_size", True, "batch_size must be an integer, got True"),
    ("lr", float("nan"), "lr must be finite, got nan"),
    ("decay_fraction", 2.0, "decay_fraction must be <= 1.0, got 2.0"),
    ("init_norm", 0.0, "init_norm must be > 0, got 0.0"),
    ("aux_k", 0, "aux_k must be >= 1, got 0"),
    ("seed", -1, "seed must be >= 0, got -1"),
])
def test_config_names_the_bad_field(field, value, match, unchecked):
    with pytest.raises(ShiftlensError, match=match.replace("(", r"\(").replace(".", r"\.")):
        CrosscoderConfig(**{field: value})


def test_config_dicts_and_thresholds(unchecked):
    with pytest.raises(ShiftlensError, match=r"unknown crosscoder configuration keys \['kk'\]"):
        CrosscoderConfig.from_dict({"kk": 1})
    with pytest.raises(ShiftlensError, match="is a dict, got list"):
        CrosscoderConfig.from_dict([1])
    with pytest.raises(ShiftlensError, match="outer must be <= 0.5, got 0.7"):
        LatentThresholds(outer=0.7)
    with pytest.raises(ShiftlensError, match="nu_max must be >= 0.0, got -1"):
        LatentThresholds(nu_max=-1.0)


def test_crosscoder_refuses_bad_dtype_device_and_mode(unchecked):
    with pytest.raises(ShiftlensError, match="dtype must be a torch floating dtype.*int64"):
        Crosscoder(4, 8, 2, dtype=torch.int64)
    with pytest.raises(ShiftlensError, match="device 'nonsense'"):
        Crosscoder(4, 8, 2, device="nonsense")
    with pytest.raises(ShiftlensError, match="k must be <= 8, got 9"):
        Crosscoder(4, 8, 9)
    with pytest.raises(ShiftlensError, match="mode must be .* got 'sparse'"):
        Crosscoder(4, 8, 2).encode(torch.zeros(1, 2, 4), mode="sparse")
    cc, other = Crosscoder(4, 8, 2), Crosscoder(4, 6, 2)
    with pytest.raises(ShiftlensError, match=r"W_enc has shape \(2, 4, 6\), expected \(2, 4, 8\)"):
        cc.load_tensors(other.tensors())


def test_training_inputs(unchecked):
    src = InMemoryActivations(torch.randn(128, 2, 4))
    cfg = CrosscoderConfig(n_latents=8, k=2, steps=4, batch_size=32)
    with pytest.raises(ShiftlensError, match="config must be a CrosscoderConfig, got dict"):
        train_crosscoder(src, {"k": 2}, progress=False)
    with pytest.raises(ShiftlensError, match="stop_at must be >= 1, got 0"):
        train_crosscoder(src, cfg, stop_at=0, progress=False)
    with pytest.raises(ShiftlensError, match="128 rows, fewer than one batch of 256"):
        train_crosscoder(src, cfg.replace(batch_size=256), progress=False)
    with pytest.raises(ShiftlensError, match="all zero"):
        train_crosscoder(InMemoryActivations(torch.zeros(128, 2, 4)), cfg, progress=False)


def test_store_inputs(tmp_path, unchecked):
    with pytest.raises(ShiftlensError, match="hook must be one of .* got 'resid'"):
        hook_for(1, "resid")
    with pytest.raises(ShiftlensError, match=r"activations must be \[rows, 2, d_model\], got \[3, 4\]"):
        InMemoryActivations(torch.zeros(3, 4))
    with pytest.raises(ShiftlensError, match="store dtype must be a float dtype, got torch.int32"):
        ActivationWriter(tmp_path / "s", 4, dtype=torch.int32)
    with pytest.raises(ShiftlensError, match=r"NaN or infinite values \(row 2\)"):
        with ActivationWriter(tmp_path / "n", 4) as w:
            x = torch.zeros(3, 2, 4)
            x[2, 1, 0] = float("inf")
            w.add(x)
    with pytest.raises(ShiftlensError, match="text has 2 entries for 3 rows"):
        with ActivationWriter(tmp_path / "t", 4) as w:
            w.add(torch.zeros(3, 2, 4), text=torch.zeros(2, dtype=torch.long))
    assert not (tmp_path / "n").exists() and not (tmp_path / "t").exists()


def _result():
    cls = ["tuned_only", "shared"]
    latents = pd.DataFrame(dict(
        latent=[0, 1], frequency=[0.1, 0.2], mean_act=[1.0, 0.5], max_act=[2.0, 1.0],
        norm_base=[0.0, 1.0], norm_tuned=[1.0, 1.0], delta_norm=[1.0, 0.5], cos_dec=[0.0, 1.0],
        change=[1.0, 0.0], own=["tuned", "tuned"], beta_err_base=[0.0, 1.0],
        beta_err_tuned=[1.0, 1.0], beta_rec_base=[0.0, 1.0], beta_rec_tuned=[1.0, 1.0],
        nu_err=[0.0, 1.0], nu_rec=[0.0, 1.0], norm_class=cls, cls=cls, reason=["", ""]))
    tokens = pd.DataFrame(dict(latent=[0], kind=["tuned_only"], order=[0], rank=[0],
                               token_id=[2], token=["x"], logit=[1.0]))
    ctx = pd.DataFrame({c: pd.Series([], dtype=object) for c in (
        "latent", "kind", "order", "rank", "activation", "row", "text", "pos", "token_id",
        "token", "context")})
    return CrosscoderResult(latents=latents, contexts=ctx, tokens=tokens,
                            token_scores=torch.tensor([0.0, 1.0, 3.0]),
                            training=pd.DataFrame(), meta=dict(n_latents=2, d_vocab=3))


def test_result_inputs_and_validation(unchecked):
    res = _result()
    res.validate()
    assert res.top_tokens(2) == [2, 1]  # the readout's ranking, best first
    with pytest.raises(ShiftlensError, match="source must be one of .* got 'base'"):
        res.top_tokens(5, source="base")
    with pytest.raises(ShiftlensError, match="k must be >= 1, got 0"):
        res.top_tokens(0)
    with pytest.raises(ShiftlensError, match="kind must be .* got 'shared'"):
        res.model_specific("shared")
    bad = _result()
    bad.latents.loc[1, "cls"] = "weird"
    with pytest.raises(ShiftlensError, match=r"unknown classes \['weird'\]"):
        bad.validate()
    bad = _result()
    bad.token_scores = torch.zeros(5)
    with pytest.raises(ShiftlensError, match="token_scores has 5 entries, the vocabulary 3"):
        bad.validate()
    bad = _result()
    bad.tokens.loc[0, "latent"] = 1
    with pytest.raises(ShiftlensError, match=r"lists tuned_only latents \[1\] not classified"):
        bad.validate()
    assert np.isfinite(res.summary()["fvu"].get("base", 0.0))


def test_cli_texts_and_models(tmp_path):
    from shiftlens.lenses.crosscoder.cli import read_texts, resolve_model

    p = tmp_path / "t.jsonl"
    p.write_text('{"text": "a b"}\n\n{"txt": 1}\n')
    with pytest.raises(Exception, match=r"line 3: no 'text' string"):
        read_texts(str(p))
    with pytest.raises(Exception, match="neutral:N needs a positive N, got 'neutral:0'"):
        read_texts("neutral:0")
    with pytest.raises(Exception, match="'nofile.txt': no such file"):
        read_texts("nofile.txt")
    (tmp_path / "e.txt").write_text("\n  \n")
    with pytest.raises(Exception, match="holds no texts"):
        read_texts(str(tmp_path / "e.txt"))
    (tmp_path / "ok.txt").write_text("one\n\ntwo\n")
    assert read_texts(str(tmp_path / "ok.txt")) == ["one", "two"]
    with pytest.raises(Exception, match="unknown organism 'moon'"):
        resolve_model("organism:moon")


@pytest.mark.parametrize("name", ["core", "store", "train", "section", "cli", "__init__"])
def test_crosscoder_doctests(name):
    """The runnable examples of the lens's docstrings (the others are marked +SKIP: they need a
    model or files)."""
    import doctest
    import importlib

    mod = importlib.import_module("shiftlens.lenses.crosscoder"
                                  + ("" if name == "__init__" else f".{name}"))
    res = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert res.attempted > 0, f"{name}: no runnable examples found"
    assert res.failed == 0, f"{res.failed} doctest failures in {name}"


def test_diff_refuses_an_earlier_run_before_capturing(tmp_path):
    from shiftlens.lenses.crosscoder.compare import crosscoder_diff

    src = InMemoryActivations(torch.randn(256, 2, 4))
    cfg = CrosscoderConfig(n_latents=8, k=2, steps=4, batch_size=32, checkpoint_every=2)
    train_crosscoder(src, cfg, out_dir=tmp_path, stop_at=2, progress=False)
    with pytest.raises(ShiftlensError, match="holds checkpoints of an earlier run"):
        crosscoder_diff(None, ["never captured"], 0, out_dir=tmp_path, progress=False)


@pytest.mark.parametrize("held", ["activations", "result"])
def test_diff_refuses_an_earlier_run_without_checkpoints(tmp_path, held):
    """A finished run without checkpoints (checkpoint_every=0) left activations and a result:
    a second run into the same directory is refused, not silently overwritten."""
    from shiftlens.lenses.crosscoder.compare import crosscoder_diff

    (tmp_path / held).mkdir()
    (tmp_path / held / "manifest.json").write_text("{}")
    with pytest.raises(ShiftlensError, match=f"holds {held} of an earlier run.*nothing was"):
        crosscoder_diff(None, ["never captured"], 0, out_dir=tmp_path, progress=False)
    assert (tmp_path / held / "manifest.json").read_text() == "{}"
