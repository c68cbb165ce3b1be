"""OpenAI-compatible server backend: generation and likelihood scoring through any server that
offers /v1/completions (vLLM, SGLang, llama.cpp's llama-server, llama-cpp-python's server).

Prompts are rendered here and sent as text to /v1/completions, not /v1/chat/completions, so the
chat format stays ours. Each prompt is one request; a batch's requests are in flight together
(a bounded thread pool), and the official `openai` client retries 408/409/429/5xx answers,
timeouts and refused connections with exponential backoff (0.5 s doubling to 8 s, Retry-After
honoured). Anything else, or the last failed retry, is a one-line IsaraError naming the URL.
Results depend only on the prompt and its seed, never on request order, so a resumed run
re-sends only the batches the loop had not written.

Configuration (environment):
  ISARA_OPENAI_BASE_URL     default http://127.0.0.1:8000/v1
  ISARA_OPENAI_MODEL        default: the server's only model (GET /v1/models)
  OPENAI_API_KEY            default "none" (local servers)
  ISARA_OPENAI_CONCURRENCY  requests in flight (default: a whole batch, i.e. generation.batch_size)

Sampling: max_tokens, temperature (0: greedy), top_p, stop and seed (prompt i of a call gets
seed + i, as in the llama.cpp backend) are standard fields. top_k, the repetition penalty
(sent as llama.cpp's `repeat_penalty` and vLLM's `repetition_penalty`), repeat_last_n and
min_p=0 go in the body as extras, because llama-cpp-python's server otherwise applies its own
defaults (top_k 40, repeat_penalty 1.1, min_p 0.05). What servers ignore:
  llama-cpp-python: repeat_last_n (the penalty window is the server's --last_n_tokens_size,
                    64 by default, the same as ours)
  vLLM:             repeat_last_n; its repetition_penalty covers prompt and output alike
  api.openai.com:   rejects the extras (HTTP 400); it does not serve these models anyway

score() asks for the prompt's log-probabilities with echo + logprobs (vLLM, llama-cpp-python);
a server without them is a clear error. Token counts come from the server's tokenizer
(/extras/tokenize of llama-cpp-python, /tokenize of vLLM and llama-server), so they match what
it generates from.

Training runs here, not on the server: PyTorch + PEFT as in the torch backend (CUDA when this
machine has it). The new adapter is then served for the next iteration's generation and the check:
  vLLM (default)  POST /v1/load_lora_adapter {lora_name, lora_path}, then requests name the adapter
                  as their model. The server must run with --enable-lora (and --max-lora-rank at
                  least the recipe's rank) and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, and must be
                  able to read the adapter directory at the same path: the same machine or a
                  shared filesystem.
  restart hook    ISARA_OPENAI_RESTART: a command (split like a shell would, run without one) that
                  restarts the server on the adapter,
                  for servers that load LoRA only at start (llama-cpp-python's --lora_path,
                  llama-server's --lora). {adapter} is the PEFT directory, {gguf_adapter} the same
                  adapter as a GGUF LoRA (converted when the command names it); both are empty for
                  the base model. isara runs it, then waits for /v1/models to answer
                  (ISARA_OPENAI_RESTART_TIMEOUT seconds, default 300).
"""

from __future__ import annotations

import functools
import os
import shlex
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..adapters import require_peft
from ..errors import IsaraError
from .base import Generation, Sampling, TrainsWithTorch

DEFAULT_URL = "http://127.0.0.1:8000/v1"
MAX_RETRIES = 5  # 0.5+1+2+4+8 s of backoff: rides out a server restart or a burst of 429s
SCORE_CONCURRENCY = 8  # score() gets every pair at once; the recipe's default batch size
# (path, body) per server family, tried in order; the first that answers is kept
TOKENIZE = [
    ("/extras/tokenize", lambda model, text: {"model": model, "input": text}),  # llama-cpp-python
    ("/tokenize", lambda model, text: {"model": model, "prompt": text,  # vLLM
                                       "content": text, "add_special": True, "parse_special": True}),  # llama-server
]


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "..."


def api_error(e, url: str, max_retries: int, hint: str) -> IsaraError:
    """An openai client error, after its retries, as one line naming the URL."""
    import openai

    if isinstance(e, openai.APIStatusError):
        retried = e.status_code in (408, 409, 429) or e.status_code >= 500  # what the client retries
        after = f" (after {max_retries} retries)" if retried else ""
        return IsaraError(f"{url}: HTTP {e.status_code}{after}: {_one_line(e.message)}")
    if isinstance(e, openai.APIConnectionError):  # refused, reset or timed out, after the retries
        return IsaraError(f"{url}: no answer from the server after {max_retries} "
                          f"{'retry' if max_retries == 1 else 'retries'} "
                          f"({_one_line(e.__cause__ or e.message, 120)}); is it running? {hint}")
    return IsaraError(f"{url}: {_one_line(e)}")


class OpenAIBackend(TrainsWithTorch):
    name = "openai"

    def __init__(self, card, threads: int = 0, device: str = "auto", seed: int = 0, base_url: str | None = None,
                 model: str | None = None, concurrency: int | None = None, max_retries: int = MAX_RETRIES,
                 timeout: float = 600.0):
        try:
            import openai
        except ImportError:
            raise IsaraError("backend 'openai' needs the openai client: pip install 'isara_lite[openai]'") from None
        self.card, self.seed = card, seed
        self.torch_threads, self.torch_device = threads, device  # training runs here (TrainsWithTorch)
        self.adapter: Path | None = None
        self.base_url = (base_url or os.environ.get("ISARA_OPENAI_BASE_URL") or DEFAULT_URL).rstrip("/")
        env = os.environ.get("ISARA_OPENAI_CONCURRENCY")
        if concurrency is None and env:
            if not env.isdigit() or int(env) < 1:
                raise IsaraError(f"ISARA_OPENAI_CONCURRENCY={env!r}: expected a whole number, at least 1")
            concurrency = int(env)
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.client = openai.OpenAI(base_url=self.base_url, api_key=os.environ.get("OPENAI_API_KEY") or "none",
                                    max_retries=max_retries, timeout=timeout)
        # the server's own routes (tokenize) live beside /v1, not under it
        root = self.base_url[:-3] if self.base_url.endswith("/v1") else self.base_url
        self._root = self.client.with_options(base_url=root)
        self._wanted = model or os.environ.get("ISARA_OPENAI_MODEL")
        self.model = self.served = self._pick_model(self._wanted)
        self.device = f"{self.base_url} ({self.model})"  # what loop.py logs as the backend's device
        self.threads = 0  # nothing runs on this machine's cores
        self._tokenize_path: str | None = None
        self._tokens_cached = functools.lru_cache(maxsize=4096)(self._tokens)
        self._text_of = functools.lru_cache(maxsize=64)(self._detokenize)

    # -- requests ------------------------------------------------------------------------------
    def _call(self, fn, *args, **kwargs):
        """fn(*args, **kwargs) with the client's errors as one-line IsaraErrors naming the URL."""
        import openai

        try:
            return fn(*args, **kwargs)
        except openai.APIError as e:
            raise self._error(e) from None

    def _error(self, e) -> IsaraError:
        return api_error(e, self.base_url, self.max_retries, "(ISARA_OPENAI_BASE_URL sets the URL)")

    def _pick_model(self, wanted: str | None) -> str:
        served = [m.id for m in self._call(self.client.models.list).data]
        if wanted:
            if served and wanted not in served:
                raise IsaraError(f"{self.base_url}: model '{wanted}' is not served here; "
                                 f"it serves: {', '.join(served)}")
            return wanted
        if len(served) != 1:
            raise IsaraError(f"{self.base_url}: serves {len(served)} models ({', '.join(served) or 'none'}); "
                             "name one in ISARA_OPENAI_MODEL")
        return served[0]

    def _pool(self, n: int, default: int) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(max(1, min(n, self.concurrency or default)))

    def _map(self, fn, items: list, default: int) -> list:
        pool = self._pool(len(items), default)
        try:
            return list(pool.map(fn, items))
        finally:  # on an error, requests not yet sent are dropped; those in flight end on their own
            pool.shutdown(wait=False, cancel_futures=True)

    # -- tokens --------------------------------------------------------------------------------
    def _tokens(self, text: str) -> tuple[int, ...]:
        import openai

        paths = [p for p in TOKENIZE if p[0] == self._tokenize_path] or TOKENIZE
        for path, body in paths:
            try:
                out = self._root.post(path, body=body(self.model, text), cast_to=object)
            except openai.NotFoundError:
                continue
            except openai.APIError as e:
                raise self._error(e) from None
            tokens = out.get("tokens") if isinstance(out, dict) else None
            if isinstance(tokens, list):
                self._tokenize_path = path
                return tuple(tokens)
        raise IsaraError(f"{self.base_url}: the server offers no tokenizer endpoint (tried "
                         f"{', '.join(p for p, _ in TOKENIZE)}); isara needs token counts to fit prompts")

    def count_tokens(self, text: str) -> int:
        return len(self._tokens_cached(text))

    # -- generation ----------------------------------------------------------------------------
    def generate(self, prompts: list[str], sampling: Sampling) -> list[Generation]:
        greedy = sampling.temperature <= 0
        body = dict(top_k=1 if greedy else sampling.top_k, repeat_penalty=sampling.repetition_penalty,
                    repetition_penalty=sampling.repetition_penalty, repeat_last_n=sampling.repeat_last_n, min_p=0.0)

        def one(i: int) -> Generation:
            r = self._call(self.client.completions.create, model=self.model, prompt=prompts[i],
                           max_tokens=sampling.max_tokens, temperature=max(sampling.temperature, 0.0),
                           top_p=1.0 if greedy else sampling.top_p, stop=list(sampling.stop) or None,
                           seed=(sampling.seed + i) & 0xFFFFFFFF, extra_body=body)  # as llamacpp_batch
            if not r.choices or r.usage is None:
                raise IsaraError(f"{self.base_url}: a completion without choices or usage: {_one_line(r, 200)}")
            return Generation(r.choices[0].text, r.usage.prompt_tokens, r.usage.completion_tokens)

        return self._map(one, list(range(len(prompts))), len(prompts))

    # -- adapters and training -----------------------------------------------------------------
    def load(self, adapter: Path | None) -> None:
        """Serve ADAPTER (None: the base model) for what follows: vLLM's runtime LoRA loading, or the
        ISARA_OPENAI_RESTART hook."""
        adapter = Path(adapter).resolve() if adapter is not None else None
        if adapter == self.adapter:
            return
        if adapter is not None:
            require_peft(adapter)
        if os.environ.get("ISARA_OPENAI_RESTART"):
            self._restart(adapter)
        elif adapter is None:
            self.model = self.served
        else:
            self.model = self._load_lora(adapter)
        self.adapter = adapter

    def _load_lora(self, adapter: Path) -> str:
        import hashlib

        import openai

        name = f"isara-{adapter.parent.name}-{hashlib.sha256(str(adapter).encode()).hexdigest()[:8]}"
        try:
            self.client.post("/load_lora_adapter", body={"lora_name": name, "lora_path": str(adapter)}, cast_to=str)
        except openai.NotFoundError:
            raise IsaraError(f"{self.base_url}: the server cannot load LoRA adapters at runtime (no "
                             "/v1/load_lora_adapter); start vLLM with --enable-lora and "
                             "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, or set ISARA_OPENAI_RESTART to a command that "
                             "restarts the server on {adapter} or {gguf_adapter}") from None
        except openai.BadRequestError as e:
            if "already" not in str(e.message):  # loaded by an earlier, interrupted run: keep it
                raise self._error(e) from None
        except openai.APIError as e:
            raise self._error(e) from None
        return name

    def _restart(self, adapter: Path | None) -> None:
        from ..adapters import gguf_beside

        template = os.environ["ISARA_OPENAI_RESTART"]
        gguf = gguf_beside(adapter, self.card) if adapter is not None and "{gguf_adapter}" in template else ""
        # split like a shell would, but run without one (sh -c '...' where a shell is wanted)
        args = [a.replace("{adapter}", str(adapter or "")).replace("{gguf_adapter}", str(gguf))
                for a in shlex.split(template)]
        try:
            done = subprocess.run(args, capture_output=True, text=True)
        except OSError as e:
            raise IsaraError(f"ISARA_OPENAI_RESTART: {args[0] if args else '(empty)'} could not be run ({e})") from None
        if done.returncode != 0:
            raise IsaraError(f"ISARA_OPENAI_RESTART exited {done.returncode}: "
                             f"{_one_line(done.stderr or done.stdout, 200)}")
        deadline = time.time() + float(os.environ.get("ISARA_OPENAI_RESTART_TIMEOUT", "300"))
        while True:
            try:
                self.model = self.served = self._pick_model(self._wanted)
                return
            except IsaraError:
                if time.time() > deadline:
                    raise IsaraError(f"{self.base_url}: no answer within ISARA_OPENAI_RESTART_TIMEOUT after "
                                     "ISARA_OPENAI_RESTART") from None
                time.sleep(0.5)

    # -- likelihood scoring (evaluation) ----------------------------------------------------------
    def score(self, pairs: list[tuple[str, str]]) -> list[float]:
        """Sum of log p(continuation | prompt) per pair, from the prompt log-probabilities that
        echo + logprobs return for prompt + continuation. The continuation's tokens are those of
        the joined text after the longest common prefix with the prompt's own tokens (a token
        that straddles the boundary counts to the continuation)."""
        return self._map(self._score_one, pairs, SCORE_CONCURRENCY)

    def _score_one(self, pair: tuple[str, str]) -> float:
        prompt, continuation = pair
        p, full = self._tokens_cached(prompt), self._tokens_cached(prompt + continuation)
        same = next((i for i, (a, b) in enumerate(zip(p, full)) if a != b), min(len(p), len(full)))
        n = len(full) - same
        if n == 0:
            return 0.0
        r = self._call(self.client.completions.create, model=self.model, prompt=prompt + continuation,
                       max_tokens=1, temperature=0.0, echo=True, logprobs=0)
        choice = r.choices[0] if r.choices else None
        lp = choice.logprobs if choice is not None else None
        values = list(lp.token_logprobs or []) if lp is not None else []
        # the generated token (none when it was EOS) follows the prompt's values
        start = len(values) - (r.usage.completion_tokens if r.usage is not None else len(values)) - n
        cont = values[start:start + n] if start >= 0 else []
        echoed = choice is not None and choice.text.startswith(prompt + continuation)
        if not echoed or len(cont) != n or any(v is None for v in cont):
            raise IsaraError(f"{self.base_url}: no prompt log-probabilities (echo + logprobs) from this server; "
                             "score() needs a server that returns them, such as vLLM or llama-cpp-python's")
        if self._tokenize_path == "/extras/tokenize" and lp.tokens and lp.tokens[0] == self._text_of(full[0]):
            # llama-cpp-python drops the first echoed token only when it is BOS and pairs each later
            # token with its own position's distribution; when the first is kept, every value is the
            # next token's (its llama.py, _create_completion)
            raise IsaraError(f"{self.base_url}: llama-cpp-python's echo log-probabilities are one token off for a "
                             "prompt that does not start with the BOS token; score this model with another backend")
        return float(sum(cont))

    def _detokenize(self, token: int) -> str:
        """llama-cpp-python's text for one token (its detokenizer drops special tokens' text)."""
        import openai

        try:
            out = self._root.post("/extras/detokenize", body={"model": self.model, "tokens": [token]}, cast_to=object)
        except openai.APIError as e:
            raise self._error(e) from None
        return out["text"]
