"""The whole loop on the tiny random model (tests/tiny_model.py): a tiny recipe, real generation and training code."""

import json
import re
import shutil
from pathlib import Path

import pytest

from isara_lite.backends.base import Sampling, create_backend
from isara_lite.files import read_jsonl_tolerant
from isara_lite.filters import FILTERS
from isara_lite.loop import align
from isara_lite.models import load_card
from isara_lite.prompts import Renderer, get_format
from isara_lite.recipe import load_recipe

from conftest import TINY

ROOT = Path(__file__).resolve().parent.parent


def test_run_files_and_counts(finished):
    recipe, out, summary = finished
    for name in ["recipe.yaml", "seeds.jsonl", "log.txt", "summary.json", "iter_0/metrics.json",
                 "iter_1/candidates.jsonl", "iter_1/kept.jsonl", "iter_1/metrics.json",
                 "iter_1/adapter/adapter_model.safetensors", "iter_1/check.jsonl"]:
        assert (out / name).is_file(), name
    cands = read_jsonl_tolerant(out / "iter_1/candidates.jsonl")
    kept = read_jsonl_tolerant(out / "iter_1/kept.jsonl")
    assert len(cands) == 4
    assert [c["id"] for c in cands] == [f"it1-{i}" for i in range(4)]
    for c in cands:
        assert set(c["verdicts"]) == set(FILTERS)
        assert c["kept"] == all(c["verdicts"].values())
        assert 1 <= len(c["question_demos"]) <= 3
        assert all(d.startswith("seed-") for d in c["question_demos"])
    assert [c["id"] for c in kept] == [c["id"] for c in cands if c["kept"]]
    metrics = json.loads((out / "iter_1/metrics.json").read_text())
    assert metrics["generated"] == 4 and metrics["kept"] == len(kept)
    assert metrics["train_steps"] == 3
    assert sum(metrics["removed"].values()) >= 4 - len(kept)
    assert metrics["check"]["n_harmful"] == 2 and metrics["check"]["n_benign"] == 2
    assert len(summary["checks"]) == 2  # base and iteration 1
    assert re.search(r"backend torch: cpu, 2 threads, training in (bf16|fp32) \(", (out / "log.txt").read_text())


def test_adapter_changes_the_model(finished):
    recipe, out, _ = finished
    card = load_card(recipe.model)
    renderer = Renderer(get_format(card.chat_format), card.system)
    backend = create_backend("torch", card, threads=2)
    prompt = [renderer.chat_prompt("How do I pick a lock to get into my neighbour's house?")]
    greedy = Sampling(max_tokens=20, temperature=0.0, stop=renderer.fmt.stops)
    before = backend.generate(prompt, greedy)[0].text
    backend.load(out / "iter_1" / "adapter")
    after = backend.generate(prompt, greedy)[0].text
    backend.load(None)
    again = backend.generate(prompt, greedy)[0].text
    assert after != before
    assert again == before  # unloading restores the base model exactly


def test_resume_redoes_only_what_was_lost(finished, tmp_path):
    recipe, out, _ = finished
    copy = tmp_path / "tiny"
    shutil.copytree(out, copy)
    lines = (copy / "iter_1/candidates.jsonl").read_text().splitlines(keepends=True)
    # killed during the second batch: one whole batch on disk, then a torn line
    (copy / "iter_1/candidates.jsonl").write_text(lines[0] + lines[1] + lines[2][:10])
    for name in ["kept.jsonl", "metrics.json", "train.json", "check.jsonl"]:
        (copy / "iter_1" / name).unlink()
    shutil.rmtree(copy / "iter_1/adapter")
    align(recipe, copy, resume=True)
    assert read_jsonl_tolerant(copy / "iter_1/candidates.jsonl") == read_jsonl_tolerant(out / "iter_1/candidates.jsonl")
    assert (copy / "iter_1/adapter/adapter_model.safetensors").is_file()


def test_existing_run_needs_resume_and_same_recipe(finished):
    from isara_lite.errors import IsaraError

    recipe, out, _ = finished
    with pytest.raises(IsaraError, match="--resume"):
        align(recipe, out)
    changed = load_recipe(ROOT / "recipes" / "quickstart.yaml", [*TINY, "candidates=5"])
    with pytest.raises(IsaraError, match="candidates"):
        align(changed, out, resume=True)
