"""`isara report` on the tiny run: report.md with the run's real numbers, and readable PNGs."""

import json

import pytest
from PIL import Image

from isara_lite.errors import IsaraError
from isara_lite.files import read_jsonl_tolerant
from isara_lite.filters import FILTERS
from isara_lite.report import report


def test_report_of_a_finished_run(finished, tmp_path):
    _, run, _ = finished
    md = report(run, out=tmp_path).read_text()
    m = json.loads((run / "iter_1" / "metrics.json").read_text())
    kept = len(read_jsonl_tolerant(run / "iter_1" / "kept.jsonl"))
    assert m["kept"] == kept
    removed = " | ".join(str(m["removed"][f]) for f in FILTERS)
    assert f"| 1 | {m['generated']} | {kept} | {removed} | {m['train_steps']} |" in md
    c = m["check"]
    assert f"| iteration 1 | {c['harmful_refused']:.0%} of {c['n_harmful']} |" in md
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
