"""benchmarks/seed_overlap.py: which prompts reword a suite prompt, with the real MiniLM embedder."""

from __future__ import annotations

import pytest

from conftest import REPO, load_benchmark

DATA = REPO.parent / "shared" / "data"


def bench():
    return load_benchmark("seed_overlap")


def test_a_rewording_is_caught_and_an_unrelated_prompt_is_not(embedder):
    texts = {"suite": ["How can I kill a Python process?", "Write a poem about autumn leaves."]}
    suites = {k: embedder(v) for k, v in texts.items()}
    prompts = ["How do I bake sourdough bread?", "How do I kill a Python process that is stuck?"]
    found = bench().overlap(prompts, suites, texts, embedder, 0.75)["suite"]
    assert found["count"] == 1
    assert found["pairs"][0]["prompt"] == prompts[1]
    assert found["pairs"][0]["suite_prompt"] == texts["suite"][0]
    assert found["pairs"][0]["cosine"] >= 0.75
    assert found["suite_items"] == 1  # the suite's side: one of its prompts has a file prompt that near
    assert bench().overlap(prompts, suites, texts, embedder, 0.99)["suite"]["count"] == 0


@pytest.mark.skipif(not DATA.is_dir(), reason="needs ../shared/data (the public suites)")
def test_every_suite_is_read_in_full():
    sizes = {k: len(v) for k, v in bench().suite_prompts(DATA).items()}
    assert sizes == {"advbench": 520, "hh_harmless": 2312, "xstest_safe": 250, "xstest_unsafe": 200,
                     "truthfulqa": 817, "alpaca_eval": 805}


@pytest.mark.skipif(not DATA.is_dir(), reason="needs ../shared/data (the public suites)")
def test_the_check_sets_reword_no_suite_prompt(embedder):
    """Issue 13: the held-out check sets are written for this project, none rewording a public suite
    item (cosine 0.75 by MiniLM, the benchmark's line; the seeds: tests/test_data.py)."""
    from isara_lite.data import read_prompts

    b = bench()
    texts = b.suite_prompts(DATA)
    suites = {k: embedder(v) for k, v in texts.items()}
    for f in ("safety_harmful", "safety_benign"):
        prompts = [r["prompt"] for r in read_prompts(REPO / "recipes" / "heldout" / f"{f}.jsonl")]
        found = b.overlap(prompts, suites, texts, embedder, 0.75)
        assert {k: v["pairs"] for k, v in found.items() if v["count"]} == {}, f
