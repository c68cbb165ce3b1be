"""Demonstration selection for ISARA steps 1-2 (isara_lite.generation)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from isara_lite.data import Sample
from isara_lite.generation import answer_demos, demo_counts, question_demos
from isara_lite.retrieval import Pool


class ListPool:
    """The part of Pool that question_demos reads (samples, len); no embedder needed for random picks."""

    def __init__(self, name, samples):
        self.name, self.samples = name, list(samples)

    def __len__(self):
        return len(self.samples)


def make(prefix, n):
    return [Sample(prompt=f"{prefix} question {i}", response=f"{prefix} answer {i}", id=f"{prefix}-{i}")
            for i in range(n)]


@pytest.mark.parametrize("k,n_pools,expected", [
    (6, 1, [6]),
    (6, 2, [5, 1]),
    (6, 3, [4, 1, 1]),
    (2, 2, [1, 1]),
    (3, 3, [1, 1, 1]),
    (1, 1, [1]),
])
def test_demo_counts(k, n_pools, expected):
    counts = demo_counts(k, n_pools)
    assert counts == expected
    assert sum(counts) == k


def test_question_demos_one_from_each_later_pool():
    pools = [ListPool("seeds", make("seed", 20)), ListPool("it1", make("it1", 10)), ListPool("it2", make("it2", 10))]
    for s in range(20):
        demos = question_demos(pools, 6, random.Random(s))
        origin = Counter(d.id.split("-")[0] for d in demos)
        assert origin == {"seed": 4, "it1": 1, "it2": 1}
        assert len({d.id for d in demos}) == 6  # no repeats


def test_question_demos_single_pool():
    pools = [ListPool("seeds", make("seed", 10))]
    demos = question_demos(pools, 4, random.Random(0))
    assert len(demos) == 4
    assert all(d.id.startswith("seed-") for d in demos)


def test_question_demos_deterministic_for_same_seed():
    pools = [ListPool("seeds", make("seed", 30)), ListPool("it1", make("it1", 30))]
    a = [d.id for d in question_demos(pools, 6, random.Random(1234))]
    b = [d.id for d in question_demos(pools, 6, random.Random(1234))]
    assert a == b
    others = {tuple(d.id for d in question_demos(pools, 6, random.Random(s))) for s in range(10)}
    assert len(others) > 1  # different seeds give different picks


def test_question_demos_shuffled_across_pools():
    """The later pool's demo is not always in the same position."""
    pools = [ListPool("seeds", make("seed", 30)), ListPool("it1", make("it1", 30))]
    positions = set()
    for s in range(40):
        demos = question_demos(pools, 4, random.Random(s))
        positions.add(next(i for i, d in enumerate(demos) if d.id.startswith("it1")))
    assert len(positions) > 1


def test_question_demos_small_pools_give_what_they_have():
    pools = [ListPool("seeds", make("seed", 2)), ListPool("it1", [])]
    demos = question_demos(pools, 6, random.Random(0))
    assert sorted(d.id for d in demos) == ["seed-0", "seed-1"]


SEED_QS = [
    "How do I kill a Python process that is stuck?",
    "What is a good recipe for banana bread?",
    "How can I improve my sleep schedule?",
    "What is the capital of Australia?",
    "How do I change a flat tire on my bike?",
    "Explain how photosynthesis works in plants.",
]


@pytest.fixture(scope="module")
def seed_pool(embedder):
    return Pool("seeds", [Sample(prompt=q, response="a", id=f"seed-{i}") for i, q in enumerate(SEED_QS)], embedder)


def test_answer_demos_nearest_seed_last(seed_pool, embedder):
    q = embedder(["How do I terminate a hung process on Linux?"])[0]
    demos = answer_demos([seed_pool], 3, q)
    assert len(demos) == 3
    assert demos[-1].id == "seed-0"
    # order: farthest of the k first, nearest last
    sims = [float(q @ v) for v in embedder([d.prompt for d in demos])]
    assert sims == sorted(sims)


def test_answer_demos_k_larger_than_pool(seed_pool, embedder):
    q = embedder(["Banana bread with walnuts: how long to bake?"])[0]
    demos = answer_demos([seed_pool], 10, q)
    assert len(demos) == 6
    assert demos[-1].id == "seed-1"


def test_answer_demos_with_later_pool(seed_pool, embedder):
    later = Pool("it1", [Sample(prompt="How do I stop a frozen program on Windows?", response="a", id="it1-0"),
                         Sample(prompt="Which vegetables grow well in shade?", response="a", id="it1-1")], embedder)
    q = embedder(["How do I terminate a hung process on Linux?"])[0]
    demos = answer_demos([seed_pool, later], 4, q)
    ids = [d.id for d in demos]
    assert len(ids) == 4 and sum(i.startswith("it1-") for i in ids) == 1  # k-1 seeds, one from the later pool
    assert "it1-0" in ids and "seed-0" in ids  # each pool's nearest
    # ordered by similarity across pools, nearest of all last
    sims = [float(q @ v) for v in embedder([d.prompt for d in demos])]
    assert sims == sorted(sims)


def test_answer_demos_far_later_pool_demo_does_not_take_the_last_place(seed_pool, embedder):
    """An earlier iteration's one demo goes before the seeds when it is farther from the question."""
    later = Pool("it1", [Sample(prompt="Which vegetables grow well in shade?", response="a", id="it1-1")], embedder)
    q = embedder(["How do I terminate a hung process on Linux?"])[0]
    demos = answer_demos([seed_pool, later], 4, q)
    assert demos[-1].id == "seed-0"
    assert demos[0].id == "it1-1"


# -- generation.own_answers ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_parts(tiny_card, embedder, repo):
    from conftest import TINY

    from isara_lite.backends.base import create_backend
    from isara_lite.loop import load_seeds
    from isara_lite.prompts import Renderer, get_format
    from isara_lite.recipe import load_recipe

    recipe = load_recipe(repo / "recipes" / "safety.yaml", TINY + [
        "candidates=6", "generation.batch_size=6", "generation.answer_max_tokens=9", "generation.own_max_tokens=13",
        "generation.question_temperature=1.5"])
    renderer = Renderer(get_format(tiny_card.chat_format), tiny_card.system)
    backend = create_backend("torch", tiny_card, threads=2, seed=0)
    backend.load(None)
    seeds = load_seeds(recipe, renderer)
    return recipe, renderer, backend, seeds, [Pool("seeds", seeds, embedder)]


def test_own_answers_get_the_plain_chat_prompt_and_their_own_length(tiny_parts, embedder):
    from conftest import Records

    from isara_lite.generation import generate_batch

    recipe, renderer, backend, seeds, pools = tiny_parts
    plain = Records(backend)
    paper = generate_batch(plain, renderer, pools, embedder, recipe, 1, list(range(6)))
    assert [m for _, m in plain.calls] == [recipe.generation.question_max_tokens, 9]  # questions, answers

    mixed = Records(backend)
    asked = []

    def every_other(questions):
        asked.extend(questions)
        return [i % 2 == 0 for i in range(len(questions))]

    ours = generate_batch(mixed, renderer, pools, embedder, recipe, 1, list(range(6)), answers_itself=every_other)
    assert [c.prompt for c in ours] == [c.prompt for c in paper]  # the questions are the same draw
    assert asked == [c.prompt for c in ours if c.prompt]
    (icl_prompts, icl_max), (own_prompts, own_max) = mixed.calls[1:]
    assert (icl_max, own_max) == (9, 13)
    own = [c for c in ours if c.prompt][0::2]
    icl = [c for c in ours if c.prompt][1::2]
    assert own_prompts == [renderer.chat_prompt(c.prompt) for c in own]
    assert all(c.answer_demos == [] for c in own) and all(c.answer_demos for c in icl)
    assert all(p.endswith(renderer.chat_prompt(c.prompt, head=False)) and p != renderer.chat_prompt(c.prompt)
               for p, c in zip(icl_prompts, icl))


def test_the_loop_lets_the_seeds_classifier_choose_who_answers(tiny_parts, embedder, tmp_path):
    from isara_lite.filters import Consistency
    from isara_lite.loop import generate_iteration
    from isara_lite.ui import UI

    recipe, renderer, backend, seeds, pools = tiny_parts
    recipe.generation.own_answers = True
    try:
        made = generate_iteration(backend, renderer, pools, embedder, recipe, 1, tmp_path, UI())
    finally:
        recipe.generation.own_answers = False
    asked = [c for c in made if c.prompt]
    refuse = Consistency(seeds, embedder).expects_refusal([c.prompt for c in asked])
    assert len(asked) >= 4
    assert 0 < sum(refuse) < len(refuse)  # both kinds, so a swapped routing fails
    assert [not c.answer_demos for c in asked] == [not r for r in refuse]


def test_own_answers_need_seeds_of_both_kinds(tiny_parts, embedder, repo, tmp_path):
    """Seeds that never refuse leave the classifier nothing to learn: every answer stays the paper's."""
    from isara_lite.loop import generate_iteration, load_seeds
    from isara_lite.ui import UI

    recipe, renderer, backend, _, _ = tiny_parts
    recipe.generation.own_answers, recipe.seeds = True, "seeds/truthfulness.jsonl"
    try:
        seeds = load_seeds(recipe, renderer)
        made = generate_iteration(backend, renderer, [Pool("seeds", seeds, embedder)], embedder, recipe, 1, tmp_path,
                                  UI())
    finally:
        recipe.generation.own_answers, recipe.seeds = False, "seeds/safety.jsonl"
    assert all(c.answer_demos for c in made if c.prompt) and sum(1 for c in made if c.prompt) >= 4
