"""The backend interface: what the ISARA loop needs from a model runtime, and nothing more.

A backend generates text for a batch of prompts, LoRA-trains on (prompt, answer) pairs starting
from an earlier adapter, and loads an adapter for generation. Rendering, retrieval, filtering and
bookkeeping live outside, so a new backend is one module.
"""

from __future__ import annotations

import os
import resource
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from ..errors import IsaraError
from ..training import TrainResult


@dataclass
class Sampling:
    max_tokens: int = 100
    temperature: float = 0.8  # 0 means greedy
    top_p: float = 0.95
    top_k: int = 50
    repetition_penalty: float = 1.0
    repeat_last_n: int = 64  # the penalty looks back this many tokens (llama.cpp's default)
    stop: tuple[str, ...] = ()
    seed: int = 0


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int


# on_step(step, total_steps, loss, learning_rate, tokens_in_step)
StepCallback = Callable[[int, int, float, float, int], None]


class Backend(Protocol):
    name: str

    def count_tokens(self, text: str) -> int: ...

    def generate(self, prompts: list[str], sampling: Sampling) -> list[Generation]: ...

    def train(self, examples: list[tuple[str, str]], config, learning_rate: float,
              adapter_in: Path | None, adapter_out: Path, on_step: StepCallback | None = None) -> TrainResult:
        """LoRA SFT, loss on answer tokens only, EOS appended; continues from adapter_in when given.
        The trained adapter is written to adapter_out and is loaded afterwards."""
        ...

    def load(self, adapter: Path | None) -> None:
        """Generate with this adapter from now on (None: the base model)."""
        ...

    def score(self, pairs: list[tuple[str, str]]) -> list[float]:
        """Sum of log-probabilities of each continuation given its prompt, under the loaded adapter
        (the prompt is tokenized with BOS as in generate; the continuation is appended as text).
        Used for likelihood evaluation such as TruthfulQA MC1/MC2."""
        ...


BACKENDS = ("auto", "llamacpp", "torch", "mlx", "unsloth", "openai")


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))


# Largest GGUF for which auto prefers PyTorch's fp32 copy on AVX-512 CPUs when generating from long
# prompts (isara align): about 1B parameters at 4 bits. Measured only at 135M (98 MB); the bound is
# a judgement: decoding in fp32 reads about 7x the bytes of Q4, so large models favour llama.cpp.
TORCH_PREFILL_MAX_GGUF = 600 * 2**20


def choose_backend(card, long_prompts: bool = False) -> tuple[str, str]:
    """(backend, reason) for --backend auto. long_prompts: the work is mostly prompt processing
    (ISARA's generation: ~270-token demonstration prompts, ~60-token outputs), where a CPU with
    AVX-512 runs PyTorch's fp32 matmuls faster than llama.cpp's quantized ones."""
    import platform

    if sys.platform == "darwin" and platform.machine() == "arm64" and _installed("mlx_lm"):
        return "mlx", "Apple silicon with mlx-lm installed"
    if _installed("unsloth") and _cuda_available():
        return "unsloth", "CUDA GPU with unsloth installed"
    if not _installed("llama_cpp"):
        return "torch", "llama-cpp-python is not installed"
    if card.gguf_path(build=False) is None and not card.gguf:
        return "torch", f"model '{card.name}' has no GGUF for llama.cpp"
    gguf = card.gguf_path()
    if gguf is not None:
        if long_prompts and "avx512f" in cpu_flags() and gguf.stat().st_size <= TORCH_PREFILL_MAX_GGUF:
            return "torch", ("CPU with AVX-512 and a small model: PyTorch's fp32 prompt processing outruns "
                             "llama.cpp on ISARA's long prompts (README, Benchmarks)")
        from .probe import llama_cpp_problem

        problem = llama_cpp_problem(gguf)
        if problem:
            return "torch", problem
    return "llamacpp", "CPU: quantized llama.cpp generation, PyTorch LoRA training on the same weights"


PRECISIONS = ("auto", "fp32", "bf16")


def cpu_has_amx() -> bool:
    """True where the CPU advertises AMX bf16 tiles. Only there does bf16 pay on a CPU: oneDNN runs
    torch's bf16 matmuls on AMX (a LoRA step 1.9x faster, ../shared/STACK.md), while on a Xeon with
    avx512_bf16 but no AMX a bf16 linear ran 1.9x slower than fp32 and a LoRA step 1.7x slower
    (benchmarks/training.py)."""
    return "amx_bf16" in cpu_flags()


# On AMX bf16 paid at 8 rows a step (1.10x, 3 runs) and lost at the quickstart's 4 (0.84x): README, Benchmarks.
BF16_MIN_ROWS = 8


def resolve_precision(requested: str, device: str, rows: int | None = None) -> tuple[str, str]:
    """(fp32 or bf16, why) for training.precision; rows: examples a step (training.batch_size)."""
    if requested != "auto":
        return requested, "set in the recipe"
    if device == "cuda":
        return "bf16", "CUDA"
    if device == "cpu" and cpu_has_amx():
        if rows is not None and rows < BF16_MIN_ROWS:
            return "fp32", f"the CPU has AMX, but bf16 loses below {BF16_MIN_ROWS} rows a step"
        return "bf16", "the CPU has AMX"
    return "fp32", "no AMX on this CPU" if device == "cpu" else f"device {device}"


# backend -> (module it needs, the extra that installs it)
REQUIRES = {"llamacpp": ("llama_cpp", "llamacpp"), "mlx": ("mlx_lm", "mlx"), "unsloth": ("unsloth", "cuda"),
            "openai": ("openai", "openai")}


class TrainsWithTorch:
    """For backends that generate elsewhere (llama.cpp, a server) and train with the torch backend:
    a TorchBackend made on first use (torch_threads, torch_device), and the new adapter loaded after."""

    _trainer = None

    def _torch(self):
        if self._trainer is None:
            from .torch import TorchBackend

            self._trainer = TorchBackend(self.card, threads=self.torch_threads, device=self.torch_device, seed=self.seed)
        return self._trainer

    def train(self, examples, config, learning_rate, adapter_in, adapter_out, on_step=None) -> TrainResult:
        result = self._torch().train(examples, config, learning_rate, adapter_in, adapter_out, on_step)
        self.load(Path(adapter_out))
        return result

    def train_preference(self, pairs, pref, config, learning_rate, adapter_in, adapter_out, on_step=None) -> TrainResult:
        result = self._torch().train_preference(pairs, pref, config, learning_rate, adapter_in, adapter_out, on_step)
        self.load(Path(adapter_out))
        return result


def create_backend(name: str, card, threads: int = 0, device: str = "auto", seed: int = 0,
                   long_prompts: bool = False, log=None) -> Backend:
    """The backend NAME; "auto" picks one (choose_backend) and tells LOG why."""
    if name == "auto":
        name, why = choose_backend(card, long_prompts=long_prompts)
        if log:
            log(f"backend auto -> {name}: {why}")
    module, extra = REQUIRES.get(name, (None, None))
    if module and not _installed(module):
        raise IsaraError(f"backend '{name}' needs {module}, which is not installed: pip install 'isara_lite[{extra}]'")
    if name == "llamacpp":
        from .llamacpp import LlamaCppBackend

        return LlamaCppBackend(card, threads=threads, device=device, seed=seed)
    if name == "torch":
        from .torch import TorchBackend

        return TorchBackend(card, threads=threads, device=device, seed=seed)
    if name == "mlx":
        from .mlx import MlxBackend

        return MlxBackend(card, threads=threads, device=device, seed=seed)
    if name == "unsloth":
        from .unsloth import UnslothBackend

        return UnslothBackend(card, threads=threads, device=device, seed=seed)
    if name == "openai":
        from .openai import OpenAIBackend

        return OpenAIBackend(card, threads=threads, device=device, seed=seed)
    raise IsaraError(f"unknown backend '{name}'; available: {', '.join(BACKENDS)}")


def unsloth_first(backend: str) -> None:
    """Import unsloth before anything imports transformers, PEFT or TRL (it patches them on import,
    and imported later it only warns and runs slower), whenever BACKEND is or may resolve to it;
    the CLI calls this before a command loads anything else."""
    if backend in ("unsloth", "auto") and _installed("unsloth") and (backend == "unsloth" or _cuda_available()):
        import unsloth  # noqa: F401


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def default_threads(threads: int = 0) -> int:
    return threads if threads > 0 else (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def peak_memory_mb() -> float:
    """Peak resident memory of this process so far, plus the peak on the GPU when there is one
    (CUDA, or MLX on Metal; MLX's buffers on the CPU are already in the resident memory)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    mb = rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024
    mx = sys.modules.get("mlx.core")  # only when a backend imported it
    if mx is not None and mx.default_device() == mx.gpu:
        mb += mx.get_peak_memory() / 2**20
    try:
        import torch

        if torch.cuda.is_available():
            mb += torch.cuda.max_memory_allocated() / 2**20
    except ImportError:
        pass
    return mb
