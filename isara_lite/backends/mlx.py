"""MLX backend (mlx-lm): batched generation with BatchGenerator, LoRA training with mlx-lm's tuner
layers, on Apple silicon (Metal) or, slowly, on a Linux CPU (`mlx[cpu]` ships a reference BLAS).

Adapters on disk are PEFT directories like every other backend's (adapters.py converts), so a run
can be continued or served on torch / llama.cpp and the other way round.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..adapters import mlx_num_layers, mlx_to_peft, peft_to_mlx, read_peft, write_peft
from ..errors import IsaraError
from ..training import IGNORE, TrainResult, fit
from .base import Generation, Sampling, default_threads


MAX_ROWS = 16  # sequences decoded together (their KV caches live at once), as the llamacpp backend's max_seqs


def config_overrides(hf_config: dict) -> dict:
    """transformers 5 writes `rope_parameters` where mlx-lm's model args read rope_theta /
    rope_scaling (and gemma3's rope_local_base_freq); without this the rotary base silently falls
    back to mlx-lm's default (10000 for llama, while SmolLM2 uses 100000)."""
    cfg = hf_config.get("text_config", hf_config)
    rp = cfg.get("rope_parameters")
    if not isinstance(rp, dict) or "rope_theta" in cfg:
        return {}
    if "full_attention" in rp:  # per layer type (gemma3)
        out = {"rope_theta": rp["full_attention"]["rope_theta"]}
        if "sliding_attention" in rp:
            out["rope_local_base_freq"] = rp["sliding_attention"]["rope_theta"]
        rp = rp["full_attention"]
    else:
        out = {"rope_theta": rp["rope_theta"]}
    if rp.get("rope_type", "default") != "default":
        out["rope_scaling"] = {k: v for k, v in rp.items() if k != "rope_theta"}
    return out


def _sampler(s: Sampling):
    """llama.cpp's chain (the llamacpp backend's): top-k, top-p on the renormalized rest, then
    temperature; greedy at temperature 0. One call samples the whole batch."""
    import mlx.core as mx

    if s.temperature <= 0:
        return lambda logprobs: mx.argmax(logprobs, axis=-1)

    def sample(logprobs):
        x = logprobs
        if 0 < s.top_k < x.shape[-1]:
            kth = mx.topk(x, s.top_k, axis=-1).min(axis=-1, keepdims=True)
            x = mx.where(x < kth, -mx.inf, x)
        if 0 < s.top_p < 1:
            order = mx.argsort(-x, axis=-1)
            p = mx.take_along_axis(mx.softmax(x, axis=-1), order, axis=-1)
            keep = (mx.cumsum(p, axis=-1) - p) < s.top_p  # the smallest prefix reaching top_p
            mask = mx.put_along_axis(mx.zeros(x.shape, dtype=mx.bool_), order, keep, axis=-1)
            x = mx.where(mask, x, -mx.inf)
        return mx.random.categorical(x * (1.0 / s.temperature))

    return sample


class MlxBackend:
    name = "mlx"

    def __init__(self, card, threads: int = 0, device: str = "auto", seed: int = 0):
        import mlx.core as mx
        from mlx_lm.utils import load_model
        from transformers import AutoTokenizer

        self.mx = mx
        self.threads = default_threads(threads)  # mlx has no thread setting; kept for the interface
        if device in ("cpu",):
            mx.set_default_device(mx.cpu)
        elif device in ("gpu", "metal", "cuda"):
            if not mx.is_available(mx.gpu):
                raise IsaraError(f"device '{device}': this mlx build has no GPU backend (use --device cpu)")
            mx.set_default_device(mx.gpu)
        elif device != "auto":
            raise IsaraError(f"unknown device '{device}' for the mlx backend; use auto, cpu or gpu")
        self.device = "gpu" if mx.default_device() == mx.gpu else "cpu"
        self.seed, self.card = seed, card
        source = Path(self._local(card.hf_source()))
        try:
            self.hf_config = json.loads((source / "config.json").read_text())
            self.model, _ = load_model(source, model_config=config_overrides(self.hf_config),
                                       trust_remote_code=card.trust_remote_code)
            self.tok = AutoTokenizer.from_pretrained(str(source), trust_remote_code=card.trust_remote_code)
        except (OSError, ValueError, KeyError) as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise IsaraError(f"model '{card.name}' could not be loaded by mlx-lm from {source}: {msg}") from None
        self.n_layers = len(self.model.layers)
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        self.adapter: Path | None = None
        self._head_ok: bool | None = None

    @staticmethod
    def _local(source: str) -> str:
        """A hub id becomes its (cached or downloaded) snapshot: mlx-lm reads files, not ids."""
        if Path(source).expanduser().is_dir():
            return str(Path(source).expanduser())
        from huggingface_hub import snapshot_download

        return snapshot_download(source, allow_patterns=["*.json", "*.safetensors", "tokenizer.model", "*.txt", "*.jinja"])

    # -- generation ----------------------------------------------------------------------------
    def _encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=True)["input_ids"]

    def count_tokens(self, text: str) -> int:
        return len(self._encode(text))

    def _stops(self, stops) -> tuple[list[int], list[str]]:
        """Stops that are special tokens (chat markers) end a row inside the generator, like EOS;
        any other stop is found in the decoded text, since the model may write it inside a
        longer token (" Paris" for "Paris") or split across tokens."""
        special = set(self.tok.all_special_tokens) | set(self.tok.get_added_vocab())
        ids, strings = [self.tok.eos_token_id], []
        for s in stops:
            enc = self.tok(s, add_special_tokens=False)["input_ids"]
            (ids.append(enc[0]) if s in special and len(enc) == 1 else strings.append(s))
        return list(dict.fromkeys(ids)), strings

    def generate(self, prompts: list[str], sampling: Sampling) -> list[Generation]:
        from mlx_lm.generate import BatchGenerator
        from mlx_lm.sample_utils import make_repetition_penalty

        mx = self.mx
        toks = [self._encode(p) for p in prompts]
        if any(not t for t in toks):
            raise IsaraError("an empty prompt cannot be generated from (the tokenizer adds no BOS)")
        if not prompts or sampling.max_tokens <= 0:
            return [Generation("", len(t), 0) for t in toks]
        stop_ids, stop_strings = self._stops(sampling.stop)
        procs = []
        if sampling.repetition_penalty != 1.0 and sampling.repeat_last_n != 0:
            # over the last repeat_last_n tokens, prompt included; as in llama.cpp 0 is off, -1 all
            last_n = sampling.repeat_last_n if sampling.repeat_last_n > 0 else 1 << 30
            procs = [make_repetition_penalty(sampling.repetition_penalty, last_n)]
        self.model.eval()
        mx.random.seed(sampling.seed)
        rows = min(len(toks), MAX_ROWS)  # more prompts wait and join as rows finish
        gen = BatchGenerator(self.model, max_tokens=sampling.max_tokens, stop_tokens=[[t] for t in stop_ids],
                             sampler=_sampler(sampling), logits_processors=procs,
                             prefill_batch_size=rows, completion_batch_size=rows)
        try:
            uids = gen.insert(toks, [sampling.max_tokens] * len(toks))
            out = {u: [] for u in uids}
            while responses := gen.next_generated():
                for r in responses:
                    if r.finish_reason == "stop":  # a stop token: not part of the text
                        continue
                    out[r.uid].append(r.token)
                    if r.finish_reason is None and stop_strings:
                        text = self.tok.decode(out[r.uid], skip_special_tokens=False)
                        if any(s in text for s in stop_strings):
                            gen.remove([r.uid])
        finally:
            gen.close()
        results = []
        for uid, t in zip(uids, toks):
            text = self.tok.decode(out[uid], skip_special_tokens=False)
            cut = min((text.find(s) for s in sampling.stop if s in text), default=len(text))
            results.append(Generation(text[:cut], len(t), len(out[uid])))
        return results

    # -- scoring -------------------------------------------------------------------------------
    def token_logprobs(self, pairs: list[tuple[str, str]], batch_size: int = 8) -> list[np.ndarray]:
        """Per-token log-probabilities of each continuation given its prompt (teacher forced),
        tokenized as the other backends' score() does (scoring.continuation_tokens)."""
        from .scoring import continuation_tokens

        def encode(text, bos):
            return self.tok(text, add_special_tokens=bos)["input_ids"]

        mx = self.mx
        self.model.eval()
        out = []
        for start in range(0, len(pairs), batch_size):
            rows = []
            for prompt, cont in pairs[start:start + batch_size]:
                toks, n = continuation_tokens(encode, prompt, cont)
                if n == 0:
                    raise IsaraError("an empty prompt cannot be scored (the tokenizer adds no BOS)")
                rows.append((toks, [IGNORE] * n + toks[n:]))
            ids, labels = self._pad(rows)
            idx, targets = self._targets(labels)
            if not len(targets):
                out += [np.zeros(0, np.float32) for _ in rows]
                continue
            logits = self._answer_logits(ids, idx)
            lp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
            picked = np.array(mx.take_along_axis(lp, mx.array(targets)[:, None], axis=-1)[:, 0])
            n = 0
            for toks, lab in rows:
                k = sum(1 for t in lab if t != IGNORE)
                out.append(picked[n:n + k])
                n += k
        return out

    def score(self, pairs: list[tuple[str, str]]) -> list[float]:
        return [float(x.sum()) for x in self.token_logprobs(pairs)]

    # -- the model's head: only the positions we need go through the vocabulary projection --------
    def _hidden_and_head(self):
        """(hidden(ids), head(h)) when model(ids) == head(model.model(ids)) for this architecture,
        checked once on a few tokens; otherwise None and the full model call is used."""
        m = self.model
        if self._head_ok is None:
            self._head_ok = False
            inner = getattr(m, "model", None)
            if inner is not None and ("lm_head" in m or hasattr(getattr(inner, "embed_tokens", None), "as_linear")):
                x = self.mx.array([self._encode("Hello there, a check.")[:8] or [0]])
                full = m(x)
                mine = self._head(inner(x))
                self._head_ok = bool(self.mx.allclose(full, mine, atol=1e-4, rtol=1e-4).item())
        return self._head_ok

    def _head(self, h):
        m = self.model
        return m.lm_head(h) if "lm_head" in m else m.model.embed_tokens.as_linear(h)

    def _answer_logits(self, ids, idx):
        """Logits at the flat positions idx of ids[:, :-1] (the ones whose next token is a label)."""
        mx = self.mx
        if self._hidden_and_head():
            h = self.model.model(ids)[:, :-1]
            return self._head(mx.take(h.reshape(-1, h.shape[-1]), idx, axis=0))
        logits = self.model(ids)[:, :-1]
        return mx.take(logits.reshape(-1, logits.shape[-1]), idx, axis=0)

    def _pad(self, rows):
        """Right padding: with a causal mask no real token sees a pad, so no attention mask is needed."""
        width = max(len(x) for x, _ in rows)
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int32)
        labels = np.full((len(rows), width), IGNORE, dtype=np.int64)
        for i, (x, y) in enumerate(rows):
            ids[i, : len(x)], labels[i, : len(y)] = x, y
        return self.mx.array(ids), labels

    def _targets(self, labels: np.ndarray):
        target = labels[:, 1:].reshape(-1)
        idx = np.nonzero(target != IGNORE)[0]
        return self.mx.array(idx.astype(np.int32)), target[idx].astype(np.int32)

    # -- adapters ------------------------------------------------------------------------------
    def _strip(self) -> None:
        from mlx_lm.tuner.utils import remove_lora_layers

        remove_lora_layers(self.model)

    def _check(self, weights: dict) -> None:
        """Every LoRA factor names a Linear of this model with matching sizes; checked before the
        loaded adapter is touched, so a bad adapter leaves the current one in place."""
        modules = dict(self.model.named_modules())
        for name, w in weights.items():
            module, _, leaf = name.rpartition(".")
            m = modules.get(module)
            m = getattr(m, "linear", m)  # already wrapped by a LoRA layer
            if m is None or getattr(m, "weight", None) is None or m.weight.ndim != 2:
                raise IsaraError(f"adapter tensor '{name}': model '{self.card.name}' has no linear layer "
                                 f"'{module}' (module names differ between PEFT and mlx-lm for this architecture?)")
            out_dims, in_dims = m.weight.shape
            if isinstance(m, self._nn().QuantizedLinear):
                in_dims = in_dims * 32 // m.bits
            want = (in_dims, w.shape[1]) if leaf == "lora_a" else (w.shape[0], out_dims)
            if tuple(w.shape) != want:
                raise IsaraError(f"adapter tensor '{name}' has shape {tuple(w.shape)}, the model expects {want} "
                                 "(an adapter for another model?)")

    @staticmethod
    def _nn():
        import mlx.nn as nn

        return nn

    def _attach(self, lora_parameters: dict, num_layers: int, weights: dict | None) -> None:
        """LoRA layers on the frozen base; weights (mlx names) replace their fresh initialization."""
        from mlx.utils import tree_flatten
        from mlx_lm.tuner.utils import linear_to_lora_layers

        if weights is not None:
            self._check(weights)
        self._strip()
        self.model.freeze()
        self.mx.random.seed(self.seed)  # the fresh lora_a init, as PEFT's is seeded by torch
        linear_to_lora_layers(self.model, num_layers, lora_parameters)
        if weights is None:
            return
        missing = set(weights) - set(k for k, _ in tree_flatten(self.model.trainable_parameters()))
        if missing:  # _check passed, so only a key/num_layers mapping bug can land here
            raise IsaraError(f"adapter tensors with no LoRA layer after conversion: {sorted(missing)[:3]}")
        self.model.load_weights([(k, self.mx.array(v)) for k, v in weights.items()], strict=False)
        self.mx.eval(self.model.parameters())

    def _attach_peft(self, adapter: Path) -> dict:
        cfg, tensors = read_peft(adapter)
        weights, params = peft_to_mlx(cfg, tensors)
        self._attach(params, mlx_num_layers(weights, self.n_layers), weights)
        return params

    def load(self, adapter: Path | None) -> None:
        if adapter is None:
            self._strip()
        else:
            self._attach_peft(Path(adapter))
        self.model.eval()
        self.adapter = Path(adapter) if adapter else None

    # -- training ------------------------------------------------------------------------------
    def _lora_keys(self, targets) -> list[str]:
        """PEFT's target_modules rule (a name or a dotted suffix of it) over one block's modules."""
        names = [k for k, _ in self.model.layers[0].named_modules() if k]
        keys = [k for k in names if any(k == t or k.endswith("." + t) for t in targets)]
        if not keys:
            raise IsaraError(f"training.target_modules {list(targets)} match no module of '{self.card.name}' "
                             f"(some of its modules: {', '.join(sorted(names)[:8])})")
        return keys

    def train(self, examples, config, learning_rate, adapter_in, adapter_out, on_step=None) -> TrainResult:
        """Step 4 (training.fit) on this model; the new adapter stays loaded."""
        result = fit(MlxSteps(self, config, learning_rate, adapter_in), examples, config, learning_rate,
                     adapter_out, self.seed, on_step)
        self.model.eval()
        self.adapter = Path(adapter_out)
        return result


class MlxSteps:
    """The primitives of step 4 (training.LoraSteps) for the mlx backend: mlx-lm's LoRA layers and
    AdamW as PyTorch's (bias correction on, no weight decay), as the torch backend trains."""

    rank, world = 0, 1

    def __init__(self, backend: MlxBackend, config, learning_rate: float, adapter_in):
        import mlx.nn as nn
        import mlx.optimizers as optim

        self.backend = backend
        if adapter_in is not None:  # the adapter's own rank, alpha and modules, as PEFT continues it
            self.params = backend._attach_peft(Path(adapter_in))
        else:
            self.params = {"rank": config.lora_rank, "scale": config.lora_alpha / config.lora_rank,
                           "dropout": config.lora_dropout, "keys": backend._lora_keys(config.target_modules)}
            backend._attach(self.params, backend.n_layers, None)
        block = type(backend.model.layers[0])
        if config.gradient_checkpointing and not getattr(block, "_isara_checkpointed", False):
            from mlx_lm.tuner.trainer import grad_checkpoint

            # mlx-lm patches the block class for good (generation then runs through mx.checkpoint,
            # which costs nothing without a backward pass); once, or the wrappers would nest
            grad_checkpoint(backend.model.layers[0])
            block._isara_checkpointed = True

        def loss_fn(model, ids, idx, targets, scored):  # model is backend.model, updated by value_and_grad
            logits = backend._answer_logits(ids, idx)
            return nn.losses.cross_entropy(logits.astype(backend.mx.float32), targets, reduction="sum") / scored

        self.loss_and_grad = nn.value_and_grad(backend.model, loss_fn)
        self.opt = optim.AdamW(learning_rate=learning_rate, weight_decay=0.0, bias_correction=True)
        self.grads = None
        backend.model.train()

    def encode(self, prompt: str, answer: str):
        tok = self.backend.tok
        return self.backend._encode(prompt), tok(answer, add_special_tokens=False)["input_ids"], tok.eos_token_id

    def backward(self, rows, scored: int, scale: float) -> float:
        from mlx.utils import tree_map

        mx = self.backend.mx
        ids, labels = self.backend._pad(rows)
        idx, targets = self.backend._targets(labels)
        loss, g = self.loss_and_grad(self.backend.model, ids, idx, mx.array(targets), scored)
        g = tree_map(lambda x: x * scale, g)
        self.grads = g if self.grads is None else tree_map(mx.add, self.grads, g)
        mx.eval(loss, self.grads)
        return loss.item()

    def update(self, lr: float, loss: float, tokens: int) -> tuple[float, int, float]:
        import mlx.optimizers as optim

        model = self.backend.model
        grads, norm = optim.clip_grad_norm(self.grads, 1.0)
        self.opt.learning_rate = lr
        self.opt.update(model, grads)
        self.backend.mx.eval(model.trainable_parameters(), self.opt.state)
        self.grads = None
        return loss, tokens, float(norm)

    def save(self, directory: Path) -> None:
        from mlx.utils import tree_flatten

        b = self.backend
        weights = {k: np.array(v) for k, v in tree_flatten(b.model.trainable_parameters())}
        cfg, tensors = mlx_to_peft(weights, self.params, base_model=b.card.hub or b.card.name)
        write_peft(directory, cfg, tensors)
