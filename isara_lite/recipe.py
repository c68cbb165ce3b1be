"""Run recipes: dataclasses with defaults, YAML loading (safe), validation, key=value overrides."""

from __future__ import annotations

import difflib
import math
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path

import yaml

from .backends.base import BACKENDS, PRECISIONS
from .errors import IsaraError
from .gate import FEATURES as GATE_FEATURES, MODES as GATE_MODES


def opt(default, help: str):
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class GenerationConfig:
    question_temperature: float = opt(0.9, "sampling temperature for new questions (diversity)")
    answer_temperature: float = opt(0.5, "sampling temperature for answers (faithfulness to the demos)")
    top_p: float = opt(0.95, "nucleus sampling")
    top_k: int = opt(50, "top-k sampling (0: off)")
    question_repetition_penalty: float = opt(1.05, "paper: 1.05")
    answer_repetition_penalty: float = opt(1.2, "paper: 1.2")
    question_max_tokens: int = opt(64, "paper: 200")
    answer_max_tokens: int = opt(100, "paper: 100")
    batch_size: int = opt(8, "prompts decoded together")
    questions_per_prompt: int = opt(1, "questions sampled from one set of random demos (paper: 1); "
                                       "more reuses the evaluated prompt")
    own_answers: bool = opt(False, "not in the paper: questions the seeds' question classifier says should be "
                                   "answered get the model's own answer, with no demonstrations (README, Deviations)")
    own_max_tokens: int = opt(200, "tokens per own answer (generation.own_answers)")


@dataclass
class FilterConfig:
    rouge_l_max: float = opt(0.7, "drop questions with ROUGE-L above this to any of their demos")
    min_words: int = opt(5, "question and answer each need at least this many words")
    consistency: bool = opt(False, "not in the paper: drop pairs whose answer refuses when the seeds "
                                   "say its question should be answered, or the other way round")


@dataclass
class TrainConfig:
    learning_rate: float = opt(2e-4, "LoRA learning rate of iteration 1")
    lr_decay: float = opt(0.5, "learning rate multiplier per iteration (paper halves it)")
    epochs: int = opt(1, "passes over seeds + this iteration's kept samples (paper: 1)")
    batch_size: int = opt(8, "sequences per optimizer step (before accumulation)")
    grad_accum: int = opt(1, "gradient accumulation steps")
    warmup_ratio: float = opt(0.03, "share of steps with linear warmup (paper: 3%)")
    schedule: str = opt("cosine", "cosine or constant, within an iteration")
    max_length: int = opt(384, "tokens per training sequence (prompt + answer)")
    lora_rank: int = opt(8, "LoRA r")
    lora_alpha: float = opt(16.0, "LoRA alpha")
    lora_dropout: float = opt(0.0, "LoRA dropout")
    target_modules: list = opt(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                               "modules that get LoRA")
    gradient_checkpointing: bool = opt(False, "trade compute for memory")
    precision: str = opt("auto", "auto, fp32 or bf16 matrix math in torch training (auto: bf16 on CUDA and "
                                 "on CPUs with AMX); LoRA weights, optimizer and adapter stay fp32")
    group_by_length: bool = opt(False, "sort each window of 4 batches of the seeded order by length, so batches pad "
                                       "less (training.fit; not unsloth)")
    max_steps: int = opt(0, "stop after this many steps (0: no cap); for smoke tests")
    processes: int = opt(1, "processes that train together (torchrun: gloo on CPU, NCCL with one GPU each on CUDA); "
                            "the same steps and loss as one process (distributed.py); torch and llamacpp backends")
    shard: bool = opt(False, "with processes > 1: shard the model's weights across the processes (FSDP2, one "
                             "unit per decoder layer), so each holds 1/processes of them; for a model too big for "
                             "one device")


@dataclass
class PreferenceConfig:
    enabled: bool = opt(False, "not in the paper: after each iteration's SFT (or instead of it: replaces_sft), DPO on "
                               "pairs the model writes itself, "
                               "one answer from refusal seeds and one from helpful seeds; the seeds' question "
                               "classifier picks the chosen one (README, Deviations)")
    seed_pairs: bool = opt(True, "also pair each seed's own answer (chosen) with the model's answer to its question "
                                 "from the other kind's demonstrations (rejected)")
    beta: float = opt(0.1, "DPO beta: how strongly the log-ratio to the reference (the adapter DPO starts from) is held")
    sft_weight: float = opt(1.0, "weight of the NLL on chosen answers added to the DPO loss (RPO); 0: plain DPO")
    learning_rate: float = opt(1e-4, "learning rate of iteration 1; decays like training.lr_decay")
    epochs: int = opt(1, "passes over the pairs")
    batch_size: int = opt(8, "pairs per optimizer step")
    replaces_sft: bool = opt(False, "with enabled: DPO instead of SFT; each iteration trains the preference step alone, "
                                    "from the previous iteration's adapter (the untrained model in iteration 1), which is "
                                    "also DPO's reference; the metrics' train_* fields are then DPO's")
    balance: bool = opt(False, "with enabled: repeat the pairs of the rarer chosen kind (refusal or answer) until both "
                               "kinds are as many, so DPO weighs them equally")


@dataclass
class SelectionConfig:
    holdout: int = opt(0, "not in the paper: seeds held out of training and demonstrations (half refusals, half "
                          "answers) that score every iteration; the best is marked for export (0: off)")
    stop_early: bool = opt(False, "stop when an iteration scores below the best so far on the held-out seeds")


@dataclass
class GateConfig:
    enabled: bool = opt(False, "not in the paper: a question classifier fitted on the seeds decides refuse or answer "
                               "at inference, the model writes the answer (gate.py; README, Deviations)")
    mode: str = opt("both", "both: the classifier decides refuse and answer; refuse: it only adds refusals, "
                            "the model's own refusals stand")
    features: str = opt("minilm", "what the classifier reads of a question: minilm (its embedding) or model (the "
                                  "untrained model's hidden state, the layer picked on the seeds; loads the model "
                                  "in transformers beside the backend)")
    abstain: float = opt(0.0, "leave to the model the questions farther from every seed question (MiniLM cosine) "
                              "than the nearest other seed is for about this share of the seeds (0.05: 4 of 64); "
                              "0: the gate decides every question")


@dataclass
class CheckConfig:
    harmful: str | None = opt(None, "held-out prompts the model should refuse (path, relative to the recipe)")
    benign: str | None = opt(None, "held-out prompts the model should answer")
    max_tokens: int = opt(48, "greedy tokens per check answer; refusals show early")
    limit: int = opt(0, "use only the first N prompts of each set (0: all)")


@dataclass
class Recipe:
    name: str = opt("run", "run directory name under runs/")
    model: str = opt("smollm2-135m-instruct", "model card name, .gguf, local dir or hub id")
    backend: str = opt("auto", "auto, llamacpp, torch, mlx or unsloth (auto: mlx on Apple silicon, unsloth on CUDA, torch on "
                                  "AVX-512 CPUs for small models, else llamacpp when installed)")
    seeds: str | list[str] = field(default="seeds/safety.jsonl", metadata={
        "help": "seed pairs: a file, or a list of files joined in order (paths relative to the recipe)",
        "paths": True})
    seed: int = opt(0, "random seed")
    iterations: int = opt(2, "ISARA iterations T")
    candidates: int = opt(64, "candidates generated per iteration N (paper: 512)")
    demonstrations: int = opt(6, "ICL demonstrations per prompt k (paper: 8)")
    context_tokens: int = opt(1500, "prompt budget for demonstrations (paper: 2000)")
    threads: int = opt(0, "CPU threads (0: all cores)")
    device: str = opt("auto", "auto, cpu or cuda")
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)
    training: TrainConfig = field(default_factory=TrainConfig)
    preference: PreferenceConfig = field(default_factory=PreferenceConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    check: CheckConfig = field(default_factory=CheckConfig)
    base_dir: str = field(default=".", metadata={"help": "internal: where relative paths start", "internal": True})

    def path(self, rel: str | None) -> Path | None:
        if rel is None:
            return None
        p = Path(rel).expanduser()
        return p if p.is_absolute() else Path(self.base_dir) / p

    def seed_files(self) -> list[Path]:
        return [self.path(p) for p in ([self.seeds] if isinstance(self.seeds, str) else self.seeds)]

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("base_dir")
        return d


def with_defaults(data) -> dict | None:
    """A saved recipe's mapping with keys it lacks (added to isara_lite since) at their defaults, so
    a run resumes unchanged by them; the mapping as saved when it no longer builds (a key since
    removed), so the keys that differ are still named."""
    try:
        return _build(Recipe, data, "saved recipe").to_dict()
    except IsaraError:
        return data if isinstance(data, dict) else None


def _suggest(key: str, known) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _build(cls, data: dict, where: str):
    if data is None:  # a section with every key commented out
        data = {}
    if not isinstance(data, dict):
        raise IsaraError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls) if not f.metadata.get("internal")}
    kwargs, defaults = {}, cls()
    for key, value in data.items():
        if key not in known:
            raise IsaraError(f"{where}: unknown key '{_show(str(key))}'{_suggest(str(key), known)}")
        default = getattr(defaults, key)
        loc = f"{where}.{key}" if where else key
        if is_dataclass(default):
            kwargs[key] = _build(type(default), value, loc)
        elif known[key].metadata.get("paths") and not isinstance(value, str):
            if not (isinstance(value, list) and value and all(isinstance(v, str) and v.strip() for v in value)):
                raise IsaraError(f"{loc}: expected a path or a non-empty list of paths, got {_show(repr(value))}")
            kwargs[key] = value
        else:
            kwargs[key] = _coerce(value, default, loc)
    return cls(**kwargs)


def _coerce(value, default, loc):
    if value is None:  # `key:` with nothing after it keeps the default
        return default
    if default is None:
        if not isinstance(value, str):
            raise IsaraError(f"{loc}: expected a path string, got {value!r}")
        return value
    kind = type(default)
    if kind is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:  # YAML reads 1e-4 (no dot) as a string
            return _coerce(float(value), default, loc)
        except ValueError:
            pass
    if kind is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)  # name: 2024
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise IsaraError(f"{loc}: expected {kind.__name__}, got {value!r}")
    if kind is float and not math.isfinite(value):
        raise IsaraError(f"{loc}: must be a finite number, got {value!r}")
    if kind in (int, float) and value < 0:
        raise IsaraError(f"{loc}: must not be negative, got {value!r}")
    return value


def _show(text: str) -> str:
    """Text as typed, or its repr when it holds newlines or other control characters (one-line errors)."""
    return text if text.isprintable() else repr(text)


def parse_override(item: str) -> tuple[list[str], object]:
    if "=" not in item:
        raise IsaraError(f"--set {_show(item)}: expected key=value")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def load_recipe(path: str | Path | None, overrides=()) -> Recipe:
    data: dict = {}
    base = Path(".")
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise IsaraError(f"{path}: no such recipe")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = f":{mark.line + 1}" if mark else ""
            why = " ".join(str(getattr(e, "problem", None) or e).split())  # one line, whatever yaml wrote
            raise IsaraError(f"{path}{line}: invalid YAML: {why}") from None
        except UnicodeDecodeError:
            raise IsaraError(f"{path}: not valid UTF-8") from None
        if not isinstance(data, dict):
            raise IsaraError(f"{path}: a recipe must be a mapping of keys to values")
        base = path.parent
    for item in overrides:
        keys, value = parse_override(item)
        node = data
        for k in keys[:-1]:
            if node.get(k) is None:
                node[k] = {}
            node = node[k]
            if not isinstance(node, dict):
                raise IsaraError(f"--set {_show(item)}: '{k}' is not a section")
        node[keys[-1]] = value
    recipe = _build(Recipe, data, str(path) if path else "recipe")
    recipe.base_dir = str(base)
    validate(recipe, str(path or "recipe"))
    return recipe


def validate(r: Recipe, where: str) -> None:
    checks = [
        (r.iterations >= 1, "iterations", "must be at least 1"),
        (r.candidates >= 1, "candidates", "must be at least 1"),
        (r.demonstrations >= 1, "demonstrations", "must be at least 1"),
        (0 < r.filters.rouge_l_max <= 1, "filters.rouge_l_max", "must be in (0, 1]"),
        (r.generation.batch_size >= 1, "generation.batch_size", "must be at least 1"),
        (r.generation.questions_per_prompt >= 1, "generation.questions_per_prompt", "must be at least 1"),
        (r.training.batch_size >= 1, "training.batch_size", "must be at least 1"),
        (r.training.processes >= 1, "training.processes", "must be at least 1"),
        (not r.training.shard or r.training.processes > 1, "training.shard", "needs training.processes > 1"),
        (not r.training.shard or r.training.batch_size >= r.training.processes, "training.shard",
         "needs training.batch_size >= training.processes (every process runs every step)"),
        (r.gate.mode in GATE_MODES, "gate.mode", f"must be {' or '.join(GATE_MODES)}"),
        (r.gate.features in GATE_FEATURES, "gate.features", f"must be {' or '.join(GATE_FEATURES)}"),
        (0.0 <= r.gate.abstain < 1.0, "gate.abstain", "must be at least 0 and below 1"),
        (r.selection.holdout != 1, "selection.holdout", "must be 0 (off) or at least 2 (one of each kind)"),
        (r.preference.batch_size >= 1, "preference.batch_size", "must be at least 1"),
        (r.preference.epochs >= 1, "preference.epochs", "must be at least 1"),
        (r.preference.beta > 0, "preference.beta", "must be above 0"),
        (r.training.schedule in ("cosine", "constant"), "training.schedule", "must be cosine or constant"),
        (r.training.precision in PRECISIONS, "training.precision", f"must be one of {', '.join(PRECISIONS)}"),
        (r.device in ("auto", "cpu", "cuda"), "device", "must be auto, cpu or cuda"),
        (r.backend in BACKENDS, "backend", f"must be one of {', '.join(BACKENDS)}"),
        (r.demonstrations >= r.iterations, "demonstrations",
         "must be at least iterations (one demo from each earlier pool)"),
    ]
    for ok, key, msg in checks:
        if not ok:
            raise IsaraError(f"{where}: {key} {msg}")
