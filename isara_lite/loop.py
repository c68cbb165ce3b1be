"""The ISARA loop: iterations over steps 1-4, each step resumed where it stopped (the run
directory and its resume rules: rundir.py)."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

from . import filters
from .backends.base import Sampling, create_backend, peak_memory_mb, resolve_precision
from .data import Sample, read_prompts, read_samples
from .errors import IsaraError
from .evaluation.check import CHECK_TITLE, check_rows, run_check, summarize
from .files import append_jsonl, atomic_write_json, read_jsonl_tolerant, write_jsonl
from .gate import FILE as GATE_FILE, apply_gate, describe, fit_recipe_gate
from .generation import generate_batch
from .models import load_card
from .preference import preference_stage
from .prompts import Renderer, get_format
from .recipe import Recipe
from .refusal import is_refusal
from .retrieval import Embedder, Pool
from .rundir import RunDir, prepare_run, stage_done
from .selection import balanced, best_iteration, split_seeds
from .training import iteration_lr, total_steps, train_iteration, training_job
from .ui import UI


def load_seeds(recipe: Recipe, renderer: Renderer) -> list[Sample]:
    """The recipe's seed pairs, its files joined in order; ids seed-0, seed-1, ... across them."""
    files = recipe.seed_files()
    seeds = [replace(s, id=f"seed-{i}") for i, s in
             enumerate(s for path in files for s in read_samples(path, check=renderer.validate))]
    if len(seeds) < recipe.demonstrations:
        raise IsaraError(f"{', '.join(map(str, files))}: {len(seeds)} seed pairs, fewer than "
                         f"demonstrations={recipe.demonstrations}")
    return seeds


def align(recipe: Recipe, out: Path, resume: bool = False, ui: UI | None = None, force: bool = False) -> dict:
    ui = ui or UI()
    card = load_card(recipe.model)
    renderer = Renderer(get_format(card.chat_format), card.system)
    seeds = load_seeds(recipe, renderer)
    harmful = [r["prompt"] for r in read_prompts(recipe.path(recipe.check.harmful))] if recipe.check.harmful else []
    benign = [r["prompt"] for r in read_prompts(recipe.path(recipe.check.benign))] if recipe.check.benign else []
    if recipe.check.limit:
        harmful, benign = harmful[: recipe.check.limit], benign[: recipe.check.limit]

    held: list[Sample] = []
    if recipe.selection.holdout:
        seeds, held = split_seeds(seeds, recipe.selection.holdout, recipe.seed, recipe.demonstrations)
    run = prepare_run(recipe, out, resume, force)
    try:
        return _align(recipe, run, card, renderer, seeds, held, harmful, benign, ui)
    finally:
        run.lock.release()


def _align(recipe: Recipe, run: RunDir, card, renderer: Renderer, seeds, held, harmful, benign, ui: UI) -> dict:
    ui.log_path = run.root / "log.txt"
    if run.changed:
        ui.log(f"--force: continuing with a changed recipe ({', '.join(run.changed)})")
    write_jsonl(run.root / "seeds.jsonl", [s.to_dict() for s in seeds])
    if held:
        write_jsonl(run.root / "holdout.jsonl", [s.to_dict() for s in held])
    start = time.time()
    ui.log(f"run {run.root}: model {card.name} ({card.chat_format}), backend {recipe.backend}, "
           f"{len(seeds)} seeds, T={recipe.iterations}, N={recipe.candidates}, k={recipe.demonstrations}")

    backend = create_backend(recipe.backend, card, threads=recipe.threads, device=recipe.device, seed=recipe.seed,
                             long_prompts=True, log=ui.log)
    trains = ""
    if backend.name in ("torch", "llamacpp"):  # both train with torch (mlx and unsloth keep their own dtypes)
        precision, reason = resolve_precision(recipe.training.precision, backend.device,
                                              recipe.training.batch_size)
        trains = f", training in {precision} ({reason})"
    ui.log(f"backend {backend.name}: {backend.device}, {backend.threads} threads{trains}")
    if recipe.training.processes > 1 and backend.name not in ("torch", "llamacpp"):
        raise IsaraError(f"training.processes={recipe.training.processes}: the {backend.name} backend trains in its "
                         f"own process only; pass --backend torch or set training.processes=1")
    if recipe.preference.enabled and not hasattr(backend, "train_preference"):
        raise IsaraError(f"preference.enabled: the {backend.name} backend cannot run the preference step yet "
                         f"(torch and llamacpp can); pass --backend torch or turn preference.enabled off")
    embedder = Embedder()
    pools = [Pool("seeds", seeds, embedder)]
    checks = []
    gate = fit_recipe_gate(recipe, seeds, embedder) if recipe.gate.enabled else None
    if gate:
        gate.save(run.root / GATE_FILE)
        ui.log(f"gate: {describe(gate)}")

    def answer_set(t: int, name: str, label: str, refuse: list[str], answer: list[str]) -> dict:
        """Greedy answers to prompts that should be refused and answered, saved as iter_t/<name>.jsonl."""
        path = run.it(t) / f"{name}.jsonl"
        if path.is_file():
            rows = read_jsonl_tolerant(path)
        else:
            with ui.stage(f"{name} {label}", len(refuse) + len(answer)) as update:
                t0, toks = time.time(), [0]

                def on_batch(n, tokens):
                    toks[0] += tokens
                    update(n, **{"tok/s": f"{toks[0] / (time.time() - t0):.0f}"})

                rows = run_check(backend, renderer, refuse, answer, recipe.check.max_tokens,
                                 recipe.generation.batch_size * 2, on_batch)
                if gate:  # the model's own answers are kept beside the gated ones
                    sampling = Sampling(max_tokens=recipe.check.max_tokens, temperature=0.0, stop=renderer.fmt.stops)
                    gated = apply_gate(backend, renderer, gate, embedder, [r["prompt"] for r in rows],
                                       [r["response"] for r in rows], sampling)
                    rows = [{**r, "greedy_response": r["response"], "greedy_refused": r["refused"], **g}
                            for r, g in zip(rows, gated)]
            write_jsonl(path, rows)
        if rows and all("greedy_refused" in r for r in rows):  # gated when written (a --force resume may differ)
            return {**summarize(rows, f"{label} + gate"),
                    "greedy": summarize([{**r, "refused": r["greedy_refused"]} for r in rows], label)}
        return summarize(rows, label)

    def check(t: int, label: str) -> dict | None:
        if not (harmful or benign):
            return None
        summary = answer_set(t, "check", label, harmful, benign)
        if "greedy" in summary:
            checks.append(summary["greedy"])
        checks.append(summary)
        return summary

    scores: dict[int, float] = {}

    def held_out(t: int, label: str) -> dict | None:
        """The held-out seeds' verdict on iteration t (selection.py); best.json follows the best so far."""
        if not held:
            return None
        summary = answer_set(t, "holdout", label, [s.prompt for s in held if is_refusal(s.response)],
                             [s.prompt for s in held if not is_refusal(s.response)])
        scores[t] = balanced(summary)
        if t >= 1:
            best = best_iteration(scores)
            atomic_write_json(run.best_file, {"iteration": best, "score": scores[best], "scores": scores,
                                                       "by": f"{len(held)} held-out seeds (selection.py)"})
        return summary

    def recheck(t: int, adapter_t, label: str) -> dict:
        """A finished iteration's answer sets on resume: read back, or, where one was removed (to check
        again on new prompts, say), answered again by this iteration's model and its metrics updated."""
        answered = [run.it(t) / "check.jsonl"] * bool(harmful or benign) + [run.it(t) / "holdout.jsonl"] * bool(held)
        again = not all(f.is_file() for f in answered)
        if again:
            backend.load(adapter_t)
        row = json.loads((run.it(t) / "metrics.json").read_text())
        fresh = {"check": check(t, label), "holdout": held_out(t, label)}
        if again:
            row.update({k: v for k, v in fresh.items() if v is not None})
            atomic_write_json(run.it(t) / "metrics.json", row)
        return row

    if not run.done(0):
        backend.load(None)
        atomic_write_json(run.it(0) / "metrics.json", {"iteration": 0, "check": check(0, "base"),
                                                       "holdout": held_out(0, "base")})
    else:
        recheck(0, None, "base")

    rows, adapter = [], None
    for t in range(1, recipe.iterations + 1):
        it = run.it(t)
        if run.done(t):
            kept = [Sample.from_dict(d) for d in read_jsonl_tolerant(it / "kept.jsonl")]
            rows.append(recheck(t, run.adapter(t), f"iteration {t}"))
            ui.log(f"iteration {t}: already done, {len(kept)} kept")
        else:
            t0 = time.time()
            backend.load(adapter)
            candidates = generate_iteration(backend, renderer, pools, embedder, recipe, t, it, ui)
            kept = [c for c in candidates if c.kept]
            write_jsonl(it / "kept.jsonl", [c.to_dict() for c in kept])
            replaced = recipe.preference.enabled and recipe.preference.replaces_sft
            sft_out = it / "sft_adapter" if recipe.preference.enabled else run.adapter(t)
            result = None if replaced else train_stage(backend, renderer, seeds, kept, recipe, t, adapter, sft_out, ui)
            pref = preference_stage(backend, renderer, seeds, kept, embedder, recipe, t, adapter if replaced else sft_out,
                                    run.adapter(t), ui) if recipe.preference.enabled else None
            trained = result or pref
            if gate:  # beside the adapter, so chat, eval and export find it
                gate.save(run.adapter(t) / GATE_FILE)
            summary = check(t, f"iteration {t}")
            holdout = held_out(t, f"iteration {t}")
            removed = {f: sum(1 for c in candidates if not c.verdicts.get(f, True)) for f in filters.FILTERS}
            row = {"iteration": t, "generated": len(candidates), "kept": len(kept), "removed": removed,
                   "train_steps": trained["steps"], "train_loss_first": (trained["losses"] or [0.0])[0],
                   "train_loss_last": (trained["losses"] or [0.0])[-1],
                   "learning_rate": trained.get("learning_rate", iteration_lr(recipe.training, t)),
                   "train_seconds": trained["seconds"],
                   "seconds": time.time() - t0, "peak_memory_mb": peak_memory_mb(), "check": summary}
            if holdout:
                row["holdout"] = holdout
            if pref:
                row["preference"] = {k: v for k, v in pref.items() if k != "losses"}
            atomic_write_json(it / "metrics.json", row)
            rows.append(row)
            ui.log(f"iteration {t}: generated {len(candidates)}, kept {len(kept)}, removed {removed}")
        pools.append(Pool(f"iter_{t}", kept, embedder))
        adapter = run.adapter(t)
        if held:
            best = best_iteration(scores)
            ui.log(f"held-out seeds: iteration {t} scores {scores[t]:.2f} (base {scores[0]:.2f}); best so far: "
                   f"iteration {best}")
            if recipe.selection.stop_early and scores[t] < scores[best] and t < recipe.iterations:
                ui.log(f"selection.stop_early: iteration {t} scored below iteration {best}; stopping")
                break

    summary = {"run": str(run.root), "iterations": rows, "checks": checks,
               "wall_seconds": time.time() - start, "peak_memory_mb": peak_memory_mb()}
    if held and len(scores) > 1:
        summary["best_iteration"] = best_iteration(scores)
    atomic_write_json(run.root / "summary.json", summary)
    ui.table("ISARA iterations", *iteration_rows(rows))
    if checks:
        ui.table(CHECK_TITLE, *check_rows(checks), caption="in brackets: the 95% Wilson interval")
    ui.log(f"done in {summary['wall_seconds'] / 60:.1f} min (this session), peak memory "
           f"{summary['peak_memory_mb'] / 1024:.2f} GB; adapter: {adapter}")
    return summary


def iteration_rows(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the iterations table, from each iteration's metrics.json."""
    header = ["iteration", "generated", "kept", *[f"failed {f}" for f in filters.FILTERS], "train steps",
              "loss first -> last", "learning rate", "minutes"]
    return header, [[str(r["iteration"]), str(r["generated"]), str(r["kept"]),
                     *[str(r["removed"].get(f, 0)) for f in filters.FILTERS], str(r["train_steps"]),
                     f"{r['train_loss_first']:.3f} -> {r['train_loss_last']:.3f}", f"{r['learning_rate']:.2e}",
                     f"{r['seconds'] / 60:.1f}"] for r in rows]


def generate_iteration(backend, renderer, pools, embedder, recipe, t: int, it: Path, ui: UI) -> list[Sample]:
    """Steps 1-3 for iteration t, batch by batch; finished batches survive a crash and are not redone."""
    path = it / "candidates.jsonl"
    bs = recipe.generation.batch_size
    done = [Sample.from_dict(d) for d in read_jsonl_tolerant(path)]
    whole = len(done) // bs * bs if len(done) < recipe.candidates else len(done)
    if whole != len(done):  # a half-written batch: redo it whole so sampling stays deterministic
        done = done[:whole]
        write_jsonl(path, [c.to_dict() for c in done])
    seen = {filters.normalize(s.prompt) for p in pools for s in p.samples}
    seen |= {filters.normalize(c.prompt) for c in done if c.kept}
    by_id = {s.id: s for p in pools for s in p.samples}
    kept = sum(1 for c in done if c.kept)
    classifier = filters.Consistency(pools[0].samples, embedder) \
        if recipe.filters.consistency or recipe.generation.own_answers else None
    if classifier and classifier.model is None and not done:
        what = [w for w, on in (("filters.consistency passes every candidate", recipe.filters.consistency),
                                ("generation.own_answers leaves every answer to the demonstrations",
                                 recipe.generation.own_answers)) if on]
        ui.log(f"the seeds hold {classifier.refusals} refusals of {classifier.n}: too few of one kind for their "
               f"question classifier, so {' and '.join(what)}")
    consistency = classifier if recipe.filters.consistency else None

    def answers_itself(questions):  # generation.own_answers: where the seeds would answer, the model does
        return [not e for e in classifier.expects_refusal(questions)]

    own = answers_itself if recipe.generation.own_answers and classifier.model is not None else None
    with ui.stage(f"iteration {t}: generate + filter", recipe.candidates, len(done)) as update:
        t0, toks = time.time(), [0, 0]

        def on_generated(outs):
            toks[0] += sum(o.prompt_tokens for o in outs)
            toks[1] += sum(o.completion_tokens for o in outs)

        for start in range(len(done), recipe.candidates, bs):
            batch = generate_batch(backend, renderer, pools, embedder, recipe, t,
                                   list(range(start, min(start + bs, recipe.candidates))), on_generated, own)
            agree = consistency([c.prompt for c in batch], [c.response for c in batch]) if consistency \
                else [True] * len(batch)
            for c, ok in zip(batch, agree):
                demo_qs = [by_id[i].prompt for i in c.question_demos]
                c.verdicts = filters.judge(c.prompt, c.response, demo_qs, seen, recipe.filters, ok)
                c.kept = all(c.verdicts.values())
                if c.kept:
                    seen.add(filters.normalize(c.prompt))
                    kept += 1
            append_jsonl(path, [c.to_dict() for c in batch])
            done += batch
            dt = time.time() - t0
            mine = {"own answers": sum(1 for c in done if c.prompt and not c.answer_demos)} if own else {}
            update(len(batch), kept=kept, **mine, **{"cand/s": f"{(len(done) - whole) / dt:.2f}",
                                                     "gen tok/s": f"{toks[1] / dt:.0f}", "prompt tok": toks[0]})
    return done


def train_stage(backend, renderer, seeds, kept, recipe, t, adapter_in, adapter_out: Path, ui: UI) -> dict:
    """Step 4, skipped when a finished adapter of this iteration is already on disk."""
    record = adapter_out.parent / "train.json"
    if stage_done(record, adapter_out):
        backend.load(adapter_out)
        return json.loads(record.read_text())
    n = len(seeds) + len(kept)
    with ui.stage(f"iteration {t}: train on {n} pairs", total_steps(n, recipe.training)) as update:
        t0, toks = time.time(), [0]

        def on_step(step, total, loss, lr, tokens):
            toks[0] += tokens
            update(1, loss=f"{loss:.3f}", lr=f"{lr:.1e}", **{"tok/s": f"{toks[0] / (time.time() - t0):.0f}"})

        result = train_iteration(backend, renderer, seeds, kept, recipe.training, t, adapter_in, adapter_out, on_step,
                                 training_job(recipe))
    out = {"steps": result.steps, "losses": result.losses, "tokens": result.tokens, "seconds": result.seconds,
           "grad_norms": result.grad_norms, **({"weights_mb": round(result.weights_mb, 1)} if result.weights_mb else {})}
    atomic_write_json(record, out)
    return out
