"""ISARA step 4b, ours (not in the paper): a preference step on pairs the model writes itself.

SFT on kept pairs teaches a small model to refuse by default: next to a refusal seed it refuses
ordinary questions too, and training on positives alone only moves it along one curve of
"more harmful refused, more benign refused" (README, Results). This step shows it both sides.

1. Pairs. For every seed and every kept candidate the model answers the same question once more,
   from the demonstrations of the other kind only (the nearest refusal seeds when the first answer
   complies, the nearest helpful seeds when it refuses); a refusal is started with the nearest
   refusal seed's opening words, since a small model mostly answers anyway. The seeds alone decide which answer is
   chosen: a seed's own answer always is; for a generated question, the refusal is chosen when
   the seeds' question classifier (filters.Consistency) says a question like it is refused.
   A pair whose second answer did not come out as the other kind is dropped.
2. DPO with TRL's DPOTrainer on the LoRA, continuing from this iteration's SFT adapter, which is
   also the reference (TRL keeps a frozen copy of it), plus an NLL term on the
   chosen answers (sft_weight: RPO). TRL owns this loop (order, schedule, clipping); the adapter
   is saved in the same PEFT layout, atomically, as SFT's. With replaces_sft there is no SFT step:
   DPO continues from the previous iteration's adapter (the untrained model in iteration 1). In
   either mode, balance repeats the rarer chosen kind so both kinds weigh the same.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from pathlib import Path

from .backends.base import Sampling
from .data import Sample
from .errors import IsaraError
from .files import append_jsonl, atomic_write_json, read_jsonl_tolerant, write_jsonl, writing_dir
from .filters import Consistency
from .generation import answer_demos, seed_for, within_budget
from .prompts import cut
from .refusal import is_refusal
from .retrieval import Pool
from .rundir import stage_done
from .training import TrainResult


def contrast_items(seeds: list[Sample], kept: list[Sample], classifier: Consistency, use_seeds: bool) -> list[dict]:
    """What needs a second answer: id, question, first answer, and whether the refusal is chosen."""
    items = [{"id": s.id, "prompt": s.prompt, "first": s.response, "source": "seed",
              "refuse": is_refusal(s.response)} for s in (seeds if use_seeds else [])]
    expect = classifier.expects_refusal([c.prompt for c in kept])
    items += [{"id": c.id, "prompt": c.prompt, "first": c.response, "source": "generated", "refuse": e}
              for c, e in zip(kept, expect)]
    return items


def refusal_opener(answer: str) -> str:
    """The fewest leading words of a seed refusal that read as a refusal ("I'm sorry", "I cannot").
    Even next to refusal demonstrations a small model mostly answers a benign question, so the
    refusal side of a pair starts with the nearest refusal seed's opening and the model goes on."""
    words = answer.split(" ")
    return next((" ".join(words[:n]) for n in range(1, len(words) + 1) if is_refusal(" ".join(words[:n]))), "")


def pair_of(item: dict, second: str) -> dict:
    """The item with its chosen and rejected answers, or kept=False when both answers are one kind."""
    first_refuses = is_refusal(item["first"])
    row = {**item, "second": second, "kept": bool(second) and is_refusal(second) != first_refuses}
    if row["kept"]:
        refusal, helpful = (item["first"], second) if first_refuses else (second, item["first"])
        row["chosen"], row["rejected"] = (refusal, helpful) if item["refuse"] else (helpful, refusal)
    return row


def build_pairs(backend, renderer, seeds, kept, embedder, recipe, t: int, path: Path, ui) -> list[dict]:
    """Every item's pair row, written to `path` batch by batch; finished batches are not redone."""
    classifier = Consistency(seeds, embedder)
    if classifier.model is None:
        raise IsaraError(f"preference: the seeds hold {classifier.refusals} refusals of {classifier.n}; the "
                         f"preference step needs at least 2 of each kind to know which answer to choose")
    by_kind = {True: [s for s in seeds if is_refusal(s.response)], False: [s for s in seeds if not is_refusal(s.response)]}
    pools = {kind: Pool(f"{'refusal' if kind else 'helpful'} seeds", group, embedder) for kind, group in by_kind.items()}
    items = contrast_items(seeds, kept, classifier, recipe.preference.seed_pairs)
    g, bs = recipe.generation, recipe.generation.batch_size
    done = read_jsonl_tolerant(path)
    whole = len(done) // bs * bs if len(done) < len(items) else len(done)
    if whole != len(done):  # a half-written batch: redo it whole so sampling stays deterministic
        done = done[:whole]
        write_jsonl(path, done)
    with ui.stage(f"iteration {t}: contrastive answers", len(items), len(done)) as update:
        for start in range(len(done), len(items), bs):
            batch = items[start:start + bs]
            vecs = embedder([it["prompt"] for it in batch])
            prompts, openers = [], []
            for it, vec in zip(batch, vecs):
                refuse = not is_refusal(it["first"])  # the second answer is of the other kind
                demos = within_budget(renderer, answer_demos([pools[refuse]], recipe.demonstrations, vec),
                                      it["prompt"], backend.count_tokens, recipe.context_tokens)
                openers.append(refusal_opener(demos[-1].response) if refuse and demos else "")
                prompts.append(renderer.answer_prompt(demos, it["prompt"]) + openers[-1])
            sampling = Sampling(max_tokens=g.answer_max_tokens, temperature=g.answer_temperature, top_p=g.top_p,
                                top_k=g.top_k, repetition_penalty=g.answer_repetition_penalty,
                                stop=renderer.fmt.stops, seed=seed_for(recipe.seed, t, start, "contrast"))
            outs = backend.generate(prompts, sampling)
            rows = [pair_of(it, cut(op + o.text)) for it, op, o in zip(batch, openers, outs)]
            append_jsonl(path, rows)
            done += rows
            update(len(rows), pairs=sum(r["kept"] for r in done))
    return done


def balance_kinds(pairs: list[dict], seed: int) -> list[dict]:
    """The pairs with the rarer chosen kind repeated until both kinds are as many: whole copies, then a
    seeded draw for the rest. About 70% of the pairs choose the answer (README, Results), so unweighted
    DPO mostly lowers refusal everywhere."""
    kinds = [[p for p in pairs if p["refuse"] == k] for k in (True, False)]  # the seeds' verdict: refusal chosen
    few, many = sorted(kinds, key=len)
    if not few:
        return pairs
    extra = few * (len(many) // len(few) - 1) + random.Random(seed).sample(few, len(many) % len(few))
    return pairs + extra


def train_dpo(base, tok, pairs: list[dict], pref, train, learning_rate: float, adapter_in: Path | None,
              adapter_out: Path, seed: int, device: str, bf16: bool, on_step=None):
    """DPO (+ NLL on chosen) with TRL on a LoRA over `base`; returns (model with the trained adapter
    active, TrainResult). Prompts are rendered chat prompts, answers get EOS as in SFT."""
    from datasets import Dataset
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    import torch

    torch.manual_seed(seed)
    # DPOTrainer copies the trainable adapter into a frozen one named "ref": the reference
    if adapter_in is not None:
        model = PeftModel.from_pretrained(base, str(adapter_in), is_trainable=True)
    else:
        model = get_peft_model(base, LoraConfig(r=train.lora_rank, lora_alpha=train.lora_alpha,
                                                lora_dropout=train.lora_dropout, task_type="CAUSAL_LM",
                                                target_modules=list(train.target_modules)))
    data = Dataset.from_list([{"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]} for p in pairs])
    losses, start = [], time.time()

    class Progress(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))
                if on_step:
                    on_step(state.global_step, state.max_steps, float(logs["loss"]), float(logs.get("learning_rate", 0)), 0)

    work = Path(adapter_out).parent / ".dpo_work"
    weights = [1.0] + ([pref.sft_weight] if pref.sft_weight > 0 else [])
    # warmup_steps below 1 is a share of the steps in transformers 5
    config = DPOConfig(
        output_dir=str(work), per_device_train_batch_size=pref.batch_size, num_train_epochs=pref.epochs,
        learning_rate=learning_rate, lr_scheduler_type=train.schedule,
        warmup_steps=train.warmup_ratio, max_grad_norm=1.0, weight_decay=0.0, beta=pref.beta,
        loss_type=["sigmoid", "sft"][: len(weights)], loss_weights=weights, max_length=train.max_length,
        precompute_ref_log_probs=True, seed=seed, data_seed=seed, bf16=bf16,
        use_cpu=device == "cpu", logging_steps=1, save_strategy="no", report_to=[], disable_tqdm=True,
        dataloader_num_workers=0, dataset_num_proc=None)
    try:
        trainer = DPOTrainer(model=model, args=config, train_dataset=data, processing_class=tok,
                             callbacks=[Progress()])
        trainer.train()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if "ref" in model.peft_config:
        model.delete_adapter("ref")
    model.set_adapter("default")
    with writing_dir(Path(adapter_out)) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True, selected_adapters=["default"])
    steps = trainer.state.global_step
    return model, TrainResult(Path(adapter_out), steps, losses, 0, time.time() - start)


def preference_stage(backend, renderer, seeds, kept, embedder, recipe, t: int, adapter_in: Path, adapter_out: Path,
                     ui) -> dict:
    """Pairs, then DPO from adapter_in to adapter_out; a finished stage on disk is loaded, not redone."""
    it = Path(adapter_out).parent
    record = it / "preference.json"
    if stage_done(record, adapter_out):
        backend.load(adapter_out)
        return json.loads(record.read_text())
    rows = build_pairs(backend, renderer, seeds, kept, embedder, recipe, t, it / "pairs.jsonl", ui)
    pairs = [r for r in rows if r["kept"]]
    if not pairs:
        raise IsaraError(f"{it / 'pairs.jsonl'}: no contrastive pair survived (every second answer was of the "
                         f"first one's kind); turn preference.enabled off for this recipe")
    distinct, refusal_chosen = len(pairs), sum(r["refuse"] for r in pairs)
    if recipe.preference.balance:
        pairs = balance_kinds(pairs, seed_for(recipe.seed, t, 0, "balance"))
    lr = recipe.preference.learning_rate * recipe.training.lr_decay ** (t - 1)
    steps = math.ceil(len(pairs) / recipe.preference.batch_size) * recipe.preference.epochs
    with ui.stage(f"iteration {t}: preference step on {len(pairs)} pairs", steps) as update:
        def on_step(step, total, loss, lr_now, tokens):
            update(1, loss=f"{loss:.3f}", lr=f"{lr_now:.1e}")

        result = backend.train_preference(pairs, recipe.preference, recipe.training, lr, adapter_in, adapter_out, on_step)
    out = {"items": len(rows), "pairs": distinct, "repeated": len(pairs) - distinct,
           "refusal_chosen": refusal_chosen, "steps": result.steps, "losses": result.losses,
           "learning_rate": lr, "seconds": result.seconds, "beta": recipe.preference.beta,
           "balance": recipe.preference.balance, "started_from": str(adapter_in) if adapter_in else None}
    atomic_write_json(record, out)
    return out
