"""The PyTorch backend on the bundled model: the answer-only loss, stops, adapters."""

import pytest
import torch

from isara_lite.backends.base import Sampling, create_backend
from isara_lite.backends.torch import answer_loss, pad_rows
from isara_lite.models import load_card
from isara_lite.prompts import Renderer, get_format
from isara_lite.training import IGNORE, build_example

pytestmark = pytest.mark.real_model  # the bundled model


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
    ids, labels, mask = pad_rows(data, backend.tok.pad_token_id, backend.device)
    model = get_peft_model(backend._base(), LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    with torch.no_grad():
        ours = answer_loss(model, ids, labels, mask)
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


def test_batched_greedy_matches_transformers_generate(backend, renderer):
    """The sampling loop (backends/decode.py) on rows of very different lengths: left padding,
    positions and the static cache give generate's tokens."""
    from test_decode import transformers_generate

    prompts = [renderer.chat_prompt("Hi"), renderer.chat_prompt("Name three rivers in Europe. " * 6),
               renderer.chat_prompt("What is the capital of France?")]
    s = Sampling(max_tokens=30, temperature=0.0, repetition_penalty=1.2, stop=renderer.fmt.stops)
    assert backend.generate(prompts, s) == transformers_generate(backend, prompts, s)


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


def test_bf16_training_reaches_the_fp32_loss(backend, renderer, tmp_path):
    """training.precision bf16 (CPU autocast) against fp32 on the same examples, init and order.
    Tolerance: 3% of the fp32 loss per step, 3x the largest gap measured here (1.0%, without AMX);
    a wrong mask or a lost update moves the loss by far more. LoRA weights stay fp32 on disk."""
    from safetensors import safe_open

    from isara_lite.recipe import TrainConfig

    pairs = [(renderer.chat_prompt(q), a) for q, a in [
        ("How do I boil an egg?", "Put it in boiling water for nine minutes, then cool it in cold water."),
        ("Name a prime number.", "Seven is a prime number: only one and seven divide it."),
        ("How do I pick a lock to break into a house?", "I can't help with breaking into a house."),
        ("What is the capital of Peru?", "Lima is the capital of Peru."),
    ]]
    losses = {}
    for precision in ("fp32", "bf16"):
        config = TrainConfig(batch_size=2, epochs=2, learning_rate=2e-3, precision=precision)
        result = backend.train(pairs, config, config.learning_rate, None, tmp_path / precision)
        losses[precision] = result.losses
        with safe_open(str(tmp_path / precision / "adapter_model.safetensors"), "pt") as f:
            assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}
    assert len(losses["bf16"]) == len(losses["fp32"]) == 4
    assert losses["fp32"][-1] < losses["fp32"][0]  # it learns
    for a, b in zip(losses["fp32"], losses["bf16"]):
        assert b == pytest.approx(a, rel=0.03)


def test_precision_auto_follows_the_hardware():
    from isara_lite.backends.base import cpu_has_amx, resolve_precision

    assert resolve_precision("auto", "cuda")[0] == "bf16"
    assert resolve_precision("auto", "cpu")[0] == ("bf16" if cpu_has_amx() else "fp32")
    # on AMX bf16 only from 8 rows a step (the quickstart's 4 run faster in fp32)
    assert resolve_precision("auto", "cpu", rows=4)[0] == "fp32"
    assert resolve_precision("auto", "cpu", rows=8)[0] == ("bf16" if cpu_has_amx() else "fp32")
    assert resolve_precision("auto", "cuda", rows=1)[0] == "bf16" and resolve_precision("bf16", "cpu", rows=1)[0] == "bf16"
    assert resolve_precision("fp32", "cpu") == ("fp32", "set in the recipe")


def test_shared_prefix_gives_the_full_batch_loss_and_gradients(backend, renderer):
    """The system message and turn opening run once for the batch; loss and LoRA gradients must
    equal the plain forward's (fp32 rounding only)."""
    from peft import LoraConfig, get_peft_model

    from isara_lite.backends.torch import shared_prefix

    tok = backend.tok
    pairs = [("How do I boil an egg?", "Put it in boiling water for nine minutes."),
             ("Name a prime number.", "Seven is a prime number."),
             ("How do I hotwire a car that isn't mine?", "I can't help with taking a car that isn't yours.")]
    data = [build_example(tok(renderer.chat_prompt(q))["input_ids"], tok(a, add_special_tokens=False)["input_ids"],
                          tok.eos_token_id, 256) for q, a in pairs]
    ids, labels, mask = pad_rows(data, backend.tok.pad_token_id, backend.device)
    n = shared_prefix(ids, labels)
    assert n >= 8 and (ids[:, :n] == ids[0, :n]).all() and (labels[:, 1:n + 1] == IGNORE).all()
    torch.manual_seed(0)
    model = get_peft_model(backend._base(), LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"],
                                                       task_type="CAUSAL_LM", init_lora_weights=False))
    params = [p for p in model.parameters() if p.requires_grad]
    got = {}
    for share in (False, True):
        model.zero_grad()
        loss = answer_loss(model, ids, labels, mask, share_prefix=share)
        loss.backward()
        got[share] = loss.item(), [p.grad.clone() for p in params]
    backend.model = model.unload()
    assert got[True][0] == pytest.approx(got[False][0], rel=1e-5)
    for a, b in zip(got[False][1], got[True][1]):
        assert (a - b).norm() <= 1e-4 * a.norm()
