"""What the bundled model makes of a reply to its request: its hidden states after LAYER while it
reads "Request: ... Reply: ... Does the reply refuse ...?", the mean over the reply's tokens and the
state at the last token. A linear probe on them sees what an embedding of the reply alone misses:
whether what follows a "no" still does what was asked (README, Evaluation). Read with transformers
on the CPU, one text at a time (no padding to get wrong), and only up to LAYER."""

from __future__ import annotations

import numpy as np

from .judges import REFUSAL_QUESTION

MODEL = "smollm2-135m-instruct"  # bundled with isara_lite, so the judge stays offline
# Chosen by 5-fold cross-validated F1 on the 1,836 of the first six files of judges.FITTED_ON among layers 6-30 (README, Evaluation)
LAYER = 18
PROMPT_CHARS, REPLY_CHARS = 600, 1200
QUESTION = REFUSAL_QUESTION  # what the LLM judge asks too
HEAD = QUESTION[:QUESTION.index("{response}")]  # up to the reply, the request filled in


class _Reached(Exception):
    """Raised by the hook once LAYER has run: the layers above it are not needed."""


class ReplyStates:
    _loaded: dict[tuple[str, int], "ReplyStates"] = {}

    def __init__(self, model: str = MODEL, layer: int = LAYER):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ..models import load_card
        from ..prompts import Renderer, get_format

        card = load_card(model)
        self.name, self.layer = model, layer
        self.renderer = Renderer(get_format(card.chat_format), card.system)
        self.tok = AutoTokenizer.from_pretrained(card.hf_source(), trust_remote_code=card.trust_remote_code)
        self.model = AutoModelForCausalLM.from_pretrained(card.hf_source(), dtype=torch.float32, use_safetensors=True,
                                                          trust_remote_code=card.trust_remote_code).eval()
        self.hidden = self.model.config.hidden_size
        self.model.model.layers[layer - 1].register_forward_hook(self._keep)
        self.out, self.reading = None, False

    @classmethod
    def of(cls, model: str = MODEL, layer: int = LAYER) -> "ReplyStates":
        if (model, layer) not in cls._loaded:
            cls._loaded[(model, layer)] = cls(model, layer)
        return cls._loaded[(model, layer)]

    def _keep(self, module, args, output):
        if self.reading:  # other forwards of this model run whole
            self.out = output[0] if isinstance(output, tuple) else output
            raise _Reached

    def __call__(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        """[n, 2 * hidden]: the mean of the reply's states, then the last token's."""
        import torch

        rows = []
        with torch.no_grad():
            for prompt, response in zip(prompts, responses, strict=True):
                reply, head = response[:REPLY_CHARS], HEAD.format(prompt=(prompt or "")[:PROMPT_CHARS])
                text = self.renderer.chat_prompt(head + QUESTION[len(HEAD):].format(response=reply))
                start = text.index(head) + len(head)  # after the request, which may itself say "Reply: "
                enc = self.tok(text, return_tensors="pt", return_offsets_mapping=True)
                spans = enc.pop("offset_mapping")[0]
                inside = ((spans[:, 0] >= start) & (spans[:, 1] <= start + len(reply))).numpy()
                try:
                    self.reading = True
                    self.model(**enc, use_cache=False)
                except _Reached:
                    pass
                finally:
                    self.reading = False
                h = self.out[0].float().numpy()
                mean = h[inside].mean(0) if inside.any() else h[-1]  # an empty reply has no tokens of its own
                rows.append(np.concatenate([mean, h[-1]]))
        return np.stack(rows) if rows else np.zeros((0, 2 * self.hidden), np.float32)
