"""Every table of evaluation results, in one place: `isara eval` (one model, a metric per line),
`isara compare` (rows x columns), and `isara report` (compare's, as markdown). The columns are the
suites' own (safety.py, truthfulness.py, instructions.py); every value carries its 95% interval,
from the per-item rows the evaluation wrote (SUITE.jsonl), and a value whose difference from the
pretrained row is inside noise is marked "~" (stats.within_noise: a paired bootstrap over the
same items)."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table
from rich.text import Text

from ..data import read_records
from ..errors import IsaraError
from ..stats import bootstrap_mean, show_interval, show_value, wilson, within_noise
from . import instructions, safety, truthfulness
from .protocol import Column

SUITE_MODULES = {m.NAME: m for m in (safety, truthfulness, instructions)}
COLUMNS: list[Column] = [c for m in SUITE_MODULES.values() for c in m.COLUMNS]
BY_NAME = {c.name: c for c in COLUMNS}
BASELINE = "pretrained"  # the row every other row's differences are tested against


def stored_rows(path: Path) -> list[dict] | None:
    """The per-item rows an evaluation wrote (SUITE.jsonl), or None where there are none to read."""
    try:
        return [r for _, r in read_records(path)]
    except IsaraError:
        return None


def table_data(rows, suites, rows_of, compare_only: bool = True) -> dict:
    """rows: [(row, label, {suite: summary})]; rows_of(row, suite): that cell's per-item rows or None."""
    cols = [c for c in COLUMNS if c.suite in suites and (c.in_compare or not compare_only)]
    n = {}
    for _, _, res in rows[:1]:
        for s, summary in res.items():
            n[s] = SUITE_MODULES[s].sizes_text(summary)
    result = {"suites": list(suites), "columns": [c.name for c in cols], "n": n,
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
        r["intervals"] = {c.name: _interval(c, r["results"].get(c.suite), mine[c.name]) for c in cols}
        r["noise"] = {c.name: _noise(c, mine[c.name], base[c.name]) if base and r["row"] != BASELINE else None
                      for c in cols}
    result["baseline"] = BASELINE if base else None
    return result


def _interval(col: Column, summary: dict | None, items) -> list[float] | None:
    """The interval stored with the value, else one from its items (results written before the
    intervals were stored), else None."""
    stored = col.stored_ci(summary) if summary is not None else None
    if stored is not None or items is None:
        return stored
    values = items[1]
    return wilson(sum(values), len(values)) if col.rate else bootstrap_mean(values)


def _noise(col: Column, a, b) -> bool | None:
    if a is None or b is None:
        return None
    paired = a[0] is not None and a[0] == b[0]  # the same items in the same order
    return within_noise(a[1], b[1], paired=paired, rate=col.rate)


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
    lines = ["In brackets: the 95% interval (Wilson for rates; a bootstrap over items for MC2, ROUGE-L and "
             "BLEU diffs and win rates)."]
    if result.get("baseline") and len(result["rows"]) > 1:
        lines.append(f"~ marks a difference from the {result['baseline']} row that is inside noise (its 95% "
                     "interval contains 0; a paired bootstrap over the same items where they are stored).")
    if any(r["values"].get(c) is not None and r.get("intervals", {}).get(c) is None
           for r in result["rows"] for c in result["columns"]):
        lines.append("n/a: no interval (per-item values not stored, or fewer than 2 items).")
    return lines


def table(result: dict, title: str) -> Table:
    """Rows x columns: the interval under the value and the mark beside it, so that eight columns
    fit in 140 characters; cells inside noise are dimmed as well as marked."""
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


def metric_table(result: dict, title: str, caption: str = "") -> Table:
    """One row of `result` as a metric per line: suite, metric, value with its interval, items."""
    t = Table(title=title, caption=caption)
    for col in ("suite", "metric", "value", "n"):
        t.add_column(col, justify="right" if col in ("value", "n") else "left")
    r = result["rows"][0]
    for name in result["columns"]:
        c = BY_NAME[name]
        t.add_row(c.suite, name, Text(cell(r, name)), str(c.n(r["results"][c.suite])))  # Text: "[..]" is not markup
    return t


def md_table(header: list[str], rows: list[list[str]], numeric_from: int | None = None) -> list[str]:
    """A markdown table; columns from numeric_from on are right-aligned."""
    align = ["---:" if numeric_from is not None and i >= numeric_from else "---" for i in range(len(header))]
    return ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"] + ["| " + " | ".join(r) + " |" for r in rows]


def markdown(result: dict) -> list[str]:
    """The markdown table and its legend (README tables are pasted from it)."""
    md = md_table(["row", *result["columns"]],
                  [[r["label"], *[cell(r, c) for c in result["columns"]]] for r in result["rows"]], numeric_from=1)
    for line in legend(result):  # a paragraph each
        md += ["", line]
    return md
