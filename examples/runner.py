"""The runner: the attribution lens record by record on the embedded pair, interrupted, resumed,
split into shards and (with --ray) spread over a local Ray cluster, always equal to the
in-process function.

Run: python examples/runner.py [--out out/runner] [--n 12] [--ray]
Offline, about a minute on 2 CPU cores (add a minute for --ray: two actors start and load).
"""

# %%
from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from shiftlens.lenses.attribution import instruction_sensitivity  # noqa: E402
from shiftlens.runner import load_run, resolve_units, run_lens, run_status  # noqa: E402
from shiftlens.zoo import pair_dirs, toy_pair, toy_prompts  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--out", default="out/runner")
ap.add_argument("--n", type=int, default=12, help="prompts (the held-out toy prompts)")
ap.add_argument("--ray", action="store_true", help="also run on a local Ray cluster")
args = ap.parse_args()
out = Path(args.out)
if out.exists():
    shutil.rmtree(out)
out.mkdir(parents=True)
torch.set_num_threads(1)  # tiny models: one thread is fastest on a shared CPU

prompts = toy_prompts(args.n)
dirs = tuple(str(d) for d in pair_dirs())
params = {"max_new_tokens": 8}  # the toy tasks answer in at most 6 tokens + EOS

# %% The reference: the in-process function, both models resident
ref = instruction_sensitivity(toy_pair(), prompts, progress=False, **params)
print("in-process:", ref.summary()["sentence"])


# %% A run that crashes at prompt 5 of the tuned model ...
class CrashAt:
    """The attribution units, except that one record raises (a crash at prompt k)."""

    def __init__(self, inner, key):
        self.inner, self.key = inner, key
        self.name, self.roles, self.function = inner.name, inner.roles, inner.function
        self.plan, self.assemble = inner.plan, inner.assemble

    def compute(self, plan, role, model, prompt, index):
        if (index, role) == self.key:
            raise RuntimeError(f"simulated crash at prompt {index} ({role})")
        return self.inner.compute(plan, role, model, prompt, index)


units = resolve_units("attribution")[0]
run = out / "sens"
try:
    run_lens(CrashAt(units, (5, "tuned")), dirs, prompts, run, params=params, progress=False)
except RuntimeError as e:
    print("crashed:", e)
st = run_status(run)
print(f"on disk after the crash: {st['done']} of {st['total']} records {st['by_role']}")

# %% ... resumed: finished records are skipped (the base model is not even loaded again)
s = run_lens("attribution", dirs, prompts, run, params=params, resume=True, progress=False)
print(s)
res = load_run(run)
assert res.equals(ref), res.differences(ref)
print("resumed run == instruction_sensitivity:", res.equals(ref))
print("run.json:", json.dumps({k: v for k, v in json.loads((run / "run.json").read_text()).items()
                              if k in ("units_name", "params", "prompts", "load")}))

# %% Two shards (as two Slurm array tasks would run them), merged
for i in (0, 1):
    run_lens("attribution", dirs, prompts, out / "sharded", params=params, shard=(i, 2),
             progress=False)
# the command line does the same: shiftlens merge out/runner/sharded --out out/runner/result
load_run(out / "sharded").save(out / "result")
import shiftlens  # noqa: E402

assert shiftlens.load(out / "result").equals(ref)
print("two shards merged == instruction_sensitivity: True")

# %% Ray: two actors, each holding one model (a local cluster; --ray-address for a real one)
if args.ray:
    s = run_lens("attribution", dirs, prompts, out / "ray", params=params, executor="ray",
                 workers=2, progress=False)
    print(s)
    assert load_run(out / "ray").equals(ref)
    print("Ray (2 workers) == instruction_sensitivity: True")
