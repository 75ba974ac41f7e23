"""The Ray executor on a local cluster (``ray.init(num_cpus=2)``, 2 actors).

The results must equal the single-process run's, also when an actor is killed in the middle of
a record (``os._exit`` in the worker, as an out-of-memory kill would): Ray restarts the actor,
which loads its model again, and reruns the record. One cluster serves the whole module.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import ray  # in the lock (the shiftlens[ray] extra): CI runs these tests, never skips
from test_runner_units import SYNTH, Faulty, read_counts, token_stats

from shiftlens import ModelPair
from shiftlens.runner import load_run, run_lens

pytestmark = pytest.mark.slow
TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def cluster():
    # the workers import the synthetic lens from tests/ (and shiftlens from the checkout)
    path = os.pathsep.join([str(TESTS), str(TESTS.parent), os.environ.get("PYTHONPATH", "")])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path, "HF_HUB_OFFLINE": "1",
                                       "TOKENIZERS_PARALLELISM": "false"}})
    yield
    ray.shutdown()


def test_ray_synthetic_equals_single_process_with_a_killed_actor(cluster, tiny_dirs, tmp_path):
    from shiftlens.prompts import default_prompts

    prompts = default_prompts()[:6]
    dirs = tuple(str(d) for d in tiny_dirs("llama"))
    want = token_stats(ModelPair.from_pretrained(*dirs), prompts, scale=0.5)
    marker, counts = tmp_path / "kill-once", tmp_path / "counts"
    marker.write_text("")
    units = Faulty(SYNTH, die=(2, "base"), marker=str(marker), count_file=str(counts))
    s = run_lens(units, dirs, prompts, tmp_path / "run", params={"scale": 0.5}, executor="ray",
                 workers=2, progress=False)
    assert s.complete and s.computed == 12 and not marker.exists()  # the kill happened
    done = read_counts(counts)
    assert sorted(done) == sorted((i, r) for r in ("base", "tuned") for i in range(6))
    pids = {line.split()[2] for line in counts.read_text().splitlines()}
    assert len(pids) >= 2  # both actors worked (one of them restarted in a new process)
    assert load_run(tmp_path / "run", units=SYNTH).differences(want) == []
