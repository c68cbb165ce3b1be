"""ISARA step 4: supervised fine-tuning on seeds + this iteration's kept samples.

Each example is the single-turn chat prompt and the answer with EOS appended; the loss covers the
answer tokens only. The adapter continues from the previous iteration, and the learning rate
decays by `lr_decay` per iteration (the paper halves it).

`fit` is the whole training step: examples and masks, the seeded batch order, the schedule,
gradient accumulation, splitting a batch across processes, and the atomic save. A backend gives it
a few primitives (`LoraSteps`); torch (and through it llamacpp and openai) and mlx train this way.
unsloth trains through TRL instead (its module says how that differs).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Protocol

from .files import writing_dir

IGNORE = -100  # label value the loss skips


@dataclass
class TrainResult:
    adapter: Path
    steps: int
    losses: list[float] = field(default_factory=list)
    tokens: int = 0
    seconds: float = 0.0
    weights_mb: float = 0.0  # weights process 0 held while training (multi-process jobs; 0: not measured)
    grad_norms: list[float] = field(default_factory=list)  # each step's gradient norm, before clipping


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


class LoraSteps(Protocol):
    """What a backend gives `fit`: its model with LoRA attached (fresh or continued) and an optimizer."""
    rank: int  # this process and how many train together (0, 1 in one process)
    world: int

    def encode(self, prompt: str, answer: str) -> tuple[list[int], list[int], int]:
        """(prompt ids with BOS, answer ids, EOS id)."""

    def backward(self, rows: list[tuple[list[int], list[int]]], scored: int, scale: float) -> float:
        """Sum the answer-token loss over rows, divide by scored (the whole batch's answer tokens),
        add scale x its gradient to the accumulated ones; return the loss."""

    def update(self, lr: float, loss: float, tokens: int) -> tuple[float, int, float]:
        """Sum the gradients over processes, clip their norm at 1, take one optimizer step at lr,
        clear the gradients; return loss and tokens summed over processes, and the gradient's
        norm before clipping."""

    def save(self, directory: Path | None) -> None:
        """Write the adapter (PEFT layout, fp32 tensors) into an empty directory. Every process calls
        it (a sharded model gathers its adapter together); only process 0 gets a directory."""


GROUP_WINDOW = 4  # batches sorted by length together (HF's LengthGroupedSampler takes 50; fewer keep more of the shuffle)


def batch_order(n: int, batch_size: int, seed: int, lengths: list[int] | None = None) -> Iterator[list[int]]:
    """Batches of example indices, one seeded permutation after another (a batch may span two);
    every backend draws the same batches for the same seed. With lengths, each window of
    GROUP_WINDOW batches of a permutation is sorted longest first, so a batch pads less."""
    rng = random.Random(seed)
    order: list[int] = []
    while True:
        if len(order) < batch_size:
            perm = list(range(n))
            rng.shuffle(perm)
            if lengths is not None:
                w = batch_size * GROUP_WINDOW
                perm = [i for at in range(0, n, w) for i in sorted(perm[at:at + w], key=lambda i: -lengths[i])]
            order += perm
        batch, order = order[:batch_size], order[batch_size:]
        yield batch


def fit(steps: LoraSteps, examples, config, learning_rate: float, adapter_out: Path, seed: int,
        on_step=None) -> TrainResult:
    """Train on (prompt, answer) examples and write the adapter to adapter_out (process 0 only).
    The loss of a step is the mean over its batches' answer tokens; with several processes each
    takes every world-th row of a batch and `update` sums the gradients."""
    data = [build_example(*steps.encode(p, a), config.max_length) for p, a in examples]
    total = total_steps(len(data), config)
    batches = batch_order(len(data), config.batch_size, seed,
                          [len(ids) for ids, _ in data] if config.group_by_length else None)
    losses, norms, seen, start = [], [], 0, time.time()
    for step in range(total):
        lr = lr_at(step, total, learning_rate, config.warmup_ratio, config.schedule)
        loss, tokens = 0.0, 0
        for _ in range(config.grad_accum):
            idx = next(batches)
            scored = sum(loss_tokens(data[i][1]) for i in idx)
            mine = [data[i] for i in idx[steps.rank::steps.world]]
            if mine:
                loss += steps.backward(mine, scored, 1 / config.grad_accum) / config.grad_accum
                tokens += sum(len(ids) for ids, _ in mine)
        loss, tokens, norm = steps.update(lr, loss, tokens)
        losses.append(loss)
        norms.append(norm)
        seen += tokens
        if on_step:
            on_step(step + 1, total, loss, lr, tokens)
    if steps.rank == 0:
        with writing_dir(Path(adapter_out)) as tmp:
            steps.save(tmp)
    else:
        steps.save(None)
    return TrainResult(Path(adapter_out), total, losses, seen, time.time() - start, grad_norms=norms)


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
