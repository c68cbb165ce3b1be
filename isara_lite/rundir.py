"""A run directory: its layout, what in it is finished, and the rules for resuming it. Every
command (align, chat, eval, export, report, compare) reads runs through here.

runs/<name>/
  recipe.yaml              the resolved recipe (what --resume compares against)
  seeds.jsonl              the seed pool P0 as read (less the held-out seeds)
  gate.json                with gate.enabled: the seeds' refusal gate (gate.py)
  holdout.jsonl, best.json with selection.holdout: the held-out seeds, the best iteration (selection.py)
  log.txt
  iter_0/check.jsonl, metrics.json       the base model's built-in check
  iter_t/candidates.jsonl  every candidate with its demos and filter verdicts, appended per batch
  iter_t/kept.jsonl        pool P_t
  iter_t/train.json        step 4's record, written after its adapter (none with preference.replaces_sft)
  iter_t/sft_adapter/      with preference.enabled: the SFT adapter (none with replaces_sft), then
  iter_t/pairs.jsonl, preference.json   the preference step's pairs and record (preference.py)
  iter_t/adapter/          PEFT LoRA after iteration t (+ gate.json with gate.enabled)
  iter_t/check.jsonl, holdout.jsonl, metrics.json       metrics.json marks the iteration done
  summary.json
  eval/iter_t/             `isara eval --run`; compare/ and report/ likewise

Resume rules: an iteration with metrics.json is done and is only read again; a stage whose record
and adapter weights are both on disk is loaded, not redone (`stage_done`); a run with no finished
iteration 0 starts afresh; a run whose recipe changed continues only with --force.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from .errors import IsaraError
from .files import RunLock, atomic_write_text
from .recipe import Recipe, with_defaults

WEIGHTS = "adapter_model.safetensors"


class RunDir:
    """Paths of one run directory, what is finished in it, and its lock."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.lock = RunLock(self.root)
        self.changed: list[str] = []  # recipe keys changed on a --force resume
        self.recipe_file = self.root / "recipe.yaml"
        self.best_file = self.root / "best.json"

    def it(self, t: int) -> Path:
        return self.root / f"iter_{t}"

    def adapter(self, t: int) -> Path:
        return self.it(t) / "adapter"

    def done(self, t: int) -> bool:
        return (self.it(t) / "metrics.json").is_file()

    def _iterations(self, has: str) -> list[int]:
        found = (p.name.split("_", 1)[1] for p in self.root.glob("iter_*") if (p / has).exists())
        return sorted(int(t) for t in found if t.isdigit())

    def finished(self) -> list[int]:
        """Iterations (0 is the base model's check) whose metrics.json is written."""
        return self._iterations("metrics.json")

    def trained(self) -> list[int]:
        return self._iterations("adapter")

    def require(self) -> "RunDir":
        if not self.recipe_file.is_file():
            raise IsaraError(f"{self.root}: not a run directory (no recipe.yaml)")
        return self

    def model(self) -> str:
        return yaml.safe_load(self.require().recipe_file.read_text(encoding="utf-8"))["model"]

    def pick(self, iteration: int | None = None) -> int:
        """The iteration asked for, else the one best.json marks (selection.py), else the last trained one."""
        done = self.require().trained()
        if not done:
            raise IsaraError(f"{self.root}: no finished iteration with an adapter yet")
        t = iteration
        if t is None and self.best_file.is_file():
            t = json.loads(self.best_file.read_text()).get("iteration")
            t = t if t in done else None
        t = done[-1] if t is None else t
        if t not in done:
            raise IsaraError(f"{self.root}: iteration {t} has no adapter (finished: {done})")
        return t


def run_adapter(run: Path, iteration: int | None = None) -> tuple[str, Path]:
    """(model, adapter dir) of a run's chosen iteration (RunDir.pick)."""
    rd = RunDir(run)
    return rd.model(), rd.adapter(rd.pick(iteration))


def stage_done(record: Path, adapter: Path) -> bool:
    """A training stage finished: its record is written after its adapter, so both being there means
    the adapter is whole."""
    return Path(record).is_file() and (Path(adapter) / WEIGHTS).is_file()


def prepare_run(recipe: Recipe, out: Path, resume: bool, force: bool = False) -> RunDir:
    """Lock the run directory and check the recipe against the one it was started with."""
    run = RunDir(out)
    resolved = yaml.safe_dump(recipe.to_dict(), sort_keys=False)
    saved = run.recipe_file
    run.lock.acquire()
    try:
        if not run.done(0):  # nothing finished yet (say the model failed to load): start afresh
            saved.unlink(missing_ok=True)
        if saved.is_file() and not resume:
            raise IsaraError(f"{run.root} already holds a run: pass --resume to continue it, or --out elsewhere")
        run.changed = _check_recipe(saved, resolved, recipe, force)
    except BaseException:
        run.lock.release()
        raise
    return run


def _check_recipe(saved: Path, resolved: str, recipe: Recipe, force: bool) -> list[str]:
    """The recipe keys that differ from the saved one (refused unless force)."""
    changed: list[str] = []
    if saved.is_file():
        try:
            old = with_defaults(yaml.safe_load(saved.read_text(encoding="utf-8")))
        except (yaml.YAMLError, UnicodeDecodeError):
            old = None  # hand-edited into garbage: everything counts as changed
        changed = _diff(old, recipe.to_dict())
        if changed and not force:
            raise IsaraError(f"{saved}: the recipe changed since this run started ({', '.join(changed)}); "
                             f"pass --force to continue with the new recipe, or use a new --out")
        if changed:
            atomic_write_text(saved, resolved)
    else:
        atomic_write_text(saved, resolved)
    return changed


def _diff(a, b, prefix="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]
