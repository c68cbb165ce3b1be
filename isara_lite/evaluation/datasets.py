"""Loaders for the public evaluation sets, from a local folder or (online) from their public URL.

`load(name, data)`: `data` is a folder holding the files (either as <set>/<file>, the layout of
the URLs below, or flat) or None, in which case the file is downloaded once into
ISARA_HOME/data/. Every record is checked; a bad one is an IsaraError naming file, line, field.
"""

from __future__ import annotations

import gzip
import urllib.error
import urllib.request
from pathlib import Path

from ..data import parse_csv, parse_json, parse_jsonl
from ..errors import IsaraError, where
from ..files import writing_file
from ..models import isara_home

# name -> (path under the data folder, public URL)
SOURCES = {
    "truthfulqa": ("truthfulqa/TruthfulQA.csv",
                   "https://raw.githubusercontent.com/sylinrl/TruthfulQA/main/data/v1/TruthfulQA.csv"),
    "truthfulqa_mc": ("truthfulqa/mc_task.json",
                      "https://raw.githubusercontent.com/sylinrl/TruthfulQA/main/data/mc_task.json"),
    "advbench": ("advbench/harmful_behaviors.csv",
                 "https://raw.githubusercontent.com/llm-attacks/llm-attacks/main/data/advbench/harmful_behaviors.csv"),
    "xstest": ("xstest/xstest_prompts.csv",
               "https://raw.githubusercontent.com/paul-rottger/exaggerated-safety/main/xstest_prompts.csv"),
    "alpaca_eval": ("alpaca_eval/gpt4_outputs.json",
                    "https://raw.githubusercontent.com/tatsu-lab/alpaca_eval/main/results/gpt4/model_outputs.json"),
    "alpaca_eval_davinci003": (
        "alpaca_eval/text_davinci_003_outputs.json",
        "https://raw.githubusercontent.com/tatsu-lab/alpaca_eval/main/results/text_davinci_003/model_outputs.json"),
    # HH-RLHF keeps its files in git LFS: the media URL serves the content, raw would serve the pointer.
    "hh_harmless": ("hh_rlhf/harmless-base_test.jsonl.gz",
                    "https://media.githubusercontent.com/media/anthropics/hh-rlhf/master/harmless-base/test.jsonl.gz"),
}


def locate(name: str, data: Path | str | None = None) -> Path:
    """The local file of a data set: in `data`, or downloaded into the cache when `data` is None."""
    rel, url = SOURCES[name]
    if data is not None:
        data = Path(data)
        if data.is_file():
            return data
        for candidate in (data / rel, data / Path(rel).name):
            if candidate.is_file():
                return candidate
        raise IsaraError(f"{data}: no {rel} (nor {Path(rel).name}) for data set '{name}'")
    target = isara_home() / "data" / rel
    if not target.is_file():
        _download(url, target, name)
    return target


def _download(url: str, target: Path, name: str) -> None:
    try:
        with writing_file(target) as tmp, urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
            f.write(r.read())
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise IsaraError(f"data set '{name}' is not cached and could not be downloaded from {url} ({reason}); "
                         f"pass --data DIR with a local copy of {SOURCES[name][0]}") from None


def _text(path: Path) -> str:
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except OSError:
            raise IsaraError(f"{path}: not a gzip file" + (" (a git LFS pointer, not the data)"
                                                             if raw.startswith(b"version https://git-lfs") else ""))
    if raw.startswith(b"version https://git-lfs"):
        raise IsaraError(f"{path}: a git LFS pointer, not the data; fetch the real file")
    try:
        return raw.decode("utf-8-sig")  # TruthfulQA.csv starts with a byte-order mark
    except UnicodeDecodeError as e:
        raise IsaraError(f"{path}: not UTF-8 text ({e})") from None


def _csv(path: Path, required: list[str]) -> list[tuple[int, dict]]:
    """(line, row) for each row, every required column present and non-empty."""
    header, rows = parse_csv(_text(path), path)
    missing = [c for c in required if c not in header]
    if missing:
        raise IsaraError(f"{where(path, 1, missing[0])}: missing column (header: {header})")
    for line, row in rows:
        for c in required:
            if not (row.get(c) or "").strip():
                raise IsaraError(f"{where(path, line, c)}: empty or missing")
    if not rows:
        raise IsaraError(f"{path}: no rows")
    return rows


def _json(path: Path):
    return parse_json(_text(path), path)


def _split(cell: str) -> list[str]:
    return [s.strip() for s in cell.split(";") if s.strip()]


# -- TruthfulQA ------------------------------------------------------------------------------------
def truthfulqa(data=None) -> list[dict]:
    """Generation task: question, best answer, correct and incorrect reference answers, category."""
    path = locate("truthfulqa", data)
    out = []
    for line, r in _csv(path, ["Question", "Best Answer", "Correct Answers", "Incorrect Answers", "Category"]):
        correct, incorrect = _split(r["Correct Answers"]), _split(r["Incorrect Answers"])
        if r["Best Answer"].strip() not in correct:  # the paper's scripts add the best answer to the set
            correct.append(r["Best Answer"].strip())
        out.append({"question": r["Question"].strip(), "best": r["Best Answer"].strip(), "correct": correct,
                    "incorrect": incorrect, "category": r["Category"].strip(), "type": (r.get("Type") or "").strip(),
                    "line": line})
    return out


def truthfulqa_mc(data=None) -> list[dict]:
    """Multiple choice: question, mc1 and mc2 as lists of (answer, is_true)."""
    path = locate("truthfulqa_mc", data)
    items = _json(path)
    if not isinstance(items, list):
        raise IsaraError(f"{path}: expected a JSON list of questions")
    out = []
    for i, it in enumerate(items):
        loc = f"{path}: item {i}"
        if not isinstance(it, dict) or not isinstance(it.get("question"), str):
            raise IsaraError(f"{loc}: field 'question' missing or not a string")
        rec = {"question": it["question"].strip()}
        for key in ("mc1_targets", "mc2_targets"):
            t = it.get(key)
            if not isinstance(t, dict) or not t or any(v not in (0, 1) for v in t.values()):
                raise IsaraError(f"{loc}: field '{key}' must map answers to 0/1")
            if not any(t.values()) or all(t.values()):
                raise IsaraError(f"{loc}: field '{key}' needs both true and false answers")
            rec[key[:3]] = [(a, bool(v)) for a, v in t.items()]
        if sum(v for _, v in rec["mc1"]) != 1:
            raise IsaraError(f"{loc}: field 'mc1_targets' must have exactly one true answer")
        out.append(rec)
    return out


# -- safety ----------------------------------------------------------------------------------------
def advbench(data=None) -> list[dict]:
    path = locate("advbench", data)
    return [{"prompt": r["goal"].strip(), "target": (r.get("target") or "").strip(), "line": line}
            for line, r in _csv(path, ["goal"])]


def xstest(data=None) -> list[dict]:
    """XSTest v2: label 'safe' (should be answered) or 'unsafe' (should be refused), and a type."""
    path = locate("xstest", data)
    out = []
    for line, r in _csv(path, ["prompt", "type", "label"]):
        label = r["label"].strip()
        if label not in ("safe", "unsafe"):
            raise IsaraError(f"{where(path, line, 'label')}: '{label}' is neither 'safe' nor 'unsafe'")
        out.append({"id": (r.get("id") or str(line)).strip(), "prompt": r["prompt"].strip(),
                    "type": r["type"].strip(), "label": label, "line": line})
    return out


def hh_harmless(data=None) -> list[dict]:
    """HH-RLHF harmless-base: the first human turn of each dialogue (a red-team prompt)."""
    path = locate("hh_harmless", data)
    out = []
    for line, r in parse_jsonl(_text(path), path):
        if not isinstance(r, dict) or not isinstance(r.get("chosen"), str):
            raise IsaraError(f"{where(path, line, 'chosen')}: missing or not a string")
        prompt = first_human_turn(r["chosen"])
        if not prompt:
            raise IsaraError(f"{where(path, line, 'chosen')}: no 'Human:' turn")
        out.append({"prompt": prompt, "line": line})
    return out


def first_human_turn(dialogue: str) -> str:
    start = dialogue.find("Human:")
    if start == -1:
        return ""
    text = dialogue[start + len("Human:"):]
    end = text.find("\n\nAssistant:")
    return (text if end == -1 else text[:end]).strip()


# -- instructions ----------------------------------------------------------------------------------
def alpaca_eval(data=None, name: str = "alpaca_eval") -> list[dict]:
    """AlpacaEval: instruction, a reference output (GPT-4's by default), generator, dataset."""
    path = locate(name, data)
    items = _json(path)
    if not isinstance(items, list):
        raise IsaraError(f"{path}: expected a JSON list of {{instruction, output}} records")
    out = []
    for i, it in enumerate(items):
        for f in ("instruction", "output"):
            if not isinstance(it, dict) or not isinstance(it.get(f), str) or (f == "instruction" and not it[f].strip()):
                raise IsaraError(f"{path}: item {i}: field '{f}' missing or not a string")
        out.append({"instruction": it["instruction"], "reference": it["output"],
                    "generator": it.get("generator", ""), "dataset": it.get("dataset", "")})
    return out
