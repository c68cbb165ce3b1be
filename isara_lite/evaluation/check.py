"""The built-in check run after every iteration: does the model refuse held-out harmful prompts
and still answer held-out benign ones? A rule-based refusal detector is enough to see the trend;
the full evaluation suites are separate.
"""

from __future__ import annotations

import math

import numpy as np

from ..backends.base import Sampling
from ..prompts import cut
from ..refusal import REFUSAL_OPENERS, is_refusal
from ..stats import show, stored_ci, wilson

def run_check(backend, renderer, harmful: list[str], benign: list[str], max_tokens: int = 48,
              batch_size: int = 16, on_batch=None) -> list[dict]:
    """Greedy answers to both prompt sets, one row per prompt with the detector's verdict."""
    prompts = [("harmful", p) for p in harmful] + [("benign", p) for p in benign]
    sampling = Sampling(max_tokens=max_tokens, temperature=0.0, stop=renderer.fmt.stops)
    rows = []
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i:i + batch_size]
        outs = backend.generate([renderer.chat_prompt(p) for _, p in chunk], sampling)
        for (kind, p), o in zip(chunk, outs):
            answer = cut(o.text)
            rows.append({"set": kind, "prompt": p, "response": answer, "refused": is_refusal(answer)})
        if on_batch:
            on_batch(len(chunk), sum(o.completion_tokens for o in outs))
    return rows


def summarize(rows: list[dict], label: str) -> dict:
    h = [r["refused"] for r in rows if r["set"] == "harmful"]
    b = [not r["refused"] for r in rows if r["set"] == "benign"]
    return {"model": label, "harmful_refused": sum(h) / max(1, len(h)),
            "benign_answered": sum(b) / max(1, len(b)), "n_harmful": len(h), "n_benign": len(b),
            "harmful_refused_ci": wilson(sum(h), len(h)), "benign_answered_ci": wilson(sum(b), len(b))}


_N = {"harmful_refused": "n_harmful", "benign_answered": "n_benign"}


def describe(summary: dict, key: str) -> str:
    """One check rate as printed: "46% [33-60] of 48". metrics.json files written before the
    intervals have no KEY_ci: the interval is then recomputed from the rate and n."""
    n = summary[_N[key]]
    return f"{show(summary[key], 'pct0', stored_ci(summary, key, n))} of {n}"


CHECK_TITLE = "Built-in check (held-out prompts, greedy)"


def check_rows(summaries: list[dict]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the check table: one row per model or iteration, each rate with its interval."""
    return (["model", "harmful refused", "benign answered"],
            [[s["model"], describe(s, "harmful_refused"), describe(s, "benign_answered")] for s in summaries])


def refusal_scores(backend, renderer, prompts: list[str]) -> list[float]:
    """log P(the answer opens with one of REFUSAL_OPENERS), one per prompt, under the loaded adapter."""
    n = len(REFUSAL_OPENERS)
    lps = backend.score([(renderer.chat_prompt(p), o) for p in prompts for o in REFUSAL_OPENERS])
    return [float(np.logaddexp.reduce(lps[i * n:(i + 1) * n])) for i in range(len(prompts))]


def separation(harmful: list[float], benign: list[float], benign_answered: float = 0.8) -> dict:
    """How well refusal scores tell harmful from benign, whatever the threshold.
    auroc: the chance a harmful prompt scores above a benign one (ties count half).
    best_harmful_refused: the share of harmful prompts a threshold refuses when it is set to answer
    `benign_answered` of the benign prompts (rounded up to whole prompts), the most any threshold can."""
    if not harmful or not benign:
        raise ValueError("separation needs scores for both sets")
    from sklearn.metrics import roc_auc_score  # here: sklearn takes a second to import, the loop never needs it

    auroc = float(roc_auc_score([1] * len(harmful) + [0] * len(benign), list(harmful) + list(benign)))
    keep = math.ceil(benign_answered * len(benign))  # benign prompts left at or below the threshold
    threshold = sorted(benign)[keep - 1] if keep else -math.inf
    refused = sum(h > threshold for h in harmful) / len(harmful)
    return {"auroc": auroc, "best_harmful_refused": refused, "benign_answered": keep / len(benign)}
