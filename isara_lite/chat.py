"""`isara chat`: talk to a model, optionally with a run's adapter."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from .backends.base import Sampling, create_backend
from .gate import apply_gate, choose_gate
from .models import load_card
from .prompts import Renderer, cut, get_format
from .retrieval import Embedder
from .rundir import run_adapter


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
