"""`isara compare`: the paper's table (baselines against each ISARA iteration) and, with several
recipes, its domain-generalization grid (trained on one domain's seeds, evaluated on every suite).

Every (row, suite) cell is one `evaluate()` call writing OUT/cells/<row>/<suite>/results.json and
cell.json, the recipe settings that row depends on (the pretrained row: model and backend; ICL rows:
also the seeds and k; SFT: also training; ISARA rows: the whole recipe). A cell whose cell.json
matches is read back instead of recomputed, so an interrupted compare resumes and a changed recipe
recomputes only the rows it affects. OUT/settings.json pins what every cell shares (limit, tokens,
data): reusing OUT with other ones is refused rather than mixing incomparable numbers.

Every value carries its 95% interval, from the per-item rows each cell's evaluation wrote
(SUITE.jsonl beside results.json), and a cell whose difference from the pretrained row is inside
noise is marked "~" (evaluation/tables.py renders the table).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from . import baselines as bl
from .errors import IsaraError
from .evaluation import datasets as ds
from .evaluation.judges import judge_versions
from .evaluation.run import NEEDS, SUITES, evaluate
from .evaluation.tables import legend, markdown, stored_rows, table, table_data
from .files import atomic_write_json, atomic_write_text
from .loop import align, load_seeds
from .models import load_card
from .prompts import Renderer, get_format
from .rundir import RunDir
from .ui import UI


LABELS = {"pretrained": "pretrained", "sft-seeds": "SFT on seeds", "icl-knn": "ICL-kNN", "icl-random": "ICL-random"}


def cell_dir(out: Path, row: str, suite: str) -> Path:
    return Path(out) / "cells" / row / suite


def cell_rows(out: Path):
    """(row, suite) -> the per-item rows that cell's evaluation wrote (SUITE.jsonl), None if not there."""
    return lambda row, suite: stored_rows(cell_dir(out, row, suite) / f"{suite}.jsonl")


class Cells:
    """Evaluates (row, suite) cells into OUT/cells, reading back the ones already there."""

    def __init__(self, out: Path, model: str, backend: str, threads: int, data, limit, max_tokens: int,
                 embedder, ui: UI, pretrained_key: dict):
        self.out, self.model, self.backend, self.threads = out, model, backend, threads
        self.data, self.limit, self.max_tokens, self.embedder, self.ui = data, limit, max_tokens, embedder, ui
        self.pretrained_key, self._pretrained = pretrained_key, None

    def path(self, row: str, suite: str) -> Path:
        return cell_dir(self.out, row, suite) / "results.json"

    def cached(self, row: str, suite: str, key: dict) -> bool:
        path, made = self.path(row, suite), self.path(row, suite).with_name("cell.json")
        return path.is_file() and made.is_file() and json.loads(made.read_text(encoding="utf-8")) == key

    def missing(self, row: str, suites, key: dict) -> list[str]:
        return [s for s in suites if not self.cached(row, s, key)]

    def pretrained_answers(self) -> dict[str, str] | None:
        """The pretrained row's AlpacaEval answers, {instruction: answer}, once its cell is on disk with
        these settings: every other row's win rate is against them, so they are not generated again
        for each row."""
        if self._pretrained is None and self.cached("pretrained", "instructions", self.pretrained_key):
            rows = cell_rows(self.out)("pretrained", "instructions")
            self._pretrained = {r["instruction"]: r["output"] for r in rows} if rows else None
        return self._pretrained

    def run(self, row: str, label: str, suites, key: dict, adapter: Path | None = None, demos=None) -> dict:
        """{suite: summary} for this row; computes only the suites not on disk with these settings."""
        out = {}
        for s in suites:
            path = self.path(row, s)
            if self.cached(row, s, key):
                self.ui.log(f"compare: {row} / {s}: cached ({path})")
            else:
                self.ui.log(f"compare: {row} / {s}: evaluating")
                evaluate(model=self.model, adapter=adapter, suite=s, data=self.data, limit=self.limit,
                         out=path.parent, backend=self.backend, threads=self.threads, max_tokens=self.max_tokens,
                         ui=self.ui, demos=demos, label=label, embedder=self.embedder,
                         pretrained=self.pretrained_answers() if s == "instructions" else None)
                atomic_write_json(path.with_name("cell.json"), key)
            out[s] = json.loads(path.read_text(encoding="utf-8"))["suites"][s]
        return out


def row_key(recipe, row: str) -> dict:
    """The recipe settings a row's numbers depend on (what its cells are cached under)."""
    key = {"model": recipe.model, "backend": recipe.backend}
    if row == "pretrained":
        return key
    key["seeds"] = hashlib.sha256(b"".join(p.read_bytes() for p in recipe.seed_files())).hexdigest()
    if row in ("icl-knn", "icl-random"):
        return key | {"demonstrations": recipe.demonstrations, "seed": recipe.seed}
    if row == "sft-seeds":
        return key | {"training": recipe.to_dict()["training"], "seed": recipe.seed}
    return key | {"recipe": recipe.to_dict()}  # one-shot and ISARA rows: everything


def _align(recipe, run_dir: Path, ui: UI) -> None:
    """Run or resume an ISARA run; align points the UI's log at the run, so point it back."""
    log = ui.log_path
    try:
        align(recipe, run_dir, resume=True, ui=ui)
    finally:
        ui.log_path = log


def _pin(out: Path, settings: dict) -> None:
    """Refuse an OUT made with other settings; record them on first use."""
    path = out / "settings.json"
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        changed = sorted(k for k in settings if old.get(k) != settings[k])
        if changed:
            raise IsaraError(f"{path}: this compare folder was made with other settings ({', '.join(changed)}); "
                             f"use another --out")
    else:
        atomic_write_json(path, settings)


def _setup(recipes, suites, data, limit, max_tokens, out: Path, ui: UI, embedder):
    for s in suites:  # find every data file before any training or model loading
        if s not in SUITES:
            raise IsaraError(f"unknown suite '{s}'; use one of {', '.join(SUITES)}")
        for name in NEEDS[s]:
            ds.locate(name, data)
    out.mkdir(parents=True, exist_ok=True)
    _pin(out, {"limit": limit, "max_tokens": max_tokens, "data": str(Path(data).resolve()) if data else None,
               "judges": judge_versions()})
    if embedder is None:
        from .retrieval import Embedder

        embedder = Embedder()
    r = recipes[0]
    return embedder, Cells(out, r.model, r.backend, r.threads, data, limit, max_tokens, embedder, ui,
                           row_key(r, "pretrained"))


def compare(recipe, suites=SUITES, limit: int | None = None, data: Path | None = None, out: Path | None = None,
            baselines=bl.BASELINES, run_dir: Path | None = None, max_tokens: int = 200, ui: UI | None = None,
            embedder=None) -> dict:
    """The paper's table for one recipe: each baseline and each ISARA iteration on each suite."""
    ui = ui or UI()
    unknown = [b for b in baselines if b not in bl.BASELINES]
    if unknown:
        raise IsaraError(f"--baselines: unknown '{unknown[0]}'; use some of {', '.join(bl.BASELINES)}")
    run_dir = Path(run_dir or Path("runs") / recipe.name)
    out = Path(out or run_dir / "compare")
    suites = list(suites)
    embedder, cells = _setup([recipe], suites, data, limit, max_tokens, out, ui, embedder)
    card = load_card(recipe.model)
    renderer = Renderer(get_format(card.chat_format), card.system)
    seeds = load_seeds(recipe, renderer)
    k = recipe.demonstrations

    rows = []
    for b in baselines:
        key = row_key(recipe, b)
        if b in ("pretrained", "icl-knn", "icl-random"):
            demos = (bl.KnnDemos(seeds, k, embedder) if b == "icl-knn" else
                     bl.RandomDemos(seeds, k, recipe.seed) if b == "icl-random" else None)
            rows.append((b, LABELS[b], cells.run(b, LABELS[b], suites, key, demos=demos)))
        elif b == "sft-seeds":
            adapter = out / "sft-seeds" / "adapter"
            if cells.missing(b, suites, key):
                adapter = bl.train_sft_seeds(recipe, card, renderer, seeds, out / "sft-seeds", ui, key)
            rows.append((b, LABELS[b], cells.run(b, LABELS[b], suites, key, adapter)))
        elif b == "one-shot":
            r1 = bl.one_shot_recipe(recipe)
            label = f"one-shot 1x{r1.candidates}"
            if cells.missing(b, suites, key):
                _align(r1, out / "one-shot-run", ui)
            rows.append((b, label, cells.run(b, label, suites, key, RunDir(out / "one-shot-run").adapter(1))))
        else:  # isara: the recipe's own run, resumed or started
            names = [f"isara-{t}" for t in range(1, recipe.iterations + 1)]
            if any(cells.missing(n, suites, key) for n in names):
                _align(recipe, run_dir, ui)
            for t, n in enumerate(names, 1):
                label = f"ISARA iter {t} ({recipe.iterations}x{recipe.candidates})"
                rows.append((n, label, cells.run(n, label, suites, key, RunDir(run_dir).adapter(t))))

    result = table_data(rows, suites, cell_rows(out)) | {"recipe": recipe.name, "model": recipe.model,
                                                          "run": str(run_dir), "limit": limit, "max_tokens": max_tokens}
    _write(out, result, f"isara compare: {recipe.name}", ui)
    return result


def compare_domains(recipes, suites=SUITES, limit: int | None = None, data: Path | None = None,
                    out: Path | None = None, max_tokens: int = 200, ui: UI | None = None, embedder=None) -> dict:
    """The generalization grid: each recipe's last ISARA iteration (trained on its domain's seeds)
    evaluated on every suite, under the pretrained model's row."""
    ui = ui or UI()
    if len(recipes) < 2:
        raise IsaraError("--domains needs one recipe per domain (at least two)")
    if len({r.model for r in recipes}) > 1:
        raise IsaraError(f"--domains: the recipes use different models ({', '.join(sorted({r.model for r in recipes}))})")
    if len({r.name for r in recipes}) < len(recipes):
        raise IsaraError("--domains: two recipes share a name; their runs would share a directory")
    out = Path(out or Path("runs") / ("domains-" + "+".join(r.name for r in recipes)))
    suites = list(suites)
    embedder, cells = _setup(recipes, suites, data, limit, max_tokens, out, ui, embedder)
    rows = [("pretrained", "pretrained", cells.run("pretrained", "pretrained", suites, row_key(recipes[0], "pretrained")))]
    for r in recipes:
        name, run_dir, key = f"trained-{r.name}", Path("runs") / r.name, row_key(r, "isara")
        if cells.missing(name, suites, key):
            _align(r, run_dir, ui)
        label = f"trained on {'+'.join(p.stem for p in r.seed_files())} ({r.name}, iter {r.iterations})"
        rows.append((name, label, cells.run(name, label, suites, key, RunDir(run_dir).adapter(r.iterations))))
    result = table_data(rows, suites, cell_rows(out)) | {"recipes": [r.name for r in recipes],
                                                          "model": recipes[0].model, "limit": limit,
                                                          "max_tokens": max_tokens, "domains": True}
    _write(out, result, "isara compare --domains: trained on (rows) x evaluated on (columns)", ui)
    return result


def _write(out: Path, result: dict, title: str, ui: UI) -> None:
    ui.console.print(table(result, title))
    for line in legend(result):
        ui.log(line)
    sizes = "; ".join(f"{s}: {v}" for s, v in result["n"].items())
    ui.log(f"items per set: {sizes} (greedy, {result['max_tokens']} tokens)")
    md = [f"# {title}", "", *markdown(result),
          "", f"Items per set: {sizes}. Greedy decoding, at most {result['max_tokens']} new tokens.", ""]
    atomic_write_json(out / "compare.json", result)
    atomic_write_text(out / "compare.md", "\n".join(md))
    ui.log(f"compare: {out / 'compare.json'}, {out / 'compare.md'}")
