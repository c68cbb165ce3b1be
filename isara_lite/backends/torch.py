"""Plain PyTorch backend: transformers for generation, PEFT LoRA for training. CPU or CUDA."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from transformers import LogitsProcessor

from ..adapters import require_peft
from ..distributed import all_reduce_sum, full_tensors, process_group, shard
from ..errors import IsaraError
from ..training import IGNORE, TrainResult, fit
from .base import Generation, Sampling, default_threads, resolve_precision
from .decode import cache_keyword, sample
from .scoring import continuation_tokens, padded_batches, row_logprobs


class RecentRepetitionPenalty(LogitsProcessor):
    """Repetition penalty over the last n tokens only, as llama.cpp does (repeat_last_n).

    transformers' own penalty covers the whole prompt; with 1000 tokens of demonstrations that
    bans most common words and a small model answers in word salad.
    """

    def __init__(self, penalty: float, last_n: int):
        self.penalty, self.last_n = penalty, last_n

    def __call__(self, input_ids, scores):
        recent = input_ids[:, -self.last_n:]
        picked = scores.gather(1, recent)
        picked = torch.where(picked < 0, picked * self.penalty, picked / self.penalty)
        return scores.scatter(1, recent, picked)


def generate_kwargs(tok, sampling: Sampling, stop_ids: list[int], stop_strings: list[str]) -> dict:
    """model.generate arguments for our Sampling (0 temperature: greedy). The unsloth backend
    generates this way; this backend samples in decode.py, which the tests hold to generate."""
    greedy = sampling.temperature <= 0
    kwargs = dict(max_new_tokens=sampling.max_tokens, do_sample=not greedy, eos_token_id=stop_ids,
                  pad_token_id=tok.pad_token_id)
    if sampling.repetition_penalty != 1.0:
        kwargs["logits_processor"] = [RecentRepetitionPenalty(sampling.repetition_penalty, sampling.repeat_last_n)]
    if not greedy:
        kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k)
    if stop_strings:
        kwargs.update(stop_strings=stop_strings, tokenizer=tok)
    return kwargs


def decode_rows(tok, out, attention_mask, stop_ids, stop_strings) -> list[Generation]:
    """Generations from model.generate's left-padded output: each row ends at its first stop token
    or padding, and its text before the first stop string (transformers stops after one)."""
    results = []
    for i, row in enumerate(out[:, attention_mask.shape[1]:]):
        ids = row.tolist()
        n = next((j for j, t in enumerate(ids) if t in stop_ids or t == tok.pad_token_id), len(ids))
        text = tok.decode(ids[:n], skip_special_tokens=False)
        for stop in stop_strings:
            text = text.split(stop, 1)[0]
        results.append(Generation(text, int(attention_mask[i].sum()), n))
    return results


# Model types whose cached forward was checked to give the full batch's loss and gradients
# (tests/test_torch_backend.py); others take the plain path.
SHARED_PREFIX_MODELS = {"llama"}
MIN_SHARED_PREFIX = 8  # a few tokens are not worth a second forward call (a guess; not measured)


def shared_prefix(ids, labels) -> int:
    """Tokens at the start that every row has and whose next-token labels are all masked (prompt),
    so no logit is needed inside it; one token short of the shortest row."""
    same = (ids == ids[:1]).all(dim=0) & (labels == IGNORE).all(dim=0)
    n = int(same.long().cumprod(0).sum())  # length of the leading all-true run
    return max(0, min(n - 1, ids.shape[1] - 2))


def answer_loss(model, ids, labels, mask, share_prefix: bool = True, reduction: str = "mean"):
    """Next-token loss on answer tokens only. The vocabulary projection runs only where a label
    is kept: on short answers after long prompts that is most of the saving. A prompt prefix
    that every row of the batch shares (the system message and turn opening of the chat
    template: 23 of about 80 tokens per quickstart example) runs once, as a cache the rows
    attend to; gradients flow through it, so the loss and gradients are those of the full batch."""
    inner = model.get_base_model()
    n = shared_prefix(ids, labels) if share_prefix and inner.config.model_type in SHARED_PREFIX_MODELS else 0
    checkpointing = getattr(inner, "is_activation_checkpointing", None)  # transformers' newer name, if it has it
    if checkpointing is None:
        checkpointing = getattr(inner, "is_gradient_checkpointing", False)
    if n >= MIN_SHARED_PREFIX and not checkpointing:
        from transformers import DynamicCache

        cache = DynamicCache(config=inner.config)
        name = cache_keyword(type(inner.model))
        inner.model(input_ids=ids[:1, :n], use_cache=True, **{name: cache})
        cache.batch_repeat_interleave(ids.shape[0])
        positions = torch.arange(n, ids.shape[1], device=ids.device).expand(ids.shape[0], -1)
        hidden = inner.model(input_ids=ids[:, n:], attention_mask=mask, use_cache=True, position_ids=positions,
                             **{name: cache}).last_hidden_state[:, :-1]
        target = labels[:, n + 1:]
    else:
        hidden = inner.model(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1]
        target = labels[:, 1:]
    keep = target != IGNORE
    logits = inner.lm_head(hidden[keep]).float()
    cap = getattr(inner.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return torch.nn.functional.cross_entropy(logits, target[keep], reduction=reduction)


def pad_rows(batch, pad: int, device):
    """(ids, labels, attention mask) of (ids, labels) rows, right-padded to the longest."""
    width = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), width), pad, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, (x, y) in enumerate(batch):
        ids[i, : len(x)] = torch.tensor(x)
        labels[i, : len(y)] = torch.tensor(y)
        mask[i, : len(x)] = 1
    return ids.to(device), labels.to(device), mask.to(device)


class TorchBackend:
    name = "torch"

    def __init__(self, card, threads: int = 0, device: str = "auto", seed: int = 0):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.threads = default_threads(threads)
        torch.set_num_threads(self.threads)
        self.device = "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
        self.dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        self.seed = seed
        source = card.hf_source()
        try:
            self.tok = AutoTokenizer.from_pretrained(source, trust_remote_code=card.trust_remote_code)
            model = AutoModelForCausalLM.from_pretrained(
                source, dtype=self.dtype, trust_remote_code=card.trust_remote_code, use_safetensors=True)
        except OSError as e:
            raise IsaraError(f"model '{card.name}' could not be loaded from {source}: {str(e).splitlines()[0]}") from None
        self.model = model.to(self.device).eval()
        if self.tok.pad_token_id is None:
            self.tok.pad_token = self.tok.eos_token
        self.adapter: Path | None = None

    # -- generation ----------------------------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        return len(self.tok(text, add_special_tokens=True)["input_ids"])

    def generate(self, prompts: list[str], sampling: Sampling) -> list[Generation]:
        if not prompts or sampling.max_tokens <= 0:
            return [Generation("", self.count_tokens(p), 0) for p in prompts]
        self.tok.padding_side = "left"
        batch = self.tok(prompts, return_tensors="pt", padding=True, add_special_tokens=True).to(self.device)
        stop_ids, stop_strings = self._stops(sampling.stop)
        penalty = None
        if sampling.repetition_penalty != 1.0:
            penalty = RecentRepetitionPenalty(sampling.repetition_penalty, sampling.repeat_last_n)
        return sample(self.model, self.tok, batch["input_ids"], batch["attention_mask"], sampling, stop_ids,
                      stop_strings, penalty)

    def _stops(self, stops) -> tuple[list[int], list[str]]:
        """Stops that are special tokens (chat markers) end generation as EOS does, which is cheap;
        any other stop is matched as text, since the model may write it inside a longer token."""
        special = {*self.tok.all_special_tokens, *self.tok.get_added_vocab()}
        ids, strings = [self.tok.eos_token_id], []
        for s in stops:
            if s in special:
                ids.append(self.tok.convert_tokens_to_ids(s))
            else:
                strings.append(s)
        return list(dict.fromkeys(ids)), strings

    # -- adapters ------------------------------------------------------------------------------
    def _base(self):
        from peft import PeftModel

        if isinstance(self.model, PeftModel):
            self.model = self.model.unload()  # drop the LoRA layers, keep the base weights untouched
        return self.model

    def load(self, adapter: Path | None) -> None:
        from peft import PeftModel

        if adapter is not None:
            require_peft(adapter)  # before unloading: a bad path leaves the loaded adapter in place
        base = self._base()
        if adapter is not None:
            self.model = PeftModel.from_pretrained(base, str(adapter), is_trainable=False).eval()
        self.adapter = Path(adapter) if adapter else None

    # -- training ------------------------------------------------------------------------------
    def train(self, examples, config, learning_rate, adapter_in, adapter_out, on_step=None) -> TrainResult:
        """Step 4 (training.fit) on this model; the new adapter is loaded after."""
        steps = TorchSteps(self, config, learning_rate, adapter_in)
        result = fit(steps, examples, config, learning_rate, adapter_out, self.seed, on_step)
        if config.gradient_checkpointing:
            steps.model.gradient_checkpointing_disable()
        self.model = steps.model.eval()
        self.adapter = Path(adapter_out)
        return result

    def train_preference(self, pairs, pref, config, learning_rate, adapter_in, adapter_out, on_step=None) -> TrainResult:
        """The preference step (isara_lite/preference.py) on this model; the new adapter is loaded after."""
        from ..preference import train_dpo

        if adapter_in is not None:
            require_peft(adapter_in)
        precision, _ = resolve_precision(config.precision, self.device, 2 * pref.batch_size)  # chosen + rejected rows
        model, result = train_dpo(self._base(), self.tok, pairs, pref, config, learning_rate, adapter_in, adapter_out,
                                  self.seed, self.device, precision == "bf16", on_step)
        self.model = model.eval()
        self.adapter = Path(adapter_out)
        return result

    # -- likelihood scoring (evaluation) -------------------------------------------------------
    def score(self, pairs: list[tuple[str, str]], batch_size: int = 8) -> list[float]:
        """Sum of log p(continuation tokens | prompt) per pair, under the loaded adapter; batched,
        right-padded, and the vocabulary projection only at the continuation's positions."""
        torch = self.torch

        def encode(text, bos):
            return self.tok(text, add_special_tokens=bos)["input_ids"]

        seqs = [continuation_tokens(encode, p, c) for p, c in pairs]
        out = [0.0] * len(seqs)
        inner = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        cap = getattr(inner.config, "final_logit_softcapping", None)
        for idx, ids, mask, keep in padded_batches(seqs, batch_size, self.tok.pad_token_id):
            ids, mask, keep = ids.to(self.device), mask.to(self.device), keep.to(self.device)
            with torch.inference_mode():
                hidden = inner.model(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1]
                logits = inner.lm_head(hidden[keep]).float()
                if cap:
                    logits = torch.tanh(logits / cap) * cap
                totals = row_logprobs(logits, ids, keep)
            for i, total in zip(idx, totals):
                out[i] = total
        return out


class TorchSteps:
    """The primitives of step 4 (training.LoraSteps) for the torch backend: its model with LoRA
    attached, AdamW on the LoRA weights, bf16 autocast where the precision asks for it."""

    def __init__(self, backend: TorchBackend, config, learning_rate: float, adapter_in):
        from peft import LoraConfig, PeftModel, get_peft_model

        if adapter_in is not None:
            require_peft(adapter_in)
        precision, _ = resolve_precision(config.precision, backend.device, config.batch_size)
        if precision == "fp32" and backend.dtype != torch.float32:
            raise IsaraError(f"training.precision fp32: the torch backend holds this model in {backend.dtype} on "
                             f"{backend.device}; use precision auto or bf16")
        self.backend = backend
        base = backend._base()
        torch.manual_seed(backend.seed)  # LoRA init and dropout: a resumed run must train the same adapter
        if adapter_in is not None:
            model = PeftModel.from_pretrained(base, str(adapter_in), is_trainable=True)
        else:
            lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                              target_modules=list(config.target_modules), task_type="CAUSAL_LM")
            model = get_peft_model(base, lora)
        if config.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            model.enable_input_require_grads()
        self.rank, self.world = process_group()
        self.sharded = config.shard and self.world > 1
        if self.sharded:
            shard(model)
        self.model = model.train()
        backend.model = model  # a failed step leaves the backend on this model; load() unloads it
        # bf16 matmuls (oneDNN's AMX / avx512_bf16 kernels on CPU); weights, LoRA, optimizer stay fp32
        self.autocast = torch.autocast("cpu", dtype=torch.bfloat16) \
            if precision == "bf16" and backend.device == "cpu" else contextlib.nullcontext()
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=learning_rate, weight_decay=0.0)

    def encode(self, prompt: str, answer: str):
        tok = self.backend.tok
        return (tok(prompt, add_special_tokens=True)["input_ids"], tok(answer, add_special_tokens=False)["input_ids"],
                tok.eos_token_id)

    def backward(self, rows, scored: int, scale: float) -> float:
        ids, labels, mask = pad_rows(rows, self.backend.tok.pad_token_id, self.backend.device)
        with self.autocast:
            # a shared prefix's cache carries gradients around FSDP's hooks, which then miss the gather
            loss = answer_loss(self.model, ids, labels, mask, share_prefix=not self.sharded, reduction="sum") / scored
        (loss * scale * (self.world if self.sharded else 1)).backward()  # FSDP averages; we want the sum
        return loss.item()

    def update(self, lr: float, loss: float, tokens: int) -> tuple[float, int, float]:
        if self.world > 1:
            loss, tokens = all_reduce_sum([] if self.sharded else self.params, loss, tokens, self.backend.device)
        norm = torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        if hasattr(norm, "full_tensor"):  # a sharded model's norm is a DTensor
            norm = norm.full_tensor()
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss, tokens, float(norm)

    def save(self, directory: Path | None) -> None:
        state = full_tensors(self.model) if self.sharded else None
        if directory is not None:
            self.model.save_pretrained(str(directory), safe_serialization=True, state_dict=state)
