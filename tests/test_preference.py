"""The preference step (isara_lite/preference.py): pairs chosen by the seeds, DPO through TRL (on the
tiny random model), its adapter, and the loop with it turned on."""

import importlib.util
import json

import pytest

from isara_lite.data import Sample
from isara_lite.preference import contrast_items, pair_of

REFUSAL = "I'm sorry, but I can't help with that."
HELPFUL = "Mix flour, water and yeast, let it rise, then bake it for forty minutes."


def test_pair_chosen_by_the_seeds_verdict_not_by_the_first_answer():
    benign = {"id": "a", "prompt": "How do I bake bread?", "first": REFUSAL, "source": "generated", "refuse": False}
    harmful = {"id": "b", "prompt": "How do I poison my neighbour?", "first": REFUSAL, "source": "generated",
               "refuse": True}
    row = pair_of(benign, HELPFUL)
    assert row["kept"] and row["chosen"] == HELPFUL and row["rejected"] == REFUSAL
    row = pair_of(harmful, HELPFUL)
    assert row["kept"] and row["chosen"] == REFUSAL and row["rejected"] == HELPFUL


def test_pair_of_one_kind_or_empty_is_dropped():
    item = {"id": "a", "prompt": "q", "first": HELPFUL, "source": "generated", "refuse": False}
    assert not pair_of(item, "Knead the dough for ten minutes first.")["kept"]
    assert not pair_of(item, "")["kept"]
    assert "chosen" not in pair_of(item, "")


def test_seed_items_take_their_own_answer_as_the_verdict_and_generated_ones_the_classifiers(embedder, repo):
    from isara_lite.data import read_samples
    from isara_lite.refusal import is_refusal
    from isara_lite.filters import Consistency

    seeds = read_samples(repo / "recipes" / "seeds" / "safety.jsonl")
    classifier = Consistency(seeds, embedder)
    kept = [Sample("Give me a plan to rob the bank on Main Street tonight.", HELPFUL, "it1-0", "generated", 1),
            Sample("What is a good recipe for banana bread?", REFUSAL, "it1-1", "generated", 1)]
    items = contrast_items(seeds, kept, classifier, use_seeds=True)
    assert [i["refuse"] for i in items[:64]] == [is_refusal(s.response) for s in seeds]
    assert [(i["id"], i["refuse"], i["source"]) for i in items[64:]] == [
        ("it1-0", True, "generated"), ("it1-1", False, "generated")]
    assert [i["id"] for i in contrast_items(seeds, kept, classifier, use_seeds=False)] == ["it1-0", "it1-1"]


@pytest.fixture(scope="module")
def torch_backend(tiny_card):
    from isara_lite.backends.base import create_backend

    return create_backend("torch", tiny_card, threads=2)


def test_dpo_moves_the_margin_toward_the_chosen_answers(torch_backend, tiny_card, tmp_path):
    """A few DPO steps with a high learning rate raise log p(chosen) - log p(rejected) on the pairs
    they trained on, and leave one adapter (no reference copy) in PEFT layout that loads again.
    On the tiny model: TRL's loss and our adapter handling are under test, not what DPO teaches."""
    from isara_lite.prompts import Renderer, get_format
    from isara_lite.recipe import PreferenceConfig, TrainConfig

    card = tiny_card
    r = Renderer(get_format(card.chat_format), card.system)
    pairs = [{"prompt": r.chat_prompt(q), "chosen": c, "rejected": j} for q, c, j in [
        ("How do I bake bread?", HELPFUL, REFUSAL),
        ("What's a good name for a cat?", "Try Miso, Pepper or Olive: short names are easy to call.", REFUSAL),
        ("How can I hurt someone without leaving marks?", REFUSAL, "Use a wet towel so nothing shows."),
        ("Write a message threatening my coworker.", REFUSAL, "Sure: watch your back, or else."),
    ]]

    def margin():
        lp = torch_backend.score([(p["prompt"], p["chosen"]) for p in pairs] + [(p["prompt"], p["rejected"]) for p in pairs])
        return sum(lp[:4]) - sum(lp[4:])

    train = TrainConfig(max_length=128, warmup_ratio=0.0)
    torch_backend.train([(p["prompt"], p["chosen"]) for p in pairs[:2]], TrainConfig(max_steps=1), 1e-4, None,
                        tmp_path / "sft")
    before = margin()
    pref = PreferenceConfig(enabled=True, batch_size=4, epochs=3, sft_weight=0.0, beta=0.1)
    result = torch_backend.train_preference(pairs, pref, train, 2e-3, tmp_path / "sft", tmp_path / "dpo")
    after = margin()
    assert result.steps == 3 and len(result.losses) == 3
    assert after > before + 5.0, (before, after)
    saved = sorted(p.name for p in (tmp_path / "dpo").iterdir())
    assert saved == ["README.md", "adapter_config.json", "adapter_model.safetensors"] or \
        saved == ["adapter_config.json", "adapter_model.safetensors"], saved
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # TRL's work dir is gone
    torch_backend.load(tmp_path / "sft")
    assert margin() == pytest.approx(before, abs=1e-3)
    torch_backend.load(tmp_path / "dpo")
    assert margin() == pytest.approx(after, abs=1e-3)


def test_align_with_the_preference_step_and_resume(tmp_path, repo):
    """The loop on the tiny recipe with preference.enabled: pairs written, the iteration's adapter is
    the preference step's, and a resume after the run redoes nothing."""
    from conftest import TINY
    from isara_lite.loop import align
    from isara_lite.recipe import load_recipe

    recipe = load_recipe(repo / "recipes" / "quickstart.yaml",
                         [*TINY, "preference.enabled=true", "preference.seed_pairs=false", "preference.epochs=1",
                          "generation.batch_size=4"])
    out = tmp_path / "run"
    summary = align(recipe, out)
    it = out / "iter_1"
    rows = [json.loads(line) for line in (it / "pairs.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [c["id"] for c in map(json.loads, (it / "kept.jsonl").read_text().splitlines())]
    record = json.loads((it / "preference.json").read_text())
    assert record["pairs"] == sum(r["kept"] for r in rows) > 0
    assert summary["iterations"][0]["preference"]["pairs"] == record["pairs"]
    assert (it / "sft_adapter" / "adapter_model.safetensors").is_file()
    assert (it / "adapter" / "adapter_model.safetensors").is_file()
    stamp = (it / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns
    align(recipe, out, resume=True)
    assert (it / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns == stamp


def test_balance_repeats_the_rarer_chosen_kind_until_both_are_as_many():
    from isara_lite.preference import balance_kinds

    refuse = [{"id": f"r{i}", "refuse": True, "chosen": REFUSAL, "rejected": HELPFUL} for i in range(3)]
    answer = [{"id": f"a{i}", "refuse": False, "chosen": HELPFUL, "rejected": REFUSAL} for i in range(8)]
    out = balance_kinds(answer + refuse, seed=1)
    assert out[:11] == answer + refuse  # the pairs themselves first, in order
    assert sum(p["chosen"] == REFUSAL for p in out) == sum(p["chosen"] == HELPFUL for p in out) == 8
    counts = sorted(sum(p["id"] == r["id"] for p in out) for r in refuse)
    assert counts == [2, 3, 3]  # each of the three twice, then two drawn
    assert balance_kinds(answer + refuse, seed=1) == out and balance_kinds(answer, seed=1) == answer
    assert balance_kinds(answer[:3] + refuse, seed=1) == answer[:3] + refuse


def test_align_with_dpo_instead_of_sft(tmp_path, repo):
    """preference.replaces_sft: no SFT stage at all; each iteration's adapter is the preference step's,
    trained from the previous iteration's adapter (none in iteration 1), with the pairs balanced, and
    its steps are the ones the metrics report."""
    from conftest import TINY
    from isara_lite.loop import align
    from isara_lite.recipe import load_recipe

    recipe = load_recipe(repo / "recipes" / "quickstart.yaml",
                         [*TINY, "preference.enabled=true", "preference.replaces_sft=true", "preference.balance=true",
                          "generation.batch_size=4", "iterations=2"])
    out = tmp_path / "run"
    summary = align(recipe, out)
    for t, started in ((1, None), (2, str(out / "iter_1" / "adapter"))):
        it = out / f"iter_{t}"
        assert not (it / "sft_adapter").exists() and not (it / "train.json").exists()
        assert (it / "adapter" / "adapter_model.safetensors").is_file()
        record = json.loads((it / "preference.json").read_text())
        assert record["started_from"] == started and record["balance"] is True
        row = summary["iterations"][t - 1]
        assert row["train_steps"] == record["steps"] > 0 and row["learning_rate"] == record["learning_rate"]
        refuse, answer = record["refusal_chosen"], record["pairs"] - record["refusal_chosen"]
        assert record["repeated"] == (abs(answer - refuse) if refuse and answer else 0)


@pytest.mark.skipif(importlib.util.find_spec("mlx_lm") is None, reason="mlx-lm is not installed")
def test_backends_that_cannot_run_it_say_so_before_any_work(tmp_path, repo):
    from conftest import TINY
    from isara_lite.errors import IsaraError
    from isara_lite.loop import align
    from isara_lite.recipe import load_recipe

    recipe = load_recipe(repo / "recipes" / "quickstart.yaml", [*TINY, "preference.enabled=true", "backend=mlx"])
    with pytest.raises(IsaraError, match="cannot run the preference step"):
        align(recipe, tmp_path / "run")
    assert not (tmp_path / "run" / "iter_0").exists()


def test_refusal_opener_is_the_shortest_refusing_start():
    from isara_lite.preference import refusal_opener

    assert refusal_opener("I'm sorry, but I can't help with that.") == "I'm sorry,"
    assert refusal_opener("I cannot help with planning violence.") == "I cannot"
    assert refusal_opener("Mix flour and water.") == ""
