"""Alpaca-style records (instruction / input / output) -> prompts with exact spans.

Run: python examples/prompts_alpaca.py [--out out/prompts_alpaca] [--file YOUR_alpaca.json]
Without --file it writes three records of its own. Offline, a few seconds.
"""

# %%
from __future__ import annotations

import argparse
import json
from pathlib import Path

from shiftlens import load_prompts, save_prompts
from shiftlens.testing import build_tokenizer

ap = argparse.ArgumentParser()
ap.add_argument("--out", default="out/prompts_alpaca")
ap.add_argument("--file", default=None, help="an Alpaca JSON list or JSONL file of your own")
args = ap.parse_args()
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)


def marked(p):
    """The prompt text with [instruction] and {context} marked."""
    opens, closes = {1: "[", 2: "{"}, {1: "]", 2: "}"}
    text, prev = [], 3
    for ch, lab in zip(p.text, p.char_labels()):
        if lab != prev:
            text += [closes.get(prev, ""), opens.get(lab, "")]
            prev = lab
        text.append(ch)
    return "".join(text + [closes.get(prev, "")])


# %% A file in the Alpaca format (a JSON list; JSONL works the same)
source = Path(args.file) if args.file else out / "alpaca_sample.json"
if not args.file:
    source.write_text(json.dumps([
        {"instruction": "Sort the words alphabetically.", "input": "pear apple fig",
         "output": "apple fig pear"},
        {"instruction": "Name a prime number greater than ten.", "input": "", "output": "11"},
        {"instruction": "Give the opposite of the word.", "input": "ancient", "output": "modern"},
    ], indent=1))

# %% Plain rendering (shiftlens.formats.PLAIN_TEMPLATE): spans are known by construction
prompts = load_prompts(source)
print(prompts.report)
for p in prompts[:3]:
    print(f"\n{p.id}: instruction {[p.text[s:e] for s, e in p.char_spans()['instruction']]}, "
          f"reference {p.reference!r}\n{marked(p)}")

# %% The same records in a model's chat template (the spans move with the text)
tok = build_tokenizer(out / "tokenizer")  # a small offline tokenizer with a chat template
chat = load_prompts(source, tokenizer=tok, system="Answer briefly.")
print(f"\nchat rendering ({chat.report.rendering}):\n{marked(chat[0])}")

# %% Save in the native schema (atomic; reloads identically)
save_prompts(prompts, out / "prompts.jsonl")
assert load_prompts(out / "prompts.jsonl") == prompts
print(f"\nwrote {out / 'prompts.jsonl'}")
