"""Recipe loading, overrides and validation (isara_lite.recipe)."""

from __future__ import annotations


import pytest

from isara_lite.errors import IsaraError
from isara_lite.recipe import Recipe, load_recipe, parse_override, validate


def write(tmp_path, text, name="r.yaml"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_quickstart(repo):
    import yaml

    raw = yaml.safe_load((repo / "recipes" / "quickstart.yaml").read_text())
    r = load_recipe(repo / "recipes" / "quickstart.yaml")
    assert r.name == "quickstart"
    assert r.model == "smollm2-135m-instruct"
    assert (r.iterations, r.candidates, r.demonstrations, r.context_tokens) == (
        raw["iterations"], raw["candidates"], raw["demonstrations"], raw["context_tokens"])
    assert r.training.learning_rate == pytest.approx(float(raw["training"]["learning_rate"]))
    assert r.generation.answer_max_tokens == raw["generation"]["answer_max_tokens"]
    assert "top_p" not in raw["generation"] and r.generation.top_p == 0.95  # default kept where the file is silent
    assert r.filters.rouge_l_max == 0.7
    # paths resolve against the recipe's directory
    assert r.path(r.seeds) == repo / "recipes" / "seeds" / "safety.jsonl"
    assert r.path(r.seeds).is_file()
    assert r.path(r.check.harmful).is_file() and r.path(r.check.benign).is_file()
    assert r.path(None) is None


def test_no_file_gives_defaults():
    r = load_recipe(None)
    assert r == Recipe(base_dir=".")
    assert r.training.target_modules[0] == "q_proj"


def test_absolute_path_kept(tmp_path):
    r = load_recipe(write(tmp_path, f"seeds: {tmp_path}/s.jsonl\n"))
    assert r.path(r.seeds) == tmp_path / "s.jsonl"


def test_seeds_can_be_several_files_joined_in_order(tmp_path):
    """seeds: a list of files (the shipped 64 and the 35 boundary seeds, say), read in order with ids
    running on across them; one file reads as before."""
    import json

    from isara_lite.loop import load_seeds
    from isara_lite.prompts import Renderer, get_format

    for name, n in (("a", 3), ("b", 2)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"prompt": f"{name} question {i}?",
                                                                    "response": f"{name} answer {i}."}) + "\n"
                                                        for i in range(n)))
    renderer = Renderer(get_format("chatml"), None)
    r = load_recipe(write(tmp_path, "seeds: [a.jsonl, b.jsonl]\ndemonstrations: 2\niterations: 2\n"))
    assert r.seed_files() == [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    seeds = load_seeds(r, renderer)
    assert [s.prompt for s in seeds] == [f"a question {i}?" for i in range(3)] + [f"b question {i}?" for i in range(2)]
    assert [s.id for s in seeds] == [f"seed-{i}" for i in range(5)]
    r = load_recipe(write(tmp_path, "seeds: b.jsonl\ndemonstrations: 2\niterations: 2\n"), ["seeds=[b.jsonl,a.jsonl]"])
    assert [s.prompt for s in load_seeds(r, renderer)][:2] == ["b question 0?", "b question 1?"]
    r = load_recipe(write(tmp_path, "seeds: b.jsonl\ndemonstrations: 2\niterations: 2\n"))
    assert r.seed_files() == [tmp_path / "b.jsonl"] and len(load_seeds(r, renderer)) == 2
    for bad in ("[]", "[a.jsonl, 3]", "[' ']", "{a: 1}", "3"):
        with pytest.raises(IsaraError, match=r"\.seeds: expected a path or a non-empty list of paths"):
            load_recipe(write(tmp_path, f"seeds: {bad}\n"))
    with pytest.raises(IsaraError, match="fewer than demonstrations=6"):
        load_seeds(load_recipe(write(tmp_path, "seeds: [a.jsonl, b.jsonl]\n")), renderer)


def test_cells_are_keyed_on_the_seeds_content_one_file_as_before(tmp_path):
    """A one-file recipe's cells keep the key they had before seeds could be a list (sha256 of the
    file), so earlier compare folders are reused; a list keys on its files' joined content."""
    import hashlib

    import isara_lite.compare as cmp

    for name in ("a", "b"):
        (tmp_path / f"{name}.jsonl").write_text(f'{{"prompt": "{name}?", "response": "{name}."}}\n')
    one = load_recipe(None, [f"seeds={tmp_path}/a.jsonl"])
    both = load_recipe(None, [f"seeds=[{tmp_path}/a.jsonl,{tmp_path}/b.jsonl]"])
    swapped = load_recipe(None, [f"seeds=[{tmp_path}/b.jsonl,{tmp_path}/a.jsonl]"])
    key = cmp.row_key(both, "icl-knn")["seeds"]
    assert cmp.row_key(one, "icl-knn")["seeds"] == hashlib.sha256((tmp_path / "a.jsonl").read_bytes()).hexdigest()
    assert key not in (cmp.row_key(one, "icl-knn")["seeds"], cmp.row_key(swapped, "icl-knn")["seeds"])
    (tmp_path / "b.jsonl").write_text('{"prompt": "b, edited?", "response": "b."}\n')
    assert cmp.row_key(both, "icl-knn")["seeds"] != key
    assert "seeds" not in cmp.row_key(both, "pretrained")


def test_to_dict_has_no_base_dir(repo):
    d = load_recipe(repo / "recipes" / "quickstart.yaml").to_dict()
    assert "base_dir" not in d
    assert d["training"]["learning_rate"] == load_recipe(repo / "recipes" / "quickstart.yaml").training.learning_rate


def test_empty_file_is_defaults(tmp_path):
    r = load_recipe(write(tmp_path, "# nothing here\n"))
    assert r.iterations == 2 and r.base_dir == str(tmp_path)


# -- unknown keys, types ---------------------------------------------------------------------------

def test_unknown_top_level_key_suggests(tmp_path):
    p = write(tmp_path, "iteratons: 3\n")
    with pytest.raises(IsaraError) as e:
        load_recipe(p)
    assert str(e.value) == f"{p}: unknown key 'iteratons' (did you mean 'iterations'?)"


def test_unknown_nested_key_suggests(tmp_path):
    p = write(tmp_path, "training:\n  learnig_rate: 0.001\n")
    with pytest.raises(IsaraError) as e:
        load_recipe(p)
    msg = str(e.value)
    assert "training" in msg
    assert "unknown key 'learnig_rate'" in msg
    assert "(did you mean 'learning_rate'?)" in msg


def test_unknown_key_without_close_match(tmp_path):
    with pytest.raises(IsaraError) as e:
        load_recipe(write(tmp_path, "zzzzzz: 1\n"))
    assert "unknown key 'zzzzzz'" in str(e.value)
    assert "did you mean" not in str(e.value)


def test_base_dir_is_not_a_recipe_key(tmp_path):
    with pytest.raises(IsaraError, match="unknown key 'base_dir'"):
        load_recipe(write(tmp_path, "base_dir: /etc\n"))


@pytest.mark.parametrize("text,match", [
    ("iterations: two\n", r"iterations: expected int, got 'two'"),
    ("iterations: 2.5\n", r"iterations: expected int, got 2.5"),
    ("iterations: true\n", r"iterations: expected int, got True"),
    ("training:\n  learning_rate: fast\n", r"training\.learning_rate: expected float, got 'fast'"),
    ("training:\n  gradient_checkpointing: 1\n", r"gradient_checkpointing: expected bool, got 1"),
    ("training:\n  target_modules: q_proj\n", r"target_modules: expected list"),
    ("model: [a, b]\n", r"model: expected str, got \['a', 'b'\]"),
    ("check:\n  harmful: 5\n", r"check\.harmful: expected a path string, got 5"),
    ("training: 3\n", r"training: expected a mapping, got int"),
    ("candidates: -1\n", r"candidates: must not be negative"),
    ("gate:\n  features: tfidf\n", r"gate\.features must be minilm or model"),
    ("gate:\n  mode: answer\n", r"gate\.mode must be both or refuse"),
])
def test_wrong_type(tmp_path, text, match):
    with pytest.raises(IsaraError, match=match):
        load_recipe(write(tmp_path, text))


def test_int_accepted_for_float(tmp_path):
    r = load_recipe(write(tmp_path, "training:\n  learning_rate: 1\n  lora_alpha: 32\n"))
    assert r.training.learning_rate == 1.0 and isinstance(r.training.learning_rate, float)
    assert r.training.lora_alpha == 32.0 and isinstance(r.training.lora_alpha, float)


def test_not_a_mapping(tmp_path):
    with pytest.raises(IsaraError, match="a recipe must be a mapping"):
        load_recipe(write(tmp_path, "- a\n- b\n"))


def test_missing_recipe(tmp_path):
    with pytest.raises(IsaraError, match="no such recipe"):
        load_recipe(tmp_path / "nope.yaml")


def test_invalid_yaml_names_file_and_line(tmp_path):
    p = write(tmp_path, "name: x\niterations: 2\ntraining: [unclosed\n  epochs: 1\n", name="broken.yaml")
    with pytest.raises(IsaraError) as e:
        load_recipe(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}:")
    assert "invalid YAML" in msg
    assert "broken.yaml:" in msg


def test_invalid_yaml_reports_line_number(tmp_path):
    p = write(tmp_path, "name: x\nseed: 1\nmodel: [a, b\n", name="broken.yaml")
    with pytest.raises(IsaraError, match=r"broken\.yaml:\d+: invalid YAML"):
        load_recipe(p)


def test_non_utf8_recipe(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(IsaraError, match="not valid UTF-8"):
        load_recipe(p)


# -- --set overrides -----------------------------------------------------------------------------------

@pytest.mark.parametrize("item,keys,value", [
    ("iterations=3", ["iterations"], 3),
    ("training.learning_rate=0.0005", ["training", "learning_rate"], 0.0005),
    ("training.gradient_checkpointing=true", ["training", "gradient_checkpointing"], True),
    ("device=cpu", ["device"], "cpu"),
    ("name=my run", ["name"], "my run"),
    ("check.harmful=null", ["check", "harmful"], None),
    ("name=", ["name"], ""),
    ("model=a=b", ["model"], "a=b"),
    ("seeds=[unclosed", ["seeds"], "[unclosed"),  # not YAML: kept as text
    (" iterations =4", ["iterations"], 4),
])
def test_parse_override(item, keys, value):
    assert parse_override(item) == (keys, value)


def test_parse_override_needs_equals():
    with pytest.raises(IsaraError, match="--set iterations: expected key=value"):
        parse_override("iterations")


def test_overrides_applied_on_top_of_file(repo):
    r = load_recipe(repo / "recipes" / "quickstart.yaml", [
        "iterations=3", "training.learning_rate=0.0005", "training.epochs=1", "generation.top_k=0",
        "training.gradient_checkpointing=true", "device=cpu", "name=override-test",
        "training.target_modules=[q_proj, v_proj]", "check.limit=5",
    ])
    assert r.iterations == 3
    assert r.training.learning_rate == pytest.approx(5e-4)
    assert r.training.epochs == 1
    assert r.training.batch_size == 4 and r.training.grad_accum == 2  # untouched siblings kept from the file
    assert r.generation.top_k == 0
    assert r.training.gradient_checkpointing is True
    assert r.device == "cpu"
    assert r.name == "override-test"
    assert r.training.target_modules == ["q_proj", "v_proj"]
    assert r.check.limit == 5 and r.check.max_tokens == 40


def test_overrides_without_file():
    r = load_recipe(None, ["filters.min_words=3", "seed=7"])
    assert (r.filters.min_words, r.seed) == (3, 7)


def test_override_unknown_nested_key_suggests():
    with pytest.raises(IsaraError, match=r"unknown key 'learnig_rate' \(did you mean 'learning_rate'\?\)"):
        load_recipe(None, ["training.learnig_rate=0.1"])


def test_override_wrong_type():
    with pytest.raises(IsaraError, match=r"recipe\.iterations: expected int, got 'many'"):
        load_recipe(None, ["iterations=many"])


def test_override_into_non_section():
    with pytest.raises(IsaraError, match=r"--set iterations\.x=1: 'iterations' is not a section"):
        load_recipe(None, ["iterations=2", "iterations.x=1"])




def test_override_float_in_exponent_notation():
    assert load_recipe(None, ["training.learning_rate=1e-4"]).training.learning_rate == pytest.approx(1e-4)


def test_recipe_float_in_exponent_notation(tmp_path):
    r = load_recipe(write(tmp_path, "training:\n  learning_rate: 2e-4\n"))
    assert r.training.learning_rate == pytest.approx(2e-4)


def test_float_with_dot_in_exponent_notation_works():
    assert load_recipe(None, ["training.learning_rate=1.0e-4"]).training.learning_rate == pytest.approx(1e-4)


def test_override_numeric_looking_string():
    assert load_recipe(None, ["name=2024"]).name == "2024"


def test_empty_section(tmp_path):
    p = write(tmp_path, "check:\n  # harmful: heldout/h.jsonl\n")
    assert load_recipe(p, ["check.limit=3"]).check.limit == 3


# -- validate --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides,match", [
    (["iterations=0"], r"iterations must be at least 1"),
    (["candidates=0"], r"candidates must be at least 1"),
    (["demonstrations=0"], r"demonstrations must be at least 1"),
    (["iterations=5", "demonstrations=4"], r"demonstrations must be at least iterations"),
    (["filters.rouge_l_max=0"], r"filters\.rouge_l_max must be in \(0, 1\]"),
    (["filters.rouge_l_max=1.5"], r"filters\.rouge_l_max must be in \(0, 1\]"),
    (["generation.batch_size=0"], r"generation\.batch_size must be at least 1"),
    (["training.batch_size=0"], r"training\.batch_size must be at least 1"),
    (["training.schedule=linear"], r"training\.schedule must be cosine or constant"),
    (["device=tpu"], r"device must be auto, cpu or cuda"),
    (["training.shard=true"], r"training\.shard needs training\.processes > 1"),
    (["training.shard=true", "training.processes=4", "training.batch_size=2"],
     r"training\.shard needs training\.batch_size >= training\.processes"),
])
def test_validate_failures(overrides, match):
    with pytest.raises(IsaraError, match=match):
        load_recipe(None, overrides)


def test_validate_failure_names_the_file(tmp_path):
    p = write(tmp_path, "iterations: 0\n")
    with pytest.raises(IsaraError) as e:
        load_recipe(p)
    assert str(e.value) == f"{p}: iterations must be at least 1"


def test_validate_boundaries_pass():
    validate(load_recipe(None, ["iterations=4", "demonstrations=4", "filters.rouge_l_max=1"]), "x")
    r = Recipe()
    r.demonstrations = 1
    with pytest.raises(IsaraError, match=r"^where: demonstrations must be at least iterations"):
        validate(r, "where")
