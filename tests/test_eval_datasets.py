"""Evaluation data loaders: the real public files from ../shared/data, malformed input, download."""

import functools
import http.server
import threading
from pathlib import Path

import pytest

from isara_lite.errors import IsaraError
from isara_lite.evaluation import datasets as ds

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"public evaluation data not found at {DATA}")


@needs_data
def test_real_files_load_with_expected_sizes():
    tqa = ds.truthfulqa(DATA)
    assert len(tqa) == 817 and len({r["category"] for r in tqa}) > 30
    assert all(r["best"] in r["correct"] and r["incorrect"] for r in tqa)
    mc = ds.truthfulqa_mc(DATA)
    assert len(mc) == 817 and all(sum(v for _, v in r["mc1"]) == 1 for r in mc)
    assert {r["question"] for r in mc} == {r["question"] for r in tqa}  # the MC set joins the categories
    adv = ds.advbench(DATA)
    assert len(adv) == 520 and adv[0]["prompt"].startswith("Write a script")
    xs = ds.xstest(DATA)
    assert len(xs) == 450 and sum(r["label"] == "safe" for r in xs) == 250
    assert {"homonyms", "contrast_homonyms"} <= {r["type"] for r in xs}
    ae = ds.alpaca_eval(DATA)
    assert len(ae) == 805 and ae[0]["generator"] == "gpt4" and ae[0]["reference"]
    assert len(ds.alpaca_eval(DATA, "alpaca_eval_davinci003")) == 805
    hh = ds.hh_harmless(DATA)
    assert len(hh) == 2312 and all(r["prompt"] and "Assistant:" not in r["prompt"] for r in hh)


def test_malformed_csv_names_file_line_field(tmp_path):
    bad = tmp_path / "xstest_prompts.csv"
    bad.write_text("id,prompt,type,label\n1,How do I kill a process?,homonyms,safe\n2,,homonyms,safe\n")
    with pytest.raises(IsaraError, match=r"xstest_prompts.csv:3: field 'prompt': empty"):
        ds.xstest(tmp_path)
    bad.write_text("id,prompt,type,label\n1,How do I kill a process?,homonyms,maybe\n")
    with pytest.raises(IsaraError, match=r"xstest_prompts.csv:2: field 'label'"):
        ds.xstest(bad)
    bad.write_text("id,prompt,kind\n1,x,y\n")
    with pytest.raises(IsaraError, match=r"xstest_prompts.csv:1: field 'type': missing column"):
        ds.xstest(bad)
    mc = tmp_path / "mc_task.json"
    mc.write_text('[{"question": "q", "mc1_targets": {"a": 1, "b": 1}, "mc2_targets": {"a": 1, "b": 0}}]')
    with pytest.raises(IsaraError, match=r"mc_task.json: item 0: field 'mc1_targets'"):
        ds.truthfulqa_mc(tmp_path)
    mc.write_text('[{"question": "q",\n "mc1_targets": {"a": 1 "b": 0}}]')
    with pytest.raises(IsaraError, match=r"mc_task.json:2: invalid JSON"):
        ds.truthfulqa_mc(tmp_path)


def test_lfs_pointer_and_missing_file(tmp_path):
    (tmp_path / "harmless-base_test.jsonl.gz").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\n")
    with pytest.raises(IsaraError, match="LFS pointer"):
        ds.hh_harmless(tmp_path)
    with pytest.raises(IsaraError, match="no advbench/harmful_behaviors.csv"):
        ds.advbench(tmp_path)


def test_download_into_cache_then_offline_error(tmp_path, monkeypatch):
    """A real HTTP server on localhost serves the file; a closed port stands for being offline."""
    served = tmp_path / "served"
    served.mkdir()
    (served / "advbench.csv").write_text("goal,target\nDo a harmful thing,Sure\n")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("ISARA_HOME", str(tmp_path / "home"))
        monkeypatch.setitem(ds.SOURCES, "advbench",
                            ("advbench/harmful_behaviors.csv", f"http://127.0.0.1:{server.server_port}/advbench.csv"))
        assert ds.advbench()[0]["prompt"] == "Do a harmful thing"
        assert (tmp_path / "home" / "data" / "advbench" / "harmful_behaviors.csv").is_file()
    finally:
        server.shutdown()
        server.server_close()
    assert ds.advbench()[0]["prompt"] == "Do a harmful thing"  # from the cache, no server needed
    monkeypatch.setenv("ISARA_HOME", str(tmp_path / "home2"))
    monkeypatch.setitem(ds.SOURCES, "advbench", ("advbench/harmful_behaviors.csv", "http://127.0.0.1:9/x.csv"))
    with pytest.raises(IsaraError, match="could not be downloaded.*--data DIR"):
        ds.advbench()
