"""Attribution on models whose embedding and unembedding do not sit on one plain device.

Known truth: the same weights loaded on one device. Two placements:

- CPU (always runs): the input embedding offloaded to disk (its weights on the ``meta`` device,
  materialized per call by accelerate). The model's first parameter is then on ``meta``; the
  tokens must go to :func:`shiftlens.bridge.device_of` (the offload hook's execution device),
  or the forward pass fails ("Cannot copy out of meta tensor" before the fix).
- CPU + CUDA (needs a GPU): embedding and layers on the CPU, final norm and unembedding on
  ``cuda:0``. The embeddings ``E`` (and the matrix) are then on the CPU while the hidden states
  ``H`` and their indices are on the GPU: indexing a CPU tensor with CUDA indices raises, so
  every index must follow the tensor it indexes. PyTorch has one CPU device and lets CPU (and
  meta) indices index any tensor, so this half cannot be reproduced without a second device.
"""

from __future__ import annotations

import pytest
import torch

from shiftlens import attribution as A
from shiftlens.bridge import device_of, load_bridge
from shiftlens.prompts import InstructionPrompt

PROMPT = InstructionPrompt("Sort the words: red cat dog\nResponse:",
                           instruction=["Sort the words:"], context=["red cat dog"], id="sort-1")


def _agree(ref, got, tol=0.0):
    assert got.matrix.shape == ref.matrix.shape
    scale = float(ref.matrix.abs().max())
    assert float((got.matrix.double() - ref.matrix.double()).abs().max()) <= tol * scale
    torch.testing.assert_close(got.probs, ref.probs, rtol=1e-6 if tol else 0, atol=0)
    assert got.score() == pytest.approx(ref.score(), rel=1e-6)


def test_offloaded_embedding_uses_the_execution_device(tiny_dirs, tmp_path):
    path = tiny_dirs("llama")[0]
    ref_model = load_bridge(path)
    model = load_bridge(path, device_map={
        "model.embed_tokens": "disk", "model.layers": "cpu", "model.norm": "cpu",
        "model.rotary_emb": "cpu", "lm_head": "cpu"}, offload_folder=tmp_path / "offload")
    assert next(model.parameters()).device.type == "meta"  # what the old _device returned
    assert device_of(model) == torch.device("cpu")
    for mode in ("reverse", "forward"):
        ref = A.attribute(ref_model, PROMPT, " cat dog red", mode=mode)
        got = A.attribute(model, PROMPT, " cat dog red", mode=mode)
        assert got.mode == mode
        _agree(ref, got)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_embedding_on_cpu_unembedding_on_gpu(tiny_dirs):
    path = tiny_dirs("llama")[0]
    ref_model = load_bridge(path)
    model = load_bridge(path, device_map={
        "model.embed_tokens": "cpu", "model.layers": "cpu", "model.rotary_emb": "cpu",
        "model.norm": 0, "lm_head": 0})
    assert device_of(model) == torch.device("cpu")
    for mode in ("reverse", "forward"):
        ref = A.attribute(ref_model, PROMPT, " cat dog red", mode=mode, chunk_size=2)
        got = A.attribute(model, PROMPT, " cat dog red", mode=mode, chunk_size=2)
        assert got.mode == mode and got.matrix.device.type == "cpu"
        _agree(ref, got, tol=1e-5)  # GPU kernels round differently
    gen = A.attribute(model, PROMPT, max_new_tokens=4)  # greedy generation on the split model
    assert gen.generated and gen.n_output >= 1
