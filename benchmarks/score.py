"""TruthfulQA MC scoring on llama.cpp: shared prefixes decoded once against every sequence decoded
whole, in one run, same items and threads. Prints JSON and a table.

Each item is lm-eval's 6-shot primer + the question, scored once per answer choice (MC1 and MC2
lists), as `isara eval --suite truthfulness` does. Needs ../shared/data or --data.

  .venv/bin/python benchmarks/score.py [--items 50] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from isara_lite.backends.base import create_backend
from isara_lite.backends.llamacpp_batch import BatchDecoder
from isara_lite.backends.scoring import continuation_tokens
from isara_lite.evaluation import datasets as ds
from isara_lite.evaluation.protocol import subset
from isara_lite.evaluation.truthfulness import QA_PRIMER
from isara_lite.models import load_card

ROOT = Path(__file__).resolve().parent.parent


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--items", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    args = ap.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"benchmarks/score.py: public data not found at {args.data} (pass --data)")

    items = subset(ds.truthfulqa_mc(args.data), args.items)
    backend = create_backend("llamacpp", load_card(args.model), threads=args.threads)
    backend.load(None)

    def encode(text, bos):
        return backend.llm.tokenize(text.encode("utf-8"), add_bos=bos, special=True)

    pairs = list(dict.fromkeys((QA_PRIMER + f"\n\nQ: {it['question']}\nA:", " " + a)
                               for it in items for a, _ in it["mc1"] + it["mc2"]))
    seqs = [continuation_tokens(encode, p, c) for p, c in pairs]
    decoder = BatchDecoder(backend.llm, backend.threads, backend.max_seqs)
    runs = {}
    for name, share in (("whole sequences", False), ("shared prefixes", True)):
        t0 = time.perf_counter()
        runs[name] = (decoder.score(seqs, share=share), time.perf_counter() - t0)
    (base, t_base), (fast, t_fast) = runs["whole sequences"], runs["shared prefixes"]
    report = {"model": args.model, "threads": backend.threads, "items": len(items), "pairs": len(pairs),
              "tokens": sum(len(s) for s, _ in seqs),
              "seconds": {"whole sequences": round(t_base, 1), "shared prefixes": round(t_fast, 1)},
              "speedup": round(t_base / t_fast, 2),
              "max_abs_diff_nats": round(max(abs(a - b) for a, b in zip(base, fast)), 4),
              "mc1_choice_agreement": _agree(items, pairs, base, fast)}
    print(json.dumps(report, indent=2))
    table = Table(title=f"TruthfulQA MC scoring, {len(items)} items, {len(pairs)} pairs, {backend.threads} threads")
    for col in ("path", "seconds", "pairs/s", "vs whole"):
        table.add_column(col, justify="right")
    for name, (_, t) in runs.items():
        table.add_row(name, f"{t:.1f}", f"{len(pairs) / t:.1f}", f"{t_base / t:.2f}x")
    Console().print(table)


def _agree(items, pairs, base, fast) -> float:
    """Share of items whose likeliest MC1 choice is the same on both paths (batch-shape noise aside)."""
    at = {p: i for i, p in enumerate(pairs)}
    same = 0
    for it in items:
        prompt = QA_PRIMER + f"\n\nQ: {it['question']}\nA:"
        keys = [at[(prompt, " " + a)] for a, _ in it["mc1"]]
        same += max(keys, key=lambda k: base[k]) == max(keys, key=lambda k: fast[k])
    return round(same / len(items), 3)


if __name__ == "__main__":
    main()
