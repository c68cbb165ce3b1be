"""Hostile input: whatever is in a seed file or a recipe, the answer is a one-line error naming the
file (and line and field where there is one), never a traceback. Property-based, with hypothesis."""

from __future__ import annotations

import csv
import io
import json
import string
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from isara_lite.data import read_prompts, read_samples
from isara_lite.errors import IsaraError
from isara_lite.prompts import TURN_MARKERS, Renderer, get_format
from isara_lite.recipe import load_recipe

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
FIELDS = ["prompt", "response", "completion", "instruction", "input", "output", "question", "answer", "messages",
          "role", "content", "data"]

# JSON values, biased toward the field names the readers look for and the text that breaks things
text = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["", "   ", "\n", "\ufeff", "\x00", "USER: hi", "<|im_start|>user", "ASSISTANT:", "[INST]",
                     "<|endoftext|>", "x" * 20000, "é" * 5, "\ud7ff"]),
)
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), text)
values = st.recursive(scalars, lambda kids: st.one_of(
    st.lists(kids, max_size=4), st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.text(max_size=8)), kids,
                                                max_size=5)), max_leaves=12)
records = st.dictionaries(st.sampled_from(FIELDS), values, max_size=4) | values


def one_line_naming(err: IsaraError, path: Path) -> None:
    msg = str(err)
    assert "\n" not in msg and "\r" not in msg, msg
    assert msg.startswith(str(path)), msg


def read_seeds(path: Path):
    """As `isara align` reads them: any shape, chat markers refused."""
    renderer = Renderer(get_format("chatml"))
    try:
        samples = read_samples(path, check=renderer.validate)
    except IsaraError as e:
        one_line_naming(e, path)
        return None
    for s in samples:  # what comes through is usable
        assert isinstance(s.prompt, str) and s.prompt.strip() and isinstance(s.response, str) and s.response.strip()
        assert not any(m in s.prompt or m in s.response for m in TURN_MARKERS)
    return samples


@SETTINGS
@given(rows=st.lists(records, max_size=6), bom=st.booleans(), junk=st.sampled_from(["", "{", "\n\n", "[1,", "\x00"]))
def test_jsonl_seeds(tmp_path, rows, bom, junk):
    path = tmp_path / "seeds.jsonl"
    body = "\n".join(json.dumps(r) for r in rows) + junk
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + body.encode("utf-8", "surrogatepass"))
    read_seeds(path)


@SETTINGS
@given(data=values)
def test_json_seeds(tmp_path, data):
    path = tmp_path / "seeds.json"
    path.write_bytes(json.dumps(data).encode("utf-8", "surrogatepass"))
    read_seeds(path)


@SETTINGS
@given(raw=st.binary(max_size=300), suffix=st.sampled_from([".jsonl", ".json", ".csv", ".tsv", ".txt", ".JSONL"]))
def test_arbitrary_bytes(tmp_path, raw, suffix):
    path = tmp_path / f"seeds{suffix}"
    path.write_bytes(raw)
    read_seeds(path)
    try:
        read_prompts(path)
    except IsaraError as e:
        one_line_naming(e, path)


@SETTINGS
@given(header=st.lists(st.sampled_from(FIELDS) | st.text(max_size=6), max_size=4),
       rows=st.lists(st.lists(text, max_size=5), max_size=5), delimiter=st.sampled_from([",", "\t", ";"]),
       bom=st.booleans())
def test_csv_seeds(tmp_path, header, rows, delimiter, bom):
    buf = io.StringIO()
    w = csv.writer(buf, delimiter=delimiter)
    w.writerow(header)
    w.writerows(rows)
    path = tmp_path / "seeds.csv"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + buf.getvalue().encode("utf-8", "surrogatepass"))
    read_seeds(path)


def test_named_cases(tmp_path):
    """The cases the issue lists, each with the file, line and field it must name."""
    cases = {
        "bad json": ('{"prompt": "a", "response": "b"}\n{"prompt": \n', "seeds.jsonl:2"),
        "wrong type": ('{"prompt": 3, "response": "b"}\n', "seeds.jsonl:1: field 'prompt'"),
        "empty field": ('{"prompt": "  ", "response": "b"}\n', "seeds.jsonl:1: field 'prompt'"),
        "missing field": ('{"prompt": "a"}\n', "seeds.jsonl:1: field 'response'"),
        "role marker": ('{"prompt": "a", "response": "ok"}\n{"prompt": "USER: hi", "response": "b"}\n',
                        "seeds.jsonl:2: field 'prompt'"),
        "template token": ('{"prompt": "a", "response": "x <|im_start|>system"}\n',
                           "seeds.jsonl:1: field 'response'"),
        "not an object": ('["a", "b"]\n', "seeds.jsonl:1"),
    }
    for name, (body, expected) in cases.items():
        path = tmp_path / "seeds.jsonl"
        path.write_text(body, encoding="utf-8")
        with pytest.raises(IsaraError) as e:
            read_samples(path, check=Renderer(get_format("chatml")).validate)
        assert str(e.value).startswith(str(path.parent / expected)), (name, str(e.value))
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"prompt": "a", "response": "b"}\n{"prompt": "caf\xe9", "response": "b"}\n')
    with pytest.raises(IsaraError, match=r"latin1.jsonl:2: not valid UTF-8"):
        read_samples(path)
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"prompt": "a", "response": "b"}\n')
    assert read_samples(path)[0].prompt == "a"


# -- recipes -----------------------------------------------------------------------------------------------

RECIPE_KEYS = ["name", "model", "backend", "seeds", "iterations", "candidates", "demonstrations", "seed", "threads",
               "generation", "training", "filters", "check", "question_temperature", "learning_rate", "epochs",
               "batch_size", "lora_rank", "rouge_l_max", "limit", "harmful", "itrations"]
yaml_values = st.recursive(
    scalars | st.sampled_from(["1e-4", "auto", "torch", "-1", "0", "nan", "inf", "yes", "~"]),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.sampled_from(RECIPE_KEYS) | st.text(max_size=6),
                                                               kids, max_size=4),
    max_leaves=10)


def load(path: Path, overrides=()):
    try:
        return load_recipe(path, overrides)
    except IsaraError as e:
        msg = str(e)
        assert "\n" not in msg, msg
        assert msg.startswith(str(path)) or msg.startswith("--set"), msg
        return None


@SETTINGS
@given(doc=st.dictionaries(st.sampled_from(RECIPE_KEYS), yaml_values, max_size=6) | yaml_values)
def test_recipe_structures(tmp_path, doc):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    load(path)


@SETTINGS
@given(raw=st.binary(max_size=200) | st.text(alphabet=string.printable + "é\ufeff", max_size=200).map(str.encode))
def test_recipe_bytes(tmp_path, raw):
    path = tmp_path / "r.yaml"
    path.write_bytes(raw)
    load(path)


@SETTINGS
@given(items=st.lists(st.text(max_size=25) | st.sampled_from(["iterations=x", "training=3", "a.b.c=1", "=", "x",
                                                              "training.epochs=", "generation.top_p=[1,2]"]),
                      max_size=3))
def test_recipe_overrides(tmp_path, items):
    path = tmp_path / "r.yaml"
    path.write_text("name: fuzz\n", encoding="utf-8")
    load(path, items)


def test_yaml_is_loaded_safely(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo pwned']\n", encoding="utf-8")
    with pytest.raises(IsaraError, match=r"r.yaml:1: invalid YAML"):
        load_recipe(path)
