"""OpenAI-style chat messages -> prompts: the analysed user turn is the instruction.

Run: python examples/prompts_messages.py [--out out/prompts_messages] [--file YOUR_chats.jsonl]
Without --file it writes two conversations of its own. Offline, a few seconds.
"""

# %%
from __future__ import annotations

import argparse
import json
from pathlib import Path

from shiftlens import InstructionPrompt, load_prompts

ap = argparse.ArgumentParser()
ap.add_argument("--out", default="out/prompts_messages")
ap.add_argument("--file", default=None, help="a JSONL file of {'messages': [...]} records")
args = ap.parse_args()
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)

# %% A JSONL file of conversations
source = Path(args.file) if args.file else out / "chats.jsonl"
if not args.file:
    chats = [
        {"id": "chat-1", "messages": [
            {"role": "system", "content": "You are a careful assistant."},
            {"role": "user", "content": "Convert 3 km to metres."},
            {"role": "assistant", "content": "3000 metres."},
            {"role": "user", "content": "And 5 km?"},
            {"role": "assistant", "content": "5000 metres."}]},
        {"id": "chat-2", "messages": [{"role": "user", "content": "Name a colour of the sky."}]},
    ]
    source.write_text("".join(json.dumps(c) + "\n" for c in chats))

# %% The last user turn of each conversation (default turn=-1); earlier turns are template
prompts = load_prompts(source)
print(prompts.report)
for p in prompts:
    ins = [p.text[s:e] for s, e in p.char_spans()["instruction"]]
    print(f"\n{p.id} (turn {p.meta['turn']} of {p.meta['n_user_turns']}): instruction {ins}, "
          f"reference {p.reference!r}\n{p.text}")

# %% Every user turn as its own prompt
every = load_prompts(source, turn="all")
print("turn='all':", [(p.id, p.reference) for p in every])

# %% One conversation in code
p = InstructionPrompt.from_messages([{"role": "user", "content": "Spell 'cat' backwards."},
                                     {"role": "assistant", "content": "tac"}], id="inline")
print(f"\nfrom_messages: instruction {p.text[slice(*p.char_spans()['instruction'][0])]!r}")
