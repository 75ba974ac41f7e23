"""Hugging Face datasets (a Dataset, a save_to_disk directory, a parquet file) -> prompts.

Run: python examples/prompts_hf.py [--out out/prompts_hf]
Builds a small Dataset in code (no download). Offline, a few seconds.
"""

# %%
from __future__ import annotations

import argparse
from pathlib import Path

import datasets

from shiftlens import load_prompts

ap = argparse.ArgumentParser()
ap.add_argument("--out", default="out/prompts_hf")
args = ap.parse_args()
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)

# %% A dataset with its own column names: map them to instruction / context / reference
rows = [
    {"qid": "q1", "question": "Which word is a colour?", "passage": "table, green, river",
     "answer": "green"},
    {"qid": "q2", "question": "Count the vowels.", "passage": "banana", "answer": "3"},
    {"qid": "q3", "question": "Name a mammal that lives in the sea.", "passage": "",
     "answer": "dolphin"},
]
datasets.disable_progress_bars()
ds = datasets.Dataset.from_list(rows)
mapping = dict(instruction="question", context="passage", reference="answer", id="qid")
prompts = load_prompts(ds, **mapping)
print(prompts.report)
for p in prompts:
    cs = p.char_spans()
    print(f"{p.id}: instruction {[p.text[s:e] for s, e in cs['instruction']]}, "
          f"context {[p.text[s:e] for s, e in cs['context']]}, reference {p.reference!r}")

# %% The same rows from a save_to_disk directory (a DatasetDict: choose the split) and parquet
datasets.DatasetDict({"test": ds}).save_to_disk(str(out / "saved"))
from_disk = load_prompts(out / "saved", split="test", **mapping)
ds.to_parquet(str(out / "rows.parquet"))
from_parquet = load_prompts(out / "rows.parquet", **mapping)
assert from_disk == prompts == from_parquet
print(f"\nsame prompts from {from_disk.report.source} and {from_parquet.report.source}")
