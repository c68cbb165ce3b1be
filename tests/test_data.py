"""Readers and writers of seed / prompt files (isara_lite.data)."""

from __future__ import annotations

import csv
import json

import pytest

from isara_lite.data import Sample, read_prompts, read_records, read_samples, record_to_pair, write_samples
from isara_lite.errors import IsaraError

Q1, A1 = "How do I bake bread at home?", "Mix flour, water, yeast and salt, let it rise, then bake."
Q2, A2 = "What is the boiling point of water?", "At sea level, water boils at 100 degrees Celsius."


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_csv(path, header, rows):
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def pairs(samples):
    return [(s.prompt, s.response) for s in samples]


# -- every shape, as JSONL ------------------------------------------------------------------

SHAPE_RECORDS = {
    "prompt_response": [{"prompt": Q1, "response": A1}, {"prompt": Q2, "response": A2}],
    "prompt_completion": [{"prompt": Q1, "completion": A1}, {"prompt": Q2, "completion": A2}],
    "alpaca_no_input": [{"instruction": Q1, "input": "", "output": A1}, {"instruction": Q2, "output": A2}],
    "question_answer": [{"question": Q1, "answer": A1}, {"question": Q2, "answer": A2}],
    "messages_with_system": [
        {"messages": [{"role": "system", "content": "You are helpful."},
                      {"role": "user", "content": Q1}, {"role": "assistant", "content": A1}]},
        {"messages": [{"role": "user", "content": Q2}, {"role": "assistant", "content": A2}]},
    ],
}



def _shape_params():
    for name, rows in SHAPE_RECORDS.items():
        yield pytest.param(name, rows, id=name)


@pytest.mark.parametrize("name,rows", list(_shape_params()))
def test_jsonl_every_shape(tmp_path, name, rows):
    path = write_jsonl(tmp_path / "seeds.jsonl", rows)
    samples = read_samples(path)
    assert pairs(samples) == [(Q1, A1), (Q2, A2)]
    assert [s.id for s in samples] == ["seed-0", "seed-1"]
    assert all(s.source == "seed" and s.iteration == 0 for s in samples)


@pytest.mark.parametrize("name,rows", list(_shape_params()))
def test_json_list_every_shape(tmp_path, name, rows):
    path = tmp_path / "seeds.json"
    path.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    assert pairs(read_samples(path)) == [(Q1, A1), (Q2, A2)]


@pytest.mark.parametrize("name,rows", list(_shape_params()))
def test_json_data_wrapper_every_shape(tmp_path, name, rows):
    path = tmp_path / "seeds.json"
    path.write_text(json.dumps({"data": rows, "meta": {"v": 1}}), encoding="utf-8")
    assert pairs(read_samples(path)) == [(Q1, A1), (Q2, A2)]


def test_alpaca_with_input_joins_instruction_and_input(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [
        {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
    ])
    assert pairs(read_samples(path)) == [("Translate to French.\n\nGood morning", "Bonjour")]


def test_messages_takes_first_user_and_following_assistant(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [{"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "assistant", "content": "an assistant turn before any user turn is skipped"},
        {"role": "user", "content": "first user"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": "second user"},
        {"role": "assistant", "content": "second answer"},
    ]}])
    assert pairs(read_samples(path)) == [("first user", "first answer")]


def test_values_are_stripped_and_id_prefix(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [{"prompt": "  hi there \n", "response": "\thello  "}])
    [s] = read_samples(path, id_prefix="gen")
    assert (s.prompt, s.response, s.id) == ("hi there", "hello", "gen-0")


def test_jsonl_blank_lines_skipped_and_line_numbers_kept(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps({"prompt": Q1, "response": A1}) + "\n\n   \n"
                    + json.dumps({"prompt": Q2, "response": A2}) + "\n", encoding="utf-8")
    assert [n for n, _ in read_records(path)] == [1, 4]
    assert pairs(read_samples(path)) == [(Q1, A1), (Q2, A2)]


def test_ndjson_extension(tmp_path):
    path = write_jsonl(tmp_path / "s.ndjson", [{"question": Q1, "answer": A1}])
    assert pairs(read_samples(path)) == [(Q1, A1)]


# -- CSV --------------------------------------------------------------------------------------

@pytest.mark.parametrize("header,row_of", [
    (["prompt", "response"], lambda q, a: [q, a]),
    (["prompt", "completion"], lambda q, a: [q, a]),
    (["instruction", "input", "output"], lambda q, a: [q, "", a]),
    (["question", "answer"], lambda q, a: [q, a]),
], ids=["prompt_response", "prompt_completion", "alpaca", "question_answer"])
def test_csv_shapes(tmp_path, header, row_of):
    path = write_csv(tmp_path / "s.csv", header, [row_of(Q1, A1), row_of(Q2, A2)])
    assert pairs(read_samples(path)) == [(Q1, A1), (Q2, A2)]


def test_csv_quoted_commas_and_newlines(tmp_path):
    q, a = "Name three fruits, please.", "Apples,\npears\nand plums."
    path = write_csv(tmp_path / "s.csv", ["prompt", "response"], [[q, a]])
    assert pairs(read_samples(path)) == [(q, a)]


def test_csv_missing_column_names_field_and_line(tmp_path):
    path = write_csv(tmp_path / "s.csv", ["prompt"], [["hello there"]])
    with pytest.raises(IsaraError, match=r"s\.csv:2: field 'response' is missing"):
        read_samples(path)


def test_tsv(tmp_path):
    path = tmp_path / "s.tsv"
    path.write_text(f"question\tanswer\n{Q1}\t{A1}\n", encoding="utf-8")
    assert pairs(read_samples(path)) == [(Q1, A1)]


# -- BOM ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv"])
def test_utf8_bom(tmp_path, suffix):
    path = tmp_path / f"bom{suffix}"
    if suffix == ".jsonl":
        text = json.dumps({"prompt": "Ça va? Où est la gare?", "response": "Très bien, merci."}) + "\n"
    elif suffix == ".json":
        text = json.dumps([{"prompt": "Ça va? Où est la gare?", "response": "Très bien, merci."}])
    else:
        text = "prompt,response\nÇa va? Où est la gare?,\"Très bien, merci.\"\n"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    assert pairs(read_samples(path)) == [("Ça va? Où est la gare?", "Très bien, merci.")]


# -- errors -------------------------------------------------------------------------------------

def test_invalid_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "file.jsonl"
    path.write_text(json.dumps({"prompt": Q1, "response": A1}) + "\n"
                    + json.dumps({"prompt": Q2, "response": A2}) + "\n"
                    + '{"prompt": "broken", "response": \n', encoding="utf-8")
    with pytest.raises(IsaraError) as e:
        read_samples(path)
    assert "file.jsonl:3" in str(e.value)
    assert "invalid JSON" in str(e.value)


def test_invalid_json_file_names_line(tmp_path):
    path = tmp_path / "file.json"
    path.write_text('[\n  {"prompt": "a", "response": "b"},\n  {"prompt": oops}\n]\n', encoding="utf-8")
    with pytest.raises(IsaraError, match=r"file\.json:3: invalid JSON"):
        read_samples(path)


def test_json_not_a_list(tmp_path):
    path = tmp_path / "file.json"
    path.write_text('{"prompt": "a", "response": "b"}', encoding="utf-8")
    with pytest.raises(IsaraError, match="must hold a list of records"):
        read_samples(path)


@pytest.mark.parametrize("record,field", [
    ({"prompt": Q1}, "response"),
    ({"instruction": Q1, "input": "x"}, "output"),
    ({"question": Q1}, "answer"),
])
def test_missing_field_names_field(tmp_path, record, field):
    path = write_jsonl(tmp_path / "s.jsonl", [{"prompt": Q2, "response": A2}, record])
    with pytest.raises(IsaraError) as e:
        read_samples(path)
    assert f"s.jsonl:2: field '{field}' is missing" in str(e.value)


def test_no_known_fields(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [{"text": "hello"}])
    with pytest.raises(IsaraError, match=r"s\.jsonl:1: no known fields.*\['text'\]"):
        read_samples(path)


def test_record_not_an_object(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [["a", "b"]])
    with pytest.raises(IsaraError, match=r"s\.jsonl:1: expected an object .* got list"):
        read_samples(path)


@pytest.mark.parametrize("record,field", [
    ({"prompt": 5, "response": A1}, "prompt"),
    ({"prompt": Q1, "response": None}, "response"),
    ({"prompt": Q1, "response": ["x"]}, "response"),
    ({"prompt": "   ", "response": A1}, "prompt"),
    ({"question": Q1, "answer": ""}, "answer"),
])
def test_non_string_or_empty_field(tmp_path, record, field):
    path = write_jsonl(tmp_path / "s.jsonl", [record])
    with pytest.raises(IsaraError) as e:
        read_samples(path)
    assert f"s.jsonl:1: field '{field}' must be a non-empty string" in str(e.value)


@pytest.mark.parametrize("messages,match", [
    ("not a list", "must be a list"),
    ([{"role": "user"}], r"messages\[0\]' must have 'role' and 'content'"),
    ([{"role": "user", "content": "hi"}], "needs a user turn followed by an assistant turn"),
    ([{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}],
     "needs a user turn followed by an assistant turn"),
])
def test_bad_messages(tmp_path, messages, match):
    path = write_jsonl(tmp_path / "s.jsonl", [{"messages": messages}])
    with pytest.raises(IsaraError, match=match):
        read_samples(path)


def test_non_utf8_names_line(tmp_path):
    path = tmp_path / "s.jsonl"
    good = json.dumps({"prompt": Q1, "response": A1}).encode() + b"\n"
    path.write_bytes(good + good + b'{"prompt": "caf\xe9", "response": "x"}\n')
    with pytest.raises(IsaraError) as e:
        read_samples(path)
    assert "s.jsonl:3" in str(e.value)
    assert "not valid UTF-8" in str(e.value)


def test_unknown_extension(tmp_path):
    path = tmp_path / "seeds.txt"
    path.write_text("prompt,response\na,b\n", encoding="utf-8")
    with pytest.raises(IsaraError, match=r"unknown format '\.txt'"):
        read_samples(path)


def test_missing_file(tmp_path):
    with pytest.raises(IsaraError, match="no such file"):
        read_samples(tmp_path / "nope.jsonl")


@pytest.mark.parametrize("name,content", [
    ("empty.jsonl", ""),
    ("blank.jsonl", "\n\n  \n"),
    ("empty.csv", ""),
    ("header_only.csv", "prompt,response\n"),
    ("empty_list.json", "[]"),
])
def test_empty_file_is_an_error(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(IsaraError, match="no records"):
        read_samples(path)


def test_empty_json_file_is_an_error(tmp_path):
    path = tmp_path / "empty.json"
    path.write_text("", encoding="utf-8")
    with pytest.raises(IsaraError, match=r"empty\.json:1: invalid JSON"):
        read_samples(path)


def test_record_to_pair_direct():
    assert record_to_pair({"prompt": " a ", "response": " b "}, "x:1") == ("a", "b")
    with pytest.raises(IsaraError, match=r"^x:1: expected an object"):
        record_to_pair("text", "x:1")


# -- writers --------------------------------------------------------------------------------------

SAMPLES = [Sample(prompt=Q1, response=A1, id="a"), Sample(prompt="Ünïcode “quotes”?", response="Ja — klar.", id="b")]


def test_write_messages_shape_and_round_trip(tmp_path):
    path = tmp_path / "out" / "train.jsonl"
    write_samples(path, SAMPLES, shape="messages")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert rows[0] == {"messages": [{"role": "user", "content": Q1}, {"role": "assistant", "content": A1}]}
    assert "Ünïcode" in path.read_text(encoding="utf-8")  # not \u-escaped
    assert pairs(read_samples(path)) == pairs(SAMPLES)


def test_write_completions_shape(tmp_path):
    path = tmp_path / "train.jsonl"
    write_samples(path, SAMPLES, shape="completions")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert rows == [{"prompt": Q1, "completion": A1}, {"prompt": "Ünïcode “quotes”?", "completion": "Ja — klar."}]


def test_write_completions_round_trip(tmp_path):
    path = tmp_path / "train.jsonl"
    write_samples(path, SAMPLES, shape="completions")
    assert pairs(read_samples(path)) == pairs(SAMPLES)


def test_write_unknown_shape(tmp_path):
    with pytest.raises(IsaraError, match="unknown output shape 'alpaca'"):
        write_samples(tmp_path / "x.jsonl", SAMPLES, shape="alpaca")
    assert not (tmp_path / "x.jsonl").exists()


def test_sample_dict_round_trip():
    s = Sample(prompt="q", response="a", id="it1-3", source="generated", iteration=1,
               question_demos=["seed-0"], answer_demos=["seed-1"], verdicts={"rouge_l": True}, kept=True)
    d = s.to_dict()
    d["unexpected"] = 1
    assert Sample.from_dict(d) == s


# -- read_prompts ----------------------------------------------------------------------------------

def test_read_prompts_keeps_other_fields(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "How do I pick a lock?", "category": "crime"},
                                            {"prompt": "How do I boil an egg?"}])
    assert read_prompts(path) == [{"prompt": "How do I pick a lock?", "category": "crime"},
                                  {"prompt": "How do I boil an egg?"}]


def test_read_prompts_csv(tmp_path):
    path = write_csv(tmp_path / "p.csv", ["prompt", "id"], [["Hello?", "7"]])
    assert read_prompts(path) == [{"prompt": "Hello?", "id": "7"}]


@pytest.mark.parametrize("record", [{"question": "x"}, {"prompt": ""}, {"prompt": 3}, ["prompt"]])
def test_read_prompts_errors(tmp_path, record):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "fine"}, record])
    with pytest.raises(IsaraError, match=r"p\.jsonl:2: field 'prompt' must be a non-empty string"):
        read_prompts(path)


def test_read_prompts_bundled_heldout(repo):
    harmful = read_prompts(repo / "recipes" / "heldout" / "safety_harmful.jsonl")
    benign = read_prompts(repo / "recipes" / "heldout" / "safety_benign.jsonl")
    assert len(harmful) == len(benign) == 150  # issue 13: one standard error under 4 points
    assert all(r["prompt"].strip() for r in harmful + benign)
    assert len({r["prompt"].strip().lower() for r in harmful + benign}) == 300


@pytest.mark.parametrize("name", ["safety.jsonl", "instructions.jsonl", "truthfulness.jsonl"])
def test_bundled_seed_files_read(repo, name):
    samples = read_samples(repo / "recipes" / "seeds" / name)
    assert len(samples) >= 4
    assert len({s.id for s in samples}) == len(samples)


def test_safety_seeds_do_not_paraphrase_the_heldout_check(repo, embedder):
    """The built-in check measures generalization, so no seed may be a near copy of a held-out prompt
    (cosine 0.75, benchmarks/seed_overlap.py's line)."""
    seeds = [s.prompt for f in ("safety", "safety_boundary")
             for s in read_samples(repo / "recipes" / "seeds" / f"{f}.jsonl")]
    held = [r["prompt"] for f in ("safety_harmful", "safety_benign")
            for r in read_prompts(repo / "recipes" / "heldout" / f"{f}.jsonl")]
    sim = embedder(seeds) @ embedder(held).T
    i, j = divmod(int(sim.argmax()), sim.shape[1])
    assert sim[i, j] < 0.75, (seeds[i], held[j], float(sim[i, j]))
