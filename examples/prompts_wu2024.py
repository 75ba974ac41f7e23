"""The Wu et al. (2024) release: FinalDataset.tsv prompts and AnnotatedDataset.tsv ratings.

Run: python examples/prompts_wu2024.py [--out out/prompts_wu2024]
         [--final FinalDataset.tsv --ratings AnnotatedDataset.tsv --model vicuna_7B]
The paper's files are GPL-3.0 and not shipped: pass your own copies, or the script writes three
made-up rows in the same format. Offline, a few seconds.
"""

# %%
from __future__ import annotations

import argparse
from pathlib import Path

from shiftlens import load_prompts
from shiftlens.wu2024 import load_wu2024_ratings

ap = argparse.ArgumentParser()
ap.add_argument("--out", default="out/prompts_wu2024")
ap.add_argument("--final", default=None, help="FinalDataset.tsv of the paper's release")
ap.add_argument("--ratings", default=None, help="AnnotatedDataset.tsv of the paper's release")
ap.add_argument("--model", default="vicuna_7B")
args = ap.parse_args()
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)

# %% The format: tab-separated, /n for a newline, spans split by |||, the context after &&&
final = Path(args.final) if args.final else out / "FinalDataset.tsv"
ratings = Path(args.ratings) if args.ratings else out / "AnnotatedDataset.tsv"
if not args.final:
    final.write_text(
        "ID\tPrompt\tResponse\tInstruct&Context\n"
        "demo_task_0\tList three fruits./n/nInput: any/n/nOutput:\tapple, pear, fig\t"
        "List three fruits.&&&any\n"
        "demo_task_1\tWrite a short title. Use at most four words.\tQuiet Harbour\t"
        "Write a short title.|||Use at most four words.\n"
        "demo_task_2\tExplain the proverb: still waters run deep.\tCalm people may be profound.\t"
        "Explain the proverb:&&&still waters run deep.\n", encoding="utf-8")
if not args.ratings:
    ratings.write_text(
        "File\tModel\tPrompt\tReference\tInstruct\tResponse\tRating\n"
        "demo_task_0.pkl\tvicuna_7B\tList three fruits./n/nInput: any/n/nOutput:\t"
        "apple, pear, fig\tList three fruits.&&&any\tBanana, kiwi, plum.\t4\n"
        "demo_task_1.pkl\tvicuna_7B\tWrite a short title. Use at most four words.\t"
        "Quiet Harbour\tWrite a short title.|||Use at most four words.\t"
        "A Very Long Title About A Harbour\t1\n"
        "demo_task_2.pkl\tvicuna_7B\tExplain the proverb: still waters run deep.\t"
        "Calm people may be profound.\tExplain the proverb:&&&still waters run deep.\t"
        "Quiet people can be deep thinkers.\t3\n", encoding="utf-8")

# %% The prompts with the authors' spans (detected from the header)
prompts = load_prompts(final)
print(prompts.report)
for p in prompts[:3]:
    cs = p.char_spans()
    print(f"{p.id} [{p.category}]: instruction {[p.text[s:e] for s, e in cs['instruction']]}, "
          f"context {[p.text[s:e] for s, e in cs['context']]}")

# %% One model's rated responses: followed (rating >= 2) or not
r = load_wu2024_ratings(ratings, args.model)
print(f"\n{r.model}: {len(r.prompts)} prompts, {len(r.ratings)} rated, "
      f"{sum(r.followed.values())} followed, {len(r.unrated)} unrated")
print(r.to_frame()[["id", "rating", "followed"]].to_string(index=False))
# next: res = shiftlens.instruction_sensitivity(pair, r.prompts, response=list(r.responses))
#       shiftlens.lenses.attribution.followed_comparison(res, r.followed)
