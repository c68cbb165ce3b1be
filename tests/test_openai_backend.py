"""The openai backend against a real OpenAI-compatible server on loopback: llama-cpp-python's own
server (python -m llama_cpp.server, one request at a time), started and stopped here, serving the
tiny random model (tests/tiny_model.py): what is under test is the client, its retries and the loop
around it, and with it a two-iteration run takes seconds. No mocks: the server is killed for real
to test retries and resuming.

The generation and scoring half of the backend conformance suite runs here too (imported below);
its training half is the torch backend's, which this backend trains with.
"""

from __future__ import annotations

import importlib.util
import json
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import replace

import pytest

from isara_lite.backends.base import Sampling, create_backend
from isara_lite.backends.openai import OpenAIBackend
from isara_lite.errors import IsaraError

from conftest import REPO, Records

SERVER_MODULES = ["openai", "llama_cpp", "fastapi", "uvicorn", "sse_starlette", "starlette_context",
                  "pydantic_settings"]
missing = [m for m in SERVER_MODULES if importlib.util.find_spec(m) is None]
pytestmark = pytest.mark.skipif(bool(missing), reason=f"needs {', '.join(missing)}: pip install openai "
                                                    "'llama-cpp-python[server]'")

QUESTIONS = ["What is the capital of France?", "Name three colours of the rainbow."]
GREEDY = Sampling(max_tokens=8, temperature=0.0)

if not missing:
    # The conformance checks every backend must pass that do not train; pytest collects them here
    # and runs them with this module's `backend`, `renderer` and `card` fixtures.
    from test_conformance import (  # noqa: F401
        test_greedy_is_deterministic, test_max_tokens_is_honoured, test_missing_adapter_is_a_clear_error,
        test_score_prefers_the_models_own_text, test_seeded_sampling_is_deterministic, test_stop_phrase_cuts_the_text,
        test_stop_word_cuts_the_text, unstopped)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """llama-cpp-python's OpenAI-compatible server as a subprocess on a fixed loopback port."""

    def __init__(self, gguf, log_path):
        self.gguf, self.log_path, self.port, self.proc = gguf, log_path, free_port(), None
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 120.0) -> None:
        # One thread: the test machine has 2 cores that other work shares.
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(self.gguf), "--host", "127.0.0.1",
               "--port", str(self.port), "--n_threads", "1", "--n_threads_batch", "1", "--n_ctx", "2048",
               "--verbose", "False"]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"the server exited ({self.proc.returncode}): {self.log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/models", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        self.kill()
        pytest.fail(f"the server did not answer within {timeout:.0f} s: {self.log_path.read_text()[-2000:]}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def card(tiny_card):
    return tiny_card


@pytest.fixture(scope="module")
def renderer(card):
    from isara_lite.prompts import Renderer, get_format

    return Renderer(get_format(card.chat_format), card.system)


@pytest.fixture(scope="module")
def server(card, tmp_path_factory):
    gguf = card.gguf_path()
    if gguf is None:
        pytest.skip(f"no GGUF for {card.name}: {card.how_to_get()}")
    s = Server(gguf, tmp_path_factory.mktemp("openai-server") / "server.log")
    try:
        s.start()
        yield s
    finally:
        s.kill()


@pytest.fixture(autouse=True)
def running(server):
    """The server, restarted first if an earlier test killed it."""
    if server.proc is None or server.proc.poll() is not None:
        server.start()
    return server


@pytest.fixture(scope="module")
def backend(server, card):
    with pytest.MonkeyPatch.context() as mp:  # configured as a user would: through the environment
        mp.setenv("ISARA_OPENAI_BASE_URL", server.url)
        mp.delenv("ISARA_OPENAI_MODEL", raising=False)
        mp.delenv("ISARA_OPENAI_CONCURRENCY", raising=False)
        return create_backend("openai", card, threads=1, seed=0)


@pytest.fixture(scope="module")
def llamacpp(card):
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed")
    from isara_lite.backends.llamacpp import LlamaCppBackend

    return LlamaCppBackend(card, threads=1, seed=0, batched=False)


def _texts(gens) -> list[str]:
    return [g.text for g in gens]


# -- generation ----------------------------------------------------------------------------------
def test_greedy_equals_the_llamacpp_backend(backend, llamacpp, renderer):
    """The server runs llama-cpp-python's create_completion, as the llamacpp backend's one-by-one path."""
    prompts = [renderer.chat_prompt(q) for q in QUESTIONS]
    greedy = replace(GREEDY, max_tokens=16)
    assert _texts(backend.generate(prompts, greedy)) == _texts(llamacpp.generate_one_by_one(prompts, greedy))


@pytest.fixture(scope="module")
def real_backend(card_real, tmp_path_factory):
    """A second server, on the bundled model: the repetition penalty needs a model that repeats itself."""
    s = Server(card_real.gguf_path(), tmp_path_factory.mktemp("openai-real") / "server.log")
    try:
        s.start()
        yield OpenAIBackend(card_real, base_url=s.url, seed=0)
    finally:
        s.kill()


@pytest.fixture(scope="module")
def card_real():
    from isara_lite.models import load_card

    return load_card("smollm2-135m-instruct")


@pytest.mark.real_model
def test_server_honours_top_k_and_the_repetition_penalty_not_repeat_last_n(real_backend, card_real):
    from isara_lite.prompts import Renderer, get_format

    backend, renderer = real_backend, Renderer(get_format(card_real.chat_format), card_real.system)
    prompts = [renderer.chat_prompt("Write a long story about a dragon who learns to bake bread.")]
    greedy = replace(GREEDY, max_tokens=24)
    base = _texts(backend.generate(prompts, greedy))
    hot = replace(greedy, temperature=1.5, top_p=1.0, top_k=1, seed=5)
    assert _texts(backend.generate(prompts, hot)) == base  # top_k=1 makes any temperature greedy
    penalized = replace(greedy, repetition_penalty=1.5)
    assert _texts(backend.generate(prompts, penalized)) != base
    # llama-cpp-python's penalty window is the server's --last_n_tokens_size: repeat_last_n is ignored
    assert _texts(backend.generate(prompts, replace(penalized, repeat_last_n=1))) == \
        _texts(backend.generate(prompts, penalized))


def test_many_prompts_in_flight_keep_their_order_and_seeds(backend, running, renderer, monkeypatch):
    prompts = [renderer.chat_prompt(q) for q in QUESTIONS * 2]
    s = Sampling(max_tokens=6, temperature=0.9, seed=11)
    together = backend.generate(prompts, s)
    monkeypatch.setenv("ISARA_OPENAI_BASE_URL", running.url)
    monkeypatch.setenv("ISARA_OPENAI_CONCURRENCY", "1")
    one_at_a_time = create_backend("openai", backend.card, seed=0)
    assert one_at_a_time.concurrency == 1 and backend.concurrency is None
    assert one_at_a_time.generate(prompts, s) == together
    # prompt i samples with seed + i wherever it sits, so a prompt repeated later samples differently
    assert _texts(together[:2]) != _texts(together[2:])
    assert _texts(one_at_a_time.generate(prompts[2:], replace(s, seed=13))) == _texts(together[2:])


# -- scoring -------------------------------------------------------------------------------------
def test_score_agrees_with_the_llamacpp_backend(backend, llamacpp, renderer):
    prompt = renderer.chat_prompt(QUESTIONS[0])
    pairs = [(prompt, "The capital of France is Paris."), (prompt, "Paris France of capital the is The")]
    got, want = backend.score(pairs), llamacpp.score(pairs)
    n = [llamacpp.count_tokens(p + c) - llamacpp.count_tokens(p) for p, c in pairs]
    # the project's cross-backend bar, 0.1 nat per token (batch shapes differ: 0.02 and 0.17 nats measured)
    assert got == [pytest.approx(w, abs=0.1 * k) for w, k in zip(want, n)]


def test_score_refuses_what_llama_cpp_python_gets_wrong(backend):
    """llama-cpp-python's echo pairs tokens with the wrong position unless the prompt starts with BOS."""
    with pytest.raises(IsaraError, match=r"one token off.*another backend"):
        backend.score([("The capital of France is", " Paris.")])


# -- what this backend does not do ---------------------------------------------------------------
HOOK = """import os, signal, subprocess, sys
pidfile, port, gguf, lora = sys.argv[1:5]
try:
    os.kill(int(open(pidfile).read()), signal.SIGKILL)
except (OSError, ValueError):
    pass
cmd = [sys.executable, "-m", "llama_cpp.server", "--model", gguf, "--host", "127.0.0.1", "--port", port,
       "--n_threads", "1", "--n_threads_batch", "1", "--n_ctx", "2048", "--verbose", "False"]
p = subprocess.Popen(cmd + (["--lora_path", lora] if lora else []), stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, start_new_session=True)
open(pidfile, "w").write(str(p.pid))
"""


@pytest.fixture(scope="module")
def adapter(card, renderer, tmp_path_factory):
    """An adapter that answers everything with bananas: any server that serves it shows it at once."""
    from isara_lite.backends.torch import TorchBackend
    from isara_lite.recipe import TrainConfig

    out = tmp_path_factory.mktemp("banana") / "adapter"
    examples = [(renderer.chat_prompt(q), "Banana banana banana banana.") for q in QUESTIONS * 4]
    TorchBackend(card, threads=1).train(examples, TrainConfig(batch_size=8, epochs=6, warmup_ratio=0.0), 3e-2,
                                        None, out)
    return out


def test_an_adapter_needs_runtime_loading_or_the_hook(backend, adapter, tmp_path):
    backend.load(None)
    with pytest.raises(IsaraError, match=r"cannot load LoRA adapters at runtime.*--enable-lora.*ISARA_OPENAI_RESTART"):
        backend.load(adapter)  # llama-cpp-python has no /v1/load_lora_adapter
    with pytest.raises(IsaraError, match=re.escape(str(tmp_path / "none")) + ".*no adapter_model"):
        backend.load(tmp_path / "none")
    assert backend.adapter is None and backend.model == backend.served


def test_the_restart_hook_serves_each_adapter(running, card, renderer, adapter, llamacpp, tmp_path, monkeypatch):
    """The loop's adapter follows it onto a server that loads LoRA only at start: the hook restarts
    llama-cpp-python's server with --lora_path, and its greedy answers are llama.cpp's with the adapter."""
    pidfile, hook = tmp_path / "server.pid", tmp_path / "hook.py"
    hook.write_text(HOOK)
    pidfile.write_text(str(running.proc.pid))
    monkeypatch.setenv("ISARA_OPENAI_RESTART", f"{sys.executable} {hook} {pidfile} {running.port} "
                                               f"{card.gguf_path()} {{gguf_adapter}}")
    prompts = [renderer.chat_prompt(q) for q in QUESTIONS]
    try:
        b = OpenAIBackend(card, base_url=running.url)
        base = _texts(b.generate(prompts, GREEDY))
        b.load(adapter)
        served = _texts(b.generate(prompts, GREEDY))
        llamacpp.load(adapter)
        assert served == _texts(llamacpp.generate(prompts, GREEDY)) != base
        assert all("anana" in t for t in served)
        assert b.adapter == adapter.resolve() and (adapter / "adapter.gguf").is_file()
        b.load(None)
        assert _texts(b.generate(prompts, GREEDY)) == base
    finally:
        llamacpp.load(None)
        subprocess.run(["kill", "-9", pidfile.read_text()], check=False)
        running.proc.wait(timeout=30)  # the hook killed it first; the next test starts it again


def test_the_loop_runs_on_the_server_adapters_included(running, card, renderer, llamacpp, tmp_path, monkeypatch):
    """isara align --backend openai, two iterations: generation and the check on the server, training
    here, each new adapter served through the hook; the last check's answers are llama.cpp's with
    iteration 2's adapter."""
    from conftest import TINY
    from isara_lite.evaluation.check import run_check
    from isara_lite.loop import align
    from isara_lite.recipe import load_recipe

    pidfile, hook = tmp_path / "server.pid", tmp_path / "hook.py"
    hook.write_text(HOOK)
    pidfile.write_text(str(running.proc.pid))
    monkeypatch.setenv("ISARA_OPENAI_BASE_URL", running.url)
    monkeypatch.setenv("ISARA_OPENAI_RESTART", f"{sys.executable} {hook} {pidfile} {running.port} "
                                               f"{card.gguf_path()} {{gguf_adapter}}")
    recipe = load_recipe(REPO / "recipes" / "quickstart.yaml", [*TINY, "backend=openai", "iterations=2"])
    try:
        summary = align(recipe, tmp_path / "run")
        assert [r["iteration"] for r in summary["iterations"]] == [1, 2]
        served = open(f"/proc/{pidfile.read_text()}/cmdline").read().split("\0")  # the server the hook left
        assert served[served.index("--lora_path") + 1] == str((tmp_path / "run" / "iter_2" / "adapter" / "adapter.gguf").resolve())
        rows = [json.loads(line) for line in (tmp_path / "run" / "iter_2" / "check.jsonl").read_text().splitlines()]
        llamacpp.load(tmp_path / "run" / "iter_2" / "adapter")
        local = run_check(llamacpp, renderer, [r["prompt"] for r in rows if r["set"] == "harmful"],
                          [r["prompt"] for r in rows if r["set"] == "benign"], recipe.check.max_tokens)
        assert [r["response"] for r in rows] == [r["response"] for r in local]
    finally:
        llamacpp.load(None)
        subprocess.run(["kill", "-9", pidfile.read_text()], check=False)
        running.proc.wait(timeout=30)


def test_a_failing_hook_is_one_line(backend, adapter, monkeypatch):
    monkeypatch.setenv("ISARA_OPENAI_RESTART", "sh -c 'echo no such server >&2; exit 3'")
    backend.load(None)
    with pytest.raises(IsaraError, match="ISARA_OPENAI_RESTART exited 3: no such server"):
        backend.load(adapter)
    monkeypatch.setenv("ISARA_OPENAI_RESTART", "no-such-program-here {adapter}")  # no shell runs it
    with pytest.raises(IsaraError, match="ISARA_OPENAI_RESTART: no-such-program-here could not be run"):
        backend.load(adapter)


# -- errors and retries --------------------------------------------------------------------------
def test_errors_are_one_line_naming_the_url(backend, card, renderer, monkeypatch):
    too_long = renderer.chat_prompt("word " * 2500)  # over the server's 2048-token context
    t0 = time.time()
    with pytest.raises(IsaraError) as e:
        backend.generate([too_long], GREEDY)
    msg = str(e.value)
    assert msg.startswith(f"{backend.base_url}: HTTP 400:") and "\n" not in msg and "retries" not in msg
    assert time.time() - t0 < 5  # a 400 is not retried
    nobody = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(IsaraError, match=re.escape(nobody) + r": no answer from the server after 1 retry") as e:
        OpenAIBackend(card, base_url=nobody, max_retries=1)
    assert "\n" not in str(e.value)
    monkeypatch.setenv("ISARA_OPENAI_BASE_URL", backend.base_url)
    monkeypatch.setenv("ISARA_OPENAI_MODEL", "no-such-model")
    with pytest.raises(IsaraError, match="model 'no-such-model' is not served here; it serves: "):
        create_backend("openai", card)


def test_retries_ride_out_a_server_restart(backend, running, renderer):
    prompts = [renderer.chat_prompt(q) for q in QUESTIONS]
    before = backend.generate(prompts, GREEDY)
    running.kill()
    restart = threading.Thread(target=running.start)
    restart.start()
    try:
        assert backend.generate(prompts, GREEDY) == before  # 5 retries: up to ~15 s of backoff
    finally:
        restart.join()


# -- resuming an iteration -----------------------------------------------------------------------
class KillsTheServer:
    """The backend, but the server is SIGKILLed as generate call number `at` starts (the tiny model
    answers a batch in milliseconds, too fast to kill it reliably mid-request)."""

    def __init__(self, backend, server, at: int):
        self.backend, self.server, self.at, self.calls = backend, server, at, 0

    def __getattr__(self, name):
        return getattr(self.backend, name)

    def generate(self, prompts, sampling):
        self.calls += 1
        if self.calls == self.at:
            self.server.kill()
        return self.backend.generate(prompts, sampling)


def test_a_run_resumed_after_the_server_died_equals_an_uninterrupted_one(running, card, renderer, embedder,
                                                                          tmp_path):
    from isara_lite.loop import generate_iteration, load_seeds
    from isara_lite.recipe import load_recipe
    from isara_lite.retrieval import Pool
    from isara_lite.ui import UI

    recipe = load_recipe(REPO / "recipes" / "quickstart.yaml", [
        "backend=openai", "candidates=4", "demonstrations=2", "context_tokens=400", "generation.batch_size=2",
        "generation.question_max_tokens=12", "generation.answer_max_tokens=10"])  # unequal: told apart below
    seeds = load_seeds(recipe, renderer)

    def iteration(backend, out):
        return generate_iteration(backend, renderer, [Pool("seeds", seeds, embedder)], embedder, recipe, 1, out, UI())

    whole = iteration(OpenAIBackend(card, base_url=running.url), tmp_path / "whole")
    assert len(whole) == 4

    # batch 1 is written; the server dies during batch 2's questions (the third generate call)
    # and two quick retries fail, so the iteration stops with the server's URL in the error
    out = tmp_path / "resumed"
    dying = KillsTheServer(OpenAIBackend(card, base_url=running.url, max_retries=2), running, at=3)
    with pytest.raises(IsaraError, match=re.escape(running.url)):
        iteration(dying, out)
    written = (out / "candidates.jsonl").read_text().splitlines()
    assert len(written) == 2

    running.start()
    again = Records(OpenAIBackend(card, base_url=running.url))
    resumed = iteration(again, out)
    questions = sum(len(p) for p, max_tokens in again.calls if max_tokens == recipe.generation.question_max_tokens)
    assert questions == 2  # only the unfinished batches were sent again
    assert [c.to_dict() for c in resumed] == [c.to_dict() for c in whole]
    assert [json.loads(line) for line in (out / "candidates.jsonl").read_text().splitlines()] == \
        [json.loads(line) for line in (tmp_path / "whole" / "candidates.jsonl").read_text().splitlines()]
    assert sum(1 for c in whole if c.prompt and c.response) >= 2  # real text was compared, not empty strings
