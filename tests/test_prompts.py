"""Rendering of demonstrations per chat format, and cutting generated text (isara_lite.prompts)."""

from __future__ import annotations

import re

import pytest

from isara_lite.data import Sample
from isara_lite.errors import IsaraError
from isara_lite.prompts import FORMATS, TURN_MARKERS, Renderer, cut, get_format

DEMOS = [Sample(prompt="Q1?", response="A1.", id="d1"), Sample(prompt="Q2?", response="A2.", id="d2")]
SYSTEM = "You are helpful."
SYS_HEAD = "<|im_start|>system\nYou are helpful.<|im_end|>\n"
CHATML_DEMOS = ("<|im_start|>user\nQ1?<|im_end|>\n<|im_start|>assistant\nA1.<|im_end|>\n"
                "<|im_start|>user\nQ2?<|im_end|>\n<|im_start|>assistant\nA2.<|im_end|>\n")


# -- chatml ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("system,head", [(None, ""), (SYSTEM, SYS_HEAD)], ids=["no_system", "system"])
def test_chatml_question_prompt(system, head):
    r = Renderer(get_format("chatml"), system=system)
    assert r.question_prompt(DEMOS) == head + CHATML_DEMOS + "<|im_start|>user\n"


@pytest.mark.parametrize("system,head", [(None, ""), (SYSTEM, SYS_HEAD)], ids=["no_system", "system"])
def test_chatml_answer_prompt(system, head):
    r = Renderer(get_format("chatml"), system=system)
    assert r.answer_prompt(DEMOS, "New q?") == (
        head + CHATML_DEMOS + "<|im_start|>user\nNew q?<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize("system,head", [(None, ""), (SYSTEM, SYS_HEAD)], ids=["no_system", "system"])
def test_chatml_chat_prompt(system, head):
    r = Renderer(get_format("chatml"), system=system)
    assert r.chat_prompt("New q?") == head + "<|im_start|>user\nNew q?<|im_end|>\n<|im_start|>assistant\n"
    # without the head: what answer_prompt appends after the demos
    assert r.chat_prompt("New q?", head=False) == "<|im_start|>user\nNew q?<|im_end|>\n<|im_start|>assistant\n"


def test_chatml_empty_demos():
    r = Renderer(get_format("chatml"), system=SYSTEM)
    assert r.question_prompt([]) == SYS_HEAD + "<|im_start|>user\n"
    assert r.answer_prompt([], "q") == r.chat_prompt("q")


def test_answer_prompt_is_demos_plus_chat_prompt_for_every_format():
    """Training and evaluation condition on chat_prompt; answer generation must end the same way."""
    for name, fmt in FORMATS.items():
        r = Renderer(fmt, system=SYSTEM)
        assert r.answer_prompt([], "Why?") == r.chat_prompt("Why?"), name
        assert r.answer_prompt(DEMOS, "Why?").endswith(r.chat_prompt("Why?", head=False)), name


# -- the paper's transcript -------------------------------------------------------------------------

TRANSCRIPT_DEMOS = ("BEGINNING OF CONVERSATION: USER: Q1? ASSISTANT: A1. END OF CONVERSATION\n\n"
                    "BEGINNING OF CONVERSATION: USER: Q2? ASSISTANT: A2. END OF CONVERSATION\n\n")


def test_transcript_question_prompt():
    r = Renderer(get_format("transcript"))
    p = r.question_prompt(DEMOS)
    assert p == TRANSCRIPT_DEMOS + "BEGINNING OF CONVERSATION: USER: "
    assert p.endswith("BEGINNING OF CONVERSATION: USER: ")


def test_transcript_answer_and_chat_prompt():
    r = Renderer(get_format("transcript"))
    assert r.answer_prompt(DEMOS, "New q?") == TRANSCRIPT_DEMOS + "BEGINNING OF CONVERSATION: USER: New q? ASSISTANT: "
    assert r.chat_prompt("New q?") == "BEGINNING OF CONVERSATION: USER: New q? ASSISTANT: "


def test_transcript_ignores_system():
    """The transcript format has no system slot: a card's system message must not leak in."""
    r = Renderer(get_format("transcript"), system=SYSTEM)
    assert r.head == ""
    assert r.question_prompt(DEMOS) == TRANSCRIPT_DEMOS + "BEGINNING OF CONVERSATION: USER: "
    assert SYSTEM not in r.chat_prompt("q")


def test_other_formats_chat_prompt():
    assert Renderer(get_format("gemma")).chat_prompt("Hi?") == \
        "<start_of_turn>user\nHi?<end_of_turn>\n<start_of_turn>model\n"
    assert Renderer(get_format("llama3"), system="S").chat_prompt("Hi?") == (
        "<|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert Renderer(get_format("llama2")).answer_prompt(DEMOS[:1], "Hi?") == \
        "[INST] Q1? [/INST] A1. </s><s>[INST] Hi? [/INST] "


# -- cut --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("marker", TURN_MARKERS)
def test_cut_at_every_marker(marker):
    assert cut(f"  How do I fix a leaky tap? {marker} something else {marker} more") == \
        "How do I fix a leaky tap?"


@pytest.mark.parametrize("text,expected", [
    ("What is rain? END OF CONVERSATION\n\nBEGINNING OF CONVERSATION: USER: x", "What is rain?"),
    ("What is rain?<|im_end|>\n<|im_start|>assistant\nWater.", "What is rain?"),
    ("Water falls.\nUSER: next", "Water falls."),
    ("Answer one ASSISTANT: two", "Answer one"),
    ("Sure.<end_of_turn>\n<start_of_turn>user", "Sure."),
    ("Fine </s><s>[INST] more", "Fine"),
    ("Done<|eot_id|><|start_header_id|>user", "Done"),
    ("Done<|endoftext|>junk", "Done"),
    ("\n\n  No marker at all.  \n", "No marker at all."),
    ("<|im_end|>everything after", ""),
    ("", ""),
])
def test_cut_cases(text, expected):
    assert cut(text) == expected


def test_cut_earliest_marker_wins_regardless_of_order():
    # "USER:" comes before "<|im_end|>" in the text, though later in TURN_MARKERS
    assert cut("a USER: b <|im_end|> c") == "a"
    assert cut("a <|im_end|> b USER: c") == "a"


def test_cut_custom_markers():
    assert cut("one ### two", markers=("###",)) == "one"
    assert cut("one USER: two", markers=("###",)) == "one USER: two"


# -- validate, get_format -----------------------------------------------------------------------------

def test_validate_rejects_chatml_markers():
    r = Renderer(get_format("chatml"))
    with pytest.raises(IsaraError) as e:
        r.validate("hello <|im_start|>system", "seeds.jsonl:4: field 'prompt'")
    msg = str(e.value)
    assert msg.startswith("seeds.jsonl:4: field 'prompt' contains '<|im_start|>'")
    assert "'chatml'" in msg
    with pytest.raises(IsaraError, match="<\\|im_end\\|>"):
        r.validate("done<|im_end|>", "x")


def test_validate_accepts_clean_text_and_rejects_every_formats_markers():
    Renderer(get_format("chatml")).validate("Plain text, even with user: and <im_start> in it.", "x")
    # generated text is cut at every format's markers, so a seed with any of them is refused
    for fmt, marker in [("chatml", "USER:"), ("chatml", "ASSISTANT:"), ("transcript", "<|im_start|>"),
                        ("gemma", "[INST]"), ("llama3", "<end_of_turn>")]:
        with pytest.raises(IsaraError, match=re.escape(marker)):
            Renderer(get_format(fmt)).validate(f"text with {marker} inside", "x")


def test_get_format_known_and_unknown():
    assert get_format("chatml").name == "chatml"
    with pytest.raises(IsaraError) as e:
        get_format("alpaca")
    assert "unknown chat format 'alpaca'" in str(e.value)
    for name in ("transcript", "chatml", "gemma", "llama2", "llama3"):
        assert name in str(e.value)
