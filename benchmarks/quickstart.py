"""The quickstart end to end, timed: wall time, peak memory, and the built-in check per iteration.

    python benchmarks/quickstart.py [--backend auto|llamacpp|torch] [--set key=value ...]

Runs `isara align recipes/quickstart.yaml` into a fresh directory and prints JSON and a table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="isara-quickstart-")) / "run"
    cmd = [sys.executable, "-m", "isara_lite.cli", "align", str(ROOT / "recipes" / "quickstart.yaml"),
           "--backend", args.backend, "--out", str(out), *sum((["--set", s] for s in args.overrides), [])]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT)
    wall = time.perf_counter() - start
    if proc.returncode:
        sys.exit(proc.returncode)
    summary = json.loads((out / "summary.json").read_text())
    report = {"backend": args.backend, "threads": os.cpu_count(), "wall_seconds": wall,
              "peak_memory_mb": summary["peak_memory_mb"], "checks": summary["checks"],
              "iterations": [{k: r[k] for k in ("iteration", "generated", "kept", "seconds", "train_seconds")}
                             for r in summary["iterations"]], "run": str(out)}
    print(json.dumps(report, indent=2))
    from rich.console import Console
    from rich.table import Table

    from isara_lite.evaluation.check import check_rows

    t = Table(title=f"quickstart: {wall / 60:.1f} min, peak {report['peak_memory_mb'] / 1024:.2f} GB")
    header, rows = check_rows(summary["checks"])  # each rate with its 95% interval
    for col in header:
        t.add_column(col, justify="right")
    for row in rows:
        t.add_row(*row)
    Console().print(t)


if __name__ == "__main__":
    main()
