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


def padded_batches(seqs: list[tuple[list[int], int]], batch_size: int, pad_id: int):
    """Batches of continuation_tokens() results for a PyTorch forward, similar lengths together:
    yields (indices into seqs, ids, attention mask, keep) with keep[r, j] True where position j
    predicts a continuation token. Right-padded; batches with nothing to score are skipped."""
    import torch

    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        width = max(len(seqs[i][0]) for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        keep = torch.zeros((len(idx), width - 1), dtype=torch.bool)
        for row, i in enumerate(idx):
            toks, n_prompt = seqs[i]
            ids[row, :len(toks)] = torch.tensor(toks)
            mask[row, :len(toks)] = 1
            keep[row, max(n_prompt - 1, 0):len(toks) - 1] = True
        if keep.any():
            yield idx, ids, mask, keep


def row_logprobs(logits, ids, keep) -> list[float]:
    """Per row, the summed log-probability of the kept next tokens; logits are those at the kept
    positions only (logits[keep] of a [rows, width - 1, vocab] tensor), summed in float64."""
    import torch

    logp = torch.log_softmax(logits, -1).gather(1, ids[:, 1:][keep].unsqueeze(1)).squeeze(1)
    sums = torch.zeros(len(ids), dtype=torch.float64, device=logp.device)
    sums.index_add_(0, keep.nonzero()[:, 0], logp.double())
    return sums.tolist()
