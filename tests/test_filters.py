"""ISARA step 3 filters (isara_lite.filters)."""

from __future__ import annotations

import pytest

from isara_lite.filters import FILTERS, judge, max_rouge_l, normalize
from isara_lite.recipe import FilterConfig

CFG = FilterConfig()  # rouge_l_max 0.7, min_words 5
DEMO_QS = ["How can I bake a loaf of bread at home?", "What is the capital city of France?"]
GOOD_Q = "What are good ways to fall asleep faster at night?"
GOOD_A = "Keep a regular schedule, avoid screens before bed, and keep the room cool and dark."


def verdicts(q=GOOD_Q, a=GOOD_A, demos=DEMO_QS, seen=frozenset(), cfg=CFG):
    return judge(q, a, list(demos), set(seen), cfg)


def test_defaults_match_paper():
    assert (CFG.rouge_l_max, CFG.min_words) == (0.7, 5)


def test_good_candidate_passes_every_filter():
    v = verdicts()
    assert v == {name: True for name in FILTERS}
    assert list(v) == list(FILTERS)


# -- rouge_l ----------------------------------------------------------------------------------------

def test_rouge_l_values():
    assert max_rouge_l("How can I bake a loaf of bread at home today?", DEMO_QS) == pytest.approx(0.952, abs=1e-3)
    assert max_rouge_l(GOOD_Q, DEMO_QS) == pytest.approx(2 / 17)  # only "what" in common with the 2nd
    assert max_rouge_l("anything at all", []) == 0.0


def test_rouge_l_near_copy_fails():
    v = verdicts(q="How can I bake a loaf of bread at home today?")
    assert v["rouge_l"] is False
    assert v["duplicate"] and v["min_words"] and v["answer_in_question"]


def test_rouge_l_is_case_and_punctuation_insensitive():
    assert verdicts(q="HOW can i bake a LOAF of bread, at home!!")["rouge_l"] is False


def test_rouge_l_below_threshold_passes():
    # 0.8 against the demo: fails at 0.7, passes when the threshold is raised
    q = "How do I bake a cake at home?"
    assert max_rouge_l(q, ["How do I bake bread at home?"]) == pytest.approx(0.8)
    assert verdicts(q=q, demos=["How do I bake bread at home?"])["rouge_l"] is False
    assert verdicts(q=q, demos=["How do I bake bread at home?"],
                    cfg=FilterConfig(rouge_l_max=0.85))["rouge_l"] is True


def test_rouge_l_exactly_at_threshold_passes():
    q, demo = "one two three four five six seven eight nine ten", "one two three four five six seven xx yy zz"
    assert max_rouge_l(q, [demo]) == pytest.approx(0.7)
    assert verdicts(q=q, demos=[demo])["rouge_l"] is True  # "above 0.7" is dropped, 0.7 is kept


def test_rouge_l_uses_max_over_demos():
    demos = ["Completely unrelated sentence about the ocean tides.", "How can I bake a loaf of bread at home?"]
    assert verdicts(q="How can I bake a loaf of bread at home?", demos=demos)["rouge_l"] is False


# -- duplicate --------------------------------------------------------------------------------------

def test_normalize():
    assert normalize("  What   is\tthe\nCAPITAL of France?  ") == "what is the capital of france?"


def test_duplicate_after_case_and_whitespace_normalization_fails():
    seen = {normalize(GOOD_Q)}
    v = verdicts(q="  WHAT are good ways to   fall asleep\nfaster at night? ", seen=seen)
    assert v["duplicate"] is False
    assert v["min_words"] is True


def test_not_duplicate_when_punctuation_differs():
    # normalization is case/whitespace only: a different question mark makes a different question
    seen = {normalize(GOOD_Q)}
    assert verdicts(q=GOOD_Q.rstrip("?"), seen=seen)["duplicate"] is True
    assert verdicts(q=GOOD_Q, seen={"something else entirely"})["duplicate"] is True


# -- min_words ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("q,a,ok", [
    ("Is water wet today?", GOOD_A, False),            # 4-word question
    ("Is water really wet today?", GOOD_A, True),      # 5 words
    (GOOD_Q, "Sleep more at night.", False),          # 4-word answer
    (GOOD_Q, "Go to bed earlier, please.", True),     # 5 words
    (GOOD_Q, "   ", False),
])
def test_min_words(q, a, ok):
    assert verdicts(q=q, a=a)["min_words"] is ok


def test_min_words_configurable():
    assert verdicts(q="Why?", a="Because.", cfg=FilterConfig(min_words=1))["min_words"] is True


# -- answer_in_question ------------------------------------------------------------------------------------

def test_answer_substring_of_question_fails():
    q = "Should I tell my boss that I am looking for a new job?"
    v = verdicts(q=q, a="I am looking for a new job")
    assert v["answer_in_question"] is False


def test_answer_substring_after_normalization_fails():
    q = "Should I tell my boss that I am looking for a new job?"
    assert verdicts(q=q, a="  I AM looking\nfor a NEW job ")["answer_in_question"] is False


def test_answer_not_in_question_passes():
    assert verdicts()["answer_in_question"] is True
    # overlapping words but not a substring
    q = "Should I tell my boss that I am looking for a new job?"
    assert verdicts(q=q, a="Tell your boss only once you have an offer.")["answer_in_question"] is True


@pytest.mark.parametrize("answer", ["", "   ", "\n\t"])
def test_empty_answer_fails(answer):
    v = verdicts(a=answer)
    assert v["answer_in_question"] is False
    assert v["min_words"] is False


# -- consistency (ours, off by default) --------------------------------------------------------------

def _seeds(path):
    from isara_lite.data import read_samples

    return read_samples(path)


def test_consistency_off_by_default_and_recorded():
    assert FilterConfig().consistency is False
    assert verdicts()["consistency"] is True
    assert judge(GOOD_Q, GOOD_A, DEMO_QS, set(), CFG, consistent=False)["consistency"] is False


def test_consistency_learns_the_seeds_boundary(embedder, repo):
    """Fit on the project's safety seeds: a refusal passes for a harmful request and fails for an
    ordinary one; a helpful answer passes for the ordinary one and fails for the harmful one."""
    from isara_lite.filters import Consistency

    c = Consistency(_seeds(repo / "recipes" / "seeds" / "safety.jsonl"), embedder)
    assert c.model is not None and 0 < c.refusals < c.n
    harmful = "Tell me how to make a bomb to hurt people at my school."
    ordinary = "What's a good recipe for banana bread?"
    refusal = "I'm sorry, but I can't help with that."
    answer = "Mash three ripe bananas, mix in melted butter, sugar, an egg and flour, then bake for an hour."
    assert c([harmful, ordinary, harmful, ordinary], [refusal, refusal, answer, answer]) == [True, False, False, True]
    assert c([], []) == []


def test_consistency_passes_everything_when_seeds_hold_one_kind(embedder, repo):
    from isara_lite.filters import Consistency

    c = Consistency(_seeds(repo / "recipes" / "seeds" / "truthfulness.jsonl"), embedder)
    assert c.model is None
    assert c(["Do we only use 10% of our brains?"], ["I'm sorry, but I can't help with that."]) == [True]
