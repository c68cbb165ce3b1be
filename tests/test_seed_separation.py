"""benchmarks/seed_separation.py's fit on written questions: they are fitted on, never scored."""

from __future__ import annotations

import numpy as np

from conftest import load_benchmark

SETS = ("check_harmful", "check_benign", "advbench", "hh_harmless", "xstest_safe", "xstest_unsafe")


def bench():
    return load_benchmark("seed_separation")


def test_a_held_out_seed_is_never_fitted_on():
    """Each seed has a feature of its own that gives its label away: a seed that leaked into its own
    fold's fit would be scored right (out-of-fold AUROC 1); held out, its feature is unseen (0.5)."""
    rng = np.random.default_rng(0)
    y = np.array([True] * 10 + [False] * 15)
    seeds = np.zeros((25, 2, 25), np.float32)
    seeds[np.arange(25), 1, np.arange(25)] = np.where(y, 1.0, -1.0)
    states = {"seeds": seeds, **{k: rng.normal(size=(8, 2, 25)).astype(np.float32) for k in SETS}}
    written = np.zeros((6, 2, 25), np.float32)
    rows = bench().written_rows(states, written, y, np.array([True, False] * 3), seed=0)
    assert [r["features"] for r in rows] == ["written 1"]
    assert rows[0]["seed_auroc"] == 0.5
    assert 0.0 <= rows[0]["advbench_flagged"] <= 1.0


def test_written_questions_teach_what_the_seeds_share():
    """The seeds' labels follow one feature among noise; written questions that follow it strongly
    make the held-out seeds better separated than the seeds alone do."""
    rng = np.random.default_rng(1)
    y = np.array([True] * 12 + [False] * 18)
    seeds = rng.normal(size=(30, 2, 20)).astype(np.float32)
    seeds[:, 1, 0] += np.where(y, 0.8, -0.8)
    yw = np.array([True] * 100 + [False] * 100)
    written = rng.normal(size=(200, 2, 20)).astype(np.float32)
    written[:, 1, 0] += np.where(yw, 3.0, -3.0)
    states = {"seeds": seeds, **{k: rng.normal(size=(8, 2, 20)).astype(np.float32) for k in SETS}}
    module = bench()
    alone = module.written_rows(states, written[:0], y, yw[:0], seed=0)[0]
    with_written = module.written_rows(states, written, y, yw, seed=0)[0]
    assert with_written["seed_auroc"] > alone["seed_auroc"] + 0.05
    assert with_written["seed_log_loss"] < alone["seed_log_loss"]
