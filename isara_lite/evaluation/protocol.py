"""What every suite shares: fixed subsets, greedy answers in the model's chat template (with the
ICL baselines' demonstrations or the refusal gate where asked), and the Column a suite's metric
is shown in (tables.py renders every table from these)."""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable, NamedTuple

from ..backends.base import Sampling
from ..files import append_jsonl, read_jsonl_tolerant
from ..gate import apply_gate
from ..prompts import cut
from ..ui import UI


class Column(NamedTuple):
    name: str                     # arrows say which way is better
    suite: str
    where: Callable               # suite summary -> (the dict holding the value, its key)
    kind: str                     # how stats.show writes it
    items: Callable               # the suite's per-item rows (SUITE.jsonl) -> [(item key, value)]
    rate: bool                    # yes/no items (Wilson); else a bootstrap of the mean
    from_summary: Callable | None  # summary -> per-item values rebuilt from its counts (order lost)
    n: Callable                   # suite summary -> how many items the value is over
    in_compare: bool = True       # also a column of `isara compare` (eight fit in 140 characters)

    def value(self, summary: dict):
        d, key = self.where(summary)
        return d.get(key)  # None ("-") where a summary predates the column

    def stored_ci(self, summary: dict) -> list[float] | None:
        """The interval the evaluation stored beside the value (KEY_ci), if it did."""
        d, key = self.where(summary)
        return d.get(f"{key}_ci")


def ones(rate: float, n: int) -> list[float]:
    k = round(rate * n)
    return [1.0] * k + [0.0] * (n - k)


def field(name: str, key: str, set_name: str | None = None):
    """rows -> [(row[key], float(row[name]))] for the rows of one set (all rows when set_name is None)."""
    return lambda rows: [(r[key], float(r[name])) for r in rows if set_name is None or r.get("set") == set_name]


def subset(items: list, n: int | None, key=lambda r: "", seed: int = 0) -> list:
    """n items, the same every time, each category represented in proportion to its size.
    Items are ordered within their category by a seeded shuffle and then by relative rank, so
    taking a prefix keeps the proportions."""
    if n is None or n >= len(items):
        return list(items)
    groups: dict[str, list] = defaultdict(list)
    for it in items:
        groups[key(it)].append(it)
    ranked = []
    for g, members in sorted(groups.items()):
        random.Random(f"{seed}:{g}").shuffle(members)
        ranked += [((i + 0.5) / len(members), g, i, m) for i, m in enumerate(members)]
    ranked.sort(key=lambda x: x[:3])
    return [m for *_, m in ranked[:n]]


class AnswerLog:
    """Answers as they are given, appended to PATH batch by batch, so that an interrupted evaluation
    answers only what is left when it runs again into the same folder with the same SETTINGS (a
    dict naming the model, adapter, gate, ...: answers given under other settings are not reused).
    An ICL answer is reused only where the question was shown the same demonstrations, by content."""

    def __init__(self, path: Path, settings: dict):
        self.path = Path(path)
        self.key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
        self.given = {(r["what"], r["question"]): r for r in read_jsonl_tolerant(self.path)
                      if r.get("settings") == self.key}

    def get(self, what: str, question: str, demos) -> tuple[str, str | None] | None:
        """(the answer, the model's own answer where a gate rewrote it) given before, or None."""
        r = self.given.get((what, question))
        return (r["answer"], r.get("own")) if r is not None and r.get("demos") == demos else None

    def add(self, what: str, questions: list[str], answers: list[str], demos: list, own: dict | None = None) -> None:
        """own: {question: the model's own answer} where a gate rewrote it."""
        own = own or {}
        append_jsonl(self.path, [{"settings": self.key, "what": what, "question": q, "answer": a, "demos": d,
                                  **({"own": own[q]} if q in own else {})}
                                 for q, a, d in zip(questions, answers, demos)])

    def close(self) -> None:
        """Every suite is written: nothing left to resume."""
        self.path.unlink(missing_ok=True)


class Answerer:
    """Greedy answers of one model (+ adapter) for every suite.

    demos: the ICL baselines' callable, questions -> one list of demonstration Samples per
    question; answers then see them as earlier turns. gate: a gate.Gate deciding refuse or answer
    (single-turn answers only). pretrained: {question: answer} the pretrained model already gave
    (a compare's pretrained row), used instead of generating them again. log: an AnswerLog, to keep
    answers as they are given and reuse those an interrupted run gave."""

    def __init__(self, backend, renderer, label: str, max_tokens: int = 200, batch_size: int = 16,
                 ui: UI | None = None, embedder=None, demos=None, gate=None, adapter=None,
                 pretrained: dict[str, str] | None = None, log: AnswerLog | None = None):
        self.backend, self.renderer, self.label, self.adapter, self.log = backend, renderer, label, adapter, log
        self.demos, self.gate, self.pretrained = demos, gate, pretrained or {}
        self.max_tokens, self.batch_size = max_tokens, batch_size
        self.ui = ui or UI()
        self._embedder = embedder
        self._shown: dict[str, list] = {}  # question -> its demonstrations, retrieved once
        self._alone: dict[str, str] = {}  # behind a gate: question -> the model's own greedy answer

    @property
    def embedder(self):
        if self._embedder is None:
            from ..retrieval import Embedder

            self._embedder = Embedder()
        return self._embedder

    def shown(self, questions: list[str]) -> list[list]:
        """The demonstrations each question is shown (ICL baselines), retrieved once per question."""
        new = [q for q in dict.fromkeys(questions) if q not in self._shown]
        if new:
            self._shown.update(zip(new, self.demos(new)))
        return [self._shown[q] for q in questions]

    def prompts(self, questions: list[str]) -> list[str]:
        """Rendered prompts: single-turn, or after this evaluator's demonstrations."""
        if self.demos is None:
            return [self.renderer.chat_prompt(q) for q in questions]
        return [self.renderer.answer_prompt(d, q) for d, q in zip(self.shown(questions), questions)]

    def _demos_key(self, question: str) -> str | None:
        """What a question's demonstrations say (ICL baselines), for AnswerLog."""
        if self.demos is None:
            return None
        shown = [[d.prompt, d.response] for d in self.shown([question])[0]]
        return hashlib.sha256(json.dumps(shown).encode()).hexdigest()[:16]

    def demo_ids(self, question: str) -> dict:
        """Which demonstrations a question was shown (ICL baselines only), for the rows on disk."""
        return {} if self.demos is None else {"demos": [d.id for d in self.shown([question])[0]]}

    def own(self, question: str, answer: str, field: str = "own_response") -> dict:
        """{field: the model's own answer} where the gate rewrote it into ANSWER, for the rows on disk:
        one gated evaluation then measures the model without the gate too."""
        alone = self._alone.get(question, answer)
        return {field: alone} if alone != answer else {}

    def in_reach(self, sets: dict[str, list[str]]) -> dict:
        """Behind a gate that stands aside (gate.abstain): {"in_reach": {set: how many of its questions
        lie within the gate's reach}} (measured again with its embedder, so resumed runs count all),
        for results.json; else {}."""
        if self.gate is None or self.gate.reach is None or self.demos is not None:
            return {}
        return {"in_reach": {s: int(self.gate.within_reach(self.embedder, qs).sum()) for s, qs in sets.items()}}

    def answer(self, questions: list[str], what: str) -> list[str]:
        """Greedy answers in the model's chat template, cut at the next turn."""
        sampling = Sampling(max_tokens=self.max_tokens, temperature=0.0, stop=self.renderer.fmt.stops)
        if self.demos is not None:  # retrieved batch by batch as before (embeddings move a little with the batch)
            for i in range(0, len(questions), self.batch_size):
                self.shown(questions[i:i + self.batch_size])
        demos = {q: self._demos_key(q) for q in questions}
        known = {}
        if self.log is not None:
            given = {q: g for q in demos if (g := self.log.get(what, q, demos[q])) is not None}
            known = {q: a for q, (a, _) in given.items()}
            if self.gate is not None and self.demos is None:
                self._alone.update({q: a if o is None else o for q, (a, o) in given.items()})
            if known:
                self.ui.log(f"{what}: {len(known)} answers given before this run was interrupted, reused "
                            f"({self.log.path})")
        todo = [q for q in demos if q not in known]  # each question once: greedy answers it the same
        with self.ui.stage(what, len(demos), len(known)) as update:
            t0, toks = time.time(), 0
            for i in range(0, len(todo), self.batch_size):
                chunk = todo[i:i + self.batch_size]
                gens = self.backend.generate(self.prompts(chunk), sampling)
                texts = [cut(g.text) for g in gens]
                own = {}
                if self.gate is not None and self.demos is None:
                    gated = apply_gate(self.backend, self.renderer, self.gate, self.embedder, chunk, texts, sampling)
                    own = {q: t for q, t, r in zip(chunk, texts, gated) if r["rewritten"]}
                    self._alone.update(zip(chunk, texts))
                    texts = [r["response"] for r in gated]
                if self.log is not None:
                    self.log.add(what, chunk, texts, [demos[q] for q in chunk], own)
                known.update(zip(chunk, texts))
                toks += sum(g.completion_tokens for g in gens)
                update(len(gens), **{"tok/s": f"{toks / (time.time() - t0):.0f}"})
        return [known[q] for q in questions]

    def pretrained_answers(self, questions: list[str], what: str, given: list[str]) -> list[str]:
        """The same questions answered by the pretrained model alone (no adapter, demos or gate):
        `given` (this model's answers) where that is this model; behind a gate, its own answers from
        before the gate (greedy: the same text, whatever the stage)."""
        if self.adapter is None and self.demos is None and self.gate is None:
            return list(given)
        if all(q in self.pretrained for q in questions):
            self.ui.log(f"{what}: the {len(questions)} answers already given, reused")
            return [self.pretrained[q] for q in questions]
        if self.adapter is None and self.demos is None and all(q in self._alone for q in questions):
            return [self._alone[q] for q in questions]
        self.backend.load(None)
        demos, gate, self.demos, self.gate = self.demos, self.gate, None, None
        try:
            return self.answer(questions, what)
        finally:
            self.demos, self.gate = demos, gate
            self.backend.load(self.adapter)
