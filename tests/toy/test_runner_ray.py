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
from runner_synth import SYNTH, Faulty, read_counts, token_stats

from shiftlens import ModelPair
from shiftlens.runner import load_run, resolve_units, run_lens

pytestmark = pytest.mark.slow
TESTS = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster():
    # the workers import the synthetic lens from tests/ (and shiftlens from the checkout)
    path = os.pathsep.join([str(TESTS), str(TESTS.parent), os.environ.get("PYTHONPATH", "")])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path, "HF_HUB_OFFLINE": "1",
                                       "TOKENIZERS_PARALLELISM": "false"}})
    yield
    ray.shutdown()


def test_ray_attribution_equals_instruction_sensitivity_with_a_killed_actor(cluster, toy,
                                                                           tmp_path):
    from shiftlens.lenses.attribution import instruction_sensitivity
    from shiftlens.zoo import pair_dirs, toy_prompts

    prompts = toy_prompts(6)
    want = instruction_sensitivity(toy, prompts, max_new_tokens=8, progress=False)
    units = resolve_units("attribution")[0]
    marker, counts = tmp_path / "kill-once", tmp_path / "counts"
    marker.write_text("")
    # the actor computing tuned record 1 dies mid-record; Ray restarts it and reruns the record
    faulty = Faulty(units, die=(1, "tuned"), marker=str(marker), count_file=str(counts))
    s = run_lens(faulty, pair_dirs(), prompts, tmp_path / "run", params={"max_new_tokens": 8},
                 executor="ray", workers=2, max_restarts=2, progress=False)
    assert s.complete and s.computed == 12 and s.executor == "ray"
    assert not marker.exists()  # the kill happened
    done = read_counts(counts)
    assert sorted(done) == sorted((i, r) for r in ("base", "tuned") for i in range(6))
    assert len({line.split()[2] for line in counts.read_text().splitlines()}) >= 2
    assert load_run(tmp_path / "run", units=units).differences(want) == []


def test_ray_requeues_the_records_of_an_actor_that_stays_dead(cluster, tiny_dirs, tmp_path):
    from shiftlens.prompts import default_prompts

    prompts = default_prompts()[:6]
    dirs = tuple(str(d) for d in tiny_dirs("llama"))
    want = token_stats(ModelPair.from_pretrained(*dirs), prompts, scale=0.5)
    marker, counts = tmp_path / "kill-once", tmp_path / "counts"
    marker.write_text("")
    units = Faulty(SYNTH, die=(2, "base"), marker=str(marker), count_file=str(counts))
    # no restarts: the driver hands the dead actor's record to the surviving one
    s = run_lens(units, dirs, prompts, tmp_path / "run", params={"scale": 0.5}, executor="ray",
                 workers=2, max_restarts=0, progress=False)
    assert s.complete and s.computed == 12 and not marker.exists()
    assert sorted(read_counts(counts)) == sorted((i, r) for r in ("base", "tuned")
                                                 for i in range(6))
    assert load_run(tmp_path / "run", units=SYNTH).differences(want) == []
