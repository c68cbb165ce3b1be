"""Pure parts of ISARA step 4 (isara_lite.training)."""

from __future__ import annotations

import math

import pytest

from isara_lite.recipe import TrainConfig
from isara_lite.training import IGNORE, build_example, iteration_lr, lr_at, total_steps

EOS = 2


def test_build_example_masks_prompt_and_appends_eos():
    ids, labels = build_example([10, 11, 12], [20, 21], EOS, max_length=100)
    assert ids == [10, 11, 12, 20, 21, EOS]
    assert labels == [IGNORE, IGNORE, IGNORE, 20, 21, EOS]
    assert IGNORE == -100


def test_build_example_exact_fit():
    ids, labels = build_example([10, 11, 12], [20, 21], EOS, max_length=6)
    assert ids == [10, 11, 12, 20, 21, EOS]
    assert labels == [-100, -100, -100, 20, 21, EOS]


def test_build_example_truncates_prompt_from_the_left():
    ids, labels = build_example([10, 11, 12, 13, 14], [20, 21], EOS, max_length=5)
    assert ids == [13, 14, 20, 21, EOS]  # the end of the prompt (next to the answer) is kept
    assert labels == [-100, -100, 20, 21, EOS]


def test_build_example_answer_fills_everything():
    ids, labels = build_example([10, 11], [20, 21, 22], EOS, max_length=4)
    assert ids == [20, 21, 22, EOS]
    assert labels == ids


def test_build_example_answer_longer_than_max_length():
    ids, labels = build_example([10, 11], [20, 21, 22, 23, 24], EOS, max_length=3)
    assert ids == [20, 21, 22]
    assert labels == [20, 21, 22]


def test_build_example_empty_prompt_and_answer():
    assert build_example([], [20], EOS, 8) == ([20, EOS], [20, EOS])
    assert build_example([10], [], EOS, 8) == ([10, EOS], [-100, EOS])


@pytest.mark.parametrize("p,a,m", [(list(range(50)), list(range(100, 130)), 40), (list(range(5)), [7], 64),
                                   (list(range(300)), list(range(1000, 1010)), 100)])
def test_build_example_invariants(p, a, m):
    ids, labels = build_example(p, a, EOS, m)
    assert len(ids) == len(labels) <= m
    n_masked = labels.count(IGNORE)
    assert ids[n_masked:] == labels[n_masked:] == (a + [EOS])[: len(ids) - n_masked]
    assert ids[:n_masked] == p[len(p) - n_masked:]


# -- learning rate schedule ------------------------------------------------------------------------

def test_lr_warmup_linear():
    # total 100, 10% warmup -> 10 warmup steps reaching base at step 9
    assert [lr_at(s, 100, 1.0, 0.1, "cosine") for s in range(10)] == pytest.approx([(s + 1) / 10 for s in range(10)])


def test_lr_cosine_endpoints_and_midpoint():
    base, total, warm = 2e-4, 100, 10
    assert lr_at(warm, total, base, 0.1, "cosine") == pytest.approx(base)           # start of decay
    assert lr_at(55, total, base, 0.1, "cosine") == pytest.approx(base / 2)       # halfway through decay
    assert lr_at(total, total, base, 0.1, "cosine") == pytest.approx(0.0, abs=1e-12)  # would-be end
    last = lr_at(total - 1, total, base, 0.1, "cosine")
    assert 0 < last < base * 0.01


def test_lr_cosine_is_monotone_after_warmup():
    lrs = [lr_at(s, 50, 1.0, 0.1, "cosine") for s in range(5, 50)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_lr_warmup_is_at_least_one_step():
    # 3% of 10 steps rounds up to one warmup step, which is already at base
    assert lr_at(0, 10, 1.0, 0.03, "cosine") == pytest.approx(1.0)
    assert lr_at(1, 10, 1.0, 0.03, "cosine") == pytest.approx(1.0)
    assert lr_at(2, 10, 1.0, 0.03, "cosine") < 1.0


def test_lr_no_warmup():
    assert lr_at(0, 10, 1.0, 0.0, "cosine") == pytest.approx(1.0)
    assert lr_at(5, 10, 1.0, 0.0, "cosine") == pytest.approx(0.5)


def test_lr_constant():
    assert [lr_at(s, 20, 3e-4, 0.1, "constant") for s in range(2, 20)] == pytest.approx([3e-4] * 18)
    assert lr_at(0, 20, 3e-4, 0.1, "constant") == pytest.approx(1.5e-4)  # warmup still applies


def test_lr_total_within_warmup():
    assert lr_at(0, 1, 1.0, 0.03, "cosine") == pytest.approx(1.0)


# -- steps and per-iteration lr ------------------------------------------------------------------------

@pytest.mark.parametrize("n,bs,ga,epochs,max_steps,expected", [
    (16, 8, 1, 1, 0, 2),
    (17, 8, 1, 1, 0, 3),
    (17, 8, 1, 2, 0, 6),
    (64, 8, 2, 1, 0, 4),
    (65, 8, 2, 1, 0, 5),
    (100, 4, 1, 3, 10, 10),   # capped
    (8, 8, 1, 1, 10, 1),      # cap above the real count does nothing
    (1, 8, 1, 1, 0, 1),
    (0, 8, 1, 1, 0, 0),
])
def test_total_steps(n, bs, ga, epochs, max_steps, expected):
    cfg = TrainConfig(batch_size=bs, grad_accum=ga, epochs=epochs, max_steps=max_steps)
    assert total_steps(n, cfg) == expected


def test_iteration_lr_halves_per_iteration():
    cfg = TrainConfig(learning_rate=1e-3, lr_decay=0.5)
    assert [iteration_lr(cfg, t) for t in (1, 2, 3, 4)] == pytest.approx([1e-3, 5e-4, 2.5e-4, 1.25e-4])


def test_iteration_lr_default_decay_is_half():
    cfg = TrainConfig()
    assert cfg.lr_decay == 0.5
    assert iteration_lr(cfg, 2) == pytest.approx(cfg.learning_rate / 2)
    assert iteration_lr(TrainConfig(lr_decay=1.0), 5) == pytest.approx(cfg.learning_rate)
    assert math.isclose(iteration_lr(cfg, 1), cfg.learning_rate)


def test_batch_order_covers_every_example_once_per_epoch_and_is_seeded():
    from isara_lite.training import batch_order

    first = [next(g) for g in [batch_order(10, 4, 3)] for _ in range(5)]
    assert first == [b for g in [batch_order(10, 4, 3)] for b in [next(g) for _ in range(5)]]
    flat = [i for b in first for i in b]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))
    assert all(len(b) == 4 for b in first)
    assert first != [next(g) for g in [batch_order(10, 4, 4)] for _ in range(5)]


def test_grouped_batches_pad_less_and_keep_each_epoch_whole():
    import random

    from isara_lite.training import GROUP_WINDOW, batch_order

    lengths = [random.Random(i).randint(20, 200) for i in range(64)]
    plain, grouped = batch_order(64, 8, 0), batch_order(64, 8, 0, lengths)

    def padding(batches):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)

    a, b = [next(plain) for _ in range(8)], [next(grouped) for _ in range(8)]
    assert sorted(i for x in b for i in x) == list(range(64))
    # the same examples fall in each window of GROUP_WINDOW batches, only regrouped by length
    for w in range(0, 8, GROUP_WINDOW):
        assert sorted(i for x in a[w:w + GROUP_WINDOW] for i in x) == sorted(i for x in b[w:w + GROUP_WINDOW] for i in x)
    assert padding(b) < 0.6 * padding(a)
