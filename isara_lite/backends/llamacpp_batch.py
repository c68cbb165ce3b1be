"""Several sequences decoded at once through llama.cpp's batch API (one llama_batch, many seq ids).

llama-cpp-python's high-level API runs one sequence at a time; here one context holds up to
`max_seqs` sequences in a shared KV cache. Prompts that are identical (several questions sampled
from one set of demonstrations) are evaluated once and the cache is copied to the other sequences.
Each sequence samples with its own sampler chain (penalties, top-k, top-p, temperature, seed).
Logits can differ from the one-at-a-time path in the last digits (other kernels for other batch
shapes), so a greedy near-tie may resolve differently; results are deterministic for the same batch.
"""

from __future__ import annotations

import ctypes

import llama_cpp as L
import numpy as np

from ..errors import IsaraError
from .base import Generation, Sampling


class BatchDecoder:
    def __init__(self, llm, threads: int, max_seqs: int):
        self.llm, self.max_seqs = llm, max_seqs
        # Held here: a decoder never closed is freed at interpreter exit, when llama_cpp's names may be gone.
        self._free = (L.llama_batch_free, L.llama_free)
        self.ctx = self.batch = None  # set before anything can fail, so close() frees what exists
        self.vocab = L.llama_model_get_vocab(llm._model.model)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)
        params = L.llama_context_default_params()
        # One KV pool the size of the model's training context, shared by all sequences of a batch.
        params.n_ctx = L.llama_model_n_ctx_train(llm._model.model)
        params.n_batch = params.n_ubatch = 512
        params.n_seq_max = max_seqs
        params.kv_unified = True  # one KV pool: short sequences leave room for long ones
        params.n_threads = params.n_threads_batch = threads
        params.no_perf = True
        self.ctx = L.llama_init_from_model(llm._model.model, params)
        if not self.ctx:
            raise IsaraError("llama.cpp could not create a multi-sequence context")
        if llm._lora_adapter is not None:  # the same adapter as the high-level model
            adapters = (L.llama_adapter_lora_p_ctypes * 1)(llm._lora_adapter)
            scales = (ctypes.c_float * 1)(llm.lora_scale)
            if L.llama_set_adapters_lora(self.ctx, adapters, 1, scales):
                raise IsaraError("llama.cpp could not apply the LoRA adapter to the batch context")
        self.mem = L.llama_get_memory(self.ctx)
        self.batch = L.llama_batch_init(512, 0, max_seqs)
        self.capacity = params.n_ctx

    def close(self):
        if getattr(self, "_free", None) is None:
            return
        free_batch, free_ctx = self._free
        if self.batch is not None:
            free_batch(self.batch)
            self.batch = None
        if self.ctx:
            free_ctx(self.ctx)
            self.ctx = None

    __del__ = close

    # -- batch plumbing --------------------------------------------------------------------------
    def _add(self, token: int, pos: int, seqs: list[int], logits: bool) -> int:
        b, i = self.batch, self.batch.n_tokens
        b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = token, pos, len(seqs), logits
        for j, s in enumerate(seqs):
            b.seq_id[i][j] = s
        b.n_tokens += 1
        return i

    def _decode(self):
        if self.batch.n_tokens and L.llama_decode(self.ctx, self.batch) != 0:
            raise IsaraError("llama.cpp decode failed (KV cache full?): lower generation.batch_size or context_tokens")
        self.batch.n_tokens = 0

    def _sampler(self, s: Sampling, seed: int):
        chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
        if s.repetition_penalty != 1.0:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_penalties(
                self.n_vocab, s.repeat_last_n, s.repetition_penalty, 0.0, 0.0))
        if s.temperature <= 0:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_greedy())
        else:
            if s.top_k > 0:
                L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_k(s.top_k))
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_p(s.top_p, 1))
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_temp(s.temperature))
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        return chain

    # -- generation ------------------------------------------------------------------------------
    def generate(self, prompts: list[str], sampling: Sampling) -> list[Generation]:
        """Prompts go in groups that fit the KV pool; seeds follow the prompt's index, not its group."""
        toks = [self.llm.tokenize(p.encode("utf-8"), add_bos=True, special=True) for p in prompts]
        out: list[Generation] = []
        start = 0
        while start < len(toks):
            end, used = start, 0
            while end < len(toks) and end - start < self.max_seqs and \
                    used + len(toks[end]) + sampling.max_tokens <= self.capacity:
                used += len(toks[end]) + sampling.max_tokens
                end += 1
            if end == start:
                raise IsaraError(f"a prompt of {len(toks[start])} tokens does not fit the model's "
                                 f"{self.capacity}-token context with {sampling.max_tokens} new tokens")
            out += self._generate(toks[start:end], sampling, start)
            start = end
        return out

    def _generate(self, toks: list[list[int]], sampling: Sampling, offset: int) -> list[Generation]:
        n = len(toks)
        L.llama_memory_clear(self.mem, True)

        # Prompts minus their last token: each distinct prompt once, then its cache copied.
        first: dict[tuple, int] = {}
        for i, t in enumerate(toks):
            key = tuple(t)
            if key in first:
                continue
            first[key] = i
            for pos, tok in enumerate(t[:-1]):
                if self.batch.n_tokens == 512:
                    self._decode()
                self._add(tok, pos, [i], False)
        self._decode()
        for i, t in enumerate(toks):
            src = first[tuple(t)]
            if src != i:
                L.llama_memory_seq_cp(self.mem, src, i, -1, -1)

        samplers = [self._sampler(sampling, sampling.seed + offset + i) for i in range(n)]
        pieces: list[bytes] = [b"" for _ in range(n)]
        count = [0] * n
        pos = [len(t) - 1 for t in toks]
        idx = {i: self._add(t[-1], pos[i], [i], True) for i, t in enumerate(toks)}  # last prompt tokens
        active = set(range(n))
        try:
            while active:
                self._decode()
                nxt = {}
                for i in sorted(active):
                    tok = L.llama_sampler_sample(samplers[i], self.ctx, idx[i])
                    if L.llama_vocab_is_eog(self.vocab, tok):
                        active.discard(i)
                        continue
                    pieces[i] += self.llm.detokenize([tok], special=True)
                    count[i] += 1
                    text = pieces[i].decode("utf-8", errors="ignore")
                    if count[i] >= sampling.max_tokens or any(m in text for m in sampling.stop):
                        active.discard(i)
                        continue
                    pos[i] += 1
                    nxt[i] = tok
                idx = {i: self._add(tok, pos[i], [i], True) for i, tok in nxt.items()}
        finally:
            for smp in samplers:
                L.llama_sampler_free(smp)
            self.batch.n_tokens = 0
        results = []
        for i in range(n):
            text = pieces[i].decode("utf-8", errors="ignore")
            cut = min((text.find(m) for m in sampling.stop if m in text), default=len(text))
            results.append(Generation(text[:cut], len(toks[i]), count[i]))
        return results

    # -- likelihood scoring ----------------------------------------------------------------------
    def score(self, seqs: list[tuple[list[int], int]], share: bool = True) -> list[float]:
        """Sum of log p(token) over each sequence's tokens after its first n_prompt ones.

        Several sequences share one llama_batch (one seq id each). Sequences are taken in sorted
        token order, and a token that several of them share at the same position (a common prefix:
        lm-eval's primer, a question with its answer choices) is decoded once for all of them, one
        llama_batch entry carrying every seq id. Logits are requested only at the positions that
        predict a scored token and read right after the decode that made them. share=False decodes
        every sequence whole (the baseline of benchmarks/score.py)."""
        out = [0.0] * len(seqs)
        order = sorted(range(len(seqs)), key=lambda i: seqs[i][0])
        lcp = [0] * len(order)  # common prefix length with the previous sequence in sorted order
        for n in range(1, len(order)):
            a, b = seqs[order[n - 1]][0], seqs[order[n]][0]
            m = min(len(a), len(b))
            while share and lcp[n] < m and a[lcp[n]] == b[lcp[n]]:
                lcp[n] += 1
        start = 0
        while start < len(order):
            end, used = start, 0
            while end < len(order) and end - start < self.max_seqs:
                new = len(seqs[order[end]][0]) - (lcp[end] if end > start else 0)  # cells this one adds
                if used + new > self.capacity:
                    break
                used += new
                end += 1
            if end == start:
                raise IsaraError(f"a sequence of {len(seqs[order[start]][0])} tokens does not fit the model's "
                                 f"{self.capacity}-token context")
            self._score_chunk(seqs, order[start:end], [0] + lcp[start + 1:end], out)
            start = end
        return out

    def _score_chunk(self, seqs, chunk: list[int], lcp: list[int], out: list[float]) -> None:
        L.llama_memory_clear(self.mem, True)
        pending: list[tuple[int, int, int]] = []  # (batch index, sequence, the token it predicts)
        try:
            for slot, i in enumerate(chunk):
                toks = seqs[i][0]
                reach = [len(toks)]  # reach[m]: tokens this sequence shares with sequence slot + m
                for m in range(slot + 1, len(chunk)):
                    reach.append(min(reach[-1], lcp[m]))
                for pos in range(lcp[slot], len(toks)):
                    members = [slot + m for m, r in enumerate(reach) if r > pos]  # a prefix: reach never grows
                    wants = [(chunk[m], seqs[chunk[m]][0][pos + 1]) for m in members
                             if max(seqs[chunk[m]][1] - 1, 0) <= pos < len(seqs[chunk[m]][0]) - 1]
                    if self.batch.n_tokens == 512:
                        self._harvest(pending, out)
                    j = self._add(toks[pos], pos, members, bool(wants))
                    pending += [(j, seq, target) for seq, target in wants]
            self._harvest(pending, out)
        finally:
            self.batch.n_tokens = 0

    def _harvest(self, pending, out) -> None:
        self._decode()
        for j, i, target in pending:
            logits = np.ctypeslib.as_array(L.llama_get_logits_ith(self.ctx, j), shape=(self.n_vocab,))
            out[i] += float(logits[target]) - float(np.logaddexp.reduce(logits.astype(np.float64)))
        pending.clear()
