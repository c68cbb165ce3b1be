"""Do seed or check prompts copy the public suites? For each file given (records with a "prompt"
field; by default the safety seeds, the 35 boundary seeds and the two safety check sets), per suite
set: the file's prompts whose all-MiniLM-L6-v2 cosine to some suite prompt reaches --threshold (0.75:
close rewordings, "How do I kill a Python process that is stuck?" against "How can I kill a Python
process?", 0.94, though a pair near the line may only share a topic), with the nearest pairs; and the
suite's prompts with such a file prompt (suite_items), the count that bounds how far a suite figure
can move through those prompts themselves. The suites, in full: AdvBench, HH-RLHF's red-team
openers, XSTest safe and unsafe, TruthfulQA's questions and AlpacaEval's instructions. Prints JSON
and a table.

    python benchmarks/seed_overlap.py [--data ../shared/data] [--threshold 0.75] [FILE.jsonl ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from isara_lite.data import read_prompts
from isara_lite.errors import IsaraError
from isara_lite.evaluation import datasets as ds, safety
from isara_lite.retrieval import Embedder

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FILES = [ROOT / "recipes" / "seeds" / "safety.jsonl", ROOT / "recipes" / "seeds" / "safety_boundary.jsonl",
                 ROOT / "recipes" / "heldout" / "safety_harmful.jsonl",
                 ROOT / "recipes" / "heldout" / "safety_benign.jsonl"]


def suite_prompts(data) -> dict[str, list[str]]:
    """Every prompt of every suite: the safety suite's four sets as `isara eval --full` reads them."""
    full = safety.prompt_sets(data, dict.fromkeys(safety.SIZES))
    return {**{k: [q for q, _ in v] for k, v in full.items()},
            "truthfulqa": [r["question"] for r in ds.truthfulqa(data)],
            "alpaca_eval": [r["instruction"] for r in ds.alpaca_eval(data)]}


def overlap(prompts: list[str], suites: dict[str, np.ndarray], texts: dict[str, list[str]], embedder,
            threshold: float) -> dict:
    """Per suite set: how many PROMPTS reach THRESHOLD against it, and those pairs, nearest first; and
    how many of its prompts reach THRESHOLD against one of PROMPTS (suite_items)."""
    x = embedder(prompts)
    out = {}
    for name, vectors in suites.items():
        sims = x @ vectors.T
        best, at = sims.max(axis=1), sims.argmax(axis=1)
        close = [i for i in np.argsort(-best) if best[i] >= threshold]
        out[name] = {"count": len(close), "suite_items": int((sims.max(axis=0) >= threshold).sum()),
                     "pairs": [{"prompt": prompts[i], "suite_prompt": texts[name][at[i]],
                                "cosine": round(float(best[i]), 3)} for i in close]}
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="*", type=Path, help="prompt files (.jsonl with a 'prompt' field)")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--threshold", type=float, default=0.75)
    args = ap.parse_args()
    files = args.files or DEFAULT_FILES
    try:
        texts = suite_prompts(args.data)
        prompts = {str(f): [r["prompt"] for r in read_prompts(f)] for f in files}
    except IsaraError as e:
        raise SystemExit(f"benchmarks/seed_overlap.py: {e}") from None
    embedder = Embedder()
    suites = {k: embedder(v) for k, v in texts.items()}
    report = {"threshold": args.threshold, "embedder": "all-MiniLM-L6-v2",
              "suite_sizes": {k: len(v) for k, v in texts.items()},
              "files": {f: {"prompts": len(p), **overlap(p, suites, texts, embedder, args.threshold)}
                        for f, p in prompts.items()}}
    print(json.dumps(report, indent=2))

    t = Table(title=f"prompts within cosine {args.threshold} of a suite prompt (all-MiniLM-L6-v2)",
              caption="per suite set: the file's prompts so near (in brackets: the suite's prompts so near "
                      "one of them)")
    for col in ("file", "prompts", *texts, "nearest pair"):
        t.add_column(col, justify="left" if col in ("file", "nearest pair") else "right")
    for f, r in report["files"].items():
        pairs = [p for k in texts for p in r[k]["pairs"]]
        top = max(pairs, key=lambda p: p["cosine"], default=None)
        t.add_row(Path(f).name, str(r["prompts"]), *[f"{r[k]['count']} ({r[k]['suite_items']})" for k in texts],
                  f"{top['cosine']:.2f} {top['prompt']!r} ~ {top['suite_prompt']!r}" if top else "")
    Console(width=200).print(t)


if __name__ == "__main__":
    main()
