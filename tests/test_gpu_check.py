"""scripts/gpu_check.py on the CPU with the torch backend, so the GPU check cannot rot unseen."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_check_passes_on_the_cpu_with_torch():
    r = subprocess.run([sys.executable, "scripts/gpu_check.py", "--backends", "torch", "--device", "cpu"],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    report = json.loads(r.stdout[r.stdout.index("\n{") + 1:])
    assert report["checks"] >= 10 and report["failed"] == 0
    assert any(c["check"].startswith("first loss is the answer-only loss") for c in report["results"])
