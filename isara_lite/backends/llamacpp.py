"""llama.cpp backend: generation on the quantized GGUF, LoRA training with PyTorch/PEFT on the
dequantized copy of the same weights, and the trained adapter converted to a GGUF LoRA and loaded
back into llama.cpp for the next iteration.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..adapters import gguf_beside
from ..errors import IsaraError
from .base import Generation, Sampling, TrainsWithTorch, default_threads



class LlamaCppBackend(TrainsWithTorch):
    name = "llamacpp"

    def __init__(self, card, threads: int = 0, device: str = "auto", seed: int = 0, n_ctx: int = 4096,
                 batched: bool = True, max_seqs: int = 16):
        if importlib.util.find_spec("llama_cpp") is None:
            raise IsaraError("backend 'llamacpp' needs llama-cpp-python: pip install 'isara_lite[llamacpp]'")
        self.card, self.seed, self.n_ctx = card, seed, n_ctx
        self.threads = default_threads(threads)
        self.device = "cpu"
        self.gguf = card.gguf_path()
        if self.gguf is None:
            raise IsaraError(f"model '{card.name}' has no GGUF file for llama.cpp: {card.how_to_get()}, "
                             "or use --backend torch")
        from .probe import llama_cpp_problem

        problem = llama_cpp_problem(self.gguf)  # a SIGILL here would end isara with no message
        if problem:
            raise IsaraError(problem)
        self.batched, self.max_seqs = batched, max_seqs
        self.torch_threads, self.torch_device = self.threads, "cpu"  # training: TrainsWithTorch
        self._batch = None  # the multi-sequence decoder, made on first use for the current adapter
        self.adapter: Path | None = None
        self._open(None)

    def _open(self, lora: Path | None) -> None:
        from llama_cpp import Llama

        if getattr(self, "_batch", None) is not None:
            self._batch.close()
            self._batch = None
        try:
            self.llm = Llama(model_path=str(self.gguf), lora_path=str(lora) if lora else None, n_ctx=self.n_ctx,
                             n_threads=self.threads, n_threads_batch=self.threads, seed=self.seed, verbose=False)
        except ValueError as e:
            raise IsaraError(f"{lora or self.gguf}: llama.cpp could not load it ({e})") from None

    # -- generation ----------------------------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        return len(self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=True))

    def generate(self, prompts: list[str], sampling: Sampling) -> list[Generation]:
        # The batch decoder also serves single prompts: one code path, so a prompt gets the same
        # answer in the loop, the check and `isara chat`.
        if self.batched:
            return self._decoder().generate(prompts, sampling)
        return self.generate_one_by_one(prompts, sampling)

    def _decoder(self):
        from .llamacpp_batch import BatchDecoder

        if self._batch is None:
            self._batch = BatchDecoder(self.llm, self.threads, self.max_seqs)
        return self._batch

    def generate_one_by_one(self, prompts: list[str], sampling: Sampling) -> list[Generation]:
        """One create_completion per prompt (llama-cpp-python's high-level API)."""
        greedy = sampling.temperature <= 0
        out = []
        for i, prompt in enumerate(prompts):
            r = self.llm.create_completion(
                prompt, max_tokens=sampling.max_tokens, temperature=max(sampling.temperature, 0.0),
                top_p=1.0 if greedy else sampling.top_p, top_k=1 if greedy else sampling.top_k,
                repeat_penalty=sampling.repetition_penalty, stop=list(sampling.stop) or None,
                seed=sampling.seed + i)
            usage = r["usage"]
            out.append(Generation(r["choices"][0]["text"], usage["prompt_tokens"], usage["completion_tokens"]))
        return out

    # -- adapters ------------------------------------------------------------------------------
    def load(self, adapter: Path | None) -> None:
        if adapter == self.adapter:
            return
        self._open(gguf_beside(adapter, self.card) if adapter else None)
        self.adapter = Path(adapter) if adapter else None

    # -- likelihood scoring (evaluation) ----------------------------------------------------------
    def score(self, pairs: list[tuple[str, str]]) -> list[float]:
        """Sum of log p(continuation | prompt) per pair on the GGUF (with the loaded GGUF LoRA),
        through the multi-sequence decoder; tokens as in generate (BOS, special tokens parsed)."""
        from .scoring import continuation_tokens

        def encode(text, bos):
            return self.llm.tokenize(text.encode("utf-8"), add_bos=bos, special=True)

        return self._decoder().score([continuation_tokens(encode, p, c) for p, c in pairs])
