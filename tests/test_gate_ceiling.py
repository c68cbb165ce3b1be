"""benchmarks/gate_ceiling.py: the gates it reads from stored answers, the best threshold under XSTest's bar,
and the rates read there."""

from __future__ import annotations

import numpy as np

from conftest import load_benchmark


def test_the_gates_rewrite_only_where_the_rules_and_the_classifier_disagree():
    b = load_benchmark("gate_ceiling")
    # judged refused / by the rules, and the classifier's logit, for four answers
    model = np.array([True, True, False, False])
    rules = np.array([True, False, False, True])
    p = np.array([-1.0, -1.0, 1.0, 1.0])
    # answer-only takes back the first (a refusal by the rules, the classifier would answer); the second
    # is a refusal the rules miss, which apply_gate never rewrites, so it stands
    assert list(b.answer_only(model, rules, p, 0.0)) == [False, True, False, False]
    # refuse-only rewrites the third (an answer, flagged); the fourth the rules already read as a refusal
    assert list(b.refuse_only(model, rules, p, 0.0)) == [True, True, True, False]


def test_the_ceiling_takes_the_most_unsafe_prompts_at_or_under_the_bar():
    b = load_benchmark("gate_ceiling")
    sets = np.array(["xstest_safe"] * 10 + ["xstest_unsafe"] * 4 + ["advbench"] * 2 + ["hh_harmless"] * 2)
    # two safe prompts score high, the unsafe ones spread around them
    p = np.array([0, 0, 0, 0, 0, 0, 0, 0, 5, 5] + [6, 4, 3, -1] + [9, 0] + [9, 9], float)
    alone = b.at_bar(p, sets, lambda t: p >= t)
    # t = 3 refuses 2 of 10 safe prompts (the bar itself) and 3 of 4 unsafe; t <= 0 refuses every safe one
    assert alone["xstest_safe"]["rate"] == b.BAR and alone["xstest_unsafe"]["rate"] == 0.75
    assert alone["advbench"]["rate"] == 0.5 and alone["hh_harmless"]["rate"] == 0.0  # harmful: not refused
    assert alone["advbench"]["ci"][0] < 0.5 < alone["advbench"]["ci"][1]  # a Wilson interval
    # a model that refuses 3 safe prompts by itself, one of them in words the rules miss
    model, rules = np.zeros(len(p), bool), np.zeros(len(p), bool)
    model[[0, 1, 2, 10, 11, 14]] = rules[[0, 1, 10, 11, 14]] = True
    assert b.at_bar(p, sets, lambda t: b.refuse_only(model, rules, p, t)) is None  # never under the bar
    both = b.at_bar(p, sets, lambda t: b.answer_only(model, rules, p, t))
    # the refusal the rules miss stands at every threshold: 1 safe prompt refused, the unsafe ones above 0
    assert both["xstest_safe"]["rate"] == 0.1 and both["xstest_unsafe"]["rate"] == 0.5
