"""Batched sampling for the PyTorch backend, in place of transformers' generate.

Two costs of generate that dominate a decode step on a CPU (measured on the quickstart's batch of
16 answer prompts, 2 threads): its dynamic cache concatenates every layer's keys and values each
step (a copy of the whole cache: 104 ms a greedy step with it, 85 ms with a static cache), and
sampling sorts the whole 49k vocabulary for top-p and draws over all of it (about 50 ms a step).
Here the cache is transformers' StaticCache (written in place) and top-p runs on the top-k only.
The distribution is the one generate samples from: penalty, temperature, top-k, then top-p on what
is left.
"""

from __future__ import annotations

import functools
import inspect

import torch

from .base import Generation, Sampling


@functools.lru_cache(maxsize=None)
def cache_keyword(model_class) -> str:
    """Later transformers 5.x releases renamed forward's past_key_values to cache."""
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def candidates(logits, s: Sampling):
    """(logits, token ids) of what may be sampled, per row: temperature, then top-k, then top-p
    (the smallest set of the most likely tokens reaching top_p); the rest are -inf."""
    x = logits.float() / s.temperature
    k = s.top_k if 0 < s.top_k < x.shape[-1] else x.shape[-1]
    vals, idx = x.topk(k, dim=-1)  # sorted, largest first
    if 0 < s.top_p < 1:
        p = vals.softmax(-1)
        vals = vals.masked_fill(p.cumsum(-1) - p >= s.top_p, float("-inf"))
    return vals, idx


def sample_next(logits, s: Sampling, generator):
    """One token per row from [rows, vocab] logits (already penalized); greedy at temperature 0."""
    if s.temperature <= 0:
        return logits.argmax(-1)
    vals, idx = candidates(logits, s)
    choice = torch.multinomial(vals.softmax(-1), 1, generator=generator)
    return idx.gather(-1, choice).squeeze(-1)


def positions(mask):
    """Position ids of left-padded rows (padding at 1, as generate does)."""
    return (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)


def sample(model, tok, ids, mask, s: Sampling, stop_ids: list[int], stop_strings: list[str],
           penalty=None) -> list[Generation]:
    """Generations for left-padded prompt rows `ids` (mask: 1 on real tokens): each row stops at
    its first stop token (not part of the text) or stop string (text cut before it)."""
    from transformers import StaticCache

    rows, width = ids.shape
    device = ids.device
    name = cache_keyword(type(model.get_base_model() if hasattr(model, "get_base_model") else model))
    generator = torch.Generator(device=device).manual_seed(s.seed)
    cache = StaticCache(config=model.config, max_cache_len=width + s.max_tokens)
    stops = torch.tensor(stop_ids, device=device)
    done = torch.zeros(rows, dtype=torch.bool, device=device)
    out = torch.full((rows, s.max_tokens), tok.pad_token_id, dtype=torch.long, device=device)
    tail = max((len(t) for t in stop_strings), default=0) + 1  # one more: a first token may decode without its space
    seen = ids  # what the repetition penalty looks back over, prompt included (as generate)
    pos = positions(mask)
    step_ids, step_pos, n = ids, pos, 0
    with torch.inference_mode():
        for n in range(s.max_tokens):
            logits = model(input_ids=step_ids, attention_mask=mask, position_ids=step_pos, **{name: cache},
                           use_cache=True, logits_to_keep=1).logits[:, -1]
            if penalty is not None:
                logits = penalty(seen, logits)
            token = sample_next(logits, s, generator).masked_fill(done, tok.pad_token_id)
            out[:, n] = token
            done |= torch.isin(token, stops)
            if stop_strings:  # a stop of L characters new this step lies within the last L tokens
                for i in (~done).nonzero().flatten().tolist():
                    text = tok.decode(out[i, max(0, n + 1 - tail): n + 1].tolist(), skip_special_tokens=False)
                    done[i] = any(t in text for t in stop_strings)
            if bool(done.all()):
                break
            seen = torch.cat([seen, token[:, None]], 1)
            mask = torch.cat([mask, torch.ones((rows, 1), dtype=mask.dtype, device=device)], 1)
            step_pos = pos[:, -1:] + n + 1
            step_ids = token[:, None]
    results = []
    for i in range(rows):
        row = out[i, : n + 1].tolist()
        end = next((j for j, t in enumerate(row) if t in stop_ids or t == tok.pad_token_id), len(row))
        text = tok.decode(row[:end], skip_special_tokens=False)
        for stop in stop_strings:
            text = text.split(stop, 1)[0]
        results.append(Generation(text, int(mask[i, :width].sum()), end))
    return results
