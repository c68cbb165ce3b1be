"""The kill test (benchmarks/kill.py) as a slow test: 20 SIGKILLs at random moments and in each stage,
resumed each time; the finished run must equal an unkilled one. About 10 minutes on 2 idle cores."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))


@pytest.mark.slow
def test_twenty_kills_lose_nothing(tmp_path):
    from kill import kill_test

    report = kill_test(20, backend="auto", seed=0, workdir=tmp_path)
    assert report["kills"] == 20
    assert report["problems"] == []
    assert {"generation", "training", "adapter saving", "check"} <= set(report["by_stage"])
