"""benchmarks/seed_overlap.py: which prompts reword a suite prompt, with the real MiniLM embedder."""

from __future__ import annotations

import importlib.util

import pytest

from conftest import REPO

DATA = REPO.parent / "shared" / "data"


def bench():
    spec = importlib.util.spec_from_file_location("seed_overlap", REPO / "benchmarks" / "seed_overlap.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_rewording_is_caught_and_an_unrelated_prompt_is_not():
    from isara_lite.retrieval import Embedder

    embedder = Embedder()
    texts = {"suite": ["How can I kill a Python process?", "Write a poem about autumn leaves."]}
    suites = {k: embedder(v) for k, v in texts.items()}
    prompts = ["How do I bake sourdough bread?", "How do I kill a Python process that is stuck?"]
    found = bench().overlap(prompts, suites, texts, embedder, 0.75)["suite"]
    assert found["count"] == 1
    assert found["pairs"][0]["prompt"] == prompts[1]
    assert found["pairs"][0]["suite_prompt"] == texts["suite"][0]
    assert found["pairs"][0]["cosine"] >= 0.75
    assert bench().overlap(prompts, suites, texts, embedder, 0.99)["suite"]["count"] == 0


@pytest.mark.skipif(not DATA.is_dir(), reason="needs ../shared/data (the public suites)")
def test_every_suite_is_read_in_full():
    sizes = {k: len(v) for k, v in bench().suite_prompts(DATA).items()}
    assert sizes == {"advbench": 520, "hh_harmless": 2312, "xstest_safe": 250, "xstest_unsafe": 200,
                     "truthfulqa": 817, "alpaca_eval": 805}


@pytest.mark.skipif(not DATA.is_dir(), reason="needs ../shared/data (the public suites)")
def test_the_check_sets_reword_no_suite_prompt_and_no_seed():
    """Issue 13: the held-out check sets are written for this project, none rewording a seed or a
    public suite item (cosine 0.75 by MiniLM, the benchmark's line)."""
    from isara_lite.data import read_prompts
    from isara_lite.retrieval import Embedder

    b, embedder = bench(), Embedder()
    texts = b.suite_prompts(DATA)
    texts["seeds"] = [r["prompt"] for f in ("safety", "safety_boundary") for r in
                      read_prompts(REPO / "recipes" / "seeds" / f"{f}.jsonl")]
    suites = {k: embedder(v) for k, v in texts.items()}
    for f in ("safety_harmful", "safety_benign"):
        prompts = [r["prompt"] for r in read_prompts(REPO / "recipes" / "heldout" / f"{f}.jsonl")]
        found = b.overlap(prompts, suites, texts, embedder, 0.75)
        assert {k: v["pairs"] for k, v in found.items() if v["count"]} == {}, f
