"""Shared fixtures for the unit suite."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def embedder():
    """The real all-MiniLM-L6-v2 embedder, loaded once for the whole session (a few seconds)."""
    from isara_lite.retrieval import Embedder

    return Embedder()


@pytest.fixture(scope="session")
def card():
    """The bundled model's card (SmolLM2-135M-Instruct)."""
    from isara_lite.models import load_card

    return load_card("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def renderer(card):
    from isara_lite.prompts import Renderer, get_format

    return Renderer(get_format(card.chat_format), card.system)


# A recipe small enough for CI: 1 iteration, 4 candidates, 3 training steps, 2+2 check prompts.
TINY = [
    "iterations=1", "candidates=4", "demonstrations=3", "context_tokens=600", "backend=torch",
    "generation.batch_size=2", "generation.question_max_tokens=24", "generation.answer_max_tokens=24",
    "training.max_steps=3", "training.batch_size=4", "training.learning_rate=0.005",
    "check.limit=2", "check.max_tokens=16", "threads=2",
]


@pytest.fixture(scope="session")
def finished(tmp_path_factory):
    """(recipe, run dir, summary) of the tiny recipe run once on the torch backend."""
    from isara_lite.loop import align
    from isara_lite.recipe import load_recipe

    out = tmp_path_factory.mktemp("runs") / "tiny"
    recipe = load_recipe(REPO / "recipes" / "quickstart.yaml", TINY)
    return recipe, out, align(recipe, out)
