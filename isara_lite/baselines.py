"""The paper's baselines, each turned into something `evaluate()` can run.

pretrained   the base model, no adapter
sft-seeds    LoRA SFT on the seed pairs only, iteration 1's TrainConfig and learning rate
icl-knn      at test time the k nearest seeds (by question embedding, nearest last) as demonstrations
icl-random   k seeds drawn at random per question (seeded by recipe.seed and the question)
one-shot     ISARA with one iteration of iterations x candidates (the paper's 1x2N against TxN)
isara        the recipe's own run, one row per iteration's adapter
"""

from __future__ import annotations

import copy
import json
import random
import zlib
from pathlib import Path

from .backends.base import create_backend
from .files import atomic_write_json
from .generation import answer_demos
from .retrieval import Pool
from .rundir import stage_done
from .training import total_steps, train_iteration, training_job
from .ui import UI

BASELINES = ("pretrained", "sft-seeds", "icl-knn", "icl-random", "one-shot", "isara")


class KnnDemos:
    """questions -> the k nearest seeds each, in generation.answer_demos' order (nearest last)."""

    def __init__(self, seeds, k: int, embedder):
        self.name = f"icl-knn: {k} nearest seeds"
        self.k, self.embedder, self.pool = k, embedder, Pool("seeds", seeds, embedder)

    def __call__(self, questions: list[str]) -> list[list]:
        vecs = self.embedder(list(questions))
        return [answer_demos([self.pool], self.k, v) for v in vecs]


class RandomDemos:
    """questions -> k seeds drawn at random, the same for a question every time."""

    def __init__(self, seeds, k: int, seed: int = 0):
        self.name = f"icl-random: {k} random seeds"
        self.seeds, self.k, self.seed = list(seeds), k, seed

    def __call__(self, questions: list[str]) -> list[list]:
        return [random.Random(zlib.crc32(f"{self.seed}:{q}".encode())).sample(self.seeds, min(self.k, len(self.seeds)))
                for q in questions]


def one_shot_recipe(recipe):
    """1 iteration of iterations x candidates: as many generated samples as the full run."""
    r = copy.deepcopy(recipe)
    r.name, r.iterations, r.candidates = f"{recipe.name}-one-shot", 1, recipe.iterations * recipe.candidates
    return r


def train_sft_seeds(recipe, card, renderer, seeds, out: Path, ui: UI, key: dict | None = None) -> Path:
    """LoRA SFT on the seeds alone; skipped when an adapter trained with the same settings (key) is on disk."""
    adapter, record = out / "adapter", out / "train.json"
    if stage_done(record, adapter):
        if json.loads(record.read_text(encoding="utf-8")).get("settings") == key:
            return adapter
    backend = create_backend(recipe.backend, card, threads=recipe.threads, device=recipe.device, seed=recipe.seed)
    backend.load(None)
    with ui.stage(f"sft-seeds: train on {len(seeds)} seed pairs", total_steps(len(seeds), recipe.training)) as update:
        result = train_iteration(backend, renderer, seeds, [], recipe.training, 1, None, adapter,
                                 lambda step, total, loss, lr, tokens: update(1, loss=f"{loss:.3f}"), training_job(recipe))
    atomic_write_json(record, {"steps": result.steps, "losses": result.losses, "tokens": result.tokens,
                               "seconds": result.seconds, "settings": key})
    return adapter
