"""The result tables (evaluation/tables.py) on hand-made cells (no model): intervals, which differences
from the pretrained row are marked as inside noise, and compare.json files from before the intervals."""

from __future__ import annotations

import json
import re
from pathlib import Path

from rich.console import Console

import isara_lite.compare as cmp
import isara_lite.evaluation.tables as tables
from isara_lite.files import atomic_write_json, write_jsonl
from isara_lite.stats import bootstrap_mean, wilson
from isara_lite.ui import UI

SAFETY, MC1, MC2, ROUGE, WIN = ("harmful AdvBench ↓", "TruthfulQA MC1 ↑", "TruthfulQA MC2 ↑", "ROUGE-L diff ↑",
                                "win rate vs pretrained ↑")


def safety(out: Path, row: str, harmful: int) -> dict:
    """A safety cell: `harmful` of 50 AdvBench prompts answered; the other sets fixed."""
    sets = {"advbench": [i >= harmful for i in range(50)], "hh_harmless": [i >= 10 for i in range(20)],
            "xstest_safe": [i < 1 for i in range(20)], "xstest_unsafe": [i < 3 for i in range(10)]}
    rows = [{"set": s, "category": s, "prompt": f"{s} {i}", "response": "", "refused": v}
            for s, vs in sets.items() for i, v in enumerate(vs)]

    def rate(s, refused):
        return {"rate": sum(v == refused for v in sets[s]) / len(sets[s]), "n": len(sets[s])}

    summary = {"judge": "refusal", "harmful_rate": {"advbench": rate("advbench", False),
                                                    "hh_harmless": rate("hh_harmless", False)},
               "xstest_safe_refusal_rate": rate("xstest_safe", True),
               "xstest_unsafe_refusal_rate": rate("xstest_unsafe", True)}
    return _cell(out, row, "safety", summary, rows)


def truthfulness(out: Path, row: str, mc1: list[float], mc2: list[float], rouge: list[float]) -> dict:
    rows = [{"set": "mc", "question": f"q{i}", "mc1": a, "mc2": b} for i, (a, b) in enumerate(zip(mc1, mc2))]
    rows += [{"set": "generation", "question": f"g{i}", "rougeL_diff": r} for i, r in enumerate(rouge)]
    summary = {"mc1": sum(mc1) / len(mc1), "mc2": sum(mc2) / len(mc2), "n_mc": len(mc1),
               "generation": {"rougeL_diff": sum(rouge) / len(rouge)}, "n_generation": len(rouge)}
    return _cell(out, row, "truthfulness", summary, rows)


def instructions(out: Path, row: str, prefs: list[float]) -> dict:
    rows = [{"instruction": f"do {i}", "preference": p} for i, p in enumerate(prefs)]
    summary = {"judge": "reference", "win_rate_vs_pretrained": sum(prefs) / len(prefs),
               "wins": prefs.count(1.0), "ties": prefs.count(0.5), "losses": prefs.count(0.0), "n": len(prefs)}
    return _cell(out, row, "instructions", summary, rows)


def _cell(out, row, suite, summary, rows) -> dict:
    d = cmp.cell_dir(out, row, suite)
    atomic_write_json(d / "results.json", {"suites": {suite: summary}})
    write_jsonl(d / f"{suite}.jsonl", rows)
    return summary


def three_rows(out: Path):
    """pretrained; ISARA: clearly safer, 6 more MC1 answers right (none fewer), MC2 up on every
    question, ROUGE-L diff +0.1 on average but up and down by about 1 per question, winning;
    ICL-random: one prompt, one MC1 answer and one comparison different from pretrained."""
    base_mc1 = [1.0] * 10 + [0.0] * 20
    mc2 = [0.2 + 0.02 * i for i in range(30)]
    rouge = [float(i % 7 - 3) for i in range(20)]
    rows = [
        ("pretrained", "pretrained", {
            "safety": safety(out, "pretrained", 45),
            "truthfulness": truthfulness(out, "pretrained", base_mc1, mc2, rouge),
            "instructions": instructions(out, "pretrained", [0.5] * 40)}),
        ("icl-random", "ICL-random", {
            "safety": safety(out, "icl-random", 44),
            "truthfulness": truthfulness(out, "icl-random", [1.0] * 11 + [0.0] * 19, mc2, rouge),
            "instructions": instructions(out, "icl-random", [1.0] + [0.5] * 39)}),
        ("isara-1", "ISARA iter 1 (1x4)", {
            "safety": safety(out, "isara-1", 5),
            "truthfulness": truthfulness(out, "isara-1", [1.0] * 16 + [0.0] * 14, [m + 0.3 for m in mc2],
                                         [r + (1.0 if i % 2 else -0.8) for i, r in enumerate(rouge)]),
            "instructions": instructions(out, "isara-1", [1.0] * 30 + [0.5] * 5 + [0.0] * 5)}),
    ]
    return rows


def test_intervals_and_noise_marks(tmp_path):
    rows = three_rows(tmp_path)
    res = tables.table_data(rows, ["safety", "truthfulness", "instructions"], cmp.cell_rows(tmp_path))
    by = {r["row"]: r for r in res["rows"]}
    assert res["baseline"] == "pretrained"
    assert by["pretrained"]["intervals"][SAFETY] == wilson(45, 50)
    assert by["isara-1"]["intervals"][MC1] == wilson(16, 30)
    assert by["pretrained"]["intervals"][MC2] == bootstrap_mean([0.2 + 0.02 * i for i in range(30)])
    assert by["pretrained"]["intervals"][WIN] == [0.5, 0.5]  # against itself: every comparison a tie
    assert set(by["pretrained"]["noise"].values()) == {None}  # the baseline is not tested against itself
    isara, icl = by["isara-1"]["noise"], by["icl-random"]["noise"]
    # MC1 is clear only because the items are paired: see test_pairing_needs_the_same_items
    assert [isara[c] for c in (SAFETY, MC1, MC2, WIN)] == [False] * 4
    assert isara[ROUGE] is True
    assert [icl[c] for c in (SAFETY, MC1, MC2, ROUGE, WIN)] == [True] * 5
    assert tables.cell(by["isara-1"], SAFETY) == "10.0% [4.3-21.4]"
    assert tables.cell(by["icl-random"], SAFETY) == "88.0% [76.2-94.4]~"
    lo, hi = bootstrap_mean([float(i % 7 - 3) for i in range(20)])
    assert tables.cell(by["pretrained"], ROUGE) == f"-0.15 [{lo:.2f}, {hi:.2f}]" and lo < -0.15 < hi


def test_markdown_and_terminal_output(tmp_path):
    rows = three_rows(tmp_path)
    res = tables.table_data(rows, ["safety"], cmp.cell_rows(tmp_path))
    ui = UI(Console(record=True, width=200))
    cmp._write(tmp_path, res | {"max_tokens": 200}, "isara compare: t", ui)
    md = (tmp_path / "compare.md").read_text()
    assert "| pretrained | 90.0% [78.6-95.7] | 50.0% [29.9-70.1] | 5.0% [0.9-23.6] | 30.0% [10.8-60.3] |" in md
    assert "| ICL-random | 88.0% [76.2-94.4]~ | 50.0% [29.9-70.1]~ | 5.0% [0.9-23.6]~ | 30.0% [10.8-60.3]~ |" in md
    assert "| ISARA iter 1 (1x4) | 10.0% [4.3-21.4] | 50.0% [29.9-70.1]~ |" in md
    assert "\n\n~ marks a difference from the pretrained row that is inside noise" in md
    assert "n/a" not in md
    text = ui.console.export_text()
    # the terminal: the mark beside the value, the interval under it
    assert re.search(r"│ *88\.0%~│", text) and re.search(r"│ *\[76\.2-94\.4\] │", text)
    assert re.search(r"│ *10\.0% │", text)  # no mark: a space, so the digits stay aligned with the marked ones
    assert "~ marks a difference" in text
    saved = json.loads((tmp_path / "compare.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(res["rows"])) and saved["baseline"] == "pretrained"


def test_pairing_needs_the_same_items(tmp_path):
    """The same numbers with the trained row's MC1 items under other keys: no pairing, so Newcombe's
    unpaired interval, under which 16/30 against 10/30 is inside noise."""
    rows = three_rows(tmp_path)
    path = cmp.cell_dir(tmp_path, "isara-1", "truthfulness") / "truthfulness.jsonl"
    items = [json.loads(x) for x in path.read_text().splitlines()]
    write_jsonl(path, [{**r, "question": "other " + r["question"]} for r in items])
    res = tables.table_data(rows, ["truthfulness"], cmp.cell_rows(tmp_path))
    isara = {r["row"]: r for r in res["rows"]}["isara-1"]
    assert isara["noise"][MC1] is True and isara["intervals"][MC1] == wilson(16, 30)


def test_compare_json_from_before_the_per_item_rows(tmp_path):
    """Only summaries: rates get Wilson from rate and n, the win rate a bootstrap over its counts;
    MC2 and ROUGE-L say there is no interval; rates are tested with Newcombe."""
    rows = three_rows(tmp_path)
    res = tables.table_data(rows, ["safety", "truthfulness", "instructions"], lambda row, suite: None)
    by = {r["row"]: r for r in res["rows"]}
    assert by["isara-1"]["intervals"][SAFETY] == wilson(5, 50)
    assert by["isara-1"]["intervals"][WIN] == bootstrap_mean([1.0] * 30 + [0.5] * 5 + [0.0] * 5)
    assert by["isara-1"]["intervals"][MC2] is None and by["isara-1"]["noise"][MC2] is None
    assert by["isara-1"]["noise"][SAFETY] is False and by["icl-random"]["noise"][SAFETY] is True
    assert by["isara-1"]["noise"][MC1] is True  # unpaired: see test_pairing_needs_the_same_items
    assert tables.cell(by["isara-1"], MC2) == "0.790 [n/a]"
    assert any(line.startswith("n/a: no interval") for line in tables.legend(res))


def test_no_pretrained_row_no_marks(tmp_path):
    rows = three_rows(tmp_path)[1:]
    res = tables.table_data(rows, ["safety"], cmp.cell_rows(tmp_path))
    assert res["baseline"] is None and all(v is None for r in res["rows"] for v in r["noise"].values())
    assert not any("~" in line for line in tables.legend(res))
