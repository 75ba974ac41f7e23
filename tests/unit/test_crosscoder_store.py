"""Crosscoder lens, activations on disk: shards written atomically, read back verified, shuffled
deterministically from any step, captured from a pair exactly, memory bounded by a shard."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

import shiftlens.lenses.crosscoder  # noqa: F401 - registers the lens
from shiftlens.errors import ShiftlensError
from shiftlens.lenses.crosscoder.store import (
    ActivationStore,
    ActivationWriter,
    InMemoryActivations,
    collect_activations,
    hook_for,
)


def _write(path, acts, shard_rows, chunk=37, **cols):
    with ActivationWriter(path, acts.shape[2], shard_rows=shard_rows, meta={"x": 1}) as w:
        for k in range(0, acts.shape[0], chunk):
            w.add(acts[k:k + chunk], **{n: c[k:k + chunk] for n, c in cols.items()})
    return ActivationStore(path)


def test_writer_shards_and_reader_round_trip(tmp_path):
    acts = torch.randn(250, 2, 6)
    pos = torch.arange(250)
    store = _write(tmp_path / "s", acts, shard_rows=100, pos=pos)
    assert (store.n_rows, store.d_model, store.n_shards, store.meta) == (250, 6, 3, {"x": 1})
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [
        "manifest.json", "shard-00000.safetensors", "shard-00001.safetensors",
        "shard-00002.safetensors", "store.json"]
    back = torch.cat([a for _, a in store.rows(64)])
    assert torch.equal(back, acts)
    assert [i for i, _ in store.rows(64)] == [0, 64, 100, 164, 200, 264][:5]
    assert torch.equal(store.head(120), acts[:120])
    info = store.row_info([0, 99, 100, 249])
    assert info["pos"].tolist() == [0, 99, 100, 249] and info["text"].tolist() == [-1] * 4
    with pytest.raises(ShiftlensError, match="out of range"):
        store.row_info([250])


def test_batches_are_a_function_of_seed_and_step(tmp_path):
    acts = torch.arange(230 * 2 * 3, dtype=torch.float32).reshape(230, 2, 3)
    store = _write(tmp_path / "s", acts, shard_rows=50)
    mem = InMemoryActivations(acts, shard_rows=50)
    it = store.batches(32, seed=4)
    first = [next(it) for _ in range(20)]  # 7 batches per epoch: crosses two epoch boundaries
    assert store.batches_per_epoch(32) == 7
    for t in (0, 3, 6, 7, 15):
        assert torch.equal(next(store.batches(32, seed=4, start_step=t)), first[t]), t
        assert torch.equal(next(mem.batches(32, seed=4, start_step=t)), first[t]), t
    epoch = torch.cat(first[:7])
    rows = epoch[:, 0, 0] / 6  # the row each batch row came from
    assert len(set(rows.tolist())) == 224  # no row twice within an epoch
    assert not torch.equal(torch.cat(first[7:14]), epoch)  # a new order each epoch
    assert not torch.equal(next(store.batches(32, seed=5)), first[0])
    with pytest.raises(ShiftlensError, match="fewer than one batch"):
        next(store.batches(500, seed=0))


def test_store_refuses_tampering_and_partial_writes(tmp_path):
    acts = torch.randn(120, 2, 4)
    store = _write(tmp_path / "s", acts, shard_rows=50)
    shard = tmp_path / "s" / "shard-00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ShiftlensError, match="SHA-256"):
        list(store.rows(50))
    shard.write_bytes(bytes(data[:-8]))
    with pytest.raises(ShiftlensError, match="bytes"):
        ActivationStore(tmp_path / "s")
    # an exception inside the writer leaves nothing under the name
    with pytest.raises(RuntimeError):
        with ActivationWriter(tmp_path / "t", 4, shard_rows=10) as w:
            w.add(acts[:25])
            raise RuntimeError("interrupted")
    assert not (tmp_path / "t").exists()
    assert not list(tmp_path.glob(".t.tmp-*"))
    with pytest.raises(ShiftlensError, match="not a shiftlens"):
        (tmp_path / "mine").mkdir()
        (tmp_path / "mine" / "notes.txt").write_text("keep")
        with ActivationWriter(tmp_path / "mine", 4) as w:
            w.add(acts)
    with pytest.raises(ShiftlensError, match="NaN"):
        with ActivationWriter(tmp_path / "u", 4) as w:
            w.add(torch.full((2, 2, 4), float("nan")))


def test_writer_names_a_wrong_shape(tmp_path, unchecked):
    with pytest.raises(ShiftlensError, match=r"\[rows, 2, 4\]"):
        with ActivationWriter(tmp_path / "v", 4) as w:
            w.add(torch.zeros(3, 4))


def test_collect_matches_each_models_own_forward_pass(tiny_dirs, tmp_path):
    from shiftlens import ModelPair
    from shiftlens.prompts import InstructionPrompt

    pair = ModelPair.from_pretrained(*tiny_dirs("llama"))
    texts = ["the cat sat on the mat", "a longer text, with more words in it than the first",
             "short"]
    store = collect_activations(pair, texts, 1, tmp_path / "acts", shard_rows=7, batch_size=2,
                                chunk_texts=2, progress=False)
    assert store.meta["hook_name"] == hook_for(1) and store.meta["layer"] == 1
    acts = torch.cat([a for _, a in store.rows(1000)])
    info = store.row_info(range(store.n_rows))
    start = 0
    for i, t in enumerate(texts):
        tokens = pair.tokenize(InstructionPrompt(t)).tokens
        assert torch.equal(store.text_tokens(i), tokens)
        n = len(tokens) - 1  # <bos> skipped
        rows = slice(start, start + n)
        assert info["text"][rows].tolist() == [i] * n
        assert info["pos"][rows].tolist() == list(range(1, n + 1))
        assert info["token"][rows].tolist() == tokens[1:].tolist()
        for m, model in enumerate((pair.base, pair.tuned)):
            _, cache = model.run_with_cache(tokens[None])
            want = cache[hook_for(1)][0, 1:].float()
            assert torch.allclose(acts[rows, m], want, atol=1e-5), (i, m)
        start += n
    assert start == store.n_rows
    with pytest.raises(ShiftlensError, match="hook must be"):
        collect_activations(pair, texts, 1, tmp_path / "b", hook="mlp_out", progress=False)
    with pytest.raises(ShiftlensError, match="at least one text"):
        collect_activations(pair, [], 1, tmp_path / "c", progress=False)
    with pytest.raises(ShiftlensError, match="layer"):
        collect_activations(pair, texts, 99, tmp_path / "d", progress=False)


_PROBE = textwrap.dedent("""
    import json, sys, torch
    torch.set_num_threads(1)
    from shiftlens.lenses.crosscoder.store import ActivationStore, ActivationWriter

    def reset_peak():  # Linux >= 4.0: the peak resident set restarts from the current one
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")

    def status(key):  # VmRSS / VmHWM (peak) in bytes
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024

    def rss():
        return status("VmRSS")

    def peak():
        return status("VmHWM")

    def probe(path, rows, d, shard):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(256, 2, d, generator=g)  # one chunk, reused: the writer copies what it keeps
        reset_peak()
        base = rss()
        with ActivationWriter(path, d, shard_rows=shard) as w:
            for k in range(0, rows, 256):
                w.add(x[: min(256, rows - k)])
        write_peak = peak() - base
        store = ActivationStore(path)
        n = 0
        for b in store.batches(512, seed=0):
            n += 1
            if n == store.batches_per_epoch(512):
                break
        for _ in store.rows(4096):
            pass
        return dict(write=write_peak, total=peak() - base, n=n,
                    shard_bytes=shard * 2 * d * 4, store_bytes=rows * 2 * d * 4)

    out = [probe(a[0], int(a[1]), int(a[2]), int(a[3]))
           for a in json.loads(sys.argv[1])]
    print(json.dumps(out))
""")


def _probe(*runs):
    """Each run ``(path, rows, d_model, shard_rows)`` in a fresh process of its own, all at once."""
    procs = [subprocess.Popen([sys.executable, "-c", _PROBE, json.dumps([[str(p), r, d, sh]])],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for p, r, d, sh in runs]
    out = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-2000:]
        out.append(json.loads(stdout.strip().splitlines()[-1])[0])
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self")
def test_streaming_memory_is_bounded_by_a_shard(tmp_path):
    """Writing a store and reading it (a shuffled epoch and a pass in order) in fresh processes
    (peak reset after the imports): doubling the store from 12 to 24 MiB
    (1 MiB shards) leaves the peak resident memory where it was (within two shards), below the
    larger store's size."""
    d, shard = 64, 2048
    small, large = _probe((tmp_path / "a", 24576, d, shard), (tmp_path / "b", 49152, d, shard))
    assert small["store_bytes"] == 12 * 2**20 and large["store_bytes"] == 24 * 2**20
    assert large["n"] == 2 * small["n"] == 2 * (24576 // 512)
    assert large["write"] < small["write"] + 2 * small["shard_bytes"], (small, large)
    assert large["total"] < small["total"] + 2 * small["shard_bytes"], (small, large)
    assert large["total"] < large["store_bytes"], (small, large)
