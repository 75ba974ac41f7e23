"""CSV and TSV files with a header row -> prompts, with a column mapping.

Run: python examples/prompts_csv.py [--out out/prompts_csv] [--file YOUR.csv --instruction COL ...]
Without --file it writes a small CSV (quoted commas and a newline inside a field) and a TSV.
"""

# %%
from __future__ import annotations

import argparse
import csv
from pathlib import Path

from shiftlens import load_prompts

ap = argparse.ArgumentParser()
ap.add_argument("--out", default="out/prompts_csv")
ap.add_argument("--file", default=None)
ap.add_argument("--instruction", default="task")
ap.add_argument("--context", default="text")
ap.add_argument("--reference", default="expected")
args = ap.parse_args()
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)

# %% A CSV whose columns have their own names
source = Path(args.file) if args.file else out / "tasks.csv"
if not args.file:
    with source.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["task", "text", "expected", "annotator"])
        w.writerow(["Summarize, in five words or fewer.",
                    "The bridge closed for repairs.\nTraffic moved to the ferry.",
                    "Bridge closed; ferry instead.", "ann-1"])
        w.writerow(["Translate into German.", "Good morning", "Guten Morgen", "ann-2"])
prompts = load_prompts(source, instruction=args.instruction, context=args.context,
                       reference=args.reference)
print(prompts.report)
for p in prompts:
    cs = p.char_spans()
    print(f"\n{p.id}: instruction {[p.text[s:e] for s, e in cs['instruction']]}, "
          f"context {[p.text[s:e] for s, e in cs['context']]}, meta {p.meta}\n{p.text}")

# %% A TSV with the default column names (instruction, input, output) needs no mapping
tsv = out / "tasks.tsv"
tsv.write_text("instruction\tinput\toutput\nReverse the word.\tstone\tenots\n", encoding="utf-8")
print(load_prompts(tsv).report)
