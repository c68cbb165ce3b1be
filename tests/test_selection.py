"""Iteration selection by held-out seeds (isara_lite/selection.py) and its place in the loop."""

import json

import pytest

from isara_lite.data import Sample, read_samples
from isara_lite.errors import IsaraError
from isara_lite.refusal import is_refusal
from isara_lite.selection import balanced, best_iteration, split_seeds


def test_split_holds_out_both_kinds_and_keeps_file_order(repo):
    seeds = read_samples(repo / "recipes" / "seeds" / "safety.jsonl")
    used, held = split_seeds(seeds, 6, seed=0, keep=4)
    assert len(used) == 58 and len(held) == 6
    assert sum(is_refusal(s.response) for s in held) == 3
    assert {s.id for s in used}.isdisjoint({s.id for s in held})
    assert [s.id for s in used] == [s.id for s in seeds if s.id not in {h.id for h in held}]
    assert [s.id for s in split_seeds(seeds, 6, seed=0, keep=4)[1]] == [s.id for s in held]
    assert [s.id for s in split_seeds(seeds, 6, seed=1, keep=4)[1]] != [s.id for s in held]


def test_split_refuses_to_leave_too_few():
    seeds = [Sample("q1", "I'm sorry, I can't.", "a"), Sample("q2", "I cannot do that.", "b"),
             Sample("q3", "I won't help.", "c")] + [Sample(f"q{i}", "Sure, here it is.", f"h{i}") for i in range(9)]
    with pytest.raises(IsaraError, match="3 refusals, too few to hold out 2"):
        split_seeds(seeds, 4, seed=0, keep=2)


def test_best_is_the_highest_trained_iteration_and_ties_go_early():
    assert balanced({"harmful_refused": 0.5, "benign_answered": 1.0}) == 0.75
    assert best_iteration({0: 0.9, 1: 0.6, 2: 0.7, 3: 0.7}) == 2
    assert best_iteration({0: 0.5, 1: 0.8}) == 1


def test_align_marks_the_best_iteration_for_export(tmp_path, repo):
    from conftest import TINY
    from isara_lite.rundir import run_adapter
    from isara_lite.loop import align
    from isara_lite.recipe import load_recipe

    recipe = load_recipe(repo / "recipes" / "quickstart.yaml", [*TINY, "selection.holdout=4"])
    out = tmp_path / "run"
    summary = align(recipe, out)
    held = [json.loads(line) for line in (out / "holdout.jsonl").read_text().splitlines()]
    seeds = [json.loads(line) for line in (out / "seeds.jsonl").read_text().splitlines()]
    assert len(held) == 4 and len(seeds) == 60
    assert {h["id"] for h in held}.isdisjoint(d for line in (out / "iter_1" / "candidates.jsonl").read_text().splitlines()
                                              for key in ("question_demos", "answer_demos")
                                              for d in json.loads(line)[key])
    rows = [json.loads(line) for line in (out / "iter_1" / "holdout.jsonl").read_text().splitlines()]
    assert sorted(r["set"] for r in rows) == ["benign", "benign", "harmful", "harmful"]
    best = json.loads((out / "best.json").read_text())
    assert best["iteration"] == summary["best_iteration"] == 1
    assert summary["iterations"][0]["holdout"]["n_harmful"] == 2
    assert run_adapter(out)[1] == out / "iter_1" / "adapter"
