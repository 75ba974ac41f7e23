"""ShareGPT conversations ('conversations' with from/value) -> prompts.

Run: python examples/prompts_sharegpt.py [--out out/prompts_sharegpt] [--file YOUR_sharegpt.json]
Without --file it writes two conversations of its own. Offline, a few seconds.
"""

# %%
from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

from shiftlens import load_prompts

ap = argparse.ArgumentParser()
ap.add_argument("--out", default="out/prompts_sharegpt")
ap.add_argument("--file", default=None, help="a ShareGPT JSON list or JSONL file")
args = ap.parse_args()
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)

# %% A ShareGPT file; the second record has a role shiftlens does not know
source = Path(args.file) if args.file else out / "sharegpt.json"
if not args.file:
    source.write_text(json.dumps([
        {"id": "sg-1", "conversations": [
            {"from": "human", "value": "Write a two-word title for a story about a lighthouse."},
            {"from": "gpt", "value": "Silent Beacon"}]},
        {"id": "sg-2", "conversations": [
            {"from": "human", "value": "Check the weather."},
            {"from": "function_response", "value": "{\"temp\": 21}"},
            {"from": "human", "value": "Is it warm?"},
            {"from": "gpt", "value": "Yes, 21 degrees."}]},
    ], indent=1))

# %% Strict by default: the unknown role is named with its file, line and message
try:
    load_prompts(source, turn="all")
except Exception as e:
    print(f"strict: {e}\n")

# %% Skip it (reported), or map the role
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    lenient = load_prompts(source, turn="all", on_error="skip")
print("skipped:", lenient.report.skipped)
mapped = load_prompts(source, turn="all", roles={"function_response": "system"})
print(mapped.report)
for p in mapped:
    print(f"\n{p.id}: instruction {p.text[slice(*p.char_spans()['instruction'][0])]!r}, "
          f"reference {p.reference!r}\n{p.text}")
