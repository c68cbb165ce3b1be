"""ISARA step 4's LoRA training against a plain Hugging Face Trainer + PEFT loop, same examples, one run.

  hf-fp32 / hf-bf16        transformers.Trainer on a PEFT model, batches padded to their longest row,
                           loss from the model's own forward (every position through the vocabulary);
                           bf16 is the Trainer's `bf16=True` (CPU autocast)
  isara-fp32 / isara-bf16  this project's torch training (training.precision fp32 / bf16)
  isara-fp32-grouped       the same with training.group_by_length (batches sorted by length
                           within windows of 4)

Same examples (the recipe's seeds as chat prompts, answer-only labels), batch size, epochs, learning
rate, schedule, LoRA settings and thread count in every mode. Each mode runs in a fresh process, so
peak RSS is its own. Tokens/s counts real (unpadded) tokens. "final loss" is the answer-token loss
over all examples after training, computed the same way (fp32) for every mode, so the speed is
compared at equal learning.

    python benchmarks/training.py --threads 2 [--modes isara-fp32,isara-bf16] [--repeats 3] [--set KEY=VALUE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODES = ("hf-fp32", "hf-bf16", "isara-fp32", "isara-bf16", "isara-fp32-grouped")


def examples(recipe):
    """The model card and the (chat prompt, answer) pairs step 4 trains on: the recipe's seeds."""
    from isara_lite.loop import load_seeds
    from isara_lite.models import load_card
    from isara_lite.prompts import Renderer, get_format

    card = load_card(recipe.model)
    renderer = Renderer(get_format(card.chat_format), card.system)
    seeds = load_seeds(recipe, renderer)
    return card, [(renderer.chat_prompt(s.prompt), s.response) for s in seeds]


def final_loss(model, tok, pairs, max_length) -> float:
    """Mean answer-token cross-entropy over all pairs, fp32, one pair at a time (no padding)."""
    import torch

    from isara_lite.training import build_example

    total, count = 0.0, 0
    model.eval()
    with torch.inference_mode():
        for prompt, answer in pairs:
            ids, labels = build_example(tok(prompt)["input_ids"], tok(answer, add_special_tokens=False)["input_ids"],
                                        tok.eos_token_id, max_length)
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
            target = torch.tensor(labels[1:])
            keep = target != -100
            total += torch.nn.functional.cross_entropy(logits[keep], target[keep], reduction="sum").item()
            count += int(keep.sum())
    return total / count


def run_isara(precision, recipe, card, pairs, threads) -> dict:
    import tempfile

    from isara_lite.backends.base import peak_memory_mb
    from isara_lite.backends.torch import TorchBackend

    b = TorchBackend(card, threads=threads, device="cpu", seed=recipe.seed)
    recipe.training.precision = precision
    with tempfile.TemporaryDirectory() as tmp:
        r = b.train(pairs, recipe.training, recipe.training.learning_rate, None, Path(tmp) / "adapter")
    return {"seconds": r.seconds, "tokens": r.tokens, "steps": r.steps, "train_loss_last": r.losses[-1],
            "final_loss": final_loss(b.model, b.tok, pairs, recipe.training.max_length),
            "peak_rss_mb": peak_memory_mb()}


def run_hf(precision, recipe, card, pairs, threads) -> dict:
    import tempfile

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer,
                              TrainerCallback, TrainingArguments)

    from isara_lite.backends.base import peak_memory_mb
    from isara_lite.training import build_example

    torch.set_num_threads(threads)
    cfg = recipe.training
    source = card.hf_source()
    tok = AutoTokenizer.from_pretrained(source)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, use_safetensors=True)
    torch.manual_seed(recipe.seed)
    model = get_peft_model(model, LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                             target_modules=list(cfg.target_modules), task_type="CAUSAL_LM"))
    rows = []
    for prompt, answer in pairs:
        ids, labels = build_example(tok(prompt)["input_ids"], tok(answer, add_special_tokens=False)["input_ids"],
                                    tok.eos_token_id, cfg.max_length)
        rows.append({"input_ids": ids, "labels": labels, "attention_mask": [1] * len(ids)})
    losses, clock = [], {}

    class Record(TrainerCallback):
        def on_train_begin(self, *a, **k):
            clock["start"] = time.perf_counter()

        def on_train_end(self, *a, **k):
            clock["end"] = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **k):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
            num_train_epochs=cfg.epochs, learning_rate=cfg.learning_rate, lr_scheduler_type=cfg.schedule,
            warmup_steps=float(cfg.warmup_ratio), weight_decay=0.0, max_grad_norm=1.0, logging_steps=1,
            save_strategy="no", report_to=[], use_cpu=True, bf16=precision == "bf16", seed=recipe.seed,
            dataloader_num_workers=0, remove_unused_columns=False, disable_tqdm=True)
        trainer = Trainer(model=model, args=args, train_dataset=rows, callbacks=[Record()],
                          data_collator=DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100))
        out = trainer.train()
    tokens = sum(len(r["input_ids"]) for r in rows) * cfg.epochs
    return {"seconds": clock["end"] - clock["start"], "tokens": tokens, "steps": out.global_step,
            "train_loss_last": losses[-1] if losses else None,
            "final_loss": final_loss(model, tok, pairs, cfg.max_length), "peak_rss_mb": peak_memory_mb()}


def one(mode: str, args) -> dict:
    from isara_lite.recipe import load_recipe

    recipe = load_recipe(ROOT / "recipes" / "quickstart.yaml", args.overrides)
    card, pairs = examples(recipe)
    kind, precision, *grouped = mode.split("-")
    recipe.training.group_by_length = bool(grouped)
    r = (run_isara if kind == "isara" else run_hf)(precision, recipe, card, pairs, args.threads)
    r.update(mode=mode, precision=precision, tokens_per_s=r["tokens"] / r["seconds"], examples=len(pairs))
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    help="recipe override for every mode (quickstart.yaml is the base)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="run the modes this many times, interleaved (A B A B), and report each mode's median")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args)))
        return
    runs = {}
    modes = list(dict.fromkeys(args.modes.split(",")))
    for _ in range(args.repeats):  # interleaved, so a noisy stretch of the machine hits every mode
        for mode in modes:
            cmd = [sys.executable, __file__, "--one", mode, "--threads", str(args.threads),
                   *sum((["--set", s] for s in args.overrides), [])]
            out = subprocess.run(cmd, capture_output=True, text=True,
                                 env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
            if out.returncode != 0:
                sys.exit(f"{mode} failed:\n{out.stderr[-3000:]}")
            runs.setdefault(mode, []).append(json.loads(out.stdout.strip().splitlines()[-1]))
    results = {}
    for mode, rs in runs.items():  # the median run (lower middle for an even count) stands for the mode
        r = sorted(rs, key=lambda r: r["tokens_per_s"])[(len(rs) - 1) // 2]
        results[mode] = r | {"runs": len(rs), "tokens_per_s_each": [x["tokens_per_s"] for x in rs]}
    base = results.get("hf-fp32")
    for r in results.values():
        if base:
            r["speedup_vs_hf_fp32"] = r["tokens_per_s"] / base["tokens_per_s"]
    for mode, r in results.items():  # equal precision
        if mode.startswith("isara-") and f"hf-{r['precision']}" in results:
            r["speedup_vs_hf_same_precision"] = r["tokens_per_s"] / results[f"hf-{r['precision']}"]["tokens_per_s"]
    report = {"threads": args.threads, "overrides": args.overrides, "results": results}
    print(json.dumps(report, indent=2))
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"LoRA training, {next(iter(results.values()))['examples']} examples, {args.threads} threads"
                    + (f", median of {args.repeats} interleaved runs" if args.repeats > 1 else ""))
    for col in ["mode", "tokens/s", "each run", "x hf-fp32", "x hf same precision", "s", "steps", "final loss",
                "peak RSS MB"]:
        t.add_column(col, justify="right")
    ratio = lambda r, key: f"{r[key]:.2f}" if key in r else "-"  # noqa: E731
    for m, r in results.items():
        t.add_row(m, f"{r['tokens_per_s']:.0f}", " ".join(f"{x:.0f}" for x in r["tokens_per_s_each"]),
                  ratio(r, "speedup_vs_hf_fp32"), ratio(r, "speedup_vs_hf_same_precision"),
                  f"{r['seconds']:.1f}", str(r["steps"]), f"{r['final_loss']:.4f}", f"{r['peak_rss_mb']:.0f}")
    Console().print(t)


if __name__ == "__main__":
    main()
