"""The refusal gate (ours, not in the paper): the seeds decide whether a question is refused, the
model writes the words.

Greedy decoding refuses when a refusal opener is the likeliest first token; for a small model whose
helpful answers open with many different words that is close to noise (README, Results). The gate
asks a question classifier fitted on the seeds alone instead: a logistic regression on the seeds'
question embeddings, labelled by whether each seed answer refuses, its strength C chosen by
cross-validation on the seeds. The model answers greedily as always; where its answer disagrees
with the classifier, the answer is written again after an opener of the right kind: the model's
likeliest of the refusal seed answers' first four words (a refusal so written ends with its first
sentence), or of the helpful ones' first word. With gate.mode "refuse" only the first kind is
rewritten: the classifier adds refusals, the model's own stand. With gate.abstain the gate stands
aside, leaving the model's own answer, for a question farther from every seed question than the
seeds are from each other (below): 64 seeds say little about a request unlike all of them, and
there the classifier flags ordinary tasks (32% of AlpacaEval's instructions; README, Results).

The classifier reads one of two representations of the question (gate.features): its MiniLM
embedding, or the untrained model's own hidden state after one layer, at the chat prompt's last
token, the layer picked by the seeds' cross-validated log loss. The model knows more about intent
than a topic embedding does ("kill a Python process"), and on the seeds it separates them better
(README, Deviations).

The classifier is a few hundred numbers, saved as gate.json beside every adapter of the run, so
`isara chat`, `isara eval` and `isara export` carry it. A plain llama.cpp or transformers user of an
exported model does not get it (README, Deviations).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from .backends.base import Sampling
from .errors import IsaraError
from .files import atomic_write_json
from .prompts import cut, sentences
from .refusal import REFUSAL_OPENERS, is_refusal

FILE = "gate.json"
FEATURES = ("minilm", "model")
MODES = ("both", "refuse")
EMBEDDER = "all-MiniLM-L6-v2"  # retrieval.Embedder's default; the weights only mean something in its space
# The refusal openers the detector recognizes on their own ("Sorry" alone it does not): the fallback
# where no seed refusal opens with words it reads as one.
REFUSERS = tuple(o for o in REFUSAL_OPENERS if is_refusal(o))
# How many of a refusal seed's first words make an opener: enough to say what is declined ("I can't
# help with"). Two words ("I can't") let the model go on to comply: "I can't wait to start. Here's a
# plan ..." (README, Deviations).
OPENER_WORDS = 4
REFUSAL_TOKENS = 64  # room for one sentence
MAX_OPENERS = 8  # the most common: each is scored against every rewritten question


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
    features: str = "minilm"  # or "model": the hidden state of `model` (a card) after `layer`
    model: str = ""
    layer: int = 0
    # gate.abstain: the MiniLM cosine to the nearest seed question below which the gate stands aside
    # (None: it decides every question), and the seed questions to measure it against
    reach: float | None = None
    seed_questions: list[str] = field(default_factory=list)

    def within_reach(self, embedder, questions: list[str]) -> np.ndarray:
        """True where a question is near enough some seed question for the gate to decide it."""
        if self.reach is None or not questions:
            return np.ones(len(questions), bool)
        key = tuple(self.seed_questions)
        if self.__dict__.get("_seed_vectors", (None,))[0] != key:  # not a field: asdict and save leave it out
            self._seed_vectors = (key, embedder(list(key)))
        return (embedder(list(questions)) @ self._seed_vectors[1].T).max(axis=1) >= self.reach

    def refuse(self, x: np.ndarray) -> np.ndarray:
        """True where a question with these features (question_features) should be refused (P >= 0.5)."""
        return x @ np.asarray(self.weights, dtype=np.float32) + self.bias >= 0.0

    def question_features(self, embedder, questions: list[str]) -> np.ndarray:
        if self.features == "model":
            return ModelStates.of(self.model)(questions)[:, self.layer]
        return embedder(list(questions))

    def save(self, path: Path) -> None:
        atomic_write_json(path, asdict(self))


class ModelStates:
    """A model's hidden states at the last token of each question's chat prompt, every layer, read
    with transformers on the CPU whatever backend generates: the gate needs the untrained model's
    states at fit and at use alike, and llama.cpp does not hand out a middle layer's."""

    _loaded: dict[str, "ModelStates"] = {}

    def __init__(self, name: str):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from .models import load_card
        from .prompts import Renderer, get_format

        card = load_card(name)
        self.renderer = Renderer(get_format(card.chat_format), card.system)
        self.tok = AutoTokenizer.from_pretrained(card.hf_source(), trust_remote_code=card.trust_remote_code)
        self.model = AutoModelForCausalLM.from_pretrained(card.hf_source(), dtype=torch.float32, use_safetensors=True,
                                                          trust_remote_code=card.trust_remote_code).eval()

    @classmethod
    def of(cls, name: str) -> "ModelStates":
        if name not in cls._loaded:
            cls._loaded[name] = cls(name)
        return cls._loaded[name]

    def __call__(self, questions: list[str]) -> np.ndarray:
        """[question, layer (0: the embeddings), hidden]."""
        import torch

        out = []
        with torch.no_grad():
            for q in questions:  # one at a time: no padding to get wrong, and it is a 1-token-out forward
                ids = self.tok(self.renderer.chat_prompt(q), return_tensors="pt", add_special_tokens=True)
                hs = self.model(**ids, output_hidden_states=True).hidden_states
                out.append(torch.stack([h[0, -1] for h in hs]).numpy())
        return np.stack(out) if out else np.zeros((0, self.model.config.num_hidden_layers + 1,
                                                   self.model.config.hidden_size), np.float32)


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
    if gate.mode not in MODES:
        raise IsaraError(f"{path}: mode: '{gate.mode}' is not one of {', '.join(MODES)}")
    if gate.features not in FEATURES:
        raise IsaraError(f"{path}: features: '{gate.features}' is not one of {', '.join(FEATURES)}")
    if (gate.features == "minilm" or gate.reach is not None) and gate.embedder != EMBEDDER:
        raise IsaraError(f"{path}: embedder: fitted with {gate.embedder}, this isara_lite embeds with {EMBEDDER}")
    if gate.reach is not None and (not isinstance(gate.reach, (int, float)) or not gate.seed_questions):
        raise IsaraError(f"{path}: reach: needs a number and the seed_questions to measure it against")
    return gate


def fit_probe(x: np.ndarray, y: np.ndarray, folds, standardize: bool = False, splits=()):
    """Logistic regression of Y on X, C by cross-validated log loss on FOLDS: (weights, bias, C,
    out-of-fold P on FOLDS, out-of-fold log loss averaged over FOLDS and SPLITS at that C).
    standardize: fitted on standardized X (hidden states vary in scale by orders of magnitude), the
    scaling then folded into the weights, so they apply to raw X."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.model_selection import cross_val_predict
    from sklearn.preprocessing import StandardScaler

    from .stats import logistic_cv

    scaler = StandardScaler().fit(x) if standardize else None
    mean, scale = (scaler.mean_, scaler.scale_) if scaler else (0.0, 1.0)
    z = (x - mean) / scale
    model = logistic_cv(z, y, np.logspace(-4, 4, 10), folds)
    oofs = [cross_val_predict(LogisticRegression(C=model.C, max_iter=5000), z, y, cv=f, method="predict_proba")[:, 1]
            for f in (folds, *splits)]
    w = model.coef_[0] / scale
    return (w, float(model.intercept_[0] - np.sum(model.coef_[0] * mean / scale)), float(model.C), oofs[0],
            float(np.mean([log_loss(y, o) for o in oofs])))


def fit_layers(states: np.ndarray, y: np.ndarray, seed: int, k: int = 5) -> dict[int, tuple]:
    """fit_probe on every layer's states ([question, layer, hidden]; layer 0, the embeddings, left out),
    its log loss averaged over five k-fold splits of the seeds (seed, seed + 1, ...): one split's
    choice of layer varies with the split."""
    from sklearn.model_selection import StratifiedKFold

    folds, *splits = [StratifiedKFold(k, shuffle=True, random_state=seed + i) for i in range(5)]
    return {layer: fit_probe(states[:, layer], y, folds, True, splits) for layer in range(1, states.shape[1])}


def fit_gate(seeds, embedder, seed: int = 0, mode: str = "both", features: str = "minilm", model: str = "",
             abstain: float = 0.0) -> Gate:
    """The gate fitted on seed Samples; C by 5-fold cross-validation on the seeds (log loss). With
    features "model", on MODEL's (a card's) hidden states, at the layer with the best such log loss
    (fit_layers). ABSTAIN > 0: its reach, the ABSTAIN quantile of each seed question's cosine to its
    nearest other seed question (MiniLM, interpolated), so that about a share ABSTAIN of the seeds,
    each held out in turn, would fall out of reach, rounded up to whole seeds (4 of 64 at 0.05)."""
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    y = np.array([is_refusal(s.response) for s in seeds])
    if min(y.sum(), (~y).sum()) < 3:
        raise IsaraError(f"gate.enabled: the seeds hold {int(y.sum())} refusals and {int((~y).sum())} answers; "
                         f"the gate needs at least 3 of each to learn which questions are refused")
    folds = StratifiedKFold(min(5, int(y.sum()), int((~y).sum())), shuffle=True, random_state=seed)
    questions = [s.prompt for s in seeds]
    vectors = embedder(questions)  # MiniLM: the features of a minilm gate, and what the reach measures
    if features == "model":
        fits = fit_layers(ModelStates.of(model)(questions), y, seed, folds.n_splits)
        layer = min(fits, key=lambda k: fits[k][4])
        w, b, c, oof, _ = fits[layer]
    else:
        layer, model = 0, ""
        w, b, c, oof, _ = fit_probe(vectors, y, folds)
    helpful = sorted({s.response.split()[0] for s in seeds if s.response.split() and not is_refusal(s.response)}
                     - {o.split()[0] for o in REFUSAL_OPENERS})
    refusers = Counter(o for s in seeds if is_refusal(s.response)
                       for o in [" ".join(s.response.split()[:OPENER_WORDS])] if is_refusal(o))
    refusers = sorted(o for o, _ in refusers.most_common(MAX_OPENERS)) or list(REFUSERS)
    nearest = np.where(np.eye(len(vectors), dtype=bool), -np.inf, vectors @ vectors.T).max(axis=1)
    reach = float(np.quantile(nearest, abstain)) if abstain > 0 else None
    return Gate(weights=[float(v) for v in w], bias=b, C=c, helpful_openers=helpful,
                refusal_openers=refusers, seeds=len(seeds), refusals=int(y.sum()),
                seed_auroc=float(roc_auc_score(y, oof)), mode=mode, features=features, model=model, layer=layer,
                reach=reach, seed_questions=questions if abstain > 0 else [])


def fit_recipe_gate(recipe, seeds, embedder) -> Gate:
    """The gate a recipe describes (gate.mode, gate.features, gate.abstain), fitted on SEEDS."""
    g = recipe.gate
    return fit_gate(seeds, embedder, recipe.seed, g.mode, g.features, recipe.model, g.abstain)


def describe(gate: Gate) -> str:
    return (f"fitted on {gate.seeds} seeds ({gate.refusals} refusals), {gate.features}"
            f"{f' layer {gate.layer}' if gate.layer else ''}, C={gate.C:.3g}, "
            f"out-of-fold AUROC on the seeds {gate.seed_auroc:.2f}"
            + ("" if gate.reach is None else f", stands aside below cosine {gate.reach:.3f} to the nearest seed"))


def gate_only(recipe, out: Path, log=print) -> Gate:
    """`isara gate`: the recipe's gate fitted on all its seeds, with no loop and no training, saved as
    OUT, to put in front of the untrained model (`isara eval|chat --gate OUT`): the setting measured
    on the full suites (README, Results)."""
    from .loop import load_seeds
    from .models import load_card
    from .prompts import Renderer, get_format
    from .retrieval import Embedder

    card = load_card(recipe.model)
    gate = fit_recipe_gate(recipe, load_seeds(recipe, Renderer(get_format(card.chat_format), card.system)), Embedder())
    out.parent.mkdir(parents=True, exist_ok=True)
    gate.save(out)
    log(f"gate: {describe(gate)}; saved {out}")
    return gate


def _likeliest(backend, prompts: list[str], openers: list[str]) -> list[str]:
    lps = np.asarray(backend.score([(p, o) for p in prompts for o in openers]), dtype=float)
    return [openers[int(i)] for i in lps.reshape(len(prompts), len(openers)).argmax(axis=1)]


def apply_gate(backend, renderer, gate: Gate, embedder, questions: list[str], answers: list[str],
               sampling: Sampling) -> list[dict]:
    """The gated answer to each question, given the model's own (greedy) answer:
    {response, refused, gate_refuses, in_reach, rewritten}."""
    refuse = gate.refuse(gate.question_features(embedder, questions)) if questions else np.zeros(0, bool)
    reach = gate.within_reach(embedder, questions)
    redo = [i for i, a in enumerate(answers) if reach[i] and bool(refuse[i]) != is_refusal(a)
            and (refuse[i] or gate.mode == "both")]
    out = [{"response": a, "refused": is_refusal(a), "gate_refuses": bool(r), "in_reach": bool(n), "rewritten": False}
           for a, r, n in zip(answers, refuse, reach)]
    for kind, want in ((gate.refusal_openers, True), (gate.helpful_openers, False)):
        idx = [i for i in redo if bool(refuse[i]) == want]
        if not idx:
            continue
        prompts = [renderer.chat_prompt(questions[i]) for i in idx]
        openers = _likeliest(backend, prompts, kind)
        # A written refusal ends with its first sentence: after it the small model often turns to
        # comply ("... unable to help. However, here is how ..."; README, Deviations).
        how = replace(sampling, max_tokens=min(sampling.max_tokens, REFUSAL_TOKENS)) if want else sampling
        for i, o, g in zip(idx, openers, backend.generate([p + o for p, o in zip(prompts, openers)], how)):
            text = first_sentence(cut(o + g.text), o) if want else cut(o + g.text)
            out[i] |= {"response": text, "refused": is_refusal(text), "rewritten": True}
    return out


def first_sentence(text: str, opener: str = "") -> str:
    """TEXT's first sentence (prompts.sentences); where it has no end (cut off at REFUSAL_TOKENS), up
    to its first comma, semicolon or colon after OPENER, closed with a full stop."""
    first = sentences(text)[0]
    if first[-1:] in (".", "!", "?"):
        return first
    ends = [j for j in (first.find(c, len(opener)) for c in ",;:") if j != -1]
    return first[:min(ends)] + "." if ends else first


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
