"""The llama.cpp probe: a native crash in a child becomes a one-line verdict, cached per build and CPU."""

from __future__ import annotations

import json

import pytest

from isara_lite.backends import probe
from isara_lite.backends.base import choose_backend, create_backend
from isara_lite.errors import IsaraError
from isara_lite.models import load_card

pytestmark = pytest.mark.skipif(not probe._library_files(), reason="llama-cpp-python is not installed")


def test_a_child_killed_by_sigill_is_reported_by_name():
    problem = probe.run_probe("import os, signal; os.kill(os.getpid(), signal.SIGILL)", [])
    assert problem == "crashed with SIGILL (illegal instruction)"
    assert probe.run_probe("import sys; sys.exit('bad flag')", []) == "exited with code 1: bad flag"
    assert probe.run_probe("pass", []) is None


def test_bundled_gguf_runs_on_this_cpu(tmp_path, monkeypatch):
    """The real llama.cpp build decodes the bundled model here: a build that dies with SIGILL on
    this CPU fails this test (in its child process), not a user's first run."""
    monkeypatch.setenv("ISARA_HOME", str(tmp_path))
    monkeypatch.setattr(probe, "_verdicts", {})
    gguf = load_card("smollm2-135m-instruct").gguf_path()
    assert probe.llama_cpp_problem(gguf, threads=2) is None
    (entry,) = (tmp_path / "probes").glob("llama_cpp-*.json")
    assert json.loads(entry.read_text())["problem"] is None


@pytest.fixture
def crashing_build(tmp_path, monkeypatch):
    """A cached verdict that this build dies with SIGILL, as the probe writes it on an AMX Xeon."""
    monkeypatch.setenv("ISARA_HOME", str(tmp_path))
    monkeypatch.setattr(probe, "_verdicts", {})
    card = load_card("smollm2-135m-instruct")
    gguf = card.gguf_path()
    verdict = f"llama.cpp (libggml-cpu.so) crashed with SIGILL (illegal instruction) while running {gguf.name} " \
              f"on this CPU: it was compiled for instructions this CPU refuses; {probe.REBUILD}"
    entry = tmp_path / "probes" / f"llama_cpp-{probe._key(gguf)}.json"
    entry.parent.mkdir(parents=True)
    entry.write_text(json.dumps({"problem": verdict}))
    return card


def test_auto_falls_back_to_torch_when_llamacpp_crashes(crashing_build):
    name, reason = choose_backend(crashing_build)
    assert name == "torch" and "SIGILL" in reason and "--backend torch" in reason


def test_explicit_llamacpp_is_a_one_line_error_with_the_remedy(crashing_build):
    with pytest.raises(IsaraError) as e:
        create_backend("llamacpp", crashing_build)
    msg = str(e.value)
    assert "\n" not in msg and "SIGILL" in msg and "-mno-amx-tile" in msg and "--no-cache-dir" in msg


def test_a_damaged_cache_entry_is_probed_again(crashing_build, tmp_path):
    (entry,) = (tmp_path / "probes").glob("llama_cpp-*.json")
    entry.write_text("{not json")
    assert probe.llama_cpp_problem(crashing_build.gguf_path()) is None
    assert json.loads(entry.read_text())["problem"] is None


def test_a_native_crash_inside_isara_prints_the_python_stack():
    """The backstop for crashes the probe does not cover: faulthandler, enabled by the CLI, names
    the fault and the Python frames instead of a bare exit code."""
    import subprocess
    import sys

    child = ("import ctypes, sys\nfrom isara_lite import cli\n"
             "cli.cli.command('crash')(lambda: ctypes.string_at(0))\n"  # a real SIGSEGV in native code
             "sys.argv = ['isara', 'crash']\ncli.main()\n")
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True)
    assert out.returncode < 0
    assert "Fatal Python error: Segmentation fault" in out.stderr and "<lambda>" in out.stderr
