"""ISARA steps 1-2: new questions by ICL from random demonstrations, answers by ICL from
demonstrations retrieved by question similarity (or, with generation.own_answers, the model's own
answer where the seeds' classifier says a question is answered). No instruction text anywhere.

Demonstrations per prompt: one from each earlier iteration's pool, the rest from the seeds.
"""

from __future__ import annotations

import random
import zlib

from .backends.base import Sampling
from .data import Sample
from .prompts import cut


def demo_counts(k: int, n_pools: int) -> list[int]:
    """How many demos each pool gives: pools[0] (the seeds) fills what the others leave."""
    rest = [1 if n else 0 for n in range(1, n_pools)]
    return [k - sum(rest)] + rest


def _fit(render, demos, count_tokens, budget: int) -> list:
    """Add demos one by one, keeping each only while the rendered prompt stays within budget."""
    chosen = []
    for d in demos:
        if count_tokens(render(chosen + [d])) <= budget:
            chosen.append(d)
    return chosen


def seed_for(*parts) -> int:
    return zlib.crc32(repr(parts).encode())


def question_demos(pools, k: int, rng: random.Random) -> list[Sample]:
    demos = []
    for pool, n in zip(pools, demo_counts(k, len(pools))):
        demos += rng.sample(pool.samples, min(n, len(pool)))
    rng.shuffle(demos)
    return demos


def answer_demos(pools, k: int, query) -> list[Sample]:
    """Nearest questions per pool, ordered across pools by distance so that the nearest of all is
    last, right before the new question: a small model copies the last demonstration's style most,
    so an earlier pool's one demo must not take that place unless it is the closest."""
    found = []
    for pool, n in zip(pools, demo_counts(k, len(pools))):
        found += pool.nearest(query, n)
    found.sort(key=lambda f: -f[0])  # stable: ties keep pool order
    return [s for _, s in found]


def within_budget(renderer, demos, question: str, count_tokens, budget: int) -> list:
    """Answer demos for `question`, dropping the farthest (first) ones while the prompt is over budget."""
    while demos and count_tokens(renderer.answer_prompt(demos, question)) > budget:
        demos = demos[1:]
    return demos


def generate_batch(backend, renderer, pools, embedder, recipe, iteration: int, indices: list[int],
                   on_generated=None, answers_itself=None) -> list[Sample]:
    """Candidates `indices` of iteration `iteration`, deterministic in (recipe.seed, iteration, index).

    answers_itself: None (the paper), or a function of the questions giving True where the model
    answers with no demonstrations (generation.own_answers)."""
    g, k, budget = recipe.generation, recipe.demonstrations, recipe.context_tokens
    count = backend.count_tokens
    stops = renderer.fmt.stops

    q_demos, q_prompts = [], []
    for i in indices:
        # candidates of one group share their demos (and so the evaluated prompt prefix)
        rng = random.Random(seed_for(recipe.seed, iteration, i // g.questions_per_prompt))
        demos = _fit(renderer.question_prompt, question_demos(pools, k, rng), count, budget)
        q_demos.append(demos)
        q_prompts.append(renderer.question_prompt(demos))
    sampling = Sampling(max_tokens=g.question_max_tokens, temperature=g.question_temperature, top_p=g.top_p,
                        top_k=g.top_k, repetition_penalty=g.question_repetition_penalty, stop=stops,
                        seed=seed_for(recipe.seed, iteration, indices[0], "q"))
    q_out = backend.generate(q_prompts, sampling)
    if on_generated:
        on_generated(q_out)
    questions = [cut(o.text) for o in q_out]

    asked = [j for j, q in enumerate(questions) if q]  # an empty question gets no answer
    answers = [""] * len(indices)
    a_demos: list[list[Sample]] = [[] for _ in indices]
    if asked:
        own = set(j for j, o in zip(asked, answers_itself([questions[j] for j in asked])) if o) \
            if answers_itself else set()
        icl = [j for j in asked if j not in own]
        vecs = embedder([questions[j] for j in icl]) if icl else []
        a_prompts = []
        for j, vec in zip(icl, vecs):
            demos = within_budget(renderer, answer_demos(pools, k, vec), questions[j], count, budget)
            a_demos[j] = demos
            a_prompts.append(renderer.answer_prompt(demos, questions[j]))
        # own answers: the chat prompt that training and evaluation use, and their own length
        calls = [(icl, a_prompts, g.answer_max_tokens, "a"),
                 (sorted(own), [renderer.chat_prompt(questions[j]) for j in sorted(own)], g.own_max_tokens, "own")]
        for rows, prompts, max_tokens, tag in calls:
            if not rows:
                continue
            sampling = Sampling(max_tokens=max_tokens, temperature=g.answer_temperature, top_p=g.top_p,
                                top_k=g.top_k, repetition_penalty=g.answer_repetition_penalty, stop=stops,
                                seed=seed_for(recipe.seed, iteration, indices[0], tag))
            a_out = backend.generate(prompts, sampling)
            if on_generated:
                on_generated(a_out)
            for j, o in zip(rows, a_out):
                answers[j] = cut(o.text)

    return [
        Sample(prompt=questions[j], response=answers[j], id=f"it{iteration}-{i}", source="generated",
               iteration=iteration, question_demos=[d.id for d in q_demos[j]],
               answer_demos=[d.id for d in a_demos[j]])
        for j, i in enumerate(indices)
    ]
