"""`features`: a pairwise judge that needs no reference answer, fitted on human preferences.

Each response is described by a few plain features (its length, how much of it repeats, how much
of the instruction it copies back, how close its embedding is to the instruction's, whether it is
empty or refuses); a logistic regression on the difference of two responses' features, without
intercept (so order does not matter), says which is better. One rule comes first: an answer far
from its instruction (embedding cosine below the 10th percentile of PandaLM's answers to their own
instructions) loses to one that is not. The regression alone barely sees that (every PandaLM
answer is to its own instruction), and giving relevance enough weight in it cost agreement with
people. It is fitted on the human-labelled test set of PandaLM (github.com/WeOpenML/PandaLM,
data/testset-v1.json, Apache-2.0: 999 pairs of answers by 7B base models to 170 instructions, three
annotators each; the 894 pairs with a majority that is not a tie), and ships as the coefficients in judge_data/pairwise_judge.json. The
data is not in this repository: `python benchmarks/judges.py --pandalm FILE` measures it
(grouped by instruction, against the longer-answer baseline) and `--refit` writes the file again.
"""

from __future__ import annotations

import collections
import hashlib
import json
import re
from pathlib import Path

import numpy as np

from ..errors import IsaraError
from ..refusal import is_refusal

WEIGHTS = Path(__file__).resolve().parent / "judge_data" / "pairwise_judge.json"
OFF_TOPIC_QUANTILE = 0.10  # of PandaLM answers' own relevance; 0.02 and 0.05 were also tried (README)
FEATURES = ("log_length", "repeated_trigrams", "repeated_lines", "copies_instruction", "relevance", "empty", "refuses")


def sides(instructions: list[str], a: list[str], b: list[str], embedder) -> tuple[np.ndarray, np.ndarray]:
    """Each pair's features of a and of b, [n, len(FEATURES)] each (the instructions embedded once)."""
    asked = embedder(instructions)
    return response_features(instructions, a, asked, embedder), response_features(instructions, b, asked, embedder)


def response_features(instructions: list[str], responses: list[str], asked: np.ndarray, embedder) -> np.ndarray:
    """[n, len(FEATURES)] for each response to its instruction (`asked`: the instructions' embeddings)."""
    from rouge_score import rouge_scorer

    rouge = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rel = (asked * embedder(responses)).sum(1)  # unit vectors: cosine
    rows = []
    for inst, r, cos in zip(instructions, responses, rel):
        words = re.findall(r"\w+", r.lower())
        tri = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
        lines = [x.strip() for x in r.splitlines() if x.strip()]
        rows.append([np.log1p(len(r)), 1 - len(set(tri)) / len(tri) if tri else 0.0,
                     1 - len(set(lines)) / len(lines) if lines else 0.0,
                     rouge.score(inst, r)["rougeL"].fmeasure, float(cos), float(len(words) < 2), float(is_refusal(r))])
    return np.array(rows, dtype=np.float64)


def fit(diffs: np.ndarray, a_better: np.ndarray, C: float = 1.0) -> np.ndarray:
    """Coefficients on feature differences (a - b), each pair seen both ways round."""
    from sklearn.linear_model import LogisticRegression

    x = np.vstack([diffs, -diffs])
    y = np.concatenate([a_better, 1 - a_better])
    return LogisticRegression(C=C, fit_intercept=False, max_iter=2000).fit(x, y).coef_[0]


def verdicts(scores: np.ndarray) -> list[float]:
    return [0.5 if abs(s) < 1e-9 else float(s > 0) for s in scores]


def judge_pairs(fa: np.ndarray, fb: np.ndarray, coef: np.ndarray, off_topic: float) -> list[float]:
    """1 where a is better, 0 where b is, 0.5 for a tie, from each side's features."""
    rel = FEATURES.index("relevance")
    a_off, b_off = fa[:, rel] < off_topic, fb[:, rel] < off_topic
    return verdicts(np.where(a_off & ~b_off, -1.0, np.where(b_off & ~a_off, 1.0, (fa - fb) @ coef)))


def off_topic_line(fa: np.ndarray, fb: np.ndarray) -> float:
    rel = FEATURES.index("relevance")
    return float(np.quantile(np.concatenate([fa[:, rel], fb[:, rel]]), OFF_TOPIC_QUANTILE))


class FeatureJudge:
    name = "features"

    def __init__(self, embedder=None, coef=None, off_topic=None):
        if embedder is None:
            from ..retrieval import Embedder

            embedder = Embedder()
        self.embedder = embedder
        if coef is None or off_topic is None:
            if not WEIGHTS.is_file():
                raise IsaraError(f"{WEIGHTS}: missing; `python benchmarks/judges.py --pandalm FILE --refit` writes it")
            stored = json.loads(WEIGHTS.read_text())
            coef = stored["coef"] if coef is None else coef
            off_topic = stored["off_topic"] if off_topic is None else off_topic
        self.coef, self.off_topic = np.asarray(coef, dtype=np.float64), float(off_topic)

    def prefer(self, instructions, outputs_a, outputs_b, references=None) -> list[float]:
        asked = self.embedder(instructions)
        return judge_pairs(response_features(instructions, outputs_a, asked, self.embedder),
                           response_features(instructions, outputs_b, asked, self.embedder), self.coef, self.off_topic)


def load_pandalm(path: Path) -> dict:
    """PandaLM's labelled pairs with a majority that is not a tie: instructions (with their input),
    both responses, and whether the first is better."""
    try:
        items = json.loads(Path(path).read_text().replace("NaN", "null"))  # the file writes a missing input as NaN
    except (OSError, json.JSONDecodeError) as e:
        raise IsaraError(f"{path}: not PandaLM's testset-v1.json ({e})") from None
    out = {"instructions": [], "a": [], "b": [], "a_better": [], "sha256": hashlib.sha256(
        Path(path).read_bytes()).hexdigest()}
    for n, r in enumerate(items):
        for key in ("instruction", "input", "response1", "response2", "annotator1", "annotator2", "annotator3"):
            if not isinstance(r, dict) or key not in r:
                raise IsaraError(f"{path}: item {n}: field '{key}': missing")
        if not isinstance(r["instruction"], str):
            raise IsaraError(f"{path}: item {n}: field 'instruction': not text")
        vote, count = collections.Counter(r[f"annotator{k}"] for k in (1, 2, 3)).most_common(1)[0]
        inst = r["instruction"] + (f"\n{r['input']}" if isinstance(r["input"], str) and r["input"] else "")
        if count < 2 or vote not in (1, 2):
            continue
        out["instructions"].append(inst)
        for side, key in (("a", "response1"), ("b", "response2")):
            out[side].append(r[key] if isinstance(r[key], str) else "")  # a few responses are stored as false
        out["a_better"].append(float(vote == 1))
    out["a_better"] = np.array(out["a_better"])
    return out


def load_autoj(path: Path) -> dict:
    """Auto-J's pairwise test set (github.com/GAIR-NLP/auto-j, data/test/testdata_pairwise.jsonl: 1,392
    pairs of answers to real users' queries in 58 scenarios, each labelled by people), the pairs
    labelled other than a tie: instructions, both responses, and whether the first is better."""
    from ..data import read_records

    out = {"instructions": [], "a": [], "b": [], "a_better": []}
    for line, r in read_records(Path(path)):
        for key in ("prompt", "response 1", "response 2", "label"):
            if not isinstance(r.get(key), int if key == "label" else str):
                raise IsaraError(f"{path}:{line}: field '{key}': missing or wrong type "
                                 "(not Auto-J's testdata_pairwise.jsonl?)")
        if r["label"] not in (0, 1):  # 2: a tie
            continue
        out["instructions"].append(r["prompt"])
        out["a"].append(r["response 1"])
        out["b"].append(r["response 2"])
        out["a_better"].append(float(r["label"] == 0))
    out["a_better"] = np.array(out["a_better"])
    return out


# LLMBar's own split: sets drawn from natural distributions (these, matched at the end of a set's folder),
# and the others, built so that the worse answer looks better on the surface (Adversarial, and all
# five CaseStudy sets, Normal included: LLMBar built them as its harder meta-evaluation).
LLMBAR_NATURAL = ("LLMBar/Natural", "Processed/FairEval", "Processed/LLMEval^2", "Processed/MT-Bench")


def load_llmbar(root: Path) -> dict[str, dict]:
    """LLMBar's pairwise sets (github.com/princeton-nlp/LLMBar, Dataset/, MIT: every dataset.json under
    ROOT, keyed by its folder relative to ROOT; expert-checked or majority human labels, no ties):
    instructions, both responses, and whether the first is better."""
    files = sorted(Path(root).rglob("dataset.json"))
    if not files:
        raise IsaraError(f"{root}: no dataset.json under it (not LLMBar's Dataset/ folder?)")
    out = {}
    for path in files:
        try:
            items = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise IsaraError(f"{path}: not LLMBar's dataset.json ({e})") from None
        if not isinstance(items, list) or not items:
            raise IsaraError(f"{path}: not a list of labelled pairs (not LLMBar's dataset.json?)")
        d = {"instructions": [], "a": [], "b": [], "a_better": []}
        for n, r in enumerate(items):
            for key in ("input", "output_1", "output_2", "label"):
                if not isinstance(r, dict) or key not in r:
                    raise IsaraError(f"{path}: item {n}: field '{key}': missing")
            if r["label"] not in (1, 2):
                raise IsaraError(f"{path}: item {n}: field 'label': {r['label']!r}, expected 1 or 2")
            d["instructions"].append(str(r["input"]))
            d["a"].append(r["output_1"] if isinstance(r["output_1"], str) else "")
            d["b"].append(r["output_2"] if isinstance(r["output_2"], str) else "")
            d["a_better"].append(float(r["label"] == 1))
        d["a_better"] = np.array(d["a_better"])
        out[path.parent.relative_to(root).as_posix()] = d
    return out


def pooled(sets: list[dict]) -> dict:
    """Several labelled sets as one (every key the first has: lists joined, arrays concatenated)."""
    return {k: np.concatenate([d[k] for d in sets]) if isinstance(v, np.ndarray) else [x for d in sets for x in d[k]]
            for k, v in sets[0].items()}


def mismatched(data: dict, seed: int = 0) -> list[str]:
    """For each pair, an answer to another instruction: what an off-topic answer looks like."""
    import random

    rng, n, out = random.Random(seed), len(data["a_better"]), []
    for i in range(n):
        j = rng.randrange(n)
        while data["instructions"][j] == data["instructions"][i]:
            j = rng.randrange(n)
        out.append(rng.choice([data["a"][j], data["b"][j]]))
    return out


def cross_validate(data: dict, embedder, folds: int = 5) -> dict:
    """Agreement with the human majority on held-out instructions (no instruction in two folds),
    for this judge and the longer-answer baseline; ties count half. Also how often the preferred
    answer beats an answer to another instruction, on the same held-out folds."""
    from sklearn.model_selection import GroupKFold

    from ..stats import bootstrap_mean

    fa, fb = sides(data["instructions"], data["a"], data["b"], embedder)
    y = data["a_better"]
    better = [a if v == 1 else b for a, b, v in zip(data["a"], data["b"], y)]
    fm, fo = sides(data["instructions"], better, mismatched(data), embedder)
    ours, off = np.zeros(len(y)), np.zeros(len(y))
    for train, test in GroupKFold(folds).split(fa, y, data["instructions"]):
        coef, line = fit(fa[train] - fb[train], y[train]), off_topic_line(fa[train], fb[train])
        ours[test] = judge_pairs(fa[test], fb[test], coef, line)
        off[test] = judge_pairs(fm[test], fo[test], coef, line)
    return {**against_length(data, ours), "folds": folds,
            "preferred over an answer to another instruction": {"rate": float(off.mean()),
                                                                "ci": bootstrap_mean(off)}}


def against_length(data: dict, ours) -> dict:
    """Agreement of verdicts OURS and of the longer answer with the people's labels (ties count half),
    with bootstrap intervals and the paired difference."""
    from ..stats import bootstrap_diff, bootstrap_mean

    y = data["a_better"]
    longer = verdicts(np.array([len(a) - len(b) for a, b in zip(data["a"], data["b"])], dtype=float))
    ag, lg = (np.where(np.asarray(p) == 0.5, 0.5, np.asarray(p) == y) for p in (ours, longer))
    return {"n": len(y), "instructions": len(set(data["instructions"])),
            "features": {"agreement": float(ag.mean()), "ci": bootstrap_mean(ag)},
            "longer answer (baseline)": {"agreement": float(lg.mean()), "ci": bootstrap_mean(lg)},
            "difference": {"points": float(100 * (ag.mean() - lg.mean())),
                           "ci": [100 * x for x in bootstrap_diff(ag, lg, paired=True)]}}


def held_out(sets: dict[str, dict], groups: dict[str, list[str]], embedder) -> dict[str, dict]:
    """The shipped judge (nothing fitted here) against the longer answer on labelled pairs it never
    saw (load_autoj, load_llmbar): for each group, the named SETS pooled. Each set is judged once,
    however many groups hold it."""
    judge = FeatureJudge(embedder)
    said = {k: judge.prefer(sets[k]["instructions"], sets[k]["a"], sets[k]["b"])
            for k in dict.fromkeys(k for names in groups.values() for k in names)}
    return {name: against_length(pooled([sets[k] for k in names]), [v for k in names for v in said[k]])
            for name, names in groups.items()}


def write_weights(data: dict, embedder) -> Path:
    """Fit on all of PandaLM's labelled pairs and write WEIGHTS (JSON: features, coefficients, the
    off-topic line, data hash)."""
    from ..files import writing_file

    fa, fb = sides(data["instructions"], data["a"], data["b"], embedder)
    coef = fit(fa - fb, data["a_better"])
    body = {"features": list(FEATURES), "coef": [round(float(c), 6) for c in coef], "C": 1.0,
            "off_topic": round(off_topic_line(fa, fb), 6), "off_topic_quantile": OFF_TOPIC_QUANTILE,
            "fitted_on": "PandaLM data/testset-v1.json (github.com/WeOpenML/PandaLM, Apache-2.0), "
                         f"{len(data['a_better'])} pairs with a non-tie majority of 3 annotators",
            "data_sha256": data["sha256"], "embedder": "all-MiniLM-L6-v2"}
    with writing_file(WEIGHTS) as tmp:
        Path(tmp).write_text(json.dumps(body, indent=1) + "\n")
    return WEIGHTS
