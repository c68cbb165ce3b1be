"""The mlx backend on the bundled model, against the torch backend: greedy decoding, teacher-forced
log-probabilities, training, and adapters moving torch -> mlx -> torch -> mlx-lm export.

Both sides run the same fp32 weights (the HF copy of the bundled model), so log-probabilities agree
to float rounding: every comparison allows TOL = 2e-3 nats per token. The adapters are trained to
move log-probabilities by far more than that (checked), so a wrong transposition or scale fails.
mlx[cpu] on Linux multiplies with a reference BLAS (~2 GFLOPS, 10-30x slower than torch), hence
few, short sequences.
"""

import importlib.util
import shutil

import numpy as np
import pytest

pytestmark = [pytest.mark.real_model,
              pytest.mark.skipif(importlib.util.find_spec("mlx_lm") is None,
                                 reason="mlx-lm is not installed (pip install 'isara_lite[mlx]')")]

TOL = 2e-3  # max |log p_mlx - log p_torch| per token, fp32 on both sides
PROMPTS = ["The capital of France is", "One, two, three,"]
PAIRS = [("Q: Name a colour.\nA:", " Blue is a colour."), ("Q: Say hi.\nA:", " Hello there, my friend.")]


@pytest.fixture(scope="module")
def card():
    from isara_lite.models import load_card

    return load_card("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def mlx(card):
    from isara_lite.backends.base import create_backend

    return create_backend("mlx", card, threads=2)


@pytest.fixture(scope="module")
def tb(card):
    from isara_lite.backends.base import create_backend

    # one thread: on a shared 2-core machine torch's second OpenMP thread spins at every barrier
    # while descheduled (a training step measured 0.8 s of CPU with 1 thread, 25 s with 2)
    return create_backend("torch", card, threads=1)


def _config(**kw):
    from isara_lite.recipe import TrainConfig

    base = dict(lora_rank=4, lora_alpha=8.0, batch_size=2, max_steps=1, warmup_ratio=0.0, schedule="constant")
    return TrainConfig(**{**base, **kw})


def torch_logprobs(tb, pairs, argmax=False):
    """Per-token teacher-forced log-probabilities under the torch backend's current model (and,
    with argmax, the token torch's greedy decoding picks at each position)."""
    import torch

    from isara_lite.backends.scoring import continuation_tokens

    out, picks = [], []
    for prompt, cont in pairs:
        toks, n = continuation_tokens(lambda text, bos: tb.tok(text, add_special_tokens=bos)["input_ids"], prompt, cont)
        with torch.no_grad():
            logits = tb.model(torch.tensor([toks])).logits[0].float()
        lp, c = torch.log_softmax(logits, -1)[n - 1:-1], toks[n:]
        out.append(lp.gather(1, torch.tensor(c)[:, None])[:, 0].numpy())
        picks.append((lp.argmax(-1).tolist(), c))
    return (out, picks) if argmax else out


def max_diff(a, b):
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def torch_adapter(tb, tmp_path_factory):
    """A PEFT adapter trained by the torch backend (1 step, lr 1e-2), with torch's log-probs on PAIRS
    without and with it."""
    tb.load(None)
    base = torch_logprobs(tb, PAIRS)
    out = tmp_path_factory.mktemp("torch") / "adapter"
    result = tb.train(PAIRS, _config(), 1e-2, None, out)
    return out, result, base, torch_logprobs(tb, PAIRS)


def test_greedy_matches_torch(mlx, tb):
    """mlx's batched greedy continuation is torch's: along it, torch's argmax is mlx's token at
    every position (so torch's greedy decoding writes the same text), and the log-probs agree."""
    from isara_lite.backends.base import Sampling

    tb.load(None)
    ours = mlx.generate(PROMPTS, Sampling(max_tokens=6, temperature=0.0))  # prompts of 5 and 6 tokens
    assert [g.prompt_tokens for g in ours] == [tb.count_tokens(p) for p in PROMPTS]
    assert all(g.completion_tokens == 6 for g in ours)
    pairs = [(p, g.text) for p, g in zip(PROMPTS, ours)]
    torch_lp, picks = torch_logprobs(tb, pairs, argmax=True)
    for torch_greedy, mlx_tokens in picks:
        assert torch_greedy == mlx_tokens
    d = max_diff(mlx.token_logprobs(pairs), torch_lp)
    print(f"base model, greedy continuations {[g.text for g in ours]}: max |dlogp| = {d:.2e}")
    assert d < TOL


def test_seeded_sampling_and_stops(mlx):
    from isara_lite.backends.base import Sampling

    s = Sampling(max_tokens=4, temperature=0.9, top_p=0.95, top_k=50, repetition_penalty=1.2, seed=11)
    p = ["Owls are"] * 2
    a, b = mlx.generate(p, s), mlx.generate(p, s)
    assert [g.text for g in a] == [g.text for g in b]  # same seed, same text
    assert a[0].text != a[1].text  # rows sample independently
    s.seed = 12
    assert [g.text for g in mlx.generate(p, s)] != [g.text for g in a]

    # greedy: " Paris.\n\nThe answer" and " four, five, six,"; "\n\nThe" spans tokens, "ive" is
    # inside the token " five": both are found in the decoded text, which is cut before them
    stops = mlx.generate(PROMPTS, Sampling(max_tokens=6, temperature=0.0, stop=("\n\nThe", "ive")))
    assert stops[0].text == " Paris." and stops[0].completion_tokens < 6
    assert stops[1].text == " four, f" and stops[1].completion_tokens == 3


def test_sampler_chain():
    """top-k, then top-p on what is left, then temperature (llama.cpp's order); 0 is greedy."""
    import mlx.core as mx

    from isara_lite.backends.base import Sampling
    from isara_lite.backends.mlx import _sampler

    probs = np.array([0.5, 0.3, 0.15, 0.05])
    lp = mx.array(np.log(np.tile(probs, (4000, 1))).astype(np.float32))

    def drawn(**kw):
        mx.random.seed(0)
        return np.bincount(np.array(_sampler(Sampling(**{"top_k": 0, "top_p": 1.0, **kw}))(lp)), minlength=4) / 4000

    assert drawn(temperature=0.0)[0] == 1.0
    assert np.abs(drawn(temperature=1.0) - probs).max() < 0.03
    assert np.abs(drawn(temperature=1.0, top_k=2) - [0.625, 0.375, 0, 0]).max() < 0.03
    assert drawn(temperature=1.0, top_p=0.6)[2:].sum() == 0  # 0.5 + 0.3 reach 0.6
    assert drawn(temperature=1.0, top_p=0.5)[0] == 1.0
    cold = drawn(temperature=0.5)  # p^2, renormalized
    assert np.abs(cold - probs**2 / (probs**2).sum()).max() < 0.03


def test_torch_adapter_on_mlx(mlx, torch_adapter):
    """A PEFT adapter trained on torch gives the same log-probs on mlx."""
    adapter, _, torch_base, torch_lp = torch_adapter
    mlx.load(adapter)
    ours = mlx.token_logprobs(PAIRS)
    effect, d = max_diff(torch_lp, torch_base), max_diff(ours, torch_lp)
    print(f"torch adapter: moves log-probs by up to {effect:.3f}; mlx vs torch max |dlogp| = {d:.2e}")
    assert effect > 50 * TOL
    assert d < TOL


@pytest.fixture(scope="module")
def mlx_trained(mlx, tb, torch_adapter, tmp_path_factory):
    """mlx continues the torch adapter for one step (lr 1e-3, both pairs in the batch); returns
    its result and on_step calls, torch's loss on that batch with the torch adapter, and mlx's
    log-probs on PAIRS afterwards (the new adapter stays loaded)."""
    import torch

    from isara_lite.backends.torch import answer_loss, pad_rows
    from isara_lite.training import build_example

    tb.load(torch_adapter[0])
    data = [build_example(tb.tok(p)["input_ids"], tb.tok(a, add_special_tokens=False)["input_ids"],
                          tb.tok.eos_token_id, 384) for p, a in PAIRS]
    with torch.no_grad():
        torch_loss = answer_loss(tb.model, *pad_rows(data, tb.tok.pad_token_id, tb.device)).item()
    steps = []
    out = tmp_path_factory.mktemp("continued") / "mlx"
    result = mlx.train(PAIRS, _config(), 1e-3, torch_adapter[0], out, on_step=lambda *a: steps.append(a))
    return result, steps, torch_loss, mlx.token_logprobs(PAIRS)


def test_mlx_training_continues_and_lowers_the_loss(mlx_trained, torch_adapter):
    result, steps, torch_loss, ours = mlx_trained
    before = torch_adapter[3]
    print(f"loss before the step: mlx {result.losses[0]:.6f}, torch {torch_loss:.6f}; answer log-prob "
          f"{sum(x.sum() for x in before):.3f} -> {sum(x.sum() for x in ours):.3f}")
    assert result.steps == 1 and steps == [(1, 1, result.losses[0], 1e-3, result.tokens)] and result.tokens > 20
    # the batch holds both pairs; before the update its loss is the torch adapter's (answer + EOS)
    assert result.losses[0] == pytest.approx(torch_loss, abs=TOL / 2)
    assert sum(x.sum() for x in ours) > sum(x.sum() for x in before) + 0.1  # the step made the answers likelier
    out = result.adapter
    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()
    assert not list(out.parent.glob(".mlx.*"))  # written through a temp dir, nothing left over


@pytest.mark.slow
def test_mlx_step_is_torchs_step(tb, mlx_trained, torch_adapter, tmp_path):
    """Same start, batch and optimizer (AdamW with bias correction, clipping, lr): torch's step
    lands where mlx's did. Adam's first step is about +-lr per weight whatever the gradient's
    size, so near-zero gradients that differ in rounding move apart: 1e-2 here (measured 1.1e-3;
    Adam without bias correction would take a step ~3x larger)."""
    tb.train(PAIRS, _config(), 1e-3, torch_adapter[0], tmp_path / "torch")
    d = max_diff(mlx_trained[3], torch_logprobs(tb, PAIRS))
    print(f"after one step from the same adapter: mlx vs torch max |dlogp| = {d:.2e}")
    assert d < 1e-2


def test_mlx_adapter_on_torch(tb, mlx_trained):
    """The adapter mlx wrote (PEFT layout) gives torch the log-probs mlx has with it."""
    import json

    result, _, _, ours = mlx_trained
    tb.load(result.adapter)
    d = max_diff(ours, torch_logprobs(tb, PAIRS))
    print(f"mlx-trained adapter on torch: max |dlogp| vs mlx = {d:.2e}")
    assert d < TOL
    cfg = json.loads((result.adapter / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and cfg["lora_alpha"] == 8.0  # the continued adapter's, as PEFT keeps them
    assert set(cfg["target_modules"]) == set(_config().target_modules)


def test_mlx_export_loads_in_mlx_lm(card, mlx_trained, tmp_path):
    import json
    from pathlib import Path

    import mlx.core as mx
    import mlx_lm

    from isara_lite.backends.mlx import config_overrides
    from isara_lite.export import export

    run = tmp_path / "run"
    (run / "iter_1").mkdir(parents=True)
    (run / "recipe.yaml").write_text(f"model: {card.name}\n")
    shutil.copytree(mlx_trained[0].adapter, run / "iter_1" / "adapter")
    out = export(run, "mlx")
    assert out == run / "export" / "run-iter_1-mlx"
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapters.safetensors"]

    source = Path(card.hf_source())
    # model_config: mlx-lm does not read transformers 5's `rope_parameters` (see config_overrides)
    model, tok = mlx_lm.load(str(source), adapter_path=str(out),
                             model_config=config_overrides(json.loads((source / "config.json").read_text())))
    prompt, cont = PAIRS[0]
    p, c = tok.encode(prompt), tok.encode(cont, add_special_tokens=False)
    logits = model(mx.array([p + c]))[0, len(p) - 1:-1]
    lp = np.array(logits - mx.logsumexp(logits, axis=-1, keepdims=True))[np.arange(len(c)), c]
    d = float(np.abs(lp - mlx_trained[3][0]).max())
    print(f"mlx_lm.load(adapter_path=export) vs MlxBackend: max |dlogp| = {d:.2e}")
    assert d < 1e-4


def test_bad_adapters_are_clear_errors(mlx, tmp_path):
    from isara_lite.adapters import write_peft
    from isara_lite.errors import IsaraError

    with pytest.raises(IsaraError, match="adapter_model.safetensors"):
        mlx.load(tmp_path)
    cfg = {"peft_type": "LORA", "r": 2, "lora_alpha": 4}
    a = np.zeros((2, 7), np.float32)  # q_proj takes 576 inputs, not 7
    write_peft(tmp_path / "other", cfg, {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": a})
    with pytest.raises(IsaraError, match=r"shape \(7, 2\), the model expects \(576, 2\)"):
        mlx.load(tmp_path / "other")
    mlx.load(None)  # back to the plain base model
    assert not [k for k, m in mlx.model.named_modules() if type(m).__name__ == "LoRALinear"]
