"""The native JSONL schema: text with its spans; strict loading and a lenient one.

Run: python examples/prompts_jsonl.py [--out out/prompts_jsonl]
Offline, a few seconds.
"""

# %%
from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

from shiftlens import InstructionPrompt, ShiftlensError, load_prompts, save_prompts

ap = argparse.ArgumentParser()
ap.add_argument("--out", default="out/prompts_jsonl")
args = ap.parse_args()
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)

# %% Write prompts (spans as substrings or [start, end] offsets), atomically
prompts = [
    InstructionPrompt("Sort the words: pear apple fig", instruction=["Sort the words:"],
                      context=["pear apple fig"], reference="apple fig pear", id="n-1"),
    InstructionPrompt("Echo echo: echo", instruction=[(0, 4)], context=[(11, 15)], id="n-2"),
]
path = save_prompts(prompts, out / "prompts.jsonl")
assert load_prompts(path) == prompts

# %% A file with one bad record: strict names it, skip leaves it out and reports it
bad = out / "with_bad_record.jsonl"
bad.write_text(path.read_text() + json.dumps({"id": "n-3", "text": "Say hi.", "reference": 5})
               + "\n")
try:
    load_prompts(bad)
except ShiftlensError as e:
    print(f"strict: {e}")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    kept = load_prompts(bad, on_error="skip")
print(kept.report)
for p in kept:
    cs = p.char_spans()
    print(f"{p.id}: instruction {[p.text[s:e] for s, e in cs['instruction']]}, "
          f"context {[p.text[s:e] for s, e in cs['context']]}")
