"""Unsloth backend: LoRA (QLoRA on 4-bit weights for large models) on one CUDA GPU.

Generation goes through Unsloth's fast inference path (`FastLanguageModel.for_inference`),
training through TRL's `SFTTrainer` with completion-only loss, which Unsloth patches with its
kernels and gradient checkpointing. What it shares with the other backends: the same tokenized
examples (`training.build_example`: prompt with BOS, answer + EOS, prompt cut from the left), the
loss on answer tokens only, the learning-rate schedule of `training.lr_at`, AdamW without weight
decay, clipping at 1, the adapter continued from `adapter_in`, and the adapter written atomically
in PEFT layout (adapter_config.json + fp32 adapter_model.safetensors), so the torch and llamacpp
backends load it as well.

How it differs from `training.fit` (which torch, llamacpp and mlx use), and why: the batch order
is TRL's seeded sampler, not `training.batch_order`, so the same seed draws other batches; the
trainer's own loop does accumulation and mixed precision (bf16 autocast, or fp16 with a loss
scaler on GPUs without bf16), which Unsloth patches (its gradient-accumulation loss fix); and one
process only. No GPU was at hand to check a hand-written loop over Unsloth's kernels, so this
backend keeps the trainer Unsloth patches.

Weights: `card.hf_source()` (a local HF dir, or the card's hub id). For a hub id in 4-bit, Unsloth's
own name map substitutes its pre-quantized copy (meta-llama/Llama-2-7b-hf ->
unsloth/llama-2-7b-bnb-4bit), which is the same model, ~3.9 GB to download instead of 13.5 GB.

4-bit rule (independent of card and recipe): weights load in 4-bit (bitsandbytes NF4, QLoRA) when
the model has more than 3B parameters, or when its config is already bnb-quantized, or when its
size cannot be read (Unsloth's own default); otherwise in 16-bit. `ISARA_LOAD_IN_4BIT=1` / `=0`, or
the `load_in_4bit` argument, overrides the rule. A 7B model then needs ~5 GB of GPU memory for
LoRA training at the recipe defaults (see recipes/llama2-7b-gpu8-12gb.yaml), 16-bit would need ~15 GB.
"""

from __future__ import annotations

# Unsloth patches transformers, PEFT and TRL when it is imported, so it must be imported before
# them (imported later it only warns, and runs slower / uses more memory). create_backend imports
# this module only when unsloth is installed, so this import is as lazy as the backend itself.
import os  # noqa: I001

from ..models import isara_home  # no transformers import on this path

# Unsloth writes compiled kernels into ./unsloth_compiled_cache of the working directory unless told.
os.environ.setdefault("UNSLOTH_COMPILE_LOCATION", str(isara_home() / "unsloth_compiled_cache"))

import unsloth  # noqa: F401,E402  -- before transformers, PEFT and TRL
from unsloth import FastLanguageModel  # noqa: E402

import contextlib  # noqa: E402
import json  # noqa: E402
import tempfile
import time
from collections import deque
from pathlib import Path

import torch

from ..errors import IsaraError
from ..files import writing_dir
from ..training import IGNORE, TrainResult, build_example, lr_at, total_steps
from .base import Generation, Sampling, default_threads
from .scoring import continuation_tokens, padded_batches, row_logprobs
from .torch import decode_rows, generate_kwargs

FOUR_BIT_ABOVE = 3e9  # parameters; above this, weights load in 4-bit
ENV_4BIT = "ISARA_LOAD_IN_4BIT"


def want_4bit(config, override: bool | None = None) -> tuple[bool, str]:
    """(load in 4-bit?, why). `config` is the model's transformers config, or None if unreadable."""
    if override is not None:
        return override, "load_in_4bit argument"
    env = os.environ.get(ENV_4BIT, "").strip().lower()
    if env in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        return env in ("1", "true", "yes", "on"), f"{ENV_4BIT}={env}"
    if config is None:
        return True, "model config unreadable; Unsloth's default"
    q = getattr(config, "quantization_config", None)
    if q is not None:
        q = q if isinstance(q, dict) else q.to_dict()
        if q.get("load_in_4bit") or (q.get("quant_method") == "bitsandbytes" and not q.get("load_in_8bit")):
            return True, "checkpoint is already bnb 4-bit"
    n = parameter_count(config)
    return n > FOUR_BIT_ABOVE, f"{n / 1e9:.2f}B parameters ({'>' if n > FOUR_BIT_ABOVE else '<='} 3B)"


def parameter_count(config) -> int:
    """Exact parameter count from the config alone: the model built on the meta device."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


class UnslothBackend:
    name = "unsloth"

    def __init__(self, card, threads: int = 0, device: str = "auto", seed: int = 0,
                 load_in_4bit: bool | None = None):
        if not torch.cuda.is_available():
            raise IsaraError("backend 'unsloth' needs a CUDA GPU, and torch sees none: use --backend torch or llamacpp")
        if device not in ("auto", "cuda"):
            raise IsaraError(f"backend 'unsloth' runs on CUDA only, not on device '{device}'")
        from transformers import AutoConfig

        self.device = "cuda"
        self.threads = default_threads(threads)
        torch.set_num_threads(self.threads)
        self.seed = seed
        self.card = card
        source = card.hf_source()
        try:
            config = AutoConfig.from_pretrained(source, trust_remote_code=card.trust_remote_code)
        except (OSError, ValueError):  # e.g. a gated hub repo; Unsloth may still map it to its own copy
            config = None
        self.load_in_4bit, self.why_4bit = want_4bit(config, load_in_4bit)
        # Unsloth applies RoPE scaling when max_seq_length exceeds the model's context: use the model's own.
        self.max_seq_length = getattr(config, "max_position_embeddings", None) or 2048
        try:
            self.model, self.tok = FastLanguageModel.from_pretrained(
                model_name=source, max_seq_length=self.max_seq_length, dtype=None,
                load_in_4bit=self.load_in_4bit, trust_remote_code=card.trust_remote_code, random_state=seed)
        except (OSError, RuntimeError, ValueError, NotImplementedError) as e:  # Unsloth raises all four on load
            first = (str(e).splitlines() or [type(e).__name__])[0]
            raise IsaraError(f"model '{card.name}' could not be loaded from {source}: {first}") from None
        if self.tok.pad_token_id is None:  # Unsloth sets its own pad token at load: this rarely runs
            self.tok.pad_token = self.tok.eos_token
        rows = self.model.get_input_embeddings().weight.shape[0]
        if len(self.tok) > rows:  # a pad token Unsloth added beyond the embeddings would index past them
            raise IsaraError(f"model '{card.name}': the tokenizer has {len(self.tok)} tokens but the embeddings "
                             f"{rows} rows after Unsloth's pad-token repair; use --backend torch")
        FastLanguageModel.for_inference(self.model)
        self._lora_key: tuple | None = None  # (r, alpha, target modules) of the LoRA layers, once added
        self._lora_init: dict | None = None  # their initial weights, for training from scratch
        self.adapter: Path | None = None

    # -- generation ----------------------------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        return len(self.tok(text, add_special_tokens=True)["input_ids"])

    def _active(self):
        """The LoRA layers, once added, stay in the model; with no adapter loaded they are bypassed
        (Unsloth's kernels honour PEFT's disable_adapter, as its DPO reference model does)."""
        if self._lora_key is not None and self.adapter is None:
            return self.model.disable_adapter()
        return contextlib.nullcontext()

    def generate(self, prompts: list[str], sampling: Sampling) -> list[Generation]:
        self.tok.padding_side = "left"
        batch = self.tok(prompts, return_tensors="pt", padding=True, add_special_tokens=True).to(self.device)
        stop_ids, stop_strings = self._stops(sampling.stop)
        kwargs = dict(generate_kwargs(self.tok, sampling, stop_ids, stop_strings), use_cache=True)
        torch.manual_seed(sampling.seed)  # seeds the CUDA generators too
        with torch.inference_mode(), self._active():
            out = self.model.generate(**batch, **kwargs)
        return decode_rows(self.tok, out, batch["attention_mask"], stop_ids, list(sampling.stop))

    def _stops(self, stops) -> tuple[list[int], list[str]]:
        """Stops that are one token (chat markers) end generation as EOS does, cheaply; every stop is
        also matched as text, since the model may emit it inside a longer token (' Paris' vs 'Paris'),
        and the text is cut before it."""
        ids = [self.tok.eos_token_id]
        for s in stops:
            enc = self.tok(s, add_special_tokens=False)["input_ids"]
            if len(enc) == 1:
                ids.append(enc[0])
        return list(dict.fromkeys(ids)), list(stops)

    # -- likelihood ----------------------------------------------------------------------------
    def score(self, pairs: list[tuple[str, str]], batch_size: int = 8) -> list[float]:
        """Sum of log p(continuation tokens | prompt) per pair under the loaded adapter (the prompt
        with BOS as in generate, the continuation appended as text); batched, right-padded."""
        def encode(text, bos):
            return self.tok(text, add_special_tokens=bos)["input_ids"]

        seqs = [continuation_tokens(encode, p, c) for p, c in pairs]
        out = [0.0] * len(seqs)
        for idx, ids, mask, keep in padded_batches(seqs, batch_size, self.tok.pad_token_id):
            ids, mask, keep = ids.to(self.device), mask.to(self.device), keep.to(self.device)
            with torch.inference_mode(), self._active():
                # no labels: Unsloth's forward returns the logits (it drops them only when it computes the
                # loss); no cache: a plain full-sequence forward, not its incremental decoding path
                logits = self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1]
                totals = row_logprobs(logits[keep].float(), ids, keep)
            for i, total in zip(idx, totals):
                out[i] = total
        return out

    # -- adapters ------------------------------------------------------------------------------
    def _lora(self, r: int, alpha: float, targets, dropout: float = 0.0, checkpointing: bool = True) -> None:
        """Add the LoRA layers on first use. Unsloth patches a model for LoRA once (a second
        get_peft_model with other settings is refused), so later adapters must have the same shape."""
        key = (int(r), float(alpha), tuple(sorted(targets)) if not isinstance(targets, str) else targets)
        if self._lora_key is None:
            self.model = FastLanguageModel.get_peft_model(
                self.model, r=int(r), lora_alpha=alpha, lora_dropout=dropout,
                target_modules=list(targets) if not isinstance(targets, str) else targets, bias="none",
                use_gradient_checkpointing="unsloth" if checkpointing else False, random_state=self.seed)
            self._lora_key = key
            self._lora_init = {k: v.detach().clone() for k, v in _lora_state(self.model).items()}
        elif key != self._lora_key:
            raise IsaraError(f"LoRA r={key[0]}, alpha={key[1]} on {list(key[2])} does not match the LoRA layers this "
                             f"Unsloth model already has (r={self._lora_key[0]}, alpha={self._lora_key[1]} on "
                             f"{list(self._lora_key[2])}); use one LoRA shape per process")

    def _set_lora(self, state: dict, where) -> None:
        from peft import set_peft_model_state_dict

        expected = set(_lora_state(self.model))
        if set(state) != expected:
            missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
            raise IsaraError(f"{where}: adapter does not fit model '{self.card.name}' "
                             f"({len(missing)} LoRA tensors missing, e.g. {missing[:1]}; "
                             f"{len(extra)} unexpected, e.g. {extra[:1]})")
        # for_training drops Unsloth's cached low-precision copies of the LoRA weights (param._fast_lora),
        # which its one-token decode path would otherwise keep using after the weights change.
        FastLanguageModel.for_training(self.model)
        set_peft_model_state_dict(self.model, state)
        FastLanguageModel.for_inference(self.model)

    def _read_adapter(self, adapter: Path) -> tuple[dict, dict]:
        from safetensors.torch import load_file

        from ..adapters import require_peft

        adapter = require_peft(adapter)
        weights, cfg = adapter / "adapter_model.safetensors", adapter / "adapter_config.json"
        try:
            config = json.loads(cfg.read_text(encoding="utf-8"))
        except ValueError as e:
            raise IsaraError(f"{cfg}: not valid JSON ({e})") from None
        if config.get("peft_type", "LORA") != "LORA":
            raise IsaraError(f"{adapter}: a {config.get('peft_type')} adapter; only LoRA is supported")
        return config, load_file(str(weights))

    def _apply_adapter(self, adapter: Path, checkpointing: bool = True) -> None:
        config, state = self._read_adapter(adapter)
        self._lora(config["r"], config["lora_alpha"], config["target_modules"],
                   config.get("lora_dropout", 0.0), checkpointing)
        self._set_lora(state, adapter)

    def load(self, adapter: Path | None) -> None:
        if adapter is not None:
            self._apply_adapter(Path(adapter))
        self.adapter = Path(adapter) if adapter else None

    # -- training ------------------------------------------------------------------------------
    def train(self, examples, config, learning_rate, adapter_in, adapter_out, on_step=None) -> TrainResult:
        if adapter_in is not None:
            self._apply_adapter(Path(adapter_in), config.gradient_checkpointing)
        else:
            self._lora(config.lora_rank, config.lora_alpha, config.target_modules, config.lora_dropout,
                       config.gradient_checkpointing)
            self._set_lora(self._lora_init, "initial LoRA weights")
        try:
            result = self._fit(examples, config, learning_rate, adapter_out, on_step)
        except BaseException:
            self.adapter = None  # the LoRA weights are half-trained: bypass them until the next load()
            raise
        self.adapter = Path(adapter_out)
        return result

    def _fit(self, examples, config, learning_rate, adapter_out, on_step) -> TrainResult:
        from datasets import Dataset
        from transformers import TrainerCallback
        from trl import SFTConfig, SFTTrainer
        from unsloth import is_bfloat16_supported

        eos = self.tok.eos_token_id
        rows = {"input_ids": [], "completion_mask": []}
        for prompt, answer in examples:
            p = self.tok(prompt, add_special_tokens=True)["input_ids"]
            a = self.tok(answer, add_special_tokens=False)["input_ids"]
            ids, labels = build_example(p, a, eos, config.max_length)
            rows["input_ids"].append(ids)
            rows["completion_mask"].append([int(t != IGNORE) for t in labels])  # answer + EOS
        steps = total_steps(len(examples), config)
        losses: list[float] = []
        start = time.time()
        counter = _TokenCounter()

        class Steps(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and "loss" in logs and state.global_step > len(losses):
                    step = state.global_step
                    losses.append(float(logs["loss"]))
                    tokens = counter.take(config.grad_accum)
                    if on_step:
                        lr = lr_at(step - 1, steps, learning_rate, config.warmup_ratio, config.schedule)
                        on_step(step, steps, losses[-1], lr, tokens)

        if steps > 0:
            params = [p for p in self.model.parameters() if p.requires_grad]
            opt = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
            # the schedule of training.lr_at (as the torch backend), not transformers' own
            sched = torch.optim.lr_scheduler.LambdaLR(
                opt, lambda s: lr_at(min(s, steps - 1), steps, 1.0, config.warmup_ratio, config.schedule))
            bf16 = is_bfloat16_supported()
            with tempfile.TemporaryDirectory(prefix="isara-unsloth-") as scratch:
                args = SFTConfig(
                    output_dir=scratch, max_steps=steps, per_device_train_batch_size=config.batch_size,
                    gradient_accumulation_steps=config.grad_accum, learning_rate=learning_rate, weight_decay=0.0,
                    max_grad_norm=1.0, logging_steps=1, save_strategy="no", report_to="none",
                    seed=self.seed, data_seed=self.seed, bf16=bf16, fp16=not bf16,
                    # already tokenized (input_ids + completion_mask): TRL skips its own tokenization,
                    # truncation is ours (prompt cut from the left), loss only where completion_mask is 1
                    max_length=config.max_length, completion_only_loss=True, packing=False, padding_free=False,
                    dataset_num_proc=1)  # rows are tokenized already; no worker pool
                trainer = SFTTrainer(model=self.model, args=args, train_dataset=Dataset.from_dict(rows),
                                     processing_class=self.tok, optimizers=(opt, sched), callbacks=[Steps()])
                trainer.data_collator = counter.wrap(trainer.data_collator)
                trainer.train()
        FastLanguageModel.for_inference(self.model)

        with writing_dir(Path(adapter_out)) as tmp:
            self._save(tmp)
        return TrainResult(Path(adapter_out), steps, losses, counter.total, time.time() - start)

    def _save(self, directory: Path) -> None:
        """PEFT layout, fp32 tensors (what the torch backend writes; the GGUF converter reads them
        with numpy, which has no bfloat16)."""
        from safetensors.torch import save_file

        state = {k: v.detach().float().cpu().contiguous() for k, v in _lora_state(self.model).items()}
        save_file(state, str(directory / "adapter_model.safetensors"), metadata={"format": "pt"})
        self.model.peft_config["default"].save_pretrained(str(directory))


def _lora_state(model) -> dict:
    """The LoRA tensors only: no embedding rows even where Unsloth resized the vocabulary (PEFT's
    default "auto" would add them, after a hub lookup, and the torch backend refuses such adapters)."""
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(model, save_embedding_layers=False)


class _TokenCounter:
    """Non-padding tokens per optimizer step. The dataloader may collate a batch ahead of the step
    that uses it, so batches queue in order and each step takes its grad_accum batches off the front."""

    def __init__(self):
        self.batches: deque[int] = deque()
        self.total = 0

    def wrap(self, collate):
        def counted(examples):
            self.batches.append(sum(len(e["input_ids"]) for e in examples))
            return collate(examples)

        return counted

    def take(self, n: int) -> int:
        got = sum(self.batches.popleft() for _ in range(min(n, len(self.batches))))
        self.total += got
        return got
