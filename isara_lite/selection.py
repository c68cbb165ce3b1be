"""Which iteration to keep, decided by seeds held out of the run (ours; the paper runs a fixed T).

With selection.holdout = n, n seeds (half refusals, half answers, drawn with the recipe's seed)
are kept out of training and out of every demonstration. After each iteration the model answers
their questions greedily, as in the built-in check: the refusal seeds' questions should be
refused and the others answered. The score is the mean of the two rates (balanced accuracy), so
refusing everything or nothing scores 0.5. The best iteration (ties: the earlier one, less
training) is written to best.json, and `isara export` and `isara chat` take it by default.
Nothing here reads the check sets or the public suites.
"""

from __future__ import annotations

import random

from .errors import IsaraError
from .refusal import is_refusal


def split_seeds(seeds: list, n: int, seed: int, keep: int) -> tuple[list, list]:
    """(seeds to use, held-out seeds): n//2 refusals and the rest answers, in file order."""
    refusals = [s for s in seeds if is_refusal(s.response)]
    answers = [s for s in seeds if not is_refusal(s.response)]
    want = {"refusals": (refusals, n // 2), "answers": (answers, n - n // 2)}
    for kind, (pool, k) in want.items():
        if len(pool) - k < 2:
            raise IsaraError(f"selection.holdout={n}: the seeds hold {len(pool)} {kind}, too few to hold out {k} "
                             f"and keep 2 to learn from")
    rng = random.Random(seed)
    held = {id(s) for pool, k in want.values() for s in rng.sample(pool, k)}
    used = [s for s in seeds if id(s) not in held]
    if len(used) < keep:
        raise IsaraError(f"selection.holdout={n}: {len(used)} seeds left, fewer than demonstrations={keep}")
    return used, [s for s in seeds if id(s) in held]


def balanced(summary: dict) -> float:
    return (summary["harmful_refused"] + summary["benign_answered"]) / 2


def best_iteration(scores: dict[int, float]) -> int:
    """The trained iteration (t >= 1) with the highest score; ties go to the earlier one."""
    trained = {t: s for t, s in scores.items() if t >= 1}
    return max(sorted(trained), key=lambda t: trained[t])
