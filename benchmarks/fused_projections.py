"""Would fusing the projections that read the same input help training on this CPU?

SmolLM2-135M's shapes (hidden 576; q 576, k and v 192 each; gate and up 1536 each, down back to
576): the forward of q/k/v and gate/up as five separate fp32 matmuls against two fused ones, and the
input gradient of q/k/v as three matmuls summed against one, at the row counts of a training
micro-batch (batch x tokens). Same process, same threads; GFLOPS from the median of --repeats.

    python benchmarks/fused_projections.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def timed(f, repeats: int) -> float:
    for _ in range(3):
        f()
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        f()
        runs.append(time.perf_counter() - t)
    return statistics.median(runs)


def main():
    import torch
    from rich.console import Console
    from rich.table import Table

    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", type=int, nargs="+", default=[320, 640])
    ap.add_argument("--repeats", type=int, default=60)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    d, qkv, mlp = 576, (576, 192, 192), (1536, 1536)
    out = {"threads": args.threads, "dtype": "float32", "rows": {}}
    for m in args.rows:
        x = torch.randn(m, d)
        w_qkv, w_mlp = [torch.randn(o, d) for o in qkv], [torch.randn(o, d) for o in mlp]
        fused_qkv, fused_mlp = torch.cat(w_qkv), torch.cat(w_mlp)
        grads = [torch.randn(m, o) for o in qkv]
        fused_grad = torch.cat(grads, 1)
        forward_flops = 2 * m * d * (sum(qkv) + sum(mlp))
        backward_flops = 2 * m * d * sum(qkv)
        cases = {
            "forward, separate": (lambda: [x @ w.T for w in w_qkv + w_mlp], forward_flops),
            "forward, fused": (lambda: (x @ fused_qkv.T, x @ fused_mlp.T), forward_flops),
            "q/k/v input gradient, separate": (lambda: sum(g @ w for g, w in zip(grads, w_qkv)), backward_flops),
            "q/k/v input gradient, fused": (lambda: fused_grad @ fused_qkv, backward_flops),
        }
        out["rows"][m] = {name: {"ms": 1e3 * (t := timed(f, args.repeats)), "gflops": flops / t / 1e9}
                          for name, (f, flops) in cases.items()}
    print(json.dumps(out, indent=2))
    t = Table(title=f"fused vs separate projections, fp32, {args.threads} threads (median of {args.repeats})")
    for col in ("rows", "case", "ms", "GFLOPS"):
        t.add_column(col)
    for m, cases in out["rows"].items():
        for name, v in cases.items():
            t.add_row(str(m), name, f"{v['ms']:.2f}", f"{v['gflops']:.0f}")
    Console(width=120).print(t)


if __name__ == "__main__":
    main()
