"""Stopping a run and going on: Ctrl-C, --force, a full disk, and determinism of what a resumed run makes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.numpy import load_file

from isara_lite.errors import IsaraError
from isara_lite.files import read_jsonl_tolerant, writing_dir
from isara_lite.loop import align
from isara_lite.recipe import load_recipe

from conftest import TINY, isara

ROOT = Path(__file__).resolve().parent.parent
ISARA = Path(sys.executable).parent / "isara"
SETS = sum((["--set", s] for s in TINY), [])


def same_run(a: Path, b: Path) -> None:
    for name in ("candidates.jsonl", "kept.jsonl", "check.jsonl"):
        assert read_jsonl_tolerant(a / "iter_1" / name) == read_jsonl_tolerant(b / "iter_1" / name), name
    wa, wb = (load_file(str(p / "iter_1/adapter/adapter_model.safetensors")) for p in (a, b))
    assert wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)


def test_ctrl_c_stops_cleanly_and_the_resumed_run_equals_an_uninterrupted_one(finished, tmp_path):
    _, reference, _ = finished
    out = tmp_path / "run"
    cmd = [str(ISARA), "align", str(ROOT / "recipes" / "quickstart.yaml"), *SETS, "--out", str(out)]
    # a shell starts background jobs with SIGINT ignored and children inherit that; Ctrl-C reaches
    # a foreground run, so give the child the default disposition whoever started pytest
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 600
    while not (out / "iter_1" / "candidates.jsonl").is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("interrupted: finished work is saved")
    assert not (out / "summary.json").exists()

    done = isara(*cmd[1:], "--resume")  # the same command, in this process (the script's start-up is tested above)
    assert done.returncode == 0, done.stderr[-2000:]
    same_run(reference, out)  # same seed, backend and threads: the same candidates, kept pairs and adapter


def test_force_continues_with_a_changed_recipe_and_says_what_changed(finished, tmp_path):
    import shutil

    recipe, reference, _ = finished
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    changed = load_recipe(ROOT / "recipes" / "quickstart.yaml", [*TINY, "check.max_tokens=17"])
    with pytest.raises(IsaraError, match=r"check\.max_tokens.*--force"):
        align(changed, out, resume=True)
    align(changed, out, resume=True, force=True)  # everything is done: nothing is redone
    assert "--force: continuing with a changed recipe (check.max_tokens)" in (out / "log.txt").read_text()
    assert load_recipe(out / "recipe.yaml").check.max_tokens == 17  # the run now records the recipe it went on with


def test_a_full_disk_leaves_the_old_adapter_and_no_temp_files(tmp_path):
    """A real ENOSPC from safetensors (a tmpfs too small for the file); needs root to mount one."""
    import numpy as np
    from safetensors.numpy import save_file

    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        final = disk / "adapter"
        with writing_dir(final) as tmp:
            save_file({"w": np.zeros(8, np.float32)}, str(tmp / "a.safetensors"))
        with pytest.raises(OSError) as e:
            with writing_dir(final) as tmp:
                save_file({"w": np.zeros(1 << 16, np.float32)}, str(tmp / "a.safetensors"))  # 256 KB
        assert e.value.errno == 28 and str(final) in str(e.value)
        assert sorted(p.name for p in disk.iterdir()) == ["adapter"]  # no temp dir left filling the disk
        assert load_file(str(final / "a.safetensors"))["w"].shape == (8,)  # the old one intact
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_a_full_disk_is_a_one_line_error(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8k", "tmpfs", str(disk)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:  # the 24 KB seeds.jsonl copy does not fit
        proc = subprocess.run([str(ISARA), "align", str(ROOT / "recipes" / "quickstart.yaml"), *SETS,
                               "--out", str(disk / "run")], capture_output=True, text=True, timeout=300,
                              env={**os.environ})
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("error: No space left on device") and "free some space, then --resume" in last
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_a_removed_check_is_answered_again_by_its_own_iterations_model(finished, tmp_path):
    """Deleting a finished iteration's check.jsonl (after changing the check prompts, say) and resuming
    answers it again with that iteration's adapter, not with whatever model the resume loaded last."""
    import json
    import shutil

    recipe, reference, _ = finished
    before = read_jsonl_tolerant(reference / "iter_1" / "check.jsonl")
    assert before != read_jsonl_tolerant(reference / "iter_0" / "check.jsonl")  # else this could not tell
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    (out / "iter_1" / "check.jsonl").unlink()
    metrics = json.loads((out / "iter_1" / "metrics.json").read_text())
    metrics["check"] = {"stale": True}  # as if written for other prompts
    (out / "iter_1" / "metrics.json").write_text(json.dumps(metrics))
    summary = align(recipe, out, resume=True)
    assert read_jsonl_tolerant(out / "iter_1" / "check.jsonl") == before
    reread = json.loads((reference / "iter_1" / "metrics.json").read_text())["check"]
    assert json.loads((out / "iter_1" / "metrics.json").read_text())["check"] == reread  # metrics follow the answers
    assert summary["iterations"][0]["check"] == reread


def test_resume_names_the_keys_of_a_recipe_saved_by_another_version(finished, tmp_path):
    """Keys added since a run started count as their defaults; a key since removed is named."""
    import shutil

    import yaml

    recipe, reference, _ = finished
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    saved = yaml.safe_load((out / "recipe.yaml").read_text())
    del saved["preference"]  # as written before the preference step existed
    (out / "recipe.yaml").write_text(yaml.safe_dump(saved))
    align(recipe, out, resume=True)  # no --force needed
    saved["gone_key"] = 1
    (out / "recipe.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(IsaraError, match=r"recipe changed since this run started \(gone_key"):
        align(recipe, out, resume=True)
