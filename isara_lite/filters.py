"""ISARA step 3: keep a candidate only if every filter passes. Each verdict is recorded."""

from __future__ import annotations

import re

from rouge_score import rouge_scorer

FILTERS = ("rouge_l", "duplicate", "min_words", "answer_in_question")

_scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def normalize(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower())


def max_rouge_l(question: str, others: list[str]) -> float:
    return max((_scorer.score(o, question)["rougeL"].fmeasure for o in others), default=0.0)


def judge(question: str, answer: str, demo_questions: list[str], seen: set[str], config) -> dict[str, bool]:
    """Every filter's verdict (True = passes) for one candidate.

    rouge_l: not a near-copy of the questions it was written from (ROUGE-L <= rouge_l_max);
    duplicate: not the same question as one already kept (or a seed);
    min_words: question and answer each have at least min_words words;
    answer_in_question: the answer is not a substring of the question.
    """
    return {
        "rouge_l": max_rouge_l(question, demo_questions) <= config.rouge_l_max,
        "duplicate": normalize(question) not in seen,
        "min_words": len(question.split()) >= config.min_words and len(answer.split()) >= config.min_words,
        "answer_in_question": bool(answer.strip()) and normalize(answer) not in normalize(question),
    }
