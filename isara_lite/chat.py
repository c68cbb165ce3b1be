"""`isara chat`: talk to a model, optionally with a run's adapter."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from .backends.base import Sampling, create_backend
from .errors import IsaraError
from .gate import apply_gate, choose_gate
from .models import load_card
from .prompts import Renderer, cut, get_format
from .retrieval import Embedder


def run_adapter(run: Path, iteration: int | None = None) -> tuple[str, Path]:
    """(model, adapter dir) of the iteration asked for, else the one best.json marks (selection.py),
    else the run's last finished iteration."""
    import yaml

    recipe = run / "recipe.yaml"
    if not recipe.is_file():
        raise IsaraError(f"{run}: not a run directory (no recipe.yaml)")
    model = yaml.safe_load(recipe.read_text())["model"]
    done = sorted(int(p.name.split("_")[1]) for p in run.glob("iter_*") if (p / "adapter").is_dir())
    if not done:
        raise IsaraError(f"{run}: no finished iteration with an adapter yet")
    t = iteration
    if t is None and (run / "best.json").is_file():
        t = json.loads((run / "best.json").read_text()).get("iteration")
        t = t if t in done else None
    t = done[-1] if t is None else t
    if t not in done:
        raise IsaraError(f"{run}: iteration {t} has no adapter (finished: {done})")
    return model, run / f"iter_{t}" / "adapter"


def chat(model: str | None, run: Path | None, iteration: int | None, backend: str, prompts: list[str],
         max_tokens: int, temperature: float, threads: int, gate_option: str | None = None) -> None:
    adapter = None
    if run is not None:
        run_model, adapter = run_adapter(run, iteration)
        model = model or run_model
    card = load_card(model or "smollm2-135m-instruct")
    renderer = Renderer(get_format(card.chat_format), card.system)
    b = create_backend(backend, card, threads=threads)
    b.load(adapter)
    gate = choose_gate(gate_option, adapter)
    embedder = Embedder() if gate else None
    out = Console()
    sampling = Sampling(max_tokens=max_tokens, temperature=temperature, stop=renderer.fmt.stops)

    def answer(q: str) -> str:
        text = cut(b.generate([renderer.chat_prompt(q)], sampling)[0].text)
        return apply_gate(b, renderer, gate, embedder, [q], [text], sampling)[0]["response"] if gate else text

    if prompts:  # one-shot, for scripts
        for q in prompts:
            out.print(answer(q), highlight=False)
        return
    out.print(f"[bold]{card.name}[/]" + (f" + {adapter}" if adapter else "") + (" + the seeds' gate" if gate else "")
              + "  (empty line or Ctrl-D quits)")
    while True:
        try:
            q = input("> ").strip()
        except EOFError:
            break
        if not q:
            break
        out.print(answer(q), highlight=False)
