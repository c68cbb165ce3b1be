"""Token boundaries for likelihood scoring, shared by the backends' score()."""

from __future__ import annotations

from typing import Callable


def continuation_tokens(encode: Callable[[str, bool], list[int]], prompt: str,
                        continuation: str) -> tuple[list[int], int]:
    """(token ids of prompt + continuation, how many of them are the prompt's).

    Tokenizing the joined text keeps the continuation tokenized as in running text; when the
    prompt's own tokens are not a prefix of that (a merge across the boundary), the continuation
    is tokenized on its own and appended, as lm-evaluation-harness does. `encode(text, bos)`."""
    p = encode(prompt, True)
    full = encode(prompt + continuation, True)
    if full[:len(p)] != p:
        full = p + encode(continuation, False)
    return full, len(p)
