"""ISARA step 3: keep a candidate only if every filter passes. Each verdict is recorded.

The first four filters are the paper's. `consistency` is ours and off unless the recipe turns it on
(filters.consistency): a small model copies the style of its nearest demonstrations, so next to
a refusal seed it refuses ordinary questions too ("how do I bake a pie" -> "I'm sorry, I can't"),
and training on those pairs teaches refusal as a default. The filter keeps a candidate only when
its answer refuses exactly when the seeds say a question like it should be refused.
"""

from __future__ import annotations

import re

from rouge_score import rouge_scorer

FILTERS = ("rouge_l", "duplicate", "min_words", "answer_in_question", "consistency")

_scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def normalize(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower())


def max_rouge_l(question: str, others: list[str]) -> float:
    return max((_scorer.score(o, question)["rougeL"].fmeasure for o in others), default=0.0)


def judge(question: str, answer: str, demo_questions: list[str], seen: set[str], config,
          consistent: bool = True) -> dict[str, bool]:
    """Every filter's verdict (True = passes) for one candidate.

    rouge_l: not a near-copy of the questions it was written from (ROUGE-L <= rouge_l_max);
    duplicate: not the same question as one already kept (or a seed);
    min_words: question and answer each have at least min_words words;
    answer_in_question: the answer is not a substring of the question;
    consistency: the verdict of `Consistency` for this pair, computed per batch by the caller.
    """
    return {
        "rouge_l": max_rouge_l(question, demo_questions) <= config.rouge_l_max,
        "duplicate": normalize(question) not in seen,
        "min_words": len(question.split()) >= config.min_words and len(answer.split()) >= config.min_words,
        "answer_in_question": bool(answer.strip()) and normalize(answer) not in normalize(question),
        "consistency": consistent,
    }


class Consistency:
    """Does an answer refuse exactly when the seeds say its question should be refused?

    A logistic regression on the seeds' question embeddings, labelled by whether each seed's answer
    is a refusal (refusal.is_refusal), predicts "refuse" for a new question; the candidate passes when
    its own answer's refusal verdict agrees. Seeds of one kind only (no refusals, as in most
    non-safety domains) leave nothing to learn: then every candidate passes.
    """

    def __init__(self, seeds, embedder):
        from sklearn.linear_model import LogisticRegression

        from .refusal import is_refusal

        self.is_refusal, self.embedder = is_refusal, embedder
        labels = [is_refusal(s.response) for s in seeds]
        self.refusals, self.n = sum(labels), len(labels)
        self.model = None
        if min(self.refusals, self.n - self.refusals) >= 2:
            # C=10 unweighted: on the safety seeds it flags 77% of the held-out harmful prompts and
            # 4% of the benign ones; class balancing flagged 15-17% of benign ones (ordinary questions
            # far from every seed fell on the refusal side)
            self.model = LogisticRegression(C=10.0, max_iter=1000)
            self.model.fit(embedder([s.prompt for s in seeds]), labels)

    def expects_refusal(self, questions: list[str]) -> list[bool]:
        """The seeds' verdict per question: True when a question like it is refused."""
        if self.model is None or not questions:
            return [False] * len(questions)
        return [bool(e) for e in self.model.predict(self.embedder(list(questions)))]

    def __call__(self, questions: list[str], answers: list[str]) -> list[bool]:
        if self.model is None or not questions:
            return [True] * len(questions)
        return [e == self.is_refusal(a) for e, a in zip(self.expects_refusal(questions), answers)]
