"""Shared fixtures: tiny random-weight models of four architectures, booted like checkpoints."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from shiftlens import ModelPair  # noqa: E402
from shiftlens.testing import ARCHITECTURES, perturbed_copy, tiny_model_dir  # noqa: E402

# tiny models: one thread is faster than two (no thread sync on microsecond matmuls)
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """``tiny_dirs(arch) -> (base_dir, tuned_dir)``: built once per session per architecture.

    The tuned model is the base plus 5% Gaussian noise on every weight.
    """
    root = tmp_path_factory.mktemp("tiny")
    built: dict[str, tuple] = {}

    def get(arch: str):
        if arch not in built:
            base = tiny_model_dir(arch, root / arch / "base", seed=0)
            tuned = perturbed_copy(base, root / arch / "tuned", scale=0.05, seed=1)
            built[arch] = (base, tuned)
        return built[arch]

    return get


@pytest.fixture(params=ARCHITECTURES)
def arch(request) -> str:
    """Parametrises a test over gpt2, llama (GQA), qwen2 and gemma2."""
    return request.param


@pytest.fixture
def pair(arch, tiny_dirs) -> ModelPair:
    """A fresh tiny pair of the parametrised architecture (safe to mutate)."""
    base, tuned = tiny_dirs(arch)
    return ModelPair.from_pretrained(base, tuned)


@pytest.fixture
def llama_pair(tiny_dirs) -> ModelPair:
    """A fresh tiny Llama (grouped-query attention) pair."""
    base, tuned = tiny_dirs("llama")
    return ModelPair.from_pretrained(base, tuned)


@pytest.fixture(scope="session")
def toy() -> ModelPair:
    """The embedded toy pair, loaded once per session (read-only: do not modify its weights)."""
    from shiftlens.zoo import toy_pair

    return toy_pair()


@pytest.fixture
def unchecked():
    """Runtime shape/type checking off for one test: what a user (no jaxtyping hook) sees.

    Bad-input tests use it: with checking on, jaxtyping rejects a wrongly typed argument before
    shiftlens' own validation can name it in a ShiftlensError.
    """
    import jaxtyping

    old = jaxtyping.config.jaxtyping_disable
    jaxtyping.config.update("jaxtyping_disable", True)
    try:
        yield
    finally:
        jaxtyping.config.update("jaxtyping_disable", old)


# ---------------------------------------------------------------------------- tiers by folder
#: tests/<tier>/ -> marker added to every test collected there (select with -m).
TIER_MARKERS = {"toy": "toy", "planted": "planted", "real": "real", "browser": "browser"}


def pytest_collection_modifyitems(config, items):
    from pathlib import Path

    root = Path(__file__).parent
    for item in items:
        try:
            tier = Path(str(item.fspath)).relative_to(root).parts[0]
        except ValueError:
            continue
        marker = TIER_MARKERS.get(tier)
        if marker:
            item.add_marker(getattr(pytest.mark, marker))
