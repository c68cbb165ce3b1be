"""One iteration's generation (ISARA steps 1-2) on the bundled model, several ways, in one run.

  naive       llama.cpp, one create_completion per prompt (llama-cpp-python's high-level API, which
              reuses the prefix shared with the previous prompt)
  llamacpp    this project's llama.cpp backend (several sequences per llama_batch)
  torch       the PyTorch backend (its batched sampling loop, backends/decode.py), fp32 weights
  torch-bf16  the same with the weights in bf16 (oneDNN's bf16 kernels where the CPU has them)
  ceiling     llama.cpp's own prompt-processing and generation speed here (one sequence, 512-token
              prompt, 128 greedy tokens), times the tokens the naive run evaluated and generated
  server      the openai backend against llama-cpp-python's OpenAI-compatible server on loopback
              (started here with the same GGUF and threads; it answers one request at a time), a
              batch's requests in flight together; its peak RSS is the client's, the server's apart

Every mode runs at the same questions_per_prompt; each value given is a separate set of rows (1 is
the quickstart's setting). Prints a JSON object and a table: candidates/min, prompt and generated
tokens/s, peak RSS, and the ratio to naive at the same setting.

    python benchmarks/generation.py --candidates 32 --threads 2 --questions-per-prompt 1,4
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def one(mode: str, args) -> dict:
    """Run one mode in this process (called in a fresh subprocess so peak RSS is its own)."""
    from isara_lite.backends.base import create_backend, peak_memory_mb
    from isara_lite.loop import load_seeds
    from isara_lite.generation import generate_batch
    from isara_lite.models import load_card
    from isara_lite.prompts import Renderer, get_format
    from isara_lite.recipe import load_recipe
    from isara_lite.retrieval import Embedder, Pool

    qpp = args.questions_per_prompt
    recipe = load_recipe(ROOT / "recipes" / "quickstart.yaml",
                         [*args.overrides, f"candidates={args.candidates}", f"generation.questions_per_prompt={qpp}"])
    card = load_card(recipe.model)
    renderer = Renderer(get_format(card.chat_format), card.system)
    embedder = Embedder()
    pools = [Pool("seeds", load_seeds(recipe, renderer), embedder)]
    if mode == "server":
        server = LocalServer(card.gguf_path(), args.threads)
        os.environ["ISARA_OPENAI_BASE_URL"] = server.url
    backend = create_backend({"torch": "torch", "torch-bf16": "torch", "server": "openai"}.get(mode, "llamacpp"), card,
                             threads=args.threads)
    if mode == "torch-bf16":
        import torch

        backend.model = backend.model.to(torch.bfloat16)
    if mode == "naive":
        backend.batched = False  # one create_completion per prompt
    if mode == "ceiling":
        return ceiling(backend, renderer, args)
    toks = [0, 0]

    def on_generated(outs):
        toks[0] += sum(o.prompt_tokens for o in outs)
        toks[1] += sum(o.completion_tokens for o in outs)

    bs = recipe.generation.batch_size
    start = time.perf_counter()
    kept_words = 0
    for s in range(0, args.candidates, bs):
        batch = generate_batch(backend, renderer, pools, embedder, recipe, 1,
                               list(range(s, min(s + bs, args.candidates))), on_generated)
        kept_words += sum(1 for c in batch if len(c.prompt.split()) >= 5 and len(c.response.split()) >= 5)
    dt = time.perf_counter() - start
    extra = {}
    if mode == "server":
        extra = {"server_peak_rss_mb": server_rss_mb(server.proc.pid), "concurrency": backend.concurrency or bs}
        server.proc.kill()
    return {**extra, "mode": mode, "seconds": dt, "candidates_per_min": 60 * args.candidates / dt,
            "prompt_tokens": toks[0], "generated_tokens": toks[1],
            "prompt_tok_s": toks[0] / dt, "gen_tok_s": toks[1] / dt,
            "peak_rss_mb": peak_memory_mb(), "questions_per_prompt": qpp,
            "candidates_with_5_words": kept_words}


class LocalServer:
    """llama-cpp-python's OpenAI-compatible server on a free loopback port, ready when it answers."""

    def __init__(self, gguf, threads: int):
        import socket
        import urllib.request

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/v1"
        self.proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host",
                                      "127.0.0.1", "--port", str(port), "--n_threads", str(threads),
                                      "--n_threads_batch", str(threads), "--n_ctx", "4096", "--verbose", "False"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(600):
            try:
                with urllib.request.urlopen(f"{self.url}/models", timeout=2):
                    return
            except OSError:
                time.sleep(0.2)
        self.proc.kill()
        sys.exit("the server did not start")


def server_rss_mb(pid: int) -> float:
    """The server process's peak RSS (VmHWM), Linux only."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def ceiling(backend, renderer, args) -> dict:
    """llama.cpp's raw prompt and generation speed on this machine (greedy, no sampling overhead)."""
    llm = backend.llm
    text = " ".join(["The quick brown fox jumps over the lazy dog."] * 60)
    toks = llm.tokenize(text.encode())[:512]
    llm.reset()
    t = time.perf_counter()
    llm.eval(toks)
    pp = len(toks) / (time.perf_counter() - t)
    llm.reset()
    llm.eval(toks[:16])
    t = time.perf_counter()
    n = 0
    for _ in range(128):
        tok = llm.sample(top_k=1)
        llm.eval([tok])
        n += 1
    tg = n / (time.perf_counter() - t)
    return {"mode": "ceiling", "pp_tok_s": pp, "tg_tok_s": tg}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--candidates", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--questions-per-prompt", default="1,4", help="comma-separated; 1 is the quickstart's")
    ap.add_argument("--modes", default="naive,llamacpp,torch,torch-bf16,ceiling",
                    help="comma-separated, from naive, llamacpp, torch, torch-bf16, ceiling, server")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override, key=value")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        args.questions_per_prompt = int(args.questions_per_prompt)
        print(json.dumps(one(args.one, args)))
        return
    rows = []
    modes = args.modes.split(",")
    ceiling_result = None
    for qpp in [int(q) for q in args.questions_per_prompt.split(",")]:
        results = {}
        for mode in modes:
            if mode == "ceiling" and ceiling_result is not None:
                results[mode] = dict(ceiling_result)
                continue
            cmd = [sys.executable, __file__, "--one", mode, "--candidates", str(args.candidates),
                   "--threads", str(args.threads), "--questions-per-prompt", str(qpp),
                   *sum((["--set", o] for o in args.overrides), [])]
            out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
            if out.returncode != 0:
                sys.exit(f"{mode} failed:\n{out.stderr[-3000:]}")
            results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
            if mode == "ceiling":
                ceiling_result = dict(results[mode])
        if "ceiling" in results and "naive" in results:
            c, n = results["ceiling"], results["naive"]
            secs = n["prompt_tokens"] / c["pp_tok_s"] + n["generated_tokens"] / c["tg_tok_s"]
            c.update(seconds=secs, candidates_per_min=60 * args.candidates / secs)
        if "naive" in results:
            base = results["naive"]["candidates_per_min"]
            for r in results.values():
                if "candidates_per_min" in r:
                    r["speedup_vs_naive"] = r["candidates_per_min"] / base
        for mode, r in results.items():
            rows.append({**r, "mode": mode, "questions_per_prompt": qpp})
    report = {"threads": args.threads, "candidates": args.candidates, "results": rows}
    print(json.dumps(report, indent=2))
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"generation, {args.candidates} candidates, {args.threads} threads")
    for col in ["mode", "q/prompt", "cand/min", "x naive", "prompt tok/s", "gen tok/s", "peak RSS MB", "in flight"]:
        t.add_column(col, justify="right")
    for r in rows:
        rss = f"{r.get('peak_rss_mb', 0):.0f}" + (f" + server {r['server_peak_rss_mb']:.0f}" if "server_peak_rss_mb" in r else "")
        t.add_row(r["mode"], str(r["questions_per_prompt"]), f"{r.get('candidates_per_min', 0):.1f}",
                  f"{r.get('speedup_vs_naive', 0):.2f}", f"{r.get('prompt_tok_s', r.get('pp_tok_s', 0)):.0f}",
                  f"{r.get('gen_tok_s', r.get('tg_tok_s', 0)):.0f}", rss, str(r.get("concurrency", "")))
    Console().print(t)


if __name__ == "__main__":
    main()
