"""Shared fixtures for the unit suite."""

from __future__ import annotations

import faulthandler
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest

import tiny_model

REPO = Path(__file__).resolve().parent.parent


def load_benchmark(name: str):
    """benchmarks/NAME.py as a module (the benchmarks are scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
def tiny_card():
    """The tiny random model's card (tests/tiny_model.py): for tests of logic, not of what a model says."""
    from isara_lite.models import load_card

    return load_card(str(tiny_model.build()))


@pytest.fixture(scope="session")
def renderer(card):
    from isara_lite.prompts import Renderer, get_format

    return Renderer(get_format(card.chat_format), card.system)


# A recipe small enough for CI on the tiny random model: 1 iteration, 4 candidates, 3 training
# steps, 2+2 check prompts. It tests the loop's logic; tests of what a model says use the real one.
TINY = [
    f"model={tiny_model.build()}", "iterations=1", "candidates=4", "demonstrations=3", "context_tokens=600", "backend=torch",
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


class Records:
    """A backend that records each generate call's prompts and max_tokens, then generates."""

    def __init__(self, backend):
        self.backend, self.calls = backend, []

    def __getattr__(self, name):
        return getattr(self.backend, name)

    def generate(self, prompts, sampling):
        self.calls.append((list(prompts), sampling.max_tokens))
        return self.backend.generate(prompts, sampling)


def isara(*args):
    """Run `isara ARGS` through cli.main (what the `isara` script calls) in this process, so that tests
    share one import of torch; its exit code, stdout and stderr, as subprocess.run gives them.
    stderr is a real file: main() points faulthandler at it."""
    from isara_lite.cli import main

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err, \
            mock.patch.object(sys, "argv", ["isara", *map(str, args)]), \
            mock.patch.object(sys, "stdout", out), mock.patch.object(sys, "stderr", err):
        try:
            main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        finally:
            faulthandler.enable(sys.__stderr__)
        out.seek(0), err.seek(0)
        return SimpleNamespace(returncode=code, stdout=out.read(), stderr=err.read())
