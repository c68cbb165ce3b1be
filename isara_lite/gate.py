"""The refusal gate (ours, not in the paper): the seeds decide whether a question is refused, the
model writes the words.

Greedy decoding refuses when a refusal opener is the likeliest first token; for a small model whose
helpful answers open with many different words that is close to noise (README, Results). The gate
asks a question classifier fitted on the seeds alone instead: a logistic regression on the seeds'
question embeddings, labelled by whether each seed answer refuses, its strength C chosen by
cross-validation on the seeds. The model answers greedily as always; where its answer disagrees
with the classifier, the answer is written again after an opener of the right kind (the model's
likeliest refusal opener, or its likeliest first word of a helpful seed answer). With gate.mode
"refuse" only the first kind is rewritten: the classifier adds refusals, the model's own stand.

The classifier is a few hundred numbers, saved as gate.json beside every adapter of the run, so
`isara chat`, `isara eval` and `isara export` carry it. A plain llama.cpp or transformers user of an
exported model does not get it (README, Deviations).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .backends.base import Sampling
from .errors import IsaraError
from .files import atomic_write_json
from .prompts import cut
from .refusal import REFUSAL_OPENERS, is_refusal

FILE = "gate.json"
EMBEDDER = "all-MiniLM-L6-v2"  # retrieval.Embedder's default; the weights only mean something in its space
# The refusal openers the detector recognizes on their own ("Sorry" alone it does not).
REFUSERS = tuple(o for o in REFUSAL_OPENERS if is_refusal(o))


@dataclass
class Gate:
    weights: list[float]
    bias: float
    C: float
    helpful_openers: list[str]
    refusal_openers: list[str]
    seeds: int
    refusals: int
    seed_auroc: float  # out-of-fold, on the seeds: how well it is expected to separate
    embedder: str = EMBEDDER
    mode: str = "both"  # or "refuse": only add refusals (recipe gate.mode)

    def refuse(self, embeddings: np.ndarray) -> np.ndarray:
        """True where a question with this embedding should be refused (P >= 0.5)."""
        return embeddings @ np.asarray(self.weights, dtype=np.float32) + self.bias >= 0.0

    def save(self, path: Path) -> None:
        atomic_write_json(path, asdict(self))


def load_gate(path: Path | None) -> Gate | None:
    """The gate in PATH: a gate.json file, or a directory (an adapter) holding one; None if there is none."""
    if path is None:
        return None
    path = Path(path)
    if not path.exists():
        return None
    if path.is_dir():
        path = path / FILE
        if not path.is_file():
            return None
    try:
        gate = Gate(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError) as e:
        raise IsaraError(f"{path}: not a gate file ({e})") from None
    if gate.embedder != EMBEDDER:
        raise IsaraError(f"{path}: embedder: fitted with {gate.embedder}, this isara_lite embeds with {EMBEDDER}")
    return gate


def fit_gate(seeds, embedder, seed: int = 0, mode: str = "both") -> Gate:
    """The gate fitted on seed Samples; C by 5-fold cross-validation on the seeds (log loss)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    from .stats import logistic_cv

    y = np.array([is_refusal(s.response) for s in seeds])
    if min(y.sum(), (~y).sum()) < 3:
        raise IsaraError(f"gate.enabled: the seeds hold {int(y.sum())} refusals and {int((~y).sum())} answers; "
                         f"the gate needs at least 3 of each to learn which questions are refused")
    x = embedder([s.prompt for s in seeds])
    folds = StratifiedKFold(min(5, int(y.sum()), int((~y).sum())), shuffle=True, random_state=seed)
    model = logistic_cv(x, y, np.logspace(-4, 4, 10), folds)
    c = float(model.C)
    oof = cross_val_predict(LogisticRegression(C=c, max_iter=5000), x, y, cv=folds, method="predict_proba")[:, 1]
    helpful = sorted({s.response.split()[0] for s in seeds if s.response.split() and not is_refusal(s.response)}
                     - {o.split()[0] for o in REFUSAL_OPENERS})
    return Gate(weights=[float(w) for w in model.coef_[0]], bias=float(model.intercept_[0]), C=c,
                helpful_openers=helpful, refusal_openers=list(REFUSERS), seeds=len(seeds), refusals=int(y.sum()),
                seed_auroc=float(roc_auc_score(y, oof)), mode=mode)


def _likeliest(backend, prompts: list[str], openers: list[str]) -> list[str]:
    lps = np.asarray(backend.score([(p, o) for p in prompts for o in openers]), dtype=float)
    return [openers[int(i)] for i in lps.reshape(len(prompts), len(openers)).argmax(axis=1)]


def apply_gate(backend, renderer, gate: Gate, embedder, questions: list[str], answers: list[str],
               sampling: Sampling) -> list[dict]:
    """The gated answer to each question, given the model's own (greedy) answer:
    {response, refused, gate_refuses, rewritten}."""
    refuse = gate.refuse(embedder(list(questions))) if questions else np.zeros(0, bool)
    redo = [i for i, a in enumerate(answers) if bool(refuse[i]) != is_refusal(a)
            and (refuse[i] or gate.mode == "both")]
    prompts = {i: renderer.chat_prompt(questions[i]) for i in redo}
    openers = {}
    for kind, want in ((gate.refusal_openers, True), (gate.helpful_openers, False)):
        idx = [i for i in redo if bool(refuse[i]) == want]
        if idx:
            openers |= dict(zip(idx, _likeliest(backend, [prompts[i] for i in idx], kind)))
    out = [{"response": a, "refused": is_refusal(a), "gate_refuses": bool(r), "rewritten": False}
           for a, r in zip(answers, refuse)]
    if redo:
        for i, g in zip(redo, backend.generate([prompts[i] + openers[i] for i in redo], sampling)):
            text = cut(openers[i] + g.text)
            out[i] |= {"response": text, "refused": is_refusal(text), "rewritten": True}
    return out


def choose_gate(option: str | None, adapter: Path | None) -> Gate | None:
    """--gate: None takes the adapter's own gate if it has one; "none" turns it off; else a gate.json
    file (or a directory holding one), for example a run's, to put in front of the base model."""
    if option is None:
        return load_gate(adapter)
    if option == "none":
        return None
    gate = load_gate(Path(option))
    if gate is None:
        raise IsaraError(f"--gate {option}: no {FILE} there")
    return gate
