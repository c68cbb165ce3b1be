"""`isara align` on broken input and broken surroundings: exit code 2, one line on stderr naming the file
(line, field), never a traceback. Each case runs the command's real entry point (cli.main, what the
`isara` script calls) in this process, so that the cases share one import of torch; test_interrupts
runs the script itself in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest

from isara_lite.files import RunLock

from conftest import isara

REPO = Path(__file__).resolve().parent.parent
QUICK = REPO / "recipes" / "quickstart.yaml"


def align(*args):
    return isara("align", *args)


def one_line_error(proc, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()  # progress lines may come first; the error is the last, whole
    assert lines and lines[-1].startswith("error: "), proc.stderr
    assert sum(line.startswith("error") for line in lines) == 1, proc.stderr
    for n in needles:
        assert n in lines[-1], lines[-1]


def seeds(tmp_path, body: str) -> Path:
    path = tmp_path / "seeds.jsonl"
    path.write_text(body, encoding="utf-8")
    return path


GOOD = '{"prompt": "How do I boil an egg?", "response": "Put it in boiling water for nine minutes."}\n'


@pytest.mark.parametrize("name, body, needles", [
    ("torn json", GOOD * 5 + '{"prompt": "x", "resp', ["seeds.jsonl:6", "invalid JSON"]),
    ("role marker", GOOD * 5 + '{"prompt": "USER: hi", "response": "ASSISTANT: hello"}\n',
     ["seeds.jsonl:6: field 'prompt'", "'USER:'"]),
    ("template token", GOOD * 5 + '{"prompt": "hi", "response": "ok <|im_start|>system"}\n',
     ["seeds.jsonl:6: field 'response'", "<|im_start|>"]),
    ("wrong type", GOOD + '{"prompt": ["a"], "response": "b"}\n', ["seeds.jsonl:2: field 'prompt'"]),
    ("too few seeds", GOOD * 2, ["seeds.jsonl: 2 seed pairs, fewer than demonstrations=4"]),
])
def test_bad_seed_files(tmp_path, name, body, needles):
    path = seeds(tmp_path, body)
    one_line_error(align(QUICK, "--set", f"seeds={path}", "--out", tmp_path / "run"), *needles)
    assert not (tmp_path / "run").exists()  # nothing half-made is left behind


def test_non_utf8_seed_file(tmp_path):
    path = tmp_path / "seeds.csv"
    path.write_bytes(b"prompt,response\nhello,world\ncaf\xe9,x\n")
    one_line_error(align(QUICK, "--set", f"seeds={path}"), "seeds.csv:3: not valid UTF-8")


def test_bad_recipe_type(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: t\ntraining:\n  epochs: [1, 2]\n", encoding="utf-8")
    one_line_error(align(recipe), "r.yaml", "training.epochs: expected int")


def test_missing_model_file(tmp_path):
    one_line_error(align(QUICK, "--model", tmp_path / "nope.gguf"), "nope.gguf: no such GGUF file")


@pytest.mark.parametrize("backend", ["llamacpp", "torch"])
def test_corrupt_model_file(tmp_path, backend):
    if backend == "llamacpp":
        pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + bytes(range(256)) * 4)  # right magic, garbage after
    env_home = tmp_path / "home"
    with mock.patch.dict(os.environ, {"ISARA_HOME": str(env_home)}):
        proc = align(QUICK, "--model", bad, "--backend", backend, "--out", tmp_path / "run")
    one_line_error(proc, "broken.gguf")
    assert not list(env_home.glob("hf/.*.tmp"))  # a failed conversion leaves no half-written copy


def test_backend_extra_not_installed(tmp_path):
    import importlib.util

    if importlib.util.find_spec("unsloth") is not None:
        pytest.skip("unsloth is installed here, so its backend does not fail for want of it")
    one_line_error(align(QUICK, "--backend", "unsloth", "--out", tmp_path / "run"),
                   "backend 'unsloth' needs unsloth", "isara_lite[cuda]")


def test_locked_run_is_refused_and_a_dead_holder_leaves_no_lock(tmp_path):
    out = tmp_path / "run"
    lock = RunLock(out).acquire()  # as a running `isara align` holds it
    try:
        one_line_error(align(QUICK, "--out", out), str(out), "in use by another isara process")
    finally:
        lock.release()
    # A holder killed with SIGKILL: the kernel drops its flock, so the next run gets the lock at once.
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from isara_lite.files import RunLock; "
                               f"RunLock({str(out)!r}).acquire(); print('held', flush=True); time.sleep(600)"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(Exception, match="in use"):
        RunLock(out).acquire()
    holder.kill()
    holder.wait()
    assert (out / ".lock").read_text().strip() == str(holder.pid)  # the stale file is still there...
    RunLock(out).acquire().release()  # ...and is no obstacle
