"""Conversation rendering per model card, and cutting generated text at the next turn.

Instruct models see their own chat template: the demonstrations are earlier turns of one
conversation. Base models see the paper's plain transcript, one conversation per pair.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import IsaraError


@dataclass(frozen=True)
class ChatFormat:
    name: str
    user_open: str
    user_close: str
    assistant_open: str
    assistant_close: str
    system: str = ""  # how a system message is written, with {content}
    conversation_open: str = ""
    conversation_close: str = ""
    one_conversation_per_pair: bool = False  # the paper's transcript: each demo is its own conversation
    pair_separator: str = ""
    stops: tuple[str, ...] = ()


FORMATS = {
    f.name: f
    for f in [
        ChatFormat(
            "transcript",
            user_open="USER: ", user_close=" ", assistant_open="ASSISTANT: ", assistant_close=" ",
            conversation_open="BEGINNING OF CONVERSATION: ", conversation_close="END OF CONVERSATION",
            one_conversation_per_pair=True, pair_separator="\n\n",
            stops=("END OF CONVERSATION", "BEGINNING OF CONVERSATION", "USER:", "ASSISTANT:"),
        ),
        ChatFormat(
            "chatml",
            user_open="<|im_start|>user\n", user_close="<|im_end|>\n",
            assistant_open="<|im_start|>assistant\n", assistant_close="<|im_end|>\n",
            system="<|im_start|>system\n{content}<|im_end|>\n",
            stops=("<|im_end|>", "<|im_start|>", "<|endoftext|>"),
        ),
        ChatFormat(
            "gemma",
            user_open="<start_of_turn>user\n", user_close="<end_of_turn>\n",
            assistant_open="<start_of_turn>model\n", assistant_close="<end_of_turn>\n",
            stops=("<end_of_turn>", "<start_of_turn>", "<eos>"),
        ),
        ChatFormat(
            "llama2",
            user_open="[INST] ", user_close=" [/INST]", assistant_open=" ", assistant_close=" </s><s>",
            system="[INST] <<SYS>>\n{content}\n<</SYS>>\n\n[/INST] ok </s><s>",
            stops=("[INST]", "[/INST]", "</s>"),
        ),
        ChatFormat(
            "llama3",
            user_open="<|start_header_id|>user<|end_header_id|>\n\n", user_close="<|eot_id|>",
            assistant_open="<|start_header_id|>assistant<|end_header_id|>\n\n", assistant_close="<|eot_id|>",
            system="<|start_header_id|>system<|end_header_id|>\n\n{content}<|eot_id|>",
            stops=("<|eot_id|>", "<|start_header_id|>", "<|end_of_text|>"),
        ),
    ]
}

# Markers of a new turn in any format; generated text is cut at the first one (ISARA step 1).
TURN_MARKERS = tuple(dict.fromkeys(m for f in FORMATS.values() for m in f.stops))


def get_format(name: str) -> ChatFormat:
    if name not in FORMATS:
        raise IsaraError(f"unknown chat format '{name}'; known: {', '.join(FORMATS)}")
    return FORMATS[name]


class Renderer:
    """Turns demonstrations and questions into prompt strings for one model's format."""

    def __init__(self, fmt: ChatFormat, system: str | None = None):
        self.fmt = fmt
        self.head = fmt.system.format(content=system) if system and fmt.system else ""

    def _pair(self, q: str, a: str) -> str:
        f = self.fmt
        turn = f"{f.user_open}{q}{f.user_close}{f.assistant_open}{a}{f.assistant_close}"
        if f.one_conversation_per_pair:
            return f"{f.conversation_open}{turn}{f.conversation_close}{f.pair_separator}"
        return turn

    def _open(self) -> str:
        f = self.fmt
        return f"{f.conversation_open}{f.user_open}" if f.one_conversation_per_pair else f.user_open

    def _demos(self, demos) -> str:
        head = self.head if not self.fmt.one_conversation_per_pair else ""
        if not self.fmt.one_conversation_per_pair:
            head += self.fmt.conversation_open
        return head + "".join(self._pair(d.prompt, d.response) for d in demos)

    def question_prompt(self, demos) -> str:
        """ISARA step 1: the demos, then an open user turn for the model to fill."""
        return self._demos(demos) + self._open()

    def answer_prompt(self, demos, question: str) -> str:
        """ISARA step 2: the retrieved demos, the new question, then the assistant marker."""
        return self._demos(demos) + self.chat_prompt(question, head=False)

    def chat_prompt(self, question: str, head: bool = True) -> str:
        """A single-turn prompt: what training and evaluation condition the answer on."""
        f = self.fmt
        start = (self.head + f.conversation_open) if head and not f.one_conversation_per_pair else ""
        return start + self._open() + f"{question}{f.user_close}{f.assistant_open}"

    def validate(self, text: str, loc: str) -> None:
        """Seed text must not carry turn markers of any format: in this format's they break the
        conversation, and generated text is cut at all of them, so a demo carrying one teaches cut output."""
        for marker in (*self.fmt.stops, *TURN_MARKERS):
            if marker in text:
                owner = next(f.name for f in FORMATS.values() if marker in f.stops)
                raise IsaraError(f"{loc} contains '{marker}', a turn marker of the '{owner}' chat format; "
                                 f"seed text must not contain turn markers")


def cut(text: str, markers=TURN_MARKERS) -> str:
    """Keep what comes before the first marker of a new turn or role, stripped."""
    end = len(text)
    for m in markers:
        i = text.find(m)
        if i != -1:
            end = min(end, i)
    return text[:end].strip()


def sentences(text: str) -> list[str]:
    """TEXT's sentences: split after ".", "!" or "?" followed by a space, and at line breaks."""
    return [x.strip() for x in _SENTENCE.split(text) if x.strip()] or [text]


_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
