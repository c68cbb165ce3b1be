"""score(): log-likelihood of continuations on the torch and llama.cpp backends (bundled model)."""

import importlib.util

import pytest
import torch

from isara_lite.backends.base import create_backend
from isara_lite.backends.scoring import continuation_tokens
from isara_lite.models import load_card

pytestmark = pytest.mark.real_model  # scores of the bundled model on each backend

PAIRS = [("Q: What is the capital of France?\nA:", " Paris"),
         ("Q: What is the capital of France?\nA:", " The capital of France is Berlin, a city on the moon."),
         ("<|im_start|>user\nHow do I bake bread?<|im_end|>\n<|im_start|>assistant\n",
          "Mix flour, water, yeast and salt, knead, let it rise, and bake it for half an hour."),
         ("The cat sat on the", " mat."),
         ("Count: one, two,", " three, four, five")]


@pytest.fixture(scope="module")
def card():
    return load_card("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def tb(card):
    return create_backend("torch", card, threads=2)


@pytest.fixture(scope="module")
def adapter(tb, tmp_path_factory):
    """A LoRA adapter with non-zero B, so it really moves the logits."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(tb._base(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                                  task_type="CAUSAL_LM"))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.02)
    out = tmp_path_factory.mktemp("adapter") / "adapter"
    model.save_pretrained(str(out), safe_serialization=True)
    tb.model = model.unload()
    return out


def _reference(model, tok, pairs):
    """Unbatched full-vocabulary forward pass, one pair at a time."""
    out = []
    for p, c in pairs:
        ids = tok(p + c)["input_ids"]
        n = len(tok(p)["input_ids"])
        assert ids[:n] == tok(p)["input_ids"]
        with torch.no_grad():
            lp = model(torch.tensor([ids])).logits[0].log_softmax(-1)
        out.append(sum(lp[j - 1, ids[j]].item() for j in range(n, len(ids))))
    return out


def test_torch_score_matches_a_plain_forward_pass_base_and_adapter(tb, adapter):
    tb.load(None)
    base = tb.score(PAIRS, batch_size=3)
    assert base == pytest.approx(_reference(tb.model, tb.tok, PAIRS), abs=2e-3)
    assert tb.score(PAIRS, batch_size=1) == pytest.approx(base, abs=2e-3)  # padding does not leak
    tb.load(adapter)
    tuned = tb.score(PAIRS, batch_size=3)
    assert tuned == pytest.approx(_reference(tb.model, tb.tok, PAIRS), abs=2e-3)
    assert max(abs(a - b) for a, b in zip(base, tuned)) > 0.05  # the adapter is applied
    tb.load(None)
    assert tb.score(PAIRS[:1]) == pytest.approx(base[:1], abs=2e-3)
    assert base[3] > base[1]  # sanity: "mat." is likelier than a long false sentence


def test_token_boundary(tb):
    def encode(text, bos):
        return tb.tok(text, add_special_tokens=bos)["input_ids"]

    # a clean boundary: the prompt's tokens are a prefix of the joined text's
    full, n = continuation_tokens(encode, "Q: Name a colour.\nA:", " Blue")
    assert full[:n] == encode("Q: Name a colour.\nA:", True) and tb.tok.decode(full[n:]) == " Blue"
    # a trailing space merges with the next word: the continuation is tokenized on its own
    assert encode("A: Blue", True)[: len(encode("A: ", True))] != encode("A: ", True)
    full, n = continuation_tokens(encode, "A: ", "Blue")
    assert full[:n] == encode("A: ", True) and full[n:] == encode("Blue", False)
    assert tb.score([("Hello", "")]) == [0.0]


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed")
def test_llamacpp_score_agrees_with_torch(card, tb, adapter):
    """Same weights (torch runs the fp32 dequantized copy of the Q4_1 GGUF); llama.cpp quantizes
    activations in its matmuls, so agreement is approximate: mean |difference| per scored token
    below 0.1 nats, and every pairwise preference with a margin over 1 nat is the same."""
    lb = create_backend("llamacpp", card, threads=2)

    def encode(text, bos):
        return tb.tok(text, add_special_tokens=bos)["input_ids"]

    ntok = [len(f) - n for f, n in (continuation_tokens(encode, p, c) for p, c in PAIRS)]
    for a in (None, adapter):
        tb.load(a)
        lb.load(a)
        t, l = tb.score(PAIRS), lb.score(PAIRS)
        per_token = sum(abs(x - y) for x, y in zip(t, l)) / sum(ntok)
        print(f"adapter={a is not None}: torch {[round(x, 2) for x in t]} llama.cpp {[round(x, 2) for x in l]} "
              f"mean |d| per token {per_token:.3f}")
        assert per_token < 0.1
        for i in range(len(t)):
            for j in range(len(t)):
                if t[i] - t[j] > 1.0:
                    assert l[i] > l[j]
    tb.load(None)


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed")
def test_llamacpp_score_shares_prefixes_without_changing_results(card, tb):
    """Pairs with a common prompt (lm-eval's primer, one question's answer choices, a duplicate, a
    continuation that is a prefix of another) are scored in one call with the shared tokens decoded
    once. A token given to the wrong sequences would cost several nats; what is left is llama.cpp's
    own batch-shape noise (up to ~0.7 nat per pair on this Q4_1 model, with or without sharing), so
    the check is the torch agreement of test_llamacpp_score_agrees_with_torch, per chunking."""
    lb = create_backend("llamacpp", card, threads=2)
    primer = "Q: What is human life expectancy in the United States?\nA: 78 years.\n\nQ: "
    pairs = [(primer + "Why is the sky blue?\nA:", " Rayleigh scattering."),
             (primer + "Why is the sky blue?\nA:", " Because it reflects the ocean."),
             (primer + "Why is the sky blue?\nA:", " Because it reflects the ocean."),
             (primer + "Why is the sky blue?\nA:", " Because"),
             (primer + "Can pigs fly?\nA:", " No, pigs cannot fly."),
             ("Unrelated prompt with nothing shared:", " yes"), *PAIRS]

    def encode(text, bos):
        return tb.tok(text, add_special_tokens=bos)["input_ids"]

    ntok = sum(len(f) - n for f, n in (continuation_tokens(encode, p, c) for p, c in pairs))
    tb.load(None)
    ref = tb.score(pairs)
    for max_seqs in (16, 2):  # 2: sharing stops at chunk borders
        lb.max_seqs, lb._batch = max_seqs, None
        got = lb.score(pairs)
        assert sum(abs(x - y) for x, y in zip(got, ref)) / ntok < 0.1, (max_seqs, got, ref)
        assert got[1] == got[2] and got[3] > got[1]
        assert lb.score(pairs[::-1])[::-1] == got  # the order pairs come in changes nothing
