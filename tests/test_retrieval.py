"""Embedder and exact kNN pools (isara_lite.retrieval), with the real all-MiniLM-L6-v2."""

from __future__ import annotations

import numpy as np
import pytest

from isara_lite.data import Sample
from isara_lite.retrieval import Pool

QUESTIONS = {
    "kill": "How do I kill a Python process that is stuck?",
    "bread": "What is a good recipe for banana bread?",
    "sleep": "How can I improve my sleep schedule?",
    "capital": "What is the capital of Australia?",
    "tire": "How do I change a flat tire on my bike?",
    "plants": "Explain how photosynthesis works in plants.",
}
SAMPLES = [Sample(prompt=q, response=f"answer about {k}", id=k) for k, q in QUESTIONS.items()]


@pytest.fixture(scope="module")
def pool(embedder):
    return Pool("seeds", SAMPLES, embedder)


def near(pool, q, k):
    """The samples of pool.nearest, without their distances."""
    return [s for _, s in pool.nearest(q, k)]


def query(embedder, text):
    return embedder([text])[0]


def test_embedder_shape_and_normalization(embedder):
    vecs = embedder(["hello world", "another sentence", "third"])
    assert embedder.ndim == 384
    assert vecs.shape == (3, 384)
    assert vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)


def test_embedder_is_deterministic(embedder):
    a, b = embedder(["same text"]), embedder(["same text"])
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_paraphrase_is_closer_than_unrelated(embedder):
    q, para, other = embedder(["How do I terminate a hung process on Linux?",
                               "How do I kill a Python process that is stuck?",
                               "What is a good recipe for banana bread?"])
    assert float(q @ para) > float(q @ other) + 0.2


def test_pool_len_and_name(pool):
    assert len(pool) == 6
    assert pool.name == "seeds"


@pytest.mark.parametrize("text,expected", [
    ("How do I terminate a hung process on Linux?", "kill"),
    ("Baking a loaf of sweet bread with ripe bananas", "bread"),
    ("I keep waking up at 3am, how do I get better rest?", "sleep"),
    ("Which city is the seat of government in Canberra's country?", "capital"),
    ("My bicycle wheel has a puncture, what should I do?", "tire"),
    ("How do leaves turn sunlight into sugar?", "plants"),
])
def test_nearest_first(pool, embedder, text, expected):
    found = near(pool, query(embedder, text), 3)
    assert len(found) == 3
    assert found[0].id == expected
    assert len({s.id for s in found}) == 3


def test_nearest_exact_question_is_first(pool, embedder):
    for s in SAMPLES:
        assert near(pool, query(embedder, s.prompt), 1)[0] is s


def test_nearest_is_sorted_by_similarity(pool, embedder):
    q = query(embedder, "How do I terminate a hung process on Linux?")
    found = near(pool, q, 6)
    sims = [float(q @ v) for v in embedder([s.prompt for s in found])]
    assert sims == sorted(sims, reverse=True)


def test_nearest_distances_are_cosine_distances(pool, embedder):
    q = query(embedder, "How do I terminate a hung process on Linux?")
    for d, s in pool.nearest(q, 6):
        assert d == pytest.approx(1.0 - float(q @ embedder([s.prompt])[0]), abs=1e-4)


def test_k_larger_than_pool_returns_all(pool, embedder):
    found = near(pool, query(embedder, "How do I terminate a hung process on Linux?"), 50)
    assert len(found) == 6
    assert {s.id for s in found} == set(QUESTIONS)
    assert found[0].id == "kill"


def test_k_zero_returns_empty(pool, embedder):
    assert near(pool, query(embedder, "anything"), 0) == []


def test_empty_pool_returns_empty(embedder):
    empty = Pool("it1", [], embedder)
    assert len(empty) == 0
    assert near(empty, query(embedder, "How do I terminate a hung process?"), 3) == []


def test_single_sample_pool(embedder):
    one = Pool("it1", SAMPLES[:1], embedder)
    assert [s.id for s in near(one, query(embedder, "banana bread"), 4)] == ["kill"]
