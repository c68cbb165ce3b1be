"""The reference-free pairwise judge (evaluation/pairwise_judge.py): its verdicts, PandaLM's format,
and its cross-validation against the longer-answer baseline."""

import json
import random

import numpy as np
import pytest

from isara_lite.errors import IsaraError
from isara_lite.evaluation import pairwise_judge as P
from isara_lite.evaluation.judges import get_judge

INSTRUCTION = "List three ways to save water at home."
GOOD = "Take shorter showers, fix leaking taps, and run the dishwasher only when it is full."
REPEATS = "Save water.\nSave water.\nSave water.\nSave water.\nSave water.\nSave water.\nSave water."
ECHO = "List three ways to save water at home. List three ways to save water at home."


def test_shipped_judge_prefers_a_real_answer_and_is_symmetric(embedder):
    j = get_judge("features", embedder)
    n = 3
    a, b = [GOOD, GOOD, GOOD], [REPEATS, ECHO, ""]
    assert j.prefer([INSTRUCTION] * n, a, b) == [1.0] * n
    assert j.prefer([INSTRUCTION] * n, b, a) == [0.0] * n  # order does not matter
    assert j.prefer([INSTRUCTION], [GOOD], [GOOD]) == [0.5]
    shipped = json.loads(P.WEIGHTS.read_text())
    assert shipped["features"] == list(P.FEATURES) and len(shipped["coef"]) == len(P.FEATURES)


def _write_pandalm(path, items):
    # PandaLM writes a missing input as a bare NaN, which strict JSON does not allow
    path.write_text(json.dumps(items).replace('"__NaN__"', "NaN"))


def _item(i, r1, r2, votes, inp="__NaN__"):
    return {"idx": i, "instruction": f"Instruction {i % 20}: write about topic {i % 20}.", "input": inp,
            "response1": r1, "response2": r2, "annotator1": votes[0], "annotator2": votes[1], "annotator3": votes[2]}


def test_load_pandalm_keeps_majorities_that_are_not_ties(tmp_path):
    f = tmp_path / "testset-v1.json"
    _write_pandalm(f, [_item(0, "a", "b", (1, 1, 2)), _item(1, "a", False, (2, 2, 2), "some input"),
                       _item(2, "a", "b", (0, 0, 1)), _item(3, "a", "b", (0, 1, 2))])
    d = P.load_pandalm(f)
    assert d["a_better"].tolist() == [1.0, 0.0]  # the tie majority and the three-way split are dropped
    assert d["b"][1] == "" and d["instructions"][1].endswith("\nsome input")
    bad = tmp_path / "bad.json"
    for text, error in (('[{"instruction": "x"}]', r"bad.json: item 0: field 'input': missing"),
                        ("{nope", r"bad.json: not PandaLM")):
        bad.write_text(text)
        with pytest.raises(IsaraError, match=error):
            P.load_pandalm(bad)


def test_cross_validation_learns_what_people_prefer(tmp_path, embedder):
    """Labels where the longer answer loses because it repeats itself: the fitted judge must beat
    the length baseline on held-out instructions."""
    rng = random.Random(0)
    items = []
    for i in range(80):
        topic = f"topic {i % 20}"
        # on topic, so that the off-topic rule (tested below) leaves these pairs to the regression
        good = f"A clear, short note on {topic}: {topic} matters because people use {topic} every day."
        bad = " ".join([f"{topic} is {topic}."] * rng.randint(4, 8))
        items.append(_item(i, good, bad, (1, 1, 1)) if i % 2 else _item(i, bad, good, (2, 2, 2)))
    f = tmp_path / "testset-v1.json"
    _write_pandalm(f, items)
    r = P.cross_validate(P.load_pandalm(f), embedder)
    assert r["n"] == 80 and r["instructions"] == 20
    assert r["features"]["agreement"] > 0.9 > r["longer answer (baseline)"]["agreement"]
    assert r["difference"]["ci"][0] > 0
    assert np.isfinite(r["features"]["ci"]).all()


def test_an_answer_to_another_instruction_loses_whatever_its_length(embedder):
    j = get_judge("features", embedder)
    elsewhere = ("The French Revolution began in 1789 with the storming of the Bastille. It ended the monarchy, "
                 "spread ideas of citizenship and rights across Europe, and led to Napoleon's rise to power.")
    assert j.prefer([INSTRUCTION, INSTRUCTION], ["Shorter showers.", elsewhere], [elsewhere, "Shorter showers."]) \
        == [1.0, 0.0]
    # the regression alone would have preferred the longer answer
    shipped = json.loads(P.WEIGHTS.read_text())
    loose = P.FeatureJudge(embedder, shipped["coef"], off_topic=-1.0)
    assert loose.prefer([INSTRUCTION], ["Shorter showers."], [elsewhere]) == [0.0]


def test_autoj_pairs_are_scored_by_the_shipped_judge_against_length(tmp_path, embedder):
    """Auto-J's format (ties dropped, bad lines named), and the held-out score of the shipped judge:
    where the longer answer only repeats itself, the judge agrees with the labels and length does not."""
    f = tmp_path / "testdata_pairwise.jsonl"
    rows = []
    for i in range(6):
        topic = f"topic {i}"
        good = f"A clear, short note on {topic}: {topic} matters because people use {topic} every day."
        bad = " ".join([f"{topic} is {topic}."] * 8)
        rows.append({"scenario": "open_question", "prompt": f"Write about {topic}.", "response 1": good,
                     "response 2": bad, "label": 0} if i % 2 else
                    {"scenario": "open_question", "prompt": f"Write about {topic}.", "response 1": bad,
                     "response 2": good, "label": 1})
    rows.append({"scenario": "chitchat", "prompt": "Hi", "response 1": "Hello!", "response 2": "Hi!", "label": 2})
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    d = P.load_autoj(f)
    assert d["a_better"].tolist() == [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]  # the tie is left out
    r = P.held_out({"Auto-J": d}, {"Auto-J": ["Auto-J"]}, embedder)["Auto-J"]
    assert r["n"] == 6 and r["features"]["agreement"] == 1.0 and r["longer answer (baseline)"]["agreement"] == 0.0
    assert r["difference"]["points"] == 100.0
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "x", "response 1": "a", "response 2": "b"}) + "\n")
    with pytest.raises(IsaraError, match=r"bad.jsonl:1: field 'label'"):
        P.load_autoj(bad)


def test_llmbar_sets_are_read_by_folder_and_bad_labels_named(tmp_path, embedder):
    """LLMBar's layout (a dataset.json per set folder, labels 1 or 2), pooled sets, and the held-out
    score: where the longer answer only repeats itself, the judge agrees with the labels and length does not."""
    for n, (folder, flip) in enumerate((("LLMBar/Natural", False), ("Processed/MT-Bench", True))):
        items = []
        for i in range(3):
            topic = f"topic {3 * n + i}"
            good = f"A clear, short note on {topic}: {topic} matters because people use {topic} every day."
            bad = " ".join([f"{topic} is {topic}."] * 8)
            a, b = (bad, good) if (i % 2) ^ flip else (good, bad)
            items.append({"input": f"Write about {topic}.", "output_1": a, "output_2": b, "label": 1 if a == good else 2})
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "dataset.json").write_text(json.dumps(items))
    sets = P.load_llmbar(tmp_path)
    assert list(sets) == ["LLMBar/Natural", "Processed/MT-Bench"]
    assert all(k in P.LLMBAR_NATURAL for k in sets)
    assert sets["LLMBar/Natural"]["a_better"].tolist() == [1.0, 0.0, 1.0]
    both = P.pooled(list(sets.values()))
    assert len(both["a"]) == 6 and both["a_better"].tolist() == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    r = P.held_out(sets, {"one": ["Processed/MT-Bench"], "pooled": list(sets)}, embedder)
    assert r["one"]["n"] == 3 and r["one"]["features"]["agreement"] == 1.0
    r = r["pooled"]
    assert r["n"] == 6 and r["features"]["agreement"] == 1.0 and r["longer answer (baseline)"]["agreement"] == 0.0
    (tmp_path / "Processed/MT-Bench/dataset.json").write_text(json.dumps([{"input": "x", "output_1": "a",
                                                                           "output_2": "b", "label": 0}]))
    with pytest.raises(IsaraError, match=r"MT-Bench/dataset.json: item 0: field 'label': 0, expected 1 or 2"):
        P.load_llmbar(tmp_path)
    (tmp_path / "Processed/MT-Bench/dataset.json").write_text("[]")
    with pytest.raises(IsaraError, match=r"MT-Bench/dataset.json: not a list of labelled pairs"):
        P.load_llmbar(tmp_path)
    with pytest.raises(IsaraError, match="no dataset.json under it"):
        P.load_llmbar(tmp_path / "LLMBar" / "Natural" / "none")
