"""Reading weights from checkpoint files: the safetensors reader and CheckpointWeights.

Truths: safetensors' own loader (every tensor read equals ``load_file``'s, bit for bit), the
bridge path of shiftlens.weights (every folded weight equals it exactly: same values, same dtype),
and the operating system (a process whose data segment is capped below the checkpoint's size
still reads every layer, while holding all tensors at once fails under the same cap).
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from shiftlens import ShiftlensError
from shiftlens.bridge import load_bridge
from shiftlens.weightfiles import INDEX_FILE, SafetensorsCheckpoint, verify_checkpoint_files
from shiftlens.weights import (
    BridgeWeights,
    CheckpointWeights,
    WeightSource,
    embedding,
    mlp_out,
    qk_weights,
    unembedding,
    weight_source,
)


def _sharded_copy(src: Path, dst: Path, shard: str = "20KB", dtype=None) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    m = AutoModelForCausalLM.from_pretrained(src, dtype=dtype or torch.float32)
    m.save_pretrained(dst, max_shard_size=shard)
    AutoTokenizer.from_pretrained(src).save_pretrained(dst)
    return dst


def _all_equal(model, src) -> list[str]:
    """Names of the weights where the file path differs from the bridge path (empty: equal)."""
    bad = []

    def same(a, b):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)

    for layer in range(model.cfg.n_layers):
        for fold in (True, False):
            qb, kb = qk_weights(model, layer, fold_norm=fold)
            qf, kf = qk_weights(src, layer, fold_norm=fold)
            if not (same(qb, qf) and same(kb, kf)):
                bad.append(f"qk {layer} fold={fold}")
            if not same(mlp_out(model, layer, fold_norm=fold), mlp_out(src, layer, fold_norm=fold)):
                bad.append(f"mlp_out {layer} fold={fold}")
    for fold in (True, False):
        if not same(unembedding(model, fold_norm=fold), unembedding(src, fold_norm=fold)):
            bad.append(f"unembedding fold={fold}")
    if not same(embedding(model), embedding(src)):
        bad.append("embedding")
    return bad


# ---------------------------------------------------------------------------- the reader
def test_reader_equals_safetensors_single_and_sharded(tiny_dirs, tmp_path):
    base, _ = tiny_dirs("llama")
    ck = SafetensorsCheckpoint(base)
    ref = load_file(base / "model.safetensors")
    assert set(ck.keys()) == set(ref) and len(ck) == len(ref) and ck.files == (base / "model.safetensors",)
    for k, v in ref.items():
        got = ck.read(k)
        assert got.dtype == v.dtype and torch.equal(got, v), k
    assert ck.nbytes == sum(v.numel() * v.element_size() for v in ref.values())
    sharded = _sharded_copy(base, tmp_path / "sh", dtype=torch.bfloat16)
    cs = SafetensorsCheckpoint(sharded)
    assert len(cs.files) > 2 and (sharded / INDEX_FILE).is_file()
    for f in cs.files:
        for k, v in load_file(f).items():
            got = cs.read(k)
            assert got.dtype == torch.bfloat16 and torch.equal(got, v), k
            assert cs.entry(k).file == f


def test_reader_names_truncation_and_corruption(tiny_dirs, tmp_path, unchecked):
    base, _ = tiny_dirs("llama")
    f = tmp_path / "m.safetensors"
    f.write_bytes((base / "model.safetensors").read_bytes())
    data = f.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    last = max((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][1])
    f.write_bytes(data[:-100])
    with pytest.raises(ShiftlensError, match=rf"truncated.*100 missing.*{last}"):
        verify_checkpoint_files(f)
    f.write_bytes(data[:5])
    with pytest.raises(ShiftlensError, match="truncated.*8-byte header"):
        SafetensorsCheckpoint(f)
    f.write_bytes(data[:8 + n - 3])
    with pytest.raises(ShiftlensError, match="truncated or not a safetensors file"):
        SafetensorsCheckpoint(f)
    f.write_bytes(data[:8] + b"x" + data[9:])
    with pytest.raises(ShiftlensError, match="corrupt header"):
        SafetensorsCheckpoint(f)
    f.write_bytes(data + b"junk")
    with pytest.raises(ShiftlensError, match="4 bytes after its last tensor"):
        SafetensorsCheckpoint(f)
    # a byte range that disagrees with the shape
    bad = dict(header)
    k0 = next(k for k in bad if k != "__metadata__")
    bad[k0] = dict(bad[k0], shape=[bad[k0]["shape"][0] + 1, *bad[k0]["shape"][1:]])
    hb = json.dumps(bad).encode()
    f.write_bytes(struct.pack("<Q", len(hb)) + hb + data[8 + n:])
    with pytest.raises(ShiftlensError, match=rf"{k0}.*needs \d+ bytes"):
        SafetensorsCheckpoint(f)
    # the file shrinks after opening: read() names the tensor
    f.write_bytes(data)
    ck = SafetensorsCheckpoint(f)
    f.write_bytes(data[:-100])
    with pytest.raises(ShiftlensError, match=rf"truncated: tensor '{last}'"):
        ck.read(last)
    with pytest.raises(ShiftlensError, match=r"no tensor 'model.layers.0.mlp.down_proj.weigth'.*close"):
        ck.entry("model.layers.0.mlp.down_proj.weigth")


def test_reader_checks_the_index(tiny_dirs, tmp_path):
    base, _ = tiny_dirs("llama")
    d = _sharded_copy(base, tmp_path / "sh")
    index = json.loads((d / INDEX_FILE).read_text())
    shards = sorted(set(index["weight_map"].values()))
    (d / shards[1]).rename(tmp_path / "moved")
    with pytest.raises(ShiftlensError, match=rf"shard files that do not exist.*{shards[1]}"):
        SafetensorsCheckpoint(d)
    (tmp_path / "moved").rename(d / shards[1])
    k = next(k for k, v in index["weight_map"].items() if v == shards[0])
    index["weight_map"][k] = shards[1]
    (d / INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(ShiftlensError, match=rf"not in the shard it names.*{k}"):
        SafetensorsCheckpoint(d)
    # one tensor in two files
    empty = tmp_path / "empty"
    empty.mkdir()
    save_file({"a": torch.zeros(2)}, empty / "x.safetensors")
    save_file({"a": torch.ones(2)}, empty / "y.safetensors")
    with pytest.raises(ShiftlensError, match="'a' is in both x.safetensors and y.safetensors"):
        SafetensorsCheckpoint(empty)
    (tmp_path / "none").mkdir()
    with pytest.raises(ShiftlensError, match="no safetensors files"):
        SafetensorsCheckpoint(tmp_path / "none")


# ---------------------------------------------------------------------------- CheckpointWeights
def test_checkpoint_weights_equal_the_bridge_exactly(arch, tiny_dirs):
    """Every architecture: W_Q, W_K (GQA expanded), W_out, W_U, W_E folded or not: max diff 0."""
    base, tuned = tiny_dirs(arch)
    for d in (base, tuned):
        model, src = load_bridge(d), CheckpointWeights(d)
        assert _all_equal(model, src) == []
        for norm in ("ln1", "ln2"):
            assert torch.equal(src.norm_scale(norm, 1), BridgeWeights(model).norm_scale(norm, 1))
        assert torch.equal(src.norm_scale("ln_final"), BridgeWeights(model).norm_scale("ln_final"))
        assert (src.cfg.n_layers, src.cfg.n_heads, src.cfg.d_model, src.cfg.d_vocab) == (
            model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_model, model.cfg.d_vocab)


def test_checkpoint_weights_embedded_pair_sharded_and_bf16(tmp_path):
    from shiftlens.zoo import pair_dirs

    base, tuned = pair_dirs()
    assert _all_equal(load_bridge(tuned), CheckpointWeights(tuned)) == []
    sharded = _sharded_copy(base, tmp_path / "sh", shard="200KB")
    assert len(SafetensorsCheckpoint(sharded).files) > 5
    assert _all_equal(load_bridge(base), CheckpointWeights(sharded)) == []
    # a bridge loaded in bfloat16 and a source told so: still exactly equal
    assert _all_equal(load_bridge(base, dtype=torch.bfloat16),
                      CheckpointWeights(sharded, dtype=torch.bfloat16)) == []
    # ... and different from the float32 numbers (the dtype is honoured)
    assert not torch.equal(CheckpointWeights(base, dtype=torch.bfloat16).mlp_out(0),
                           CheckpointWeights(base).mlp_out(0))


def test_tied_unembedding_is_read_from_the_embedding(tiny_dirs):
    base, _ = tiny_dirs("gpt2")  # lm_head tied to transformer.wte: not in the file
    src = CheckpointWeights(base)
    assert "lm_head.weight" not in src.files and "transformer.wte.weight" in src.files
    torch.testing.assert_close(unembedding(src, fold_norm=False), embedding(src).T, rtol=0, atol=0)


def test_weight_source_dispatch_and_errors(tiny_dirs, tmp_path, unchecked):
    base, _ = tiny_dirs("llama")
    model = load_bridge(base)
    src = weight_source(base)
    assert isinstance(src, CheckpointWeights) and isinstance(src, WeightSource)
    bw = weight_source(model)
    assert isinstance(bw, BridgeWeights) and isinstance(bw, WeightSource)
    assert weight_source(src) is src
    assert torch.equal(bw.mlp_out(1), src.mlp_out(1)) and torch.equal(bw.embedding(), src.embedding())
    assert src.tokenizer.get_vocab() == model.tokenizer.get_vocab()
    with pytest.raises(ShiftlensError, match="layer 2 out of range"):
        src.mlp_out(2)
    with pytest.raises(ShiftlensError, match="cannot read weights from a int"):
        weight_source(3)
    with pytest.raises(ShiftlensError, match="no norm 'ln2_post'"):
        src.norm_scale("ln2_post", 0)
    with pytest.raises(ShiftlensError, match="not a Hugging Face model directory"):
        CheckpointWeights(tmp_path)
    # a tensor missing from the files is named when it is needed
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(base, broken)
    sd = load_file(broken / "model.safetensors")
    del sd["model.layers.1.mlp.down_proj.weight"]
    save_file(sd, broken / "model.safetensors", metadata={"format": "pt"})
    bsrc = CheckpointWeights(broken)
    assert bsrc.mlp_out(0).shape == (64, 32)
    with pytest.raises(ShiftlensError, match="has no tensor 'model.layers.1.mlp.down_proj.weight'"):
        bsrc.mlp_out(1)


_CAPPED = textwrap.dedent("""
    import re, resource, sys
    import torch
    torch.set_num_threads(1)
    from shiftlens.weightfiles import SafetensorsCheckpoint
    from shiftlens.weights import CheckpointWeights

    def vmdata():
        return int(re.search(r"VmData:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) << 10

    src = CheckpointWeights(sys.argv[1])        # imports, config, empty model: before the cap
    src.qk_weights(0)                            # warm the code paths once
    budget = int(sys.argv[2])
    base = vmdata()
    resource.setrlimit(resource.RLIMIT_DATA, (base + budget, base + budget))
    peak = 0
    for layer in range(src.cfg.n_layers):
        src.mlp_out(layer); peak = max(peak, vmdata() - base)
        src.qk_weights(layer); peak = max(peak, vmdata() - base)
    src.unembedding(); peak = max(peak, vmdata() - base)
    print("STREAMED", peak)
    ck, held = SafetensorsCheckpoint(sys.argv[1]), []
    try:
        for k in ck.keys():
            held.append(ck.read(k))
        print("HELD ALL")
    except (MemoryError, RuntimeError) as e:
        print("HOLDING FAILED", len(held), "of", len(ck))
""")


@pytest.mark.slow
def test_streams_a_checkpoint_larger_than_the_memory_cap(tmp_path):
    """A data-segment cap (RLIMIT_DATA) of 32 MiB; the sharded checkpoint holds 138 MB."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=512, intermediate_size=2048, num_hidden_layers=8,
                      num_attention_heads=8, num_key_value_heads=2, vocab_size=4096)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "big", max_shard_size="40MB")
    size = SafetensorsCheckpoint(tmp_path / "big").nbytes
    cap = 32 << 20
    assert size > 4 * cap
    out = subprocess.run([sys.executable, "-c", _CAPPED, str(tmp_path / "big"), str(cap)],
                         capture_output=True, text=True, timeout=300)
    lines = out.stdout.splitlines()
    assert any(line.startswith("STREAMED") for line in lines), out.stderr[-2000:]
    peak = int(next(line for line in lines if line.startswith("STREAMED")).split()[1])
    layer_mlp = 3 * 512 * 2048 * 4  # one layer's gate/up/down in float32: 12.6 MB
    assert peak <= cap and peak < 2 * layer_mlp, peak
    assert any(line.startswith("HOLDING FAILED") for line in lines), lines  # it does not fit
