"""`isara compare` on the tiny recipe: the table's rows and columns, cached cells, what the ICL
baselines' prompts really contain, and the report's metrics plot from compare.json."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import isara_lite.compare as cmp
import isara_lite.evaluation.run as er
import isara_lite.evaluation.tables as tables
from isara_lite.errors import IsaraError
from isara_lite.loop import load_seeds
from isara_lite.models import load_card
from isara_lite.prompts import Renderer, get_format

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# slow: five evaluated cells plus SFT training; run by hand (pytest -m slow tests/test_compare.py)
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not DATA.is_dir(), reason=f"public evaluation data not found at {DATA}")]
BASELINES = ("pretrained", "sft-seeds", "icl-knn", "icl-random", "isara")


@pytest.fixture(scope="module")
def compared(finished, embedder, tmp_path_factory):
    """compare() once on a copy of the tiny run, recording every prompt the models were given, per row."""
    recipe, run, _ = finished
    root = tmp_path_factory.mktemp("compare")
    shutil.copytree(run, root / "run")
    calls, prompts, current = [], {}, [None]
    real_evaluate, real_backend = cmp.evaluate, er.create_backend

    def evaluate(**kw):
        calls.append(kw["label"])
        current[0] = kw["label"]
        return real_evaluate(**kw)

    def create_backend(*a, **kw):
        b = real_backend(*a, **kw)
        generate = b.generate

        def recording(ps, sampling):
            prompts.setdefault(current[0], []).extend(ps)
            return generate(ps, sampling)

        b.generate = recording
        return b

    args = dict(suites=["safety"], limit=2, data=DATA, out=root / "out", baselines=BASELINES,
                run_dir=root / "run", max_tokens=16, embedder=embedder)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cmp, "evaluate", evaluate)
        mp.setattr(er, "create_backend", create_backend)
        result = cmp.compare(recipe, **args)
        first_calls = list(calls)
        mtimes = {p: p.stat().st_mtime_ns for p in (root / "out" / "cells").rglob("results.json")}
        again = cmp.compare(recipe, **args)
        second_calls = calls[len(first_calls):]
    return dict(recipe=recipe, root=root, result=result, again=again, prompts=prompts, first_calls=first_calls,
                second_calls=second_calls, mtimes=mtimes, args=args)


def test_table_rows_columns_and_files(compared):
    res, out = compared["result"], compared["root"] / "out"
    labels = [r["label"] for r in res["rows"]]
    assert labels == ["pretrained", "SFT on seeds", "ICL-kNN", "ICL-random", "ISARA iter 1 (1x4)"]
    assert res["columns"] == [c[0] for c in tables.COLUMNS if c[1] == "safety"] and len(res["columns"]) == 4
    for r in res["rows"]:
        assert set(r["values"]) == set(res["columns"]) and all(0 <= v <= 1 for v in r["values"].values())
        s = r["results"]["safety"]
        assert s["harmful_rate"]["advbench"]["n"] == 2 and s["xstest_safe_refusal_rate"]["n"] == 2
    assert json.loads((out / "compare.json").read_text())["rows"] == json.loads(json.dumps(res["rows"]))
    md = (out / "compare.md").read_text()
    assert all(f"| {label} |" in md for label in labels) and "harmful AdvBench" in md
    assert "AdvBench 2, HH 2, XSTest 2 safe / 2 unsafe" in md
    train = json.loads((out / "sft-seeds" / "train.json").read_text())
    assert train["steps"] == compared["recipe"].training.max_steps == 3
    assert (out / "sft-seeds" / "adapter" / "adapter_model.safetensors").is_file()
    icl = json.loads((out / "cells" / "icl-knn" / "safety" / "results.json").read_text())
    assert icl["demonstrations"] == "icl-knn: 3 nearest seeds" and icl["adapter"] is None


def test_cells_are_cached(compared):
    assert compared["first_calls"] == [r["label"] for r in compared["result"]["rows"]]
    assert compared["second_calls"] == []  # nothing evaluated again
    now = {p: p.stat().st_mtime_ns for p in compared["mtimes"]}
    assert now == compared["mtimes"] and len(now) == 5
    assert compared["again"]["rows"] == compared["result"]["rows"]


def test_icl_knn_prompts_end_with_the_nearest_seed(compared, embedder):
    recipe = compared["recipe"]
    card = load_card(recipe.model)
    renderer = Renderer(get_format(card.chat_format), card.system)
    seeds = load_seeds(recipe, renderer)
    seed_vecs = embedder([s.prompt for s in seeds])
    rows = [json.loads(x) for x in
            (compared["root"] / "out" / "cells" / "icl-knn" / "safety" / "safety.jsonl").read_text().splitlines()]
    knn, rand, plain = (compared["prompts"][k] for k in ("ICL-kNN", "ICL-random", "pretrained"))
    assert len(rows) == len(knn) == len(rand) == 8
    k, differs = recipe.demonstrations, 0
    for row, p_knn, p_rand, p_plain in zip(rows, knn, rand, plain):
        q = row["prompt"]
        nearest = seeds[int(np.argmax(seed_vecs @ embedder([q])[0]))]  # brute force, not the usearch Pool
        tail = renderer.answer_prompt([nearest], q)[len(renderer.head):]
        assert p_knn.endswith(tail), (q, nearest.prompt)
        assert row["demos"][-1] == nearest.id and len(row["demos"]) == k
        assert p_knn.count(renderer.fmt.user_open) == k + 1 and p_rand.count(renderer.fmt.user_open) == k + 1
        assert p_plain == renderer.chat_prompt(q)
        differs += not p_rand.endswith(tail)
    assert differs > 0  # random demos are not the nearest ones


def test_changed_settings_and_unknown_baseline_are_refused(compared):
    args = {**compared["args"], "limit": 1}
    with pytest.raises(IsaraError, match=r"settings\.json: .*other settings \(limit\)"):
        cmp.compare(compared["recipe"], **args)
    with pytest.raises(IsaraError, match="unknown 'icl-nn'"):
        cmp.compare(compared["recipe"], **{**compared["args"], "baselines": ("icl-nn",)})
    # cells judged by another fit of the default judges are not mixed in
    pinned = compared["root"] / "out" / "settings.json"
    settings = json.loads(pinned.read_text())
    assert settings["judges"]["pairwise"].startswith("features ")
    with pytest.raises(IsaraError, match=r"other settings \(judges\)"):
        cmp._pin(pinned.parent, {**settings, "judges": {**settings["judges"], "refusal": "refusal 000000000000"}})


def test_report_plots_compare_json(compared, tmp_path):
    from PIL import Image

    from isara_lite.report import report

    md = report(compared["root"] / "run", compared["root"] / "out", tmp_path).read_text()
    assert "## Evaluation against the baselines" in md and "| ICL-kNN |" in md
    png = tmp_path / "metrics.png"
    with Image.open(png) as im:
        im.verify()
        assert im.size[0] > 600 and im.size[1] > 300


def test_a_changed_recipe_recomputes_only_the_rows_it_affects(compared, tmp_path, monkeypatch):
    """New training settings: the SFT row is retrained and re-evaluated; pretrained and ICL are reused."""
    import copy

    shutil.copytree(compared["root"] / "out", tmp_path / "out")
    recipe = copy.deepcopy(compared["recipe"])
    recipe.training.learning_rate *= 2
    calls = []
    real = cmp.evaluate
    monkeypatch.setattr(cmp, "evaluate", lambda **kw: calls.append(kw["label"]) or real(**kw))
    before = json.loads((tmp_path / "out" / "sft-seeds" / "train.json").read_text())
    res = cmp.compare(recipe, **{**compared["args"], "out": tmp_path / "out",
                                 "baselines": ("pretrained", "sft-seeds", "icl-knn")})
    assert calls == ["SFT on seeds"]
    after = json.loads((tmp_path / "out" / "sft-seeds" / "train.json").read_text())
    assert after["settings"]["training"]["learning_rate"] == 2 * before["settings"]["training"]["learning_rate"]
    old = {r["row"]: r for r in compared["result"]["rows"]}
    assert [r["values"] for r in res["rows"] if r["row"] != "sft-seeds"] == \
           [old[r]["values"] for r in ("pretrained", "icl-knn")]


def test_domains_grid(finished, embedder, tmp_path, monkeypatch):
    """--domains on two tiny recipes (safety and truthfulness seeds): the pretrained row, then one row
    per recipe's last adapter, every row on every suite asked for; cached on a second call."""
    from conftest import REPO, TINY

    from isara_lite.recipe import load_recipe

    recipe, run, _ = finished
    truth = load_recipe(REPO / "recipes" / "truthfulness.yaml", TINY)
    monkeypatch.chdir(tmp_path)
    shutil.copytree(run, tmp_path / "runs" / recipe.name)  # resumed as done; truthfulness is run here
    calls = []
    real = cmp.evaluate
    monkeypatch.setattr(cmp, "evaluate", lambda **kw: calls.append((kw["label"], kw["adapter"])) or real(**kw))
    args = dict(suites=["safety"], limit=1, data=DATA, max_tokens=8, embedder=embedder)
    res = cmp.compare_domains([recipe, truth], **args)
    assert [r["row"] for r in res["rows"]] == ["pretrained", f"trained-{recipe.name}", "trained-truthfulness"]
    assert [a for _, a in calls] == [None, Path("runs") / recipe.name / "iter_1" / "adapter",
                                     Path("runs") / "truthfulness" / "iter_1" / "adapter"]
    assert (tmp_path / "runs" / "truthfulness" / "iter_1" / "adapter" / "adapter_model.safetensors").is_file()
    assert res["domains"] is True and res["columns"] == [c[0] for c in tables.COLUMNS if c[1] == "safety"]
    out = tmp_path / "runs" / f"domains-{recipe.name}+truthfulness"
    assert json.loads((out / "compare.json").read_text())["rows"] == json.loads(json.dumps(res["rows"]))
    n = len(calls)
    assert cmp.compare_domains([recipe, truth], **args)["rows"] == res["rows"] and len(calls) == n
    with pytest.raises(IsaraError, match="at least two"):
        cmp.compare_domains([recipe], **args)


def test_every_row_is_compared_with_the_pretrained_rows_own_answers(finished, embedder, tmp_path, monkeypatch):
    """The instructions suite: the pretrained row's AlpacaEval answers are what the other rows are
    judged against, read from its cell, not generated again for each row."""
    recipe, _, _ = finished
    prompts = {}
    real_backend = er.create_backend

    def create_backend(*a, **kw):
        b = real_backend(*a, **kw)
        generate = b.generate
        b.generate = lambda ps, sampling: prompts.setdefault(len(prompts), ps) and generate(ps, sampling)
        return b

    monkeypatch.setattr(er, "create_backend", create_backend)
    out = tmp_path / "out"
    cmp.compare(recipe, suites=["instructions"], limit=2, data=DATA, out=out, baselines=("pretrained", "icl-random"),
                run_dir=tmp_path / "run", max_tokens=8, embedder=embedder)
    base = [json.loads(x) for x in (out / "cells" / "pretrained" / "instructions" / "instructions.jsonl").read_text().splitlines()]
    icl = [json.loads(x) for x in (out / "cells" / "icl-random" / "instructions" / "instructions.jsonl").read_text().splitlines()]
    assert [r["instruction"] for r in icl] == [r["instruction"] for r in base] and len(icl) == 2
    assert [r["pretrained"] for r in icl] == [r["output"] for r in base]
    assert len(prompts) == 2  # one batch for the pretrained row, one for ICL-random's own answers; none again
