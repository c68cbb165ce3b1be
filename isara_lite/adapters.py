"""LoRA conversions: PEFT (safetensors) -> GGUF LoRA adapter that llama.cpp loads with lora_path.

Written on the `gguf` package (GGUFWriter, tensor name maps). For llama-family models llama.cpp's
converter permutes the rows of q and k (rotary layout); LoRA B shares the output rows, so it gets
the same permutation. A is (r, in) and B is (out, r) in both formats.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from .errors import IsaraError

# HF model_type -> (gguf architecture name, permute q/k like llama.cpp's converter does)
ARCHS = {
    "llama": ("LLAMA", True),
    "gemma3": ("GEMMA3", False),
    "gemma3_text": ("GEMMA3", False),
    "qwen2": ("QWEN2", False),
}

_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.default)?\.weight$")


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's row order for q/k: per head, interleaved halves become contiguous."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def peft_to_gguf(adapter_dir: str | Path, hf_config: dict, out: str | Path) -> Path:
    import gguf
    from safetensors.numpy import load_file

    adapter_dir, out = Path(adapter_dir), Path(out)
    model_type = hf_config.get("model_type", "?")
    if model_type not in ARCHS:
        raise IsaraError(f"GGUF LoRA export does not support architecture '{model_type}' "
                         f"(supported: {', '.join(sorted(ARCHS))})")
    arch_name, permute = ARCHS[model_type]
    arch = getattr(gguf.MODEL_ARCH, arch_name)
    text_cfg = hf_config.get("text_config", hf_config)
    n_layers = text_cfg["num_hidden_layers"]
    n_head = text_cfg["num_attention_heads"]
    n_kv = text_cfg.get("num_key_value_heads", n_head)
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    if cfg.get("use_dora") or cfg.get("use_rslora"):
        raise IsaraError(f"{adapter_dir}: DoRA / rsLoRA adapters cannot be written as GGUF LoRA")
    alpha = float(cfg["lora_alpha"])
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise IsaraError(f"{adapter_dir}: per-module rank/alpha patterns are not supported in GGUF LoRA")

    names = gguf.get_tensor_name_map(arch, n_layers)
    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    tmp = out.with_name(out.name + ".tmp")
    writer = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[arch])
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", alpha)
    for key in sorted(tensors):
        m = _KEY.match(key)
        if not m:
            raise IsaraError(f"{adapter_dir}: unexpected tensor '{key}' (only LoRA A/B weights can be exported)")
        module = m["module"].removeprefix("model.language_model.").removeprefix("model.")
        base = names.get_name(f"model.{module}.weight", try_suffixes=(".weight",))
        if base is None:
            raise IsaraError(f"{adapter_dir}: no GGUF tensor for module '{m['module']}' ({model_type})")
        w = tensors[key].astype(np.float32)
        if permute and m["ab"] == "B":
            if base.endswith("attn_q.weight"):
                w = _permute(w, n_head)
            elif base.endswith("attn_k.weight"):
                w = _permute(w, n_kv)
        writer.add_tensor(f"{base}.lora_{m['ab'].lower()}", np.ascontiguousarray(w))
    return _finish(writer, tmp, out)


def _finish(writer, tmp: Path, out: Path) -> Path:
    """Write the file under a temporary name, then move it into place."""
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, out)
    return out


def _lora_deltas(adapter_gguf: Path) -> dict[str, np.ndarray]:
    """{base tensor name: scale * B @ A} from a GGUF LoRA (numpy shapes as in the base file)."""
    import gguf

    r = gguf.GGUFReader(str(adapter_gguf))
    alpha = float(r.fields["adapter.lora.alpha"].contents())
    parts: dict[str, dict[str, np.ndarray]] = {}
    for t in r.tensors:
        base, ab = t.name.rsplit(".lora_", 1)
        parts.setdefault(base, {})[ab] = np.asarray(t.data, dtype=np.float32)
    out = {}
    for base, p in parts.items():
        a, b = p["a"], p["b"]  # (r, in), (out, r)
        out[base] = (alpha / a.shape[0]) * (b @ a)
    return out


def merge_gguf(base_gguf: str | Path, adapter_gguf: str | Path, out: str | Path) -> Path:
    """A standalone GGUF with the LoRA folded in: changed tensors are requantized to Q8_0, the rest
    (and every metadata key: chat template, stop tokens) are copied as they are."""
    import gguf
    from gguf.quants import dequantize, quantize

    out = Path(out)
    reader = gguf.GGUFReader(str(base_gguf))
    deltas = _lora_deltas(Path(adapter_gguf))
    arch = reader.fields["general.architecture"].contents()
    tmp = out.with_name(out.name + ".tmp")
    writer = gguf.GGUFWriter(str(tmp), arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        sub = field.types[1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), field.types[0], sub_type=sub)
    q8 = gguf.GGMLQuantizationType.Q8_0
    for t in reader.tensors:
        if t.name in deltas:
            w = dequantize(t.data, t.tensor_type).reshape(deltas[t.name].shape) + deltas.pop(t.name)
            data = quantize(w.astype(np.float32), q8)
            writer.add_tensor(t.name, data, raw_shape=data.shape, raw_dtype=q8)
        else:
            writer.add_tensor(t.name, t.data, raw_shape=t.data.shape, raw_dtype=t.tensor_type)
    if deltas:
        raise IsaraError(f"{adapter_gguf}: LoRA tensors with no match in {base_gguf}: {sorted(deltas)[:3]}")
    return _finish(writer, tmp, out)
