"""The PyTorch backend on the bundled model: the answer-only loss, stops, adapters."""

import pytest
import torch

from isara_lite.backends.base import Sampling, create_backend
from isara_lite.models import load_card
from isara_lite.prompts import Renderer, get_format
from isara_lite.training import IGNORE, build_example


@pytest.fixture(scope="module")
def backend():
    return create_backend("torch", load_card("smollm2-135m-instruct"), threads=2)


@pytest.fixture(scope="module")
def renderer():
    card = load_card("smollm2-135m-instruct")
    return Renderer(get_format(card.chat_format), card.system)


def test_answer_loss_equals_transformers_loss(backend, renderer):
    from peft import LoraConfig, get_peft_model

    pairs = [("How do I boil an egg?", "Put it in boiling water for nine minutes."),
             ("Name a prime number.", "Seven is a prime number.")]
    tok = backend.tok
    data = [build_example(tok(renderer.chat_prompt(q))["input_ids"], tok(a, add_special_tokens=False)["input_ids"],
                          tok.eos_token_id, 256) for q, a in pairs]
    ids, labels, mask = backend._pad(data)
    model = get_peft_model(backend._base(), LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    with torch.no_grad():
        ours = backend._answer_loss(model, ids, labels, mask)
        theirs = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    backend.model = model.unload()
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)
    assert (labels == IGNORE).sum() > (labels != IGNORE).sum()  # the prompt really is masked


def test_generation_stops_and_counts(backend, renderer):
    s = Sampling(max_tokens=30, temperature=0.0, stop=renderer.fmt.stops)
    out = backend.generate([renderer.chat_prompt("What is the capital of France?"),
                            renderer.chat_prompt("Write one word: hello")], s)
    assert "Paris" in out[0].text
    assert all("<|im_end|>" not in g.text for g in out)
    assert all(0 < g.completion_tokens <= 30 and g.prompt_tokens > 10 for g in out)


def test_multi_token_stop_string(backend, renderer):
    prompt = [renderer.chat_prompt("What is the capital of France?")]
    full = backend.generate(prompt, Sampling(max_tokens=40, temperature=0.0))[0].text
    assert "France is" in full
    out = backend.generate(prompt, Sampling(max_tokens=40, temperature=0.0, stop=("France is",)))[0]
    assert out.text == full.split("France is")[0]  # cut before the stop, as llama.cpp does
    assert out.completion_tokens < backend.count_tokens(full)  # and generation ended there


def test_seeded_sampling_is_deterministic(backend, renderer):
    s = Sampling(max_tokens=20, temperature=0.9, repetition_penalty=1.2, seed=11)
    p = [renderer.chat_prompt("Tell me about owls.")] * 2
    a, b = backend.generate(p, s), backend.generate(p, s)
    assert [g.text for g in a] == [g.text for g in b]
    assert a[0].text != a[1].text  # rows sample independently


def test_missing_adapter_is_a_clear_error(backend, tmp_path):
    from isara_lite.errors import IsaraError

    with pytest.raises(IsaraError, match="adapter_model.safetensors"):
        backend.load(tmp_path)
