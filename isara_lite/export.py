"""`isara export`: a run's adapter as PEFT, as a GGUF LoRA for llama.cpp, merged into one GGUF
that llama.cpp and Ollama load on their own (chat template and stop token kept from the base), or as
an mlx-lm adapter directory for `mlx_lm.load(model, adapter_path=...)`. A run's refusal gate (gate.py)
goes inside a directory export, and beside a GGUF file as <file>.gate.json, for `isara chat --gate`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .adapters import merge_gguf, mlx_num_layers, peft_to_gguf, peft_to_mlx, read_peft, write_mlx_adapter
from .errors import IsaraError
from .files import writing_dir
from .gate import FILE as GATE_FILE, load_gate
from .models import load_card
from .rundir import run_adapter

FORMATS = ("peft", "gguf-adapter", "merged-gguf", "mlx")


def export(run: Path, fmt: str, out: Path | None = None, iteration: int | None = None) -> Path:
    model, adapter = run_adapter(run, iteration)
    out = _export(load_card(model), run, adapter, fmt, out)
    gate = load_gate(adapter)
    if gate and out.is_file():
        gate.save(out.with_name(out.name + "." + GATE_FILE))
    return out


def _export(card, run: Path, adapter: Path, fmt: str, out: Path | None) -> Path:
    stem = f"{run.name}-{adapter.parent.name}"
    if fmt == "peft":
        out = out or run / "export" / f"{stem}-peft"
        with writing_dir(out) as tmp:
            for name in ("adapter_config.json", "adapter_model.safetensors", "README.md", GATE_FILE):
                if (adapter / name).is_file():
                    shutil.copy2(adapter / name, tmp / name)
        return out
    hf_config = json.loads((Path(card.hf_source()) / "config.json").read_text())
    if fmt == "gguf-adapter":
        out = out or run / "export" / f"{stem}-lora.gguf"
        out.parent.mkdir(parents=True, exist_ok=True)
        return peft_to_gguf(adapter, hf_config, out)
    if fmt == "mlx":
        out = out or run / "export" / f"{stem}-mlx"
        weights, params = peft_to_mlx(*read_peft(adapter))
        text_cfg = hf_config.get("text_config", hf_config)
        with writing_dir(out) as tmp:
            write_mlx_adapter(tmp, weights, params, mlx_num_layers(weights, text_cfg["num_hidden_layers"]))
            if (adapter / GATE_FILE).is_file():
                shutil.copy2(adapter / GATE_FILE, tmp / GATE_FILE)
        return out
    if fmt == "merged-gguf":
        base = card.gguf_path()
        if base is None:
            raise IsaraError(f"model '{card.name}' has no base GGUF to merge into: {card.how_to_get()}")
        out = out or run / "export" / f"{stem}-merged-q8_0.gguf"
        out.parent.mkdir(parents=True, exist_ok=True)
        lora = out.with_name(out.name + ".lora.gguf")
        peft_to_gguf(adapter, hf_config, lora)
        try:
            return merge_gguf(base, lora, out)
        finally:
            lora.unlink(missing_ok=True)
    raise IsaraError(f"unknown export format '{fmt}'; use one of {', '.join(FORMATS)}")
