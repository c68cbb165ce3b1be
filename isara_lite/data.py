"""The Sample record, and readers / writers for the (prompt, response) shapes people have."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import IsaraError, where
from .files import write_jsonl


@dataclass
class Sample:
    prompt: str
    response: str
    id: str
    source: str = "seed"  # "seed" or "generated"
    iteration: int = 0  # 0 for seeds, t for samples made in iteration t
    question_demos: list[str] = field(default_factory=list)  # ids of the ICL demos that wrote the question
    answer_demos: list[str] = field(default_factory=list)  # ids of the retrieved demos that wrote the answer
    verdicts: dict[str, bool] = field(default_factory=dict)  # filter name -> passed
    kept: bool | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Sample":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


# Each shape: the fields that identify it, and how to get (prompt, response) from a record.
def _alpaca(r):
    prompt = r["instruction"]
    if r.get("input"):
        prompt = f"{prompt}\n\n{r['input']}"
    return prompt, r["output"]


def _messages(r, loc):
    msgs = r["messages"]
    if not isinstance(msgs, list):
        raise IsaraError(f"{loc}: field 'messages' must be a list of {{role, content}} objects")
    user = assistant = None
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise IsaraError(f"{loc}: field 'messages[{i}]' must have 'role' and 'content'")
        if m["role"] == "user" and user is None:
            user = m["content"]
        elif m["role"] == "assistant" and user is not None and assistant is None:
            assistant = m["content"]
    if user is None or assistant is None:
        raise IsaraError(f"{loc}: field 'messages' needs a user turn followed by an assistant turn")
    return user, assistant


SHAPES = [
    (("prompt", "response"), lambda r: (r["prompt"], r["response"])),
    (("prompt", "completion"), lambda r: (r["prompt"], r["completion"])),
    (("instruction", "output"), _alpaca),
    (("question", "answer"), lambda r: (r["question"], r["answer"])),
]
SHAPE_HELP = "{prompt, response}, {prompt, completion}, {instruction, input, output}, {question, answer} or {messages}"


def record_to_pair(r, loc: str) -> tuple[str, str]:
    if not isinstance(r, dict):
        raise IsaraError(f"{loc}: expected an object with {SHAPE_HELP}, got {type(r).__name__}")
    if "messages" in r:
        pair, names = _messages(r, loc), ("messages", "messages")
    else:
        full = [(names, get) for names, get in SHAPES if all(n in r for n in names)]
        if not full:
            partial = [names for names, _ in SHAPES if names[0] in r]
            if partial:
                missing = next(n for n in partial[0] if n not in r)
                raise IsaraError(f"{where(loc, field=missing)} is missing (record has {sorted(map(str, r))})")
            raise IsaraError(f"{loc}: no known fields; expected {SHAPE_HELP}, got {sorted(map(str, r))}")
        names, get = full[0]
        pair = get(r)
    for name, value in zip(names, pair):
        if not isinstance(value, str) or not value.strip():
            raise IsaraError(f"{where(loc, field=name)} must be a non-empty string")
    return pair[0].strip(), pair[1].strip()


def _decode(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise IsaraError(f"{where(path, line)}: not valid UTF-8 (byte {e.start})") from None


def parse_jsonl(text: str, path: Path) -> list[tuple[int, dict]]:
    """(line number, record) per non-blank line of JSONL text read from path."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append((n, json.loads(line)))
        except json.JSONDecodeError as e:
            raise IsaraError(f"{where(path, n)}: invalid JSON: {e.msg} (column {e.colno})") from None
    return out


def parse_json(text: str, path: Path):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise IsaraError(f"{where(path, e.lineno)}: invalid JSON: {e.msg}") from None


def parse_csv(text: str, path: Path, delimiter: str = ",") -> tuple[list[str], list[tuple[int, dict]]]:
    """(header, [(line number, row)]) of CSV text read from path; a row longer than the header is an error."""
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows = []
    try:
        for row in reader:
            if None in row:  # DictReader files values beyond the header under the key None
                raise IsaraError(f"{where(path, reader.line_num)}: {len(reader.fieldnames or [])} columns in "
                                 f"the header, more values on this line")
            rows.append((reader.line_num, dict(row)))
    except csv.Error as e:
        raise IsaraError(f"{where(path, reader.line_num)}: bad CSV: {e}") from None
    return list(reader.fieldnames or []), rows


def read_records(path: str | Path) -> list[tuple[int, dict]]:
    """(line number, record) for a .jsonl, .json or .csv file."""
    path = Path(path)
    if not path.is_file():
        raise IsaraError(f"{path}: no such file")
    text, suffix = _decode(path), path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return parse_jsonl(text, path)
    if suffix == ".json":
        data = parse_json(text, path)
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise IsaraError(f"{path}: a .json file must hold a list of records")
        return [(i + 1, r) for i, r in enumerate(data)]  # record number, not line
    if suffix in (".csv", ".tsv"):
        return parse_csv(text, path, "\t" if suffix == ".tsv" else ",")[1]
    raise IsaraError(f"{path}: unknown format '{suffix}'; use .jsonl, .json or .csv")


def read_samples(path: str | Path, id_prefix: str = "seed", check=None) -> list[Sample]:
    """Seed pairs from any supported shape; ids are '<prefix>-<n>' in file order.
    check(text, location), when given, vets each field (e.g. for chat-template markers)."""
    samples = []
    for i, (n, r) in enumerate(read_records(path)):
        prompt, response = record_to_pair(r, where(path, n))
        if check:
            check(prompt, where(path, n, "prompt"))
            check(response, where(path, n, "response"))
        samples.append(Sample(prompt=prompt, response=response, id=f"{id_prefix}-{i}"))
    if not samples:
        raise IsaraError(f"{path}: no records")
    return samples


def read_prompts(path: str | Path) -> list[dict]:
    """Prompt-only files (held-out checks): records with a 'prompt' field, other fields kept."""
    out = []
    for n, r in read_records(path):
        if not isinstance(r, dict) or not isinstance(r.get("prompt"), str) or not r["prompt"].strip():
            raise IsaraError(f"{where(path, n, 'prompt')} must be a non-empty string")
        out.append(r)
    return out


def write_samples(path: str | Path, samples, shape: str = "messages") -> None:
    """JSONL in the TRL / mlx-lm shapes: 'messages' (chat) or 'completions' ({prompt, completion})."""
    if shape == "messages":
        rows = [{"messages": [{"role": "user", "content": s.prompt},
                              {"role": "assistant", "content": s.response}]} for s in samples]
    elif shape == "completions":
        rows = [{"prompt": s.prompt, "completion": s.response} for s in samples]
    else:
        raise IsaraError(f"unknown output shape '{shape}'; use 'messages' or 'completions'")
    write_jsonl(path, rows)
