"""Backend conformance: every backend available here behaves the same on the bundled default model.

Each backend is loaded once for this module (module-scoped, parametrized fixture) and trained once
(3 steps on 4 pairs). Checks: seeded and greedy generation are deterministic, stop strings cut the
text where the model would have written them, max_tokens holds, training lowers the loss, an
adapter saves and loads back to the same outputs, score() ranks the model's own text above a
scrambled copy and moves with the adapter, and bad arguments fail with IsaraError naming the
culprit. A known bug in an existing backend is a strict xfail that names it (fix it, then the
xfail turns into a failure and goes).
"""

from __future__ import annotations

import importlib.util
import math
import platform
import re
import sys
from dataclasses import replace

import pytest

from isara_lite.backends.base import REQUIRES, Sampling, create_backend
from isara_lite.errors import IsaraError
from isara_lite.recipe import TrainConfig
from isara_lite.training import lr_at

from conftest import REPO

pytestmark = pytest.mark.real_model  # the bundled model on every backend that runs here

def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def _no(module: str) -> bool:
    return importlib.util.find_spec(module) is None


BACKENDS = [
    pytest.param("torch", id="torch"),
    pytest.param("llamacpp", id="llamacpp", marks=pytest.mark.skipif(
        _no("llama_cpp"), reason="llama-cpp-python is not installed (pip install 'isara_lite[llamacpp]')")),
    # mlx[cpu] on Linux uses a reference BLAS: its pass here took 9 min (vs ~1 min for torch + llamacpp),
    # so off Apple silicon it is a slow test (pytest -m slow); on a Mac it runs by default.
    pytest.param("mlx", id="mlx", marks=[pytest.mark.skipif(
        _no("mlx_lm") or not (REPO / "isara_lite" / "backends" / "mlx.py").is_file(),
        reason="mlx-lm is not installed (pip install 'isara_lite[mlx]') or isara_lite/backends/mlx.py is not written yet"),
        *([] if sys.platform == "darwin" and platform.machine() == "arm64" else [pytest.mark.slow])]),
    pytest.param("unsloth", id="unsloth", marks=pytest.mark.skipif(
        _no("unsloth") or not _cuda(),
        reason="unsloth needs a CUDA GPU and pip install 'isara_lite[cuda]'; this machine has "
               f"{'no unsloth' if _no('unsloth') else 'unsloth'} and {'a' if _cuda() else 'no'} CUDA GPU")),
]

# Known bugs in existing backends: {test name: {backend: reason}}; applied as strict xfails.
# (Empty: the torch stop, adapter_in and failed-load bugs this suite found are fixed.)
KNOWN_BUGS: dict[str, dict[str, str]] = {}

QUESTIONS = ["What is the capital of France?", "Name three colours of the rainbow."]
TRAIN_PAIRS = [
    ("What is the secret word?", "The secret word is pineapple."),
    ("Which colour is the sky on Zorblat?", "The sky on Zorblat is bright green."),
    ("Who guards the old bridge?", "A grumpy troll named Kevin guards the old bridge."),
    ("How many moons does Pluto have?", "Pluto has five moons, and Charon is the largest."),
]
TRAIN = TrainConfig(epochs=3, max_steps=3, batch_size=4, learning_rate=5e-3, max_length=128)
GREEDY = Sampling(max_tokens=8, temperature=0.0)


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request, card):
    # One thread: results do not depend on it, and two OpenMP threads on a 2-core machine that
    # other processes share spin at every barrier (generation measured 7-20x slower than one thread).
    b = create_backend(request.param, card, threads=1, seed=0)
    yield b
    del b


@pytest.fixture(autouse=True)
def known_bugs(request):
    """Mark this test a strict xfail on a backend with a known bug in it."""
    if "backend" not in request.fixturenames:
        return
    name = request.node.originalname
    b = request.getfixturevalue("backend")
    reason = KNOWN_BUGS.get(name, {}).get(b.name)
    if reason:
        request.applymarker(pytest.mark.xfail(strict=True, reason=f"{b.name}: {reason}"))


@pytest.fixture(scope="module")
def trained(backend, renderer, tmp_path_factory):
    """Train once per backend: (result, adapter, on_step calls, greedy texts and scores right after)."""
    backend.load(None)
    pairs = [(renderer.chat_prompt(q), a) for q, a in TRAIN_PAIRS]
    prompts = [p for p, _ in pairs[:2]]  # greedy outputs are compared on two of the training prompts
    base_scores = backend.score(pairs) if hasattr(backend, "score") else None
    base_texts = _texts(backend.generate(prompts, GREEDY))
    calls = []
    adapter = tmp_path_factory.mktemp(f"conformance-{backend.name}") / "adapter"
    result = backend.train(pairs, TRAIN, TRAIN.learning_rate, None, adapter, on_step=lambda *a: calls.append(a))
    return dict(result=result, adapter=adapter, calls=calls, prompts=prompts, pairs=pairs,
                base_texts=base_texts, base_scores=base_scores,
                texts=_texts(backend.generate(prompts, GREEDY)))


def _texts(gens) -> list[str]:
    return [g.text for g in gens]


# -- generation ----------------------------------------------------------------------------------
def test_seeded_sampling_is_deterministic(backend, renderer):
    backend.load(None)
    prompts = [renderer.chat_prompt(q) for q in QUESTIONS]
    s = Sampling(max_tokens=8, temperature=0.9, top_p=0.95, top_k=50, repetition_penalty=1.1, seed=3)
    first, again = _texts(backend.generate(prompts, s)), _texts(backend.generate(prompts, s))
    assert first == again
    assert _texts(backend.generate(prompts, replace(s, seed=4))) != first  # the seed is used


def test_greedy_is_deterministic(backend, renderer):
    backend.load(None)
    prompts = [renderer.chat_prompt(q) for q in QUESTIONS]
    first = _texts(backend.generate(prompts, GREEDY))
    assert first == _texts(backend.generate(prompts, replace(GREEDY, seed=9)))  # and ignores the seed
    assert all(t.strip() for t in first)


@pytest.fixture(scope="module")
def unstopped(backend, renderer):
    """(prompt, sampling, greedy generation with no stop) that the stop tests cut."""
    backend.load(None)
    prompt = renderer.chat_prompt(QUESTIONS[0])
    greedy = replace(GREEDY, max_tokens=20)
    return prompt, greedy, backend.generate([prompt], greedy)[0]


def _stop_check(backend, unstopped, pick):
    backend.load(None)
    prompt, greedy, full = unstopped
    stop = pick(full.text)
    cut = full.text.find(stop)
    assert cut > 0, (stop, full.text)
    got = backend.generate([prompt], replace(greedy, stop=(stop, "<|im_end|>")))[0]
    assert stop not in got.text
    assert got.text == full.text[:cut], (stop, full.text)  # cut exactly where the model wrote it
    assert 0 < got.completion_tokens <= full.completion_tokens


def test_stop_word_cuts_the_text(backend, unstopped):
    """A one-word stop that the model writes mid-sentence (inside a token that has its leading space)."""
    _stop_check(backend, unstopped, lambda text: re.findall(r"[A-Za-z]{4,}", text)[2])


def test_stop_phrase_cuts_the_text(backend, unstopped):
    """A stop of several tokens."""
    _stop_check(backend, unstopped, lambda text: re.findall(r"[A-Za-z]+ [A-Za-z]+", text)[1])


def test_max_tokens_is_honoured(backend, renderer):
    backend.load(None)
    prompt = renderer.chat_prompt("Write a long story about a dragon who learns to bake bread.")
    short = backend.generate([prompt], replace(GREEDY, max_tokens=5))[0]
    longer = backend.generate([prompt], replace(GREEDY, max_tokens=10))[0]
    assert short.completion_tokens == 5 and longer.completion_tokens == 10  # a story does not end that soon
    assert longer.text.startswith(short.text) and len(longer.text) > len(short.text)
    assert short.prompt_tokens == backend.count_tokens(prompt)


# -- training and adapters -----------------------------------------------------------------------
def test_training_lowers_the_loss(trained):
    r = trained["result"]
    assert r.steps == TRAIN.max_steps == len(r.losses)
    assert all(math.isfinite(x) for x in r.losses)
    assert r.losses[-1] < r.losses[0], r.losses
    assert (r.adapter / "adapter_config.json").is_file() and (r.adapter / "adapter_model.safetensors").is_file()
    calls = trained["calls"]
    assert [c[:2] for c in calls] == [(i + 1, TRAIN.max_steps) for i in range(TRAIN.max_steps)]
    assert [c[2] for c in calls] == pytest.approx(r.losses)
    lrs = [lr_at(i, r.steps, TRAIN.learning_rate, TRAIN.warmup_ratio, TRAIN.schedule) for i in range(r.steps)]
    assert [c[3] for c in calls] == pytest.approx(lrs)
    assert all(c[4] > 0 for c in calls) and sum(c[4] for c in calls) == r.tokens


def test_adapter_saves_and_loads_back(backend, trained):
    prompts, tuned = trained["prompts"], trained["texts"]
    assert tuned != trained["base_texts"]  # the adapter changed the model
    backend.load(None)
    assert _texts(backend.generate(prompts, GREEDY)) == trained["base_texts"]
    backend.load(trained["adapter"])
    assert _texts(backend.generate(prompts, GREEDY)) == tuned


def test_failed_load_keeps_the_loaded_adapter(backend, trained, tmp_path):
    backend.load(trained["adapter"])
    with pytest.raises(IsaraError, match=re.escape(str(tmp_path / "nothing-here"))):
        backend.load(tmp_path / "nothing-here")
    assert _texts(backend.generate(trained["prompts"], GREEDY)) == trained["texts"]


# -- likelihood ----------------------------------------------------------------------------------
def test_score_prefers_the_models_own_text(backend, renderer):
    backend.load(None)
    prompt = renderer.chat_prompt(QUESTIONS[0])
    gen = backend.generate([prompt], replace(GREEDY, max_tokens=16))[0]
    text = gen.text
    words = text.split()
    scrambled = " ".join(words[::-1])
    assert scrambled != text
    own, other = backend.score([(prompt, text), (prompt, scrambled)])
    assert math.isfinite(own) and own < 0
    assert own > other
    # alone vs batched (padding): llama.cpp's quantized kernels differ with the batch shape, so allow the
    # project's cross-backend agreement bar, 0.1 nat per token; a padding bug costs several nats
    assert backend.score([(prompt, text)])[0] == pytest.approx(own, abs=0.1 * gen.completion_tokens)


def test_score_moves_with_the_adapter(backend, trained):
    pairs = trained["pairs"]
    backend.load(None)
    base = backend.score(pairs)
    assert base == pytest.approx(trained["base_scores"], rel=1e-3, abs=1e-2)
    backend.load(trained["adapter"])
    tuned = backend.score(pairs)
    assert all(t > b + 0.1 for t, b in zip(tuned, base)), (base, tuned)  # trained answers got likelier


# -- bad arguments -------------------------------------------------------------------------------
def test_missing_adapter_is_a_clear_error(backend, tmp_path):
    missing = tmp_path / "no-such-adapter"
    with pytest.raises(IsaraError, match=re.escape(str(missing))):
        backend.load(missing)


def test_missing_adapter_in_is_a_clear_error(backend, renderer, tmp_path):
    missing = tmp_path / "no-such-adapter"
    pairs = [(renderer.chat_prompt(q), a) for q, a in TRAIN_PAIRS]
    with pytest.raises(IsaraError, match=re.escape(str(missing))):
        backend.train(pairs, TRAIN, TRAIN.learning_rate, missing, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unknown_backend_is_a_clear_error(card):
    with pytest.raises(IsaraError, match="unknown backend 'nonesuch'"):
        create_backend("nonesuch", card)


def test_backend_without_its_extra_names_the_extra(card):
    missing = [(name, module, extra) for name, (module, extra) in REQUIRES.items() if _no(module)]
    if not missing:
        pytest.skip("every optional backend is installed here, so none can show the missing-extra error")
    name, module, extra = missing[0]
    with pytest.raises(IsaraError, match=rf"{module}.*isara_lite\[{extra}\]"):
        create_backend(name, card)
