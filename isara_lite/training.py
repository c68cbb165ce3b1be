"""ISARA step 4: supervised fine-tuning on seeds + this iteration's kept samples.

Each example is the single-turn chat prompt and the answer with EOS appended; the loss covers the
answer tokens only. The adapter continues from the previous iteration, and the learning rate
decays by `lr_decay` per iteration (the paper halves it).
"""

from __future__ import annotations

import math
from pathlib import Path

IGNORE = -100  # label value the loss skips


def build_example(prompt_ids: list[int], answer_ids: list[int], eos_id: int, max_length: int):
    """(input_ids, labels): labels mask the prompt; the answer (plus EOS) is kept, the prompt
    is cut from the left when the pair is too long, so the answer always survives."""
    answer = (answer_ids + [eos_id])[:max_length]
    room = max_length - len(answer)
    prompt = prompt_ids[-room:] if room > 0 else []
    return prompt + answer, [IGNORE] * len(prompt) + answer


def loss_tokens(labels: list[int]) -> int:
    """How many positions of an example the next-token loss covers (its answer tokens, less a first
    token that has nothing before it)."""
    return sum(y != IGNORE for y in labels[1:])


def lr_at(step: int, total: int, base: float, warmup_ratio: float, schedule: str) -> float:
    """Linear warmup, then cosine to zero (or constant) within one iteration."""
    warmup = max(1, math.ceil(total * warmup_ratio)) if warmup_ratio > 0 else 0
    if step < warmup:
        return base * (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return base
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * progress))


def iteration_lr(config, iteration: int) -> float:
    return config.learning_rate * config.lr_decay ** (iteration - 1)


def total_steps(n_examples: int, config) -> int:
    per_epoch = math.ceil(n_examples / config.batch_size / config.grad_accum)
    steps = per_epoch * config.epochs
    return min(steps, config.max_steps) if config.max_steps else steps


def training_job(recipe) -> dict:
    """What the processes of a multi-process training job start from (distributed.py)."""
    return {"model": recipe.model, "seed": recipe.seed, "device": recipe.device, "threads": recipe.threads}


def train_iteration(backend, renderer, seeds, kept, config, iteration: int,
                    adapter_in: Path | None, adapter_out: Path, on_step=None, job: dict | None = None):
    """Fine-tune on seeds + kept (not earlier iterations' samples), continuing from adapter_in.
    With config.processes > 1 the step runs in that many processes (distributed.py); job names the
    model, seed, device and threads they start from."""
    examples = [(renderer.chat_prompt(s.prompt), s.response) for s in [*seeds, *kept]]
    lr = iteration_lr(config, iteration)
    if config.processes > 1:
        from .distributed import train_processes

        result = train_processes(job["model"], examples, config, lr, adapter_in, adapter_out, job["seed"],
                                 job["device"], job["threads"], on_step)
        backend.load(adapter_out)
        return result
    return backend.train(examples, config, lr, adapter_in, adapter_out, on_step)
