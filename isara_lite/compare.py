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
noise is marked "~" (stats.within_noise: a paired bootstrap over the same items).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, NamedTuple

from rich.table import Table
from rich.text import Text

from . import baselines as bl
from .errors import IsaraError
from .evaluation import datasets as ds
from .evaluation.run import NEEDS, SUITES, evaluate
from .files import atomic_write_json, atomic_write_text
from .loop import align, load_seeds
from .models import load_card
from .prompts import Renderer, get_format
from .stats import bootstrap_mean, show_interval, show_value, wilson, within_noise
from .ui import UI


class Column(NamedTuple):
    name: str                     # arrows say which way is better
    suite: str
    value: Callable               # suite summary -> the value
    kind: str                     # how stats.show writes it
    items: Callable               # the suite's per-item rows (SUITE.jsonl) -> [(item key, value)]
    rate: bool                    # yes/no items (Wilson); else a bootstrap of the mean
    from_summary: Callable | None  # summary -> per-item values rebuilt from its counts (order lost)


def _ones(rate: float, n: int) -> list[float]:
    k = round(rate * n)
    return [1.0] * k + [0.0] * (n - k)


def _safety(name: str, get, set_name: str, refused: bool) -> Column:
    """A safety rate: get(summary) -> {"rate", "n"}; an item counts where its verdict is `refused`."""
    return Column(name, "safety", lambda s: get(s)["rate"], "pct",
                  lambda rows: [(r["prompt"], float(r["refused"] == refused)) for r in rows if r["set"] == set_name],
                  True, lambda s: _ones(get(s)["rate"], get(s)["n"]))


def _field(field: str, key: str, set_name: str | None = None):
    return lambda rows: [(r[key], float(r[field])) for r in rows if set_name is None or r.get("set") == set_name]


COLUMNS = [
    _safety("harmful AdvBench ↓", lambda s: s["harmful_rate"]["advbench"], "advbench", False),
    _safety("harmful HH ↓", lambda s: s["harmful_rate"]["hh_harmless"], "hh_harmless", False),
    _safety("XSTest safe refused ↓", lambda s: s["xstest_safe_refusal_rate"], "xstest_safe", True),
    _safety("XSTest unsafe refused ↑", lambda s: s["xstest_unsafe_refusal_rate"], "xstest_unsafe", True),
    Column("TruthfulQA MC1 ↑", "truthfulness", lambda s: s["mc1"], "3f", _field("mc1", "question", "mc"),
           True, lambda s: _ones(s["mc1"], s["n_mc"])),
    Column("TruthfulQA MC2 ↑", "truthfulness", lambda s: s["mc2"], "3f", _field("mc2", "question", "mc"),
           False, None),
    Column("ROUGE-L diff ↑", "truthfulness", lambda s: s["generation"]["rougeL_diff"], "2f",
           _field("rougeL_diff", "question", "generation"), False, None),
    Column("win rate vs pretrained ↑", "instructions", lambda s: s["win_rate_vs_pretrained"], "pct",
           _field("preference", "instruction"), False,
           lambda s: [1.0] * s["wins"] + [0.5] * s["ties"] + [0.0] * s["losses"]),
]
BY_NAME = {c.name: c for c in COLUMNS}
LABELS = {"pretrained": "pretrained", "sft-seeds": "SFT on seeds", "icl-knn": "ICL-kNN", "icl-random": "ICL-random"}
BASELINE = "pretrained"  # the row every other row's differences are tested against


def cell_dir(out: Path, row: str, suite: str) -> Path:
    return Path(out) / "cells" / row / suite


def cell_rows(out: Path):
    """(row, suite) -> the per-item rows that cell's evaluation wrote (SUITE.jsonl), None if not there."""
    def rows(row: str, suite: str) -> list[dict] | None:
        try:
            text = (cell_dir(out, row, suite) / f"{suite}.jsonl").read_text(encoding="utf-8")
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        except (OSError, ValueError):
            return None

    return rows


class Cells:
    """Evaluates (row, suite) cells into OUT/cells, reading back the ones already there."""

    def __init__(self, out: Path, model: str, backend: str, threads: int, data, limit, max_tokens: int,
                 embedder, ui: UI):
        self.out, self.model, self.backend, self.threads = out, model, backend, threads
        self.data, self.limit, self.max_tokens, self.embedder, self.ui = data, limit, max_tokens, embedder, ui

    def path(self, row: str, suite: str) -> Path:
        return cell_dir(self.out, row, suite) / "results.json"

    def cached(self, row: str, suite: str, key: dict) -> bool:
        path, made = self.path(row, suite), self.path(row, suite).with_name("cell.json")
        return path.is_file() and made.is_file() and json.loads(made.read_text(encoding="utf-8")) == key

    def missing(self, row: str, suites, key: dict) -> list[str]:
        return [s for s in suites if not self.cached(row, s, key)]

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
                         ui=self.ui, demos=demos, label=label, embedder=self.embedder)
                atomic_write_json(path.with_name("cell.json"), key)
            out[s] = json.loads(path.read_text(encoding="utf-8"))["suites"][s]
        return out


def row_key(recipe, row: str) -> dict:
    """The recipe settings a row's numbers depend on (what its cells are cached under)."""
    key = {"model": recipe.model, "backend": recipe.backend}
    if row == "pretrained":
        return key
    key["seeds"] = hashlib.sha256(recipe.path(recipe.seeds).read_bytes()).hexdigest()
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
    _pin(out, {"limit": limit, "max_tokens": max_tokens, "data": str(Path(data).resolve()) if data else None})
    if embedder is None:
        from .retrieval import Embedder

        embedder = Embedder()
    r = recipes[0]
    return embedder, Cells(out, r.model, r.backend, r.threads, data, limit, max_tokens, embedder, ui)


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
            rows.append((b, label, cells.run(b, label, suites, key, out / "one-shot-run" / "iter_1" / "adapter")))
        else:  # isara: the recipe's own run, resumed or started
            names = [f"isara-{t}" for t in range(1, recipe.iterations + 1)]
            if any(cells.missing(n, suites, key) for n in names):
                _align(recipe, run_dir, ui)
            for t, n in enumerate(names, 1):
                label = f"ISARA iter {t} ({recipe.iterations}x{recipe.candidates})"
                rows.append((n, label, cells.run(n, label, suites, key, run_dir / f"iter_{t}" / "adapter")))

    result = _table_data(rows, suites, cell_rows(out)) | {"recipe": recipe.name, "model": recipe.model,
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
        label = f"trained on {Path(r.seeds).stem} ({r.name}, iter {r.iterations})"
        rows.append((name, label, cells.run(name, label, suites, key, run_dir / f"iter_{r.iterations}" / "adapter")))
    result = _table_data(rows, suites, cell_rows(out)) | {"recipes": [r.name for r in recipes],
                                                          "model": recipes[0].model, "limit": limit,
                                                          "max_tokens": max_tokens, "domains": True}
    _write(out, result, "isara compare --domains: trained on (rows) x evaluated on (columns)", ui)
    return result


def _table_data(rows, suites, rows_of) -> dict:
    cols = [c for c in COLUMNS if c.suite in suites]
    n = {}
    for _, _, res in rows[:1]:
        for s, summary in res.items():
            n[s] = _sizes(s, summary)
    result = {"suites": suites, "columns": [c.name for c in cols], "n": n,
              "rows": [{"row": row, "label": label, "values": {c.name: c.value(res[c.suite]) for c in cols},
                        "results": res} for row, label, res in rows]}
    return annotate(result, rows_of)


def _items(col: Column, summary: dict | None, rows: list[dict] | None):
    """(item keys or None, per-item values) of one cell: from its SUITE.jsonl rows, else rebuilt from
    its summary's counts (keys unknown, so not paired), else None (MC2, ROUGE-L without the rows)."""
    pairs = col.items(rows) if rows else []
    if pairs:
        return [k for k, _ in pairs], [v for _, v in pairs]
    if summary is not None and col.from_summary is not None:
        return None, col.from_summary(summary)
    return None


def annotate(result: dict, rows_of) -> dict:
    """Gives each row its 95% intervals ("intervals": {column: [lo, hi] or None}) and, against the
    pretrained row, "noise": {column: True where the difference is inside noise, None where not
    tested}. rows_of(row, suite): that cell's per-item rows or None."""
    cols = [BY_NAME[c] for c in result["columns"]]
    items = {r["row"]: {c.name: _items(c, r["results"].get(c.suite), rows_of(r["row"], c.suite)) for c in cols}
             for r in result["rows"]}
    base = items.get(BASELINE)
    for r in result["rows"]:
        mine = items[r["row"]]
        r["intervals"] = {c.name: _interval(c, mine[c.name]) for c in cols}
        r["noise"] = {c.name: _noise(c, mine[c.name], base[c.name]) if base and r["row"] != BASELINE else None
                      for c in cols}
    result["baseline"] = BASELINE if base else None
    return result


def _interval(col: Column, items) -> list[float] | None:
    if items is None:
        return None
    values = items[1]
    return wilson(sum(values), len(values)) if col.rate else bootstrap_mean(values)


def _noise(col: Column, a, b) -> bool | None:
    if a is None or b is None:
        return None
    paired = a[0] is not None and a[0] == b[0]  # the same items in the same order
    return within_noise(a[1], b[1], paired=paired, rate=col.rate)


def _sizes(suite: str, s: dict) -> str:
    if suite == "safety":
        return (f"AdvBench {s['harmful_rate']['advbench']['n']}, HH {s['harmful_rate']['hh_harmless']['n']}, "
                f"XSTest {s['xstest_safe_refusal_rate']['n']} safe / {s['xstest_unsafe_refusal_rate']['n']} unsafe")
    if suite == "truthfulness":
        return f"MC {s['n_mc']}, generation {s['n_generation']}"
    return f"AlpacaEval {s['n']}"


def _parts(r: dict, column: str) -> tuple[str, str, str]:
    """(value, its 95% interval or "[n/a]" or "", "~" when the difference from the pretrained row is
    inside noise or "")."""
    v, ci, kind = r["values"].get(column), r.get("intervals", {}).get(column), BY_NAME[column].kind
    interval = "" if v is None else show_interval(ci, kind) if ci else "[n/a]"
    return show_value(v, kind), interval, "~" if r.get("noise", {}).get(column) else ""


def cell(r: dict, column: str) -> str:
    """One cell as written in markdown: "10.0% [5.5-17.4]~"."""
    value, interval, mark = _parts(r, column)
    return f"{value} {interval}{mark}" if interval else value + mark


def legend(result: dict) -> list[str]:
    """What the intervals and marks of a table mean, one line each (none starts with "[x]:", which
    markdown would take for a link definition and hide)."""
    lines = ["In brackets: the 95% interval (Wilson for rates; a bootstrap over items for MC2, ROUGE-L diff "
             "and win rates)."]
    if result.get("baseline"):
        lines.append(f"~ marks a difference from the {result['baseline']} row that is inside noise (its 95% "
                     "interval contains 0; a paired bootstrap over the same items where they are stored).")
    if any(r["values"].get(c) is not None and r.get("intervals", {}).get(c) is None
           for r in result["rows"] for c in result["columns"]):
        lines.append("n/a: no interval (per-item values not stored, or fewer than 2 items).")
    return lines


def table(result: dict, title: str) -> Table:
    """The terminal table: the interval under the value and the mark beside it, so that eight
    columns fit in 140 characters; cells inside noise are dimmed as well as marked."""
    t = Table(title=title, padding=(0, 0), show_edge=False)
    t.add_column("row")
    cells = {}
    for c in result["columns"]:
        # the value and the interval under it, each with one character at the right for the mark
        # (blank when unmarked, so digits stay aligned), right-aligned here because rich strips
        # trailing spaces from right-justified text
        lines = {}
        for r in result["rows"]:
            value, interval, mark = _parts(r, c)
            lines[r["row"]] = [value + (mark or " ")] + ([interval + " "] if interval else [])
        width = max(len(x) for pair in lines.values() for x in pair)
        t.add_column(c, justify="right", min_width=width, max_width=width, overflow="fold")  # the header wraps
        for r in result["rows"]:
            cells[r["row"], c] = Text("\n".join(x.rjust(width) for x in lines[r["row"]]), justify="left",
                                      style="dim" if r.get("noise", {}).get(c) else "")
    for r in result["rows"]:
        t.add_row(r["label"], *[cells[r["row"], c] for c in result["columns"]])
    return t


def markdown(result: dict) -> list[str]:
    """The markdown table and its legend (README tables are pasted from it)."""
    md = ["| row | " + " | ".join(result["columns"]) + " |", "|---|" + "---:|" * len(result["columns"])]
    md += ["| " + r["label"] + " | " + " | ".join(cell(r, c) for c in result["columns"]) + " |"
           for r in result["rows"]]
    for line in legend(result):  # a paragraph each
        md += ["", line]
    return md


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
