"""Kill test: SIGKILL `isara align` at many moments, resume each time, compare with an unkilled run.

    python benchmarks/kill.py [--kills 20] [--backend auto|llamacpp|torch] [--seed 0] [--out DIR]

One reference run goes through uninterrupted. A second run, same recipe, seed, backend and thread
count, is killed again and again: some kills at a random delay after start, the rest aimed at a stage
seen on disk (generation + filtering, training, adapter saving, the check). After the last kill it is
resumed to the end. Every JSONL line must parse, no candidate id may appear twice, and candidates,
kept samples, checks and adapter weights must equal the reference's. Prints JSON and a table.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Small enough to take about a minute, big enough to have several batches, two iterations and a check.
SMALL = [
    "iterations=2", "candidates=12", "demonstrations=3", "context_tokens=600", "generation.batch_size=4",
    "generation.question_max_tokens=24", "generation.answer_max_tokens=32", "training.max_steps=4",
    "training.batch_size=4", "check.limit=3", "check.max_tokens=16", "threads=2",
]
TARGETS = ("random", "generation", "training", "adapter saving", "check")


def command(out: Path, backend: str, seed: int, resume: bool) -> list[str]:
    sets = [*SMALL, f"backend={backend}", f"seed={seed}"]
    return [sys.executable, "-m", "isara_lite.cli", "align", str(ROOT / "recipes" / "quickstart.yaml"),
            "--out", str(out), *sum((["--set", s] for s in sets), []), *(["--resume"] if resume else [])]


def stage(out: Path) -> str:
    """What the run is doing, read off its directory (the files each stage leaves behind)."""
    iters = sorted((p for p in out.glob("iter_*") if p.is_dir()), key=lambda p: int(p.name.split("_")[1]))
    if not iters or not (out / "iter_0" / "metrics.json").is_file():
        return "startup / base check"
    it = iters[-1]
    if (it / "metrics.json").is_file():
        return "done" if (out / "summary.json").is_file() else "between iterations"
    if any(it.glob(".adapter.*")) or (it / "adapter" / "adapter.gguf.tmp").exists():
        return "adapter saving"
    if (it / "train.json").is_file():
        return "check"
    if (it / "adapter").is_dir():
        return "adapter saving"
    if (it / "kept.jsonl").is_file():
        return "training"
    return "generation"


def run_once(cmd, out: Path, target: str, rng: random.Random, log) -> tuple[bool, str]:
    """Start align; kill it at the target moment. (killed, stage at the kill)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=log, start_new_session=True)
    deadline = time.time() + rng.uniform(1.0, 25.0) if target == "random" else None
    settle = None
    while proc.poll() is None:
        now = stage(out)
        if deadline is not None:
            fire = time.time() >= deadline
        elif target == "adapter saving":
            fire = now == target
        else:  # let the stage run a random while, so kills land inside it, not at its edge
            if now == target and settle is None:
                settle = time.time() + rng.uniform(0.0, 3.0)
            fire = settle is not None and time.time() >= settle
        if fire:
            seen = stage(out)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return True, seen
        time.sleep(0.005)
    if proc.returncode != 0:
        raise RuntimeError(f"align exited {proc.returncode} without being killed; see the log")
    return False, "finished"


def records(path: Path) -> list[dict]:
    """Every line must be whole JSON: a torn line left behind is a failure here."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def tensors(adapter: Path) -> dict:
    from safetensors.numpy import load_file

    f = adapter / "adapter_model.safetensors"
    return load_file(str(f)) if f.is_file() else {}


def compare(ref: Path, got: Path) -> list[str]:
    problems = []
    for it in sorted(p.name for p in ref.glob("iter_*")):
        for name in ("candidates.jsonl", "kept.jsonl", "check.jsonl"):
            a, b = records(ref / it / name), records(got / it / name)
            ids = [r["id"] for r in b if "id" in r]
            if len(ids) != len(set(ids)):
                problems.append(f"{it}/{name}: duplicated ids")
            if a != b:
                problems.append(f"{it}/{name}: {len(b)} records differ from the reference's {len(a)}")
        ta, tb = tensors(ref / it / "adapter"), tensors(got / it / "adapter")
        if ta.keys() != tb.keys() or any((ta[k] != tb[k]).any() for k in ta):
            problems.append(f"{it}/adapter: weights differ from the reference's")
    if not (got / "summary.json").is_file():
        problems.append("no summary.json: the run did not finish")
    return problems


def kill_test(kills: int, backend: str = "auto", seed: int = 0, workdir: Path | None = None) -> dict:
    workdir = Path(workdir or tempfile.mkdtemp(prefix="isara-kill-"))
    workdir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    ref, got = workdir / "reference", workdir / "killed"
    with open(workdir / "log.txt", "ab") as log:
        t0 = time.time()
        subprocess.run(command(ref, backend, seed, False), cwd=ROOT, stdout=log, stderr=log, check=True)
        reference_seconds = time.time() - t0
        events, attempts, t0 = [], 0, time.time()
        while len(events) < kills and attempts < kills * 4:
            target = TARGETS[attempts % len(TARGETS)]
            attempts += 1
            killed, seen = run_once(command(got, backend, seed, True), got, target, rng, log)
            if killed:
                events.append({"target": target, "stage": seen})
            else:  # the run finished before the target came: start over in a fresh directory
                import shutil

                shutil.rmtree(got)
        finish = subprocess.run(command(got, backend, seed, True), cwd=ROOT, stdout=log, stderr=log)
        killed_seconds = time.time() - t0
    problems = compare(ref, got) if finish.returncode == 0 else [f"final resume exited {finish.returncode}"]
    by_stage: dict[str, int] = {}
    for e in events:
        by_stage[e["stage"]] = by_stage.get(e["stage"], 0) + 1
    return {"kills": len(events), "by_stage": by_stage, "problems": problems, "backend": backend, "seed": seed,
            "threads": 2, "reference_seconds": round(reference_seconds, 1),
            "killed_run_seconds": round(killed_seconds, 1), "workdir": str(workdir), "events": events}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    report = kill_test(args.kills, args.backend, args.seed, args.out)
    print(json.dumps({k: v for k, v in report.items() if k != "events"}, indent=2))
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{report['kills']} SIGKILLs, {len(report['problems'])} problems", width=60)
    t.add_column("stage at the kill")
    t.add_column("kills", justify="right")
    for k, v in sorted(report["by_stage"].items()):
        t.add_row(k, str(v))
    Console().print(t)
    for p in report["problems"]:
        print("PROBLEM:", p)
    sys.exit(1 if report["problems"] else 0)


if __name__ == "__main__":
    main()
