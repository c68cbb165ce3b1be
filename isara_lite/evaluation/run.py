"""`isara eval`: the paper's three evaluations on a model, optionally with an adapter; one module
per suite (safety.py, truthfulness.py, instructions.py) over what they share (protocol.py), and
every table from tables.py.

Generation is greedy, max_tokens new tokens (default 200, the paper's), the model card's chat
template. Default subsets are fixed (seeded) and stratified by category; --full uses every item.

In-context baselines (`demos`, used by `isara compare`): a callable mapping a list of questions to
one list of demonstration Samples per question. Generated answers then see the demos as earlier
turns (Renderer.answer_prompt, as the loop's answer generation does); TruthfulQA MC sees them as
extra "Q: ... / A: ..." pairs after lm-eval's primer, nearest last; the AlpacaEval reference
outputs stay the pretrained model's plain answers. Without `demos` nothing changes.

Answers are kept in OUT/answers.partial.jsonl as they are given (protocol.AnswerLog): an interrupted
evaluation run again into the same folder answers only what is left; the file goes when every suite
is written.

With a gate, a safety or instructions row whose answer the gate rewrote keeps the model's own answer
too (own_response, own_output), judged again into the suite's "without_gate" rates: one gated
evaluation measures the model with and without its gate on those two suites (truthfulness's answers
are gated, its own answers not kept). Behind a gate that stands aside (gate.abstain), results.json
holds its reach (gate_reach) and each suite, per data set, how many questions lie within it
(in_reach).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from ..adapters import require_peft
from ..backends.base import create_backend
from ..errors import IsaraError
from ..files import atomic_write_json, sha256_files, write_jsonl
from ..gate import choose_gate
from ..models import load_card
from ..prompts import Renderer, get_format
from ..rundir import run_adapter
from ..stats import show
from ..ui import UI
from . import datasets as ds, instructions, safety, truthfulness
from .judges import DEFAULTS, PAIRWISE_JUDGES, REFUSAL_JUDGES, get_judge
from .protocol import AnswerLog, Answerer
from .tables import legend, metric_table, stored_rows, table_data

SUITES = ("safety", "truthfulness", "instructions")
ANSWERS = "answers.partial.jsonl"
MODULES = {"safety": safety, "truthfulness": truthfulness, "instructions": instructions}
NEEDS = {name: m.NEEDS for name, m in MODULES.items()}
# Default subset sizes: each suite in about 15 minutes on a 2-core CPU with the 135M model.
SIZES = {k: v for m in MODULES.values() for k, v in m.SIZES.items()}


def _judges(name: str | None, suites, embedder, backend: str, threads: int):
    """The refusal judge for safety and the pairwise judge for instructions; --judge replaces
    whichever kind it is (llm: and openai: judges are both kinds)."""
    refusal, pairwise = DEFAULTS["refusal"], DEFAULTS["pairwise"]
    if name:
        if name in REFUSAL_JUDGES:
            refusal = name
        elif name in PAIRWISE_JUDGES:
            pairwise = name
        else:
            refusal = pairwise = name
    made: dict[str, object] = {}

    def make(n):
        if n not in made:
            made[n] = get_judge(n, embedder, backend=backend, threads=threads)
        return made[n]

    return (make(refusal) if "safety" in suites else None), (make(pairwise) if "instructions" in suites else None)


def evaluate(model: str | None = None, adapter: Path | None = None, run: Path | None = None,
             iteration: int | None = None, suite: str = "all", data: Path | None = None, full: bool = False,
             limit: int | None = None, judge: str | None = None, out: Path | None = None, backend: str = "auto",
             threads: int = 0, max_tokens: int = 200, batch_size: int = 16, ui: UI | None = None,
             demos=None, label: str | None = None, embedder=None, gate: str | None = None,
             pretrained: dict[str, str] | None = None) -> dict:
    """Evaluate a model (+ adapter). demos: see the module docstring; label names it in the results;
    embedder: an already loaded retrieval.Embedder to reuse; gate: --gate (gate.choose_gate);
    pretrained: the pretrained model's answers already given, {instruction: answer} (Answerer)."""
    ui = ui or UI()
    if run is not None:
        if adapter is not None:
            raise IsaraError("give --adapter or --run, not both")
        run_model, adapter = run_adapter(Path(run), iteration)
        model = model or run_model
    if adapter is not None:
        require_peft(adapter)
    suites = SUITES if suite == "all" else (suite,)
    if any(s not in SUITES for s in suites):
        raise IsaraError(f"unknown suite '{suite}'; use one of {', '.join(SUITES)} or all")
    card = load_card(model or "smollm2-135m-instruct")
    the_gate = choose_gate(gate, Path(adapter) if adapter else None)
    label = label or card.name + (f"+{Path(adapter).parent.name}" if adapter else "") + ("+gate" if the_gate else "")
    if out is None:
        out = (Path(run) / "eval" / Path(adapter).parent.name) if run is not None else Path("evals") / label
    out = Path(out)
    sizes = {k: (None if full else v) for k, v in SIZES.items()}
    if limit:
        sizes = {k: min(limit, v) if v else limit for k, v in sizes.items()}

    for s in suites:  # find (or download) every file before loading any model
        for name in NEEDS[s]:
            ds.locate(name, data)

    renderer = Renderer(get_format(card.chat_format), card.system)
    b = create_backend(backend, card, threads=threads, log=ui.log)
    b.load(Path(adapter) if adapter else None)
    from ..retrieval import Embedder

    if embedder is None and ((judge or "refusal") in ("refusal", "classifier", "reference-embed", "features") or the_gate):
        embedder = Embedder()
    refusal_judge, pairwise_judge = _judges(judge, suites, embedder, b.name, threads)
    log = AnswerLog(out / ANSWERS, answer_settings(card.name, b.name, adapter, the_gate, max_tokens, label, demos))
    ev = Answerer(b, renderer, label, max_tokens, batch_size, ui, embedder, demos, the_gate,
                  Path(adapter) if adapter else None, pretrained, log)

    results = {"model": card.name, "adapter": str(adapter) if adapter else None, "backend": b.name,
               "gate": the_gate is not None, **({"gate_reach": the_gate.reach} if the_gate else {}),
               "label": label, "max_tokens": max_tokens, "decoding": "greedy", "subset_sizes": sizes,
               **({"demonstrations": getattr(demos, "name", "custom")} if demos is not None else {}),
               "suites": {}, "seconds": {}}
    for s in suites:
        t0 = time.time()
        if s == "safety":
            summary, rows = safety.run(ev, data, sizes, refusal_judge)
        elif s == "truthfulness":
            summary, rows = truthfulness.run(ev, data, sizes)
        else:
            summary, rows, fmt, fmt_base = instructions.run(ev, data, sizes, pairwise_judge)
            atomic_write_json(out / "model_outputs.json", fmt)
            atomic_write_json(out / "pretrained_outputs.json", fmt_base)
        write_jsonl(out / f"{s}.jsonl", rows)
        results["suites"][s] = summary
        results["seconds"][s] = round(time.time() - t0, 1)
        atomic_write_json(out / "results.json", results)  # after every suite: finished work is kept
        ui.log(f"{s}: done in {results['seconds'][s]:.0f}s")
    log.close()
    results_table(results, out, ui)
    for s, summary in results["suites"].items():
        if "without_gate" in summary:
            cols = {"safety": safety.COLUMNS, "instructions": instructions.COLUMNS}.get(s, [])
            ui.log(f"{s} without the gate (the model's own answers where it rewrote one): " + ", ".join(
                f"{c.name} {show(c.value(summary['without_gate']), c.kind, c.stored_ci(summary['without_gate']))}"
                for c in cols if c.value(summary["without_gate"]) is not None))
        if "in_reach" in summary:
            ui.log(f"{s}: questions near enough a seed for the gate to decide (gate.abstain): "
                   + ", ".join(f"{k} {n}" for k, n in summary["in_reach"].items()))
    ui.log(f"results: {out / 'results.json'}")
    return results


def answer_settings(model: str, backend: str, adapter, gate, max_tokens: int, label: str, demos) -> dict:
    """What an evaluation's answers depend on (AnswerLog): the adapter and the gate by content."""
    files = sorted(f for f in Path(adapter).iterdir() if f.is_file()) if adapter else []
    return {"model": model, "backend": backend, "max_tokens": max_tokens, "label": label,
            "adapter": sha256_files(files) if adapter else None,
            # a gated log of before the own answers were kept would read as "nothing rewritten", one
            # of before written refusals ended at their first sentence would mix two kinds of rewrite
            "gate": asdict(gate) | {"keeps_own_answers": True, "refusal_ends": "first sentence"} if gate else None,
            "demos": getattr(demos, "name", "custom") if demos is not None else None}


def results_table(results: dict, out: Path, ui: UI) -> None:
    """Every value with its 95% interval: the one stored with it, else one from the per-item rows in
    OUT/SUITE.jsonl (results written before the intervals were stored)."""
    judges = [f"{s} judge: {x['judge']}" for s, x in results["suites"].items() if "judge" in x]
    data = table_data([("model", results["label"], results["suites"])], list(results["suites"]),
                      lambda _row, suite: stored_rows(out / f"{suite}.jsonl"), compare_only=False)
    ui.console.print(metric_table(data, f"isara eval: {results['label']} ({results['backend']}, greedy, "
                                        f"{results['max_tokens']} tokens)", "; ".join(judges)))
    for line in legend(data):
        ui.log(line)
