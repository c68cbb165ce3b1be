"""`isara report` on the tiny run: report.md with the run's real numbers, and readable PNGs."""

import json

import pytest
from PIL import Image

import isara_lite.evaluation.tables as tables
from isara_lite.errors import IsaraError
from isara_lite.files import atomic_write_json, read_jsonl_tolerant
from isara_lite.filters import FILTERS
from isara_lite.report import report
from isara_lite.stats import wilson


def test_report_of_a_finished_run(finished, tmp_path):
    _, run, _ = finished
    md = report(run, out=tmp_path).read_text()
    m = json.loads((run / "iter_1" / "metrics.json").read_text())
    kept = len(read_jsonl_tolerant(run / "iter_1" / "kept.jsonl"))
    assert m["kept"] == kept
    removed = " | ".join(str(m["removed"][f]) for f in FILTERS)
    assert f"| 1 | {m['generated']} | {kept} | {removed} | {m['train_steps']} |" in md
    c = m["check"]
    lo, hi = wilson(round(c["harmful_refused"] * c["n_harmful"]), c["n_harmful"])
    assert c["harmful_refused_ci"] == [lo, hi]
    assert f"| iteration 1 | {c['harmful_refused']:.0%} [{100 * lo:.0f}-{100 * hi:.0f}] of {c['n_harmful']} |" in md
    assert "No compare.json" in md  # the tiny run was never compared
    for name in ("samples.png", "check.png", "loss.png"):
        assert f"]({name})" in md
        with Image.open(tmp_path / name) as im:
            im.verify()
            assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 200
    assert not (tmp_path / "metrics.png").exists()


def test_report_errors_name_the_file(tmp_path):
    with pytest.raises(IsaraError, match="not a run directory"):
        report(tmp_path)
    (tmp_path / "recipe.yaml").write_text("name: x\n")
    with pytest.raises(IsaraError, match=r"no finished iteration"):
        report(tmp_path)
    (tmp_path / "iter_0").mkdir()
    (tmp_path / "iter_0" / "metrics.json").write_text("{broken")
    with pytest.raises(IsaraError, match=r"iter_0/metrics\.json: unreadable"):
        report(tmp_path)


def test_report_of_files_from_before_the_intervals(tmp_path):
    """metrics.json and compare.json as written before the intervals: the check's intervals come from
    its rates and n, compare's from the cells' per-item rows (SUITE.jsonl), noise marks included."""
    from test_tables import three_rows

    run = tmp_path / "run"
    (run / "iter_0").mkdir(parents=True)
    (run / "recipe.yaml").write_text("name: old\n")
    atomic_write_json(run / "iter_0" / "metrics.json", {"iteration": 0, "check": {
        "model": "base", "harmful_refused": 0.4583, "benign_answered": 0.9, "n_harmful": 48, "n_benign": 50}})
    rows = three_rows(run / "compare")
    old = tables.table_data(rows, ["safety", "truthfulness", "instructions"], lambda row, suite: None)
    for r in old["rows"]:
        del r["intervals"], r["noise"]
    del old["baseline"]
    atomic_write_json(run / "compare" / "compare.json", old | {"recipe": "old", "max_tokens": 200})
    md = report(run, out=tmp_path / "report").read_text()
    assert "| base | 46% [33-60] of 48 | 90% [79-96] of 50 |" in md
    assert "| ISARA iter 1 (1x4) | 10.0% [4.3-21.4] | 50.0% [29.9-70.1]~ |" in md
    assert "| ICL-random | 88.0% [76.2-94.4]~ |" in md
    # MC1 16/30 against 10/30: clear only paired, so only with the cells' per-item rows
    assert " | 0.533 [0.361-0.698] | " in md
    assert "~ marks a difference from the pretrained row" in md and "n/a" not in md  # MC2, ROUGE-L from the rows
    with Image.open(tmp_path / "report" / "metrics.png") as im:
        im.verify()
