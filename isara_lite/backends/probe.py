"""Run llama.cpp once in a child process before trusting it in this one.

llama-cpp-python compiles llama.cpp for the machine it is installed on. A build whose code this CPU
refuses (ggml's AMX kernels on some Xeons, issue 17) dies with SIGILL at the first decode, which
would end isara with exit code 132 and no message. The child takes the crash instead, and the
verdict is cached per library build, CPU and model file, so the probe costs a second once.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
from pathlib import Path

# Loads the model and decodes a prompt and one token: the matrix kernels a run uses first.
PROBE = """
import sys
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_ctx=256, n_threads=int(sys.argv[2]), verbose=False)
llm.eval(llm.tokenize(b"The probe checks that this CPU runs the compiled kernels.", add_bos=True))
llm.eval([llm.sample(top_k=1)])
print("ok")
"""

REBUILD = ("rebuild it without those kernels: CMAKE_ARGS=\"-DCMAKE_C_FLAGS='-mno-amx-tile -mno-amx-int8 "
           "-mno-amx-bf16' -DCMAKE_CXX_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16'\" pip install "
           "--no-cache-dir --force-reinstall --no-deps llama-cpp-python (see install.sh), or use --backend torch")

_verdicts: dict[str, str | None] = {}


def _library_files() -> list[Path]:
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return []
    root = Path(list(spec.submodule_search_locations)[0])
    return sorted(p for p in root.rglob("*") if p.suffix in (".so", ".dylib", ".dll") or ".so." in p.name)


def _key(gguf: Path) -> str:
    import platform

    from .base import cpu_flags

    parts = [str(gguf), str(gguf.stat().st_size), platform.machine(), " ".join(sorted(cpu_flags()))]
    for f in _library_files():
        st = f.stat()
        parts += [str(f), str(st.st_size), str(st.st_mtime_ns)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def run_probe(code: str, args: list[str], timeout: float = 300) -> str | None:
    """None when `python -c code args` exits 0, else what went wrong, in one line."""
    try:
        out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"did not finish in {timeout:.0f} s"
    if out.returncode == 0:
        return None
    if out.returncode < 0:
        sig = signal.Signals(-out.returncode)
        what = {signal.SIGILL: "illegal instruction", signal.SIGSEGV: "segmentation fault",
                signal.SIGBUS: "bus error"}.get(sig, "killed")
        return f"crashed with {sig.name} ({what})"
    last = (out.stderr.strip().splitlines() or ["no message"])[-1]
    return f"exited with code {out.returncode}: {last}"


def llama_cpp_problem(gguf: Path, threads: int = 1) -> str | None:
    """None when llama.cpp runs `gguf` on this CPU, else a one-line description with the remedy."""
    from ..models import isara_home

    gguf = Path(gguf)
    key = _key(gguf)
    if key in _verdicts:
        return _verdicts[key]
    cache = isara_home() / "probes" / f"llama_cpp-{key}.json"
    if cache.is_file():
        try:
            verdict = json.loads(cache.read_text())["problem"]
            _verdicts[key] = verdict
            return verdict
        except (ValueError, KeyError):
            pass  # a damaged cache entry: probe again
    problem = run_probe(PROBE, [str(gguf), str(threads)])
    verdict = None
    if problem is not None:
        libs = ", ".join(p.name for p in _library_files() if "ggml-cpu" in p.name) or "llama-cpp-python"
        verdict = f"llama.cpp ({libs}) {problem} while running {gguf.name} on this CPU"
        if "SIGILL" in problem:
            verdict += f": it was compiled for instructions this CPU refuses; {REBUILD}"
        else:
            verdict += "; use --backend torch"
    if problem is None or "SIGILL" in problem:  # a timeout or an odd exit may pass next time: not cached
        from ..files import atomic_write_json

        atomic_write_json(cache, {"problem": verdict, "gguf": str(gguf)})
    _verdicts[key] = verdict
    return verdict
