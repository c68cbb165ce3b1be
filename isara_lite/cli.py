"""The `isara` command: parses arguments and hands each command to one function."""

from __future__ import annotations

import errno
import faulthandler
import sys
from pathlib import Path

import click

from .backends.base import BACKENDS, unsloth_first
from .errors import IsaraError


@click.group()
@click.version_option(package_name="isara_lite")
def cli():
    """ISARA self-alignment from a few dozen seed pairs."""


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a recipe key, e.g. training.epochs=2")
@click.option("--model", help="model card name, .gguf, local dir or hub id")
@click.option("--backend", type=click.Choice(BACKENDS), help="model runtime (recipe default: auto)")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="run directory (default runs/<name>)")
@click.option("--resume", is_flag=True, help="continue an interrupted run in --out")
@click.option("--force", is_flag=True, help="with --resume: continue even though the recipe changed")
def align(recipe, overrides, model, backend, out, resume, force):
    """Run the ISARA loop described by RECIPE."""
    from .recipe import load_recipe

    extra = [f"model={model}"] if model else []
    extra += [f"backend={backend}"] if backend else []
    r = load_recipe(recipe, [*overrides, *extra])
    unsloth_first(r.backend)
    from .loop import align as run_align

    run_align(r, out or Path("runs") / r.name, resume=resume, force=force)


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a recipe key, e.g. gate.abstain=0.05")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("gate.json"), show_default=True)
def gate(recipe, overrides, out):
    """Fit RECIPE's refusal gate (its gate.* keys) on its seeds alone, no training: a gate.json for
    `isara eval|chat --gate` in front of the untrained model."""
    from .gate import gate_only
    from .recipe import load_recipe

    gate_only(load_recipe(recipe, overrides), out)


@cli.command()
def models():
    """List the model cards and whether each is available here."""
    from rich.console import Console
    from rich.table import Table

    from .models import list_cards

    t = Table(title="model cards (models/)")
    for col in ["name", "format", "license", "available", "where / how to get it"]:
        t.add_column(col, no_wrap=col == "name")
    for card in list_cards():
        ok, how = card.available()
        t.add_row(card.name, card.chat_format, card.license, "yes" if ok else "no", how)
    Console().print(t)


@cli.command()
@click.option("--model", help="model card name, .gguf, local dir or hub id")
@click.option("--run", "run", type=click.Path(file_okay=False, path_type=Path), help="a run directory: use its adapter")
@click.option("--iteration", type=int, help="which iteration's adapter (default: the one best.json marks, else the last)")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True)
@click.option("--prompt", "prompts", multiple=True, help="answer these and exit instead of chatting")
@click.option("--max-tokens", default=200, show_default=True)
@click.option("--temperature", default=0.0, show_default=True, help="0 is greedy")
@click.option("--threads", default=0, help="CPU threads (0: all)")
@click.option("--gate", "gate", metavar="PATH|none",
              help="the seeds' refusal gate (gate.py): default the adapter's own gate.json if it has one; "
                   "none: off; PATH: a gate.json (e.g. RUN/gate.json in front of the base model)")
def chat(model, run, iteration, backend, prompts, max_tokens, temperature, threads, gate):
    """Talk to a model, or to the model a run produced."""
    unsloth_first(backend)
    from .chat import chat as run_chat

    run_chat(model, run, iteration, backend, list(prompts), max_tokens, temperature, threads, gate)


@cli.command()
@click.argument("run", type=click.Path(file_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["peft", "gguf-adapter", "merged-gguf", "mlx"]),
              default="gguf-adapter",
              show_default=True)
@click.option("--iteration", type=int, help="which iteration's adapter (default: the one best.json marks, else the last)")
@click.option("--out", type=click.Path(path_type=Path), help="output path (default: RUN/export/...)")
def export(run, fmt, iteration, out):
    """Export a run's adapter: PEFT, GGUF LoRA, or merged into a standalone GGUF."""
    from .export import export as run_export

    click.echo(run_export(run, fmt, out, iteration))


@cli.command(name="eval")
@click.option("--model", help="model card name, .gguf, local dir or hub id (default: the run's, or the bundled model)")
@click.option("--adapter", type=click.Path(file_okay=False, path_type=Path), help="a PEFT adapter directory")
@click.option("--run", "run", type=click.Path(file_okay=False, path_type=Path), help="a run directory: use its adapter")
@click.option("--iteration", type=int, help="with --run: which iteration's adapter (default: the last)")
@click.option("--suite", type=click.Choice(["safety", "truthfulness", "instructions", "all"]), default="all",
              show_default=True)
@click.option("--data", type=click.Path(exists=True, path_type=Path),
              help="folder with the public data sets (default: download once into the cache)")
@click.option("--full", is_flag=True, help="every item instead of the fixed stratified subsets")
@click.option("--limit", type=int, help="at most N items per data set (quick looks)")
@click.option("--judge", help="refusal|refusal-text|regex|classifier (safety), "
                              "features|reference|reference-embed (instructions), llm:MODEL or openai:MODEL (both)")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="output folder (default RUN/eval/iter_t or evals/<model>)")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True)
@click.option("--threads", default=0, help="CPU threads (0: all)")
@click.option("--max-tokens", default=200, show_default=True, help="new tokens per answer (greedy)")
@click.option("--gate", "gate", metavar="PATH|none",
              help="the seeds' refusal gate (gate.py): default the adapter's own gate.json if it has one; "
                   "none: off; PATH: a gate.json (e.g. RUN/gate.json in front of the base model)")
def eval_(model, adapter, run, iteration, suite, data, full, limit, judge, out, backend, threads, max_tokens, gate):
    """Evaluate a model or a run: safety, truthfulness, instruction following."""
    unsloth_first(backend)
    from .evaluation.run import evaluate

    evaluate(model=model, adapter=adapter, run=run, iteration=iteration, suite=suite, data=data, full=full,
             limit=limit, judge=judge, out=out, backend=backend, threads=threads, max_tokens=max_tokens,
             gate=gate)


@cli.command()
@click.argument("recipes", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--suite", "suites", multiple=True, type=click.Choice(["safety", "truthfulness", "instructions", "all"]),
              help="suite(s) to evaluate (default: all)")
@click.option("--limit", type=int, help="at most N items per data set (quick looks)")
@click.option("--data", type=click.Path(exists=True, path_type=Path),
              help="folder with the public data sets (default: download once into the cache)")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="output folder (default RUN/compare, or runs/domains-... with --domains)")
@click.option("--baselines", help="comma-separated: pretrained,sft-seeds,icl-knn,icl-random,one-shot,isara (default: all)")
@click.option("--run", "run", type=click.Path(file_okay=False, path_type=Path),
              help="the recipe's ISARA run (default runs/<name>; started or resumed)")
@click.option("--domains", is_flag=True, help="one recipe per domain: trained-on x evaluated-on grid")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a recipe key (every recipe)")
@click.option("--max-tokens", default=200, show_default=True, help="new tokens per answer (greedy)")
def compare(recipes, suites, limit, data, out, baselines, run, domains, overrides, max_tokens):
    """Baselines against each ISARA iteration (the paper's table), or the domain grid."""
    from .baselines import BASELINES
    from .compare import compare as run_compare
    from .compare import compare_domains
    from .evaluation.run import SUITES
    from .recipe import load_recipe

    rs = [load_recipe(r, overrides) for r in recipes]
    for r in rs:
        unsloth_first(r.backend)
    chosen = SUITES if not suites or "all" in suites else tuple(dict.fromkeys(suites))
    if domains:
        compare_domains(rs, chosen, limit, data, out, max_tokens)
    elif len(rs) > 1:
        raise IsaraError("several recipes are compared only with --domains")
    else:
        names = tuple(b.strip() for b in (baselines or "").split(",") if b.strip()) or BASELINES
        run_compare(rs[0], chosen, limit, data, out, names, run_dir=run, max_tokens=max_tokens)


@cli.command()
@click.argument("run", type=click.Path(file_okay=False, path_type=Path))
@click.option("--compare", "compare_dir", type=click.Path(file_okay=False, path_type=Path),
              help="folder with compare.json (default RUN/compare when present)")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="output folder (default RUN/report)")
def report(run, compare_dir, out):
    """Markdown report and plots of a run: metrics per iteration, kept samples, training loss."""
    from .report import report as run_report

    run_report(run, compare_dir, out)


def main():
    # A native library that still crashes (the llama.cpp probe covers the known case) prints
    # "Fatal Python error: Illegal instruction" and the Python stack instead of a bare exit code.
    faulthandler.enable()
    try:
        cli.main(standalone_mode=False)
    except IsaraError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):  # click turns Ctrl-C into Abort
        hint = "; run the same command with --resume to continue" if sys.argv[1:2] == ["align"] else ""
        click.echo(f"\ninterrupted: finished work is saved{hint}", err=True)
        sys.exit(130)
    except OSError as e:  # the disk filled up, a folder is read-only...: say which file, keep the run resumable
        what = f"{e.strerror or e} ({e.filename})" if e.filename else str(e.strerror or e)
        hint = "; free some space, then --resume" if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else ""
        click.echo(f"error: {what}{hint}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
