"""LoRA conversions: PEFT (safetensors) -> GGUF LoRA adapter that llama.cpp loads with lora_path, and
PEFT <-> mlx-lm (see the section below), so one adapter moves between torch, llama.cpp and MLX.

Written on the `gguf` package (GGUFWriter, tensor name maps). For llama-family models llama.cpp's
converter permutes the rows of q and k (rotary layout); LoRA B shares the output rows, so it gets
the same permutation. A is (r, in) and B is (out, r) in both formats.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from .errors import IsaraError
from .files import writing_file

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


GGUF_ADAPTER = "adapter.gguf"


def require_peft(adapter: str | Path) -> Path:
    """ADAPTER as a Path, if it is a PEFT adapter directory; else the one error every command gives."""
    adapter = Path(adapter)
    if not all((adapter / n).is_file() for n in ("adapter_config.json", "adapter_model.safetensors")):
        raise IsaraError(f"{adapter}: no adapter_model.safetensors + adapter_config.json (PEFT adapters only)")
    return adapter


def gguf_beside(adapter: Path, card) -> Path:
    """The GGUF LoRA of a PEFT adapter, converted on first use and kept inside its directory."""
    target = Path(adapter) / GGUF_ADAPTER
    if not target.is_file():
        peft_to_gguf(require_peft(adapter), json.loads((Path(card.hf_source()) / "config.json").read_text()), target)
    return target


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
    writer = gguf.GGUFWriter(None, gguf.MODEL_ARCH_NAMES[arch])
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
    return _finish(writer, out)


def _finish(writer, out: Path) -> Path:
    """Write the file whole or not at all (files.writing_file): a half-written GGUF must not fill the
    disk or be mistaken for output."""
    with writing_file(out) as tmp:
        writer.write_header_to_file(path=tmp)
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
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
    writer = gguf.GGUFWriter(None, arch)
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
    return _finish(writer, out)


# -- PEFT <-> MLX (mlx-lm) ---------------------------------------------------------------------
# PEFT stores lora_A (r, in) and lora_B (out, r) and scales B @ A by lora_alpha / r (alpha / sqrt(r)
# with rsLoRA). mlx-lm's LoRALinear computes (x @ lora_a) @ lora_b * scale, so lora_a = A.T (in, r),
# lora_b = B.T (r, out), and one `scale` for every layer. Module paths are the same on both sides
# for the architectures mlx-lm mirrors from transformers (llama, qwen2, gemma3_text): PEFT's key is
# "base_model.model.<module>.lora_A.weight", mlx-lm's parameter is "<module>.lora_a".

_LAYER = re.compile(r"^(?:.*\.)?layers\.(?P<i>\d+)\.(?P<key>.+)$")


def read_peft(adapter_dir: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(adapter_config, tensors) of a PEFT LoRA directory, with clear errors for what we cannot map."""
    from safetensors.numpy import load_file

    adapter_dir = require_peft(adapter_dir)
    cfg_path = adapter_dir / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("peft_type", "LORA") != "LORA":
        raise IsaraError(f"{adapter_dir}: a {cfg.get('peft_type')} adapter, not LoRA")
    if cfg.get("use_dora"):
        raise IsaraError(f"{adapter_dir}: DoRA adapters are not supported")
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise IsaraError(f"{adapter_dir}: per-module rank/alpha patterns are not supported")
    if cfg.get("modules_to_save"):
        raise IsaraError(f"{adapter_dir}: modules_to_save (fully trained modules) are not supported")
    if cfg.get("fan_in_fan_out"):
        raise IsaraError(f"{adapter_dir}: fan_in_fan_out (Conv1D) LoRA is not supported")
    return cfg, load_file(str(adapter_dir / "adapter_model.safetensors"))


def peft_scale(cfg: dict) -> float:
    r, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    return alpha / r ** 0.5 if cfg.get("use_rslora") else alpha / r


def peft_to_mlx(cfg: dict, tensors: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict]:
    """PEFT (config, tensors) -> (mlx-lm weights, lora_parameters {rank, scale, dropout, keys}).

    keys are module paths relative to a transformer block ("self_attn.q_proj"), as mlx-lm's
    linear_to_lora_layers takes them; modules outside the blocks keep their full path."""
    out: dict[str, np.ndarray] = {}
    keys: set[str] = set()
    for name, w in tensors.items():
        m = _KEY.match(name)
        if not m:
            raise IsaraError(f"unexpected tensor '{name}' in a PEFT LoRA (only lora_A/lora_B weights are supported)")
        module = m["module"]
        if w.ndim != 2 or w.shape[0 if m["ab"] == "A" else 1] != int(cfg["r"]):
            raise IsaraError(f"tensor '{name}' has shape {w.shape}, not a rank-{cfg['r']} LoRA factor")
        out[f"{module}.lora_{m['ab'].lower()}"] = np.ascontiguousarray(w.T)
        layer = _LAYER.match(module)
        keys.add(layer["key"] if layer else module)
    if not out:
        raise IsaraError("the PEFT adapter has no LoRA tensors")
    params = {"rank": int(cfg["r"]), "scale": peft_scale(cfg), "dropout": float(cfg.get("lora_dropout") or 0.0),
              "keys": sorted(keys)}
    return out, params


def mlx_num_layers(weights: dict[str, np.ndarray], n_layers: int) -> int:
    """mlx-lm puts LoRA on the last num_layers blocks: from the lowest block the adapter touches."""
    found = [int(m["i"]) for k in weights if (m := _LAYER.match(k))]
    return n_layers - min(found) if found else 0


def mlx_to_peft(weights: dict[str, np.ndarray], lora_parameters: dict,
                base_model: str | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """mlx-lm LoRA weights {"<module>.lora_a": (in, r), "<module>.lora_b": (r, out)} and its
    lora_parameters -> PEFT (adapter_config, tensors). alpha = scale * r keeps PEFT's alpha / r."""
    r = int(lora_parameters["rank"])
    tensors: dict[str, np.ndarray] = {}
    leaves: set[str] = set()
    for name, w in weights.items():
        module, _, leaf = name.rpartition(".")
        if leaf not in ("lora_a", "lora_b"):
            raise IsaraError(f"unexpected mlx adapter tensor '{name}' (only lora_a/lora_b; DoRA is not supported)")
        tensors[f"base_model.model.{module}.lora_{leaf[-1].upper()}.weight"] = np.ascontiguousarray(np.asarray(w).T)
        leaves.add(module.rpartition(".")[2])
    cfg = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
        "r": r, "lora_alpha": float(lora_parameters["scale"]) * r, "lora_dropout": float(lora_parameters.get("dropout", 0.0)),
        "target_modules": sorted(leaves), "bias": "none", "fan_in_fan_out": False, "use_rslora": False,
        "use_dora": False, "modules_to_save": None, "inference_mode": True, "init_lora_weights": True,
        "rank_pattern": {}, "alpha_pattern": {}, "layers_to_transform": None,
    }
    return cfg, tensors


def write_peft(out: Path, cfg: dict, tensors: dict[str, np.ndarray]) -> Path:
    """Fill a (temporary) directory with adapter_config.json + adapter_model.safetensors."""
    from safetensors.numpy import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    (out / "adapter_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return out


def write_mlx_adapter(out: Path, weights: dict[str, np.ndarray], lora_parameters: dict, num_layers: int) -> Path:
    """Fill a directory with what mlx_lm.load(model, adapter_path=out) reads."""
    from safetensors.numpy import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(out / "adapters.safetensors"), metadata={"format": "mlx"})
    cfg = {"fine_tune_type": "lora", "num_layers": num_layers, "lora_parameters": lora_parameters}
    (out / "adapter_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return out
