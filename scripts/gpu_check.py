"""The GPU path end to end on the bundled model, in a few minutes: for each backend asked for,

  load; greedy generation (the same twice) and seeded sampling (the same on a rerun), stops honoured;
  score() prefers the model's own greedy answer to a shuffled one; 4 training steps whose first loss
  is the base model's answer-only loss (so the prompt really is masked); the adapter in PEFT layout
  with fp32 tensors; reloading it gives the same greedy answers; the torch backend on the CPU reads
  it and sees the same change in log-likelihood.

    python scripts/gpu_check.py                     # unsloth and torch on CUDA
    python scripts/gpu_check.py --backends torch --device cpu   # the same checks on a CPU

Prints one line per check, then JSON; exits 1 if any check failed, 2 if nothing could run.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from isara_lite.backends.base import Sampling, create_backend  # noqa: E402
from isara_lite.errors import IsaraError  # noqa: E402
from isara_lite.models import load_card  # noqa: E402
from isara_lite.prompts import Renderer, cut, get_format  # noqa: E402
from isara_lite.recipe import TrainConfig  # noqa: E402

MODEL = "smollm2-135m-instruct"
PAIRS = [("What is the capital of France?", "The capital of France is Paris."),
         ("Name a primary colour.", "Red is a primary colour."),
         ("How many legs does a spider have?", "A spider has eight legs."),
         ("How do I pick a lock on my neighbour's door?", "I can't help with getting into someone else's home."),
         ("Give me a word that rhymes with cat.", "Hat rhymes with cat."),
         ("What do bees make?", "Bees make honey and wax."),
         ("Write a threatening message to my coworker.", "I won't write threats; I can help you raise the problem calmly."),
         ("What is two plus two?", "Two plus two is four.")]


def check_backend(name: str, device: str, out: Path, results: list) -> None:
    def record(what: str, ok: bool, detail: str = "") -> None:
        results.append({"backend": name, "check": what, "ok": bool(ok), "detail": detail})
        print(f"{'PASS' if ok else 'FAIL'}  {name:8s} {what}{': ' + detail if detail else ''}", flush=True)

    card = load_card(MODEL)
    renderer = Renderer(get_format(card.chat_format), card.system)
    t0 = time.time()
    b = create_backend(name, card, threads=0, device=device, seed=0)
    record("load", True, f"{b.device}, {time.time() - t0:.1f}s")
    b.load(None)

    prompts = [renderer.chat_prompt(q) for q, _ in PAIRS]
    greedy = Sampling(max_tokens=32, temperature=0.0, stop=renderer.fmt.stops)
    first, second = b.generate(prompts, greedy), b.generate(prompts, greedy)
    record("greedy generation is deterministic", [g.text for g in first] == [g.text for g in second])
    record("stops honoured", all(s not in g.text for g in first for s in renderer.fmt.stops)
           and all(0 < g.completion_tokens <= 32 for g in first))
    sampled = Sampling(max_tokens=24, temperature=0.8, top_p=0.95, top_k=50, stop=renderer.fmt.stops, seed=7)
    s1, s2 = b.generate(prompts[:4], sampled), b.generate(prompts[:4], sampled)
    record("seeded sampling repeats", [g.text for g in s1] == [g.text for g in s2])

    own = [cut(g.text) for g in first]
    shuffled = [" ".join(random.Random(i).sample(t.split(), len(t.split()))) for i, t in enumerate(own)]
    pairs_own = [(p, " " + t) for p, t in zip(prompts, own) if len(t.split()) > 3]
    pairs_mix = [(p, " " + t) for p, t, o in zip(prompts, shuffled, own) if len(o.split()) > 3]
    so, sm = b.score(pairs_own), b.score(pairs_mix)
    record("score prefers the model's own answer", sum(a > c for a, c in zip(so, sm)) >= 0.75 * len(so),
           f"{sum(a > c for a, c in zip(so, sm))} of {len(so)}")

    # the base model's answer-only loss on the training batch: the first step's loss, before any update
    eos = b.tok.eos_token
    answers = [(p, a + eos) for p, (_, a) in zip(prompts, PAIRS)]
    base_scores = b.score(answers)
    n_tokens = sum(len(b.tok(a + eos, add_special_tokens=False)["input_ids"]) for _, (_, a) in zip(prompts, PAIRS))
    expected = -sum(base_scores) / n_tokens
    config = TrainConfig(batch_size=len(PAIRS), grad_accum=1, max_steps=4, epochs=4, warmup_ratio=0.0,
                         learning_rate=1e-3, lora_rank=8, lora_alpha=16)
    adapter = out / name / "adapter"
    t0 = time.time()
    result = b.train([(renderer.chat_prompt(q), a) for q, a in PAIRS], config, 1e-3, None, adapter)
    record("4 training steps", result.steps == 4 and len(result.losses) == 4,
           f"losses {[round(x, 3) for x in result.losses]}, {time.time() - t0:.1f}s")
    record("first loss is the answer-only loss (prompt masked)", abs(result.losses[0] - expected) < 0.05,
           f"{result.losses[0]:.4f} vs {expected:.4f} from score()")
    record("loss falls", result.losses[-1] < result.losses[0])

    from safetensors.numpy import load_file

    cfg = json.loads((adapter / "adapter_config.json").read_text())
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    record("adapter in PEFT layout, fp32", cfg.get("peft_type") == "LORA" and tensors
           and all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in tensors)
           and all(str(v.dtype) == "float32" for v in tensors.values()),
           f"{len(tensors)} tensors, r={cfg.get('r')}")

    b.load(adapter)
    trained_greedy = [g.text for g in b.generate(prompts, greedy)]
    trained_scores = b.score(answers)
    b.load(None)
    b.load(adapter)
    record("reloading the adapter gives the same greedy answers",
           [g.text for g in b.generate(prompts, greedy)] == trained_greedy)

    if name != "torch" or device != "cpu":
        t = create_backend("torch", card, threads=0, device="cpu", seed=0)
        t.load(None)
        t_base = t.score(answers)
        t.load(adapter)
        t_trained = t.score(answers)
        mine = sum(trained_scores) - sum(base_scores)
        theirs = sum(t_trained) - sum(t_base)
        record("torch (CPU) reads the adapter: same log-likelihood gain",
               mine > 0 and abs(theirs - mine) <= 0.1 * abs(mine) + 0.5,
               f"gain {mine:.2f} here, {theirs:.2f} on torch CPU (nats over {n_tokens} tokens)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backends", default="unsloth,torch")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", type=Path, help="keep the adapters here (default: a temp dir)")
    args = ap.parse_args()
    results: list[dict] = []
    skipped: dict[str, str] = {}
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="isara-gpu-check-") as tmp:
        out = args.out or Path(tmp)
        for name in args.backends.split(","):
            try:
                check_backend(name, args.device, out, results)
            except IsaraError as e:  # a backend that cannot run here (no CUDA, not installed)
                skipped[name] = str(e)
                print(f"SKIP  {name:8s} {e}", flush=True)
    failed = [r for r in results if not r["ok"]]
    print(json.dumps({"device": args.device, "seconds": round(time.time() - start, 1), "checks": len(results),
                      "failed": len(failed), "skipped": skipped, "results": results}, indent=1))
    return 1 if failed else (2 if not results else 0)


if __name__ == "__main__":
    sys.exit(main())
