"""The run directory (isara_lite.rundir): which iterations are finished, which adapter a command
picks, and when a stage on disk counts as done. Files only, no model."""

import json

import pytest
import yaml

from isara_lite.errors import IsaraError
from isara_lite.recipe import load_recipe
from isara_lite.rundir import RunDir, prepare_run, run_adapter, stage_done


def _run(tmp_path, trained=(1, 2), finished=(0, 1, 2)):
    root = tmp_path / "run"
    root.mkdir()
    (root / "recipe.yaml").write_text(yaml.safe_dump({"model": "smollm2-135m-instruct"}))
    for t in finished:
        (root / f"iter_{t}").mkdir(exist_ok=True)
        (root / f"iter_{t}" / "metrics.json").write_text("{}")
    for t in trained:
        (root / f"iter_{t}" / "adapter").mkdir(parents=True, exist_ok=True)
    (root / "iter_x").mkdir()  # not an iteration: ignored
    return root


def test_finished_trained_and_the_adapter_a_command_picks(tmp_path):
    root = _run(tmp_path)
    rd = RunDir(root)
    assert rd.finished() == [0, 1, 2] and rd.trained() == [1, 2]
    assert run_adapter(root) == ("smollm2-135m-instruct", root / "iter_2" / "adapter")  # the last one
    assert run_adapter(root, 1)[1] == root / "iter_1" / "adapter"
    (root / "best.json").write_text(json.dumps({"iteration": 1}))
    assert rd.pick() == 1  # selection.py's choice wins over the last one
    (root / "best.json").write_text(json.dumps({"iteration": 5}))
    assert rd.pick() == 2  # a best.json naming no adapter is ignored
    with pytest.raises(IsaraError, match="iteration 3 has no adapter"):
        rd.pick(3)


def test_not_a_run_and_a_run_with_nothing_trained(tmp_path):
    with pytest.raises(IsaraError, match="not a run directory"):
        RunDir(tmp_path).pick()
    with pytest.raises(IsaraError, match="no finished iteration with an adapter"):
        RunDir(_run(tmp_path, trained=())).pick()


def test_a_stage_is_done_only_with_its_record_and_its_weights(tmp_path):
    record, adapter = tmp_path / "train.json", tmp_path / "adapter"
    adapter.mkdir()
    assert not stage_done(record, adapter)
    (adapter / "adapter_model.safetensors").write_bytes(b"x")
    assert not stage_done(record, adapter)  # weights without the record: killed before the record was written
    record.write_text("{}")
    assert stage_done(record, adapter)


def test_resume_refuses_a_changed_recipe_unless_forced(tmp_path, repo):
    recipe = load_recipe(repo / "recipes" / "quickstart.yaml")
    out = tmp_path / "r"
    run = prepare_run(recipe, out, resume=False)
    run.lock.release()
    (out / "iter_0").mkdir()
    (out / "iter_0" / "metrics.json").write_text("{}")
    with pytest.raises(IsaraError, match="already holds a run"):
        prepare_run(recipe, out, resume=False)
    changed = load_recipe(repo / "recipes" / "quickstart.yaml", ["candidates=8"])
    with pytest.raises(IsaraError, match=r"recipe changed since this run started \(candidates\)"):
        prepare_run(changed, out, resume=True)
    run = prepare_run(changed, out, resume=True, force=True)
    run.lock.release()
    assert run.changed == ["candidates"]
    assert yaml.safe_load((out / "recipe.yaml").read_text())["candidates"] == 8
