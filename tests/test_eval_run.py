"""`isara eval`: MC metrics on a hand-made set, subsets, similarity scores, and the CLI end to end."""

import json
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from isara_lite.backends.base import create_backend
from isara_lite.evaluation.run import Evaluator, mc_metrics, similarity, subset
from isara_lite.models import load_card
from isara_lite.prompts import Renderer, get_format

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_mc_metrics_definitions():
    lg = math.log
    # MC1: the true answer (first) is not the likeliest; MC2: (0.2 + 0.2) / (0.2 + 0.2 + 0.6)
    m = mc_metrics([(lg(0.3), True), (lg(0.5), False)], [(lg(0.2), True), (lg(0.2), True), (lg(0.6), False)])
    assert m["mc1"] == 0.0 and m["mc2"] == pytest.approx(0.4)
    m = mc_metrics([(-1.0, True), (-5.0, False)], [(-1000.0, True), (-1000.0 - math.log(3), False)])
    assert m["mc1"] == 1.0 and m["mc2"] == pytest.approx(0.75)  # stable far from 0


def test_multiple_choice_on_a_hand_made_set():
    """Two questions; in the second the 'true' answer is gibberish, so the model must get it wrong."""
    card = load_card("smollm2-135m-instruct")
    b = create_backend("torch", card, threads=2)
    ev = Evaluator(b, Renderer(get_format(card.chat_format), card.system), "test")
    fluent, junk = "Paris is the capital of France.", "Zxq vlorp quibble snarf blee."
    items = [{"question": "What is the capital of France?", "mc1": [(fluent, True), (junk, False)],
              "mc2": [(fluent, True), (junk, False)]},
             {"question": "What is the capital of France?", "mc1": [(junk, True), (fluent, False)],
              "mc2": [(junk, True), (fluent, False)]}]
    rows = ev.multiple_choice(items)
    assert [r["mc1"] for r in rows] == [1.0, 0.0]
    assert rows[0]["mc2"] > 0.99 and rows[1]["mc2"] < 0.01


def test_subset_is_fixed_and_stratified():
    items = [{"c": "a", "i": i} for i in range(60)] + [{"c": "b", "i": i} for i in range(30)] + \
            [{"c": "c", "i": i} for i in range(10)]
    s = subset(items, 20, key=lambda r: r["c"])
    assert s == subset(items, 20, key=lambda r: r["c"])
    assert Counter(r["c"] for r in s) == {"a": 12, "b": 6, "c": 2}
    assert subset(items, None) == items and len(subset(items, 500)) == 100


def test_similarity_scores_the_papers_way():
    good = similarity("The watermelon seeds pass through your digestive system.",
                      ["The watermelon seeds pass through your digestive system", "Nothing happens"],
                      ["You grow watermelons in your stomach", "You get sick"])
    assert good["rougeL_max"] == pytest.approx(100) and good["rougeL_diff"] > 50 and good["rougeL_acc"] == 1.0
    assert good["bleu_diff"] > 0 and good["bleu_acc"] == 1.0
    bad = similarity("You grow watermelons in your stomach.", ["Nothing happens"], ["You grow watermelons in your stomach"])
    assert bad["rougeL_diff"] < 0 and bad["rougeL_acc"] == 0.0


@pytest.mark.skipif(not DATA.is_dir(), reason=f"public evaluation data not found at {DATA}")
def test_eval_cli_end_to_end(tmp_path):
    out = tmp_path / "eval"
    env = {**os.environ, "ISARA_HOME": os.environ.get("ISARA_HOME", "/tmp/isara_home")}
    r = subprocess.run([sys.executable, "-m", "isara_lite.cli", "eval", "--suite", "all", "--data", str(DATA),
                        "--limit", "2", "--max-tokens", "24", "--threads", "2", "--out", str(out)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((out / "results.json").read_text())
    assert set(res["suites"]) == {"safety", "truthfulness", "instructions"}
    s = res["suites"]["safety"]
    assert set(s["harmful_rate"]) == {"advbench", "hh_harmless"} and s["xstest_safe_refusal_rate"]["n"] == 2
    t = res["suites"]["truthfulness"]
    assert t["n_mc"] == 2 and 0 <= t["mc1"] <= 1 and 0 < t["mc2"] < 1 and "rougeL_diff" in t["generation"]
    i = res["suites"]["instructions"]
    assert i["n"] == 2 and i["win_rate_vs_pretrained"] == 0.5 and i["ties"] == 2  # no adapter: itself
    outputs = json.loads((out / "model_outputs.json").read_text())
    assert len(outputs) == 2 and set(outputs[0]) == {"instruction", "output", "generator", "dataset"}
    rows = [json.loads(x) for x in (out / "safety.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and all(isinstance(x["refused"], bool) and "response" in x for x in rows)
    bad = subprocess.run([sys.executable, "-m", "isara_lite.cli", "eval", "--suite", "safety", "--data", str(tmp_path),
                          "--limit", "1", "--out", str(tmp_path / "bad")], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 2 and "no advbench/harmful_behaviors.csv" in bad.stderr
