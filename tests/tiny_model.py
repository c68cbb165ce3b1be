"""A tiny random model with the bundled model's tokenizer, for tests of the loop's logic.

Two layers of width 64 instead of SmolLM2's thirty of 576: every backend loads it in well under a
second and generates hundreds of tokens a second, so a test can run the whole loop, resume it and
compare it without paying for a real model. It is written as a GGUF (copying SmolLM2's tokenizer
and chat template), and its HF copy is derived from that GGUF the way a card with only a GGUF is,
so torch, llama.cpp and a llama.cpp server all see the same weights. Its text is noise: tests of
what the model says use the real model.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import numpy as np
import yaml

# Built once per machine and cached under a name that changes whenever this file does.
DIR = Path(tempfile.gettempdir()) / f"isara-test-tiny-{hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]}"
CARD = DIR / "tiny.yaml"

STD = 0.3  # wide enough that what a prompt says changes the greedy answer
WIDTH, LAYERS, HEADS, KV_HEADS, FFN, CONTEXT = 64, 2, 4, 2, 128, 4096


def build() -> Path:
    """The card of the tiny model, built once per machine (atomically) and reused."""
    if CARD.is_file():
        return CARD
    from isara_lite.files import writing_dir
    from isara_lite.models import derive_hf, load_card

    real = load_card("smollm2-135m-instruct")
    with writing_dir(DIR) as tmp:
        _write_gguf(real.gguf_path(), tmp / "tiny.gguf")
        derive_hf(tmp / "tiny.gguf", tmp / "hf")
        (tmp / "tiny.yaml").write_text(yaml.safe_dump({
            "name": "isara-test-tiny", "chat_format": "chatml", "system": "You are a tiny test model.",
            "description": "random weights, SmolLM2's tokenizer (tests only)",
            "gguf": {"path": str(DIR / "tiny.gguf")}, "path": str(DIR / "hf")}))
    return CARD


def _write_gguf(source: Path, out: Path) -> None:
    import gguf

    reader = gguf.GGUFReader(str(source))
    writer = gguf.GGUFWriter(str(out), "llama")
    shape = {"llama.block_count": LAYERS, "llama.context_length": CONTEXT, "llama.embedding_length": WIDTH,
             "llama.feed_forward_length": FFN, "llama.attention.head_count": HEADS,
             "llama.attention.head_count_kv": KV_HEADS, "llama.rope.dimension_count": WIDTH // HEADS,
             "general.file_type": 0}
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue  # the writer writes these itself
        kind = field.types[0]
        if name in shape:
            writer.add_key_value(name, shape[name], kind)
        elif kind == gguf.GGUFValueType.ARRAY:
            writer.add_key_value(name, field.contents(), kind, sub_type=field.types[-1])
        else:
            writer.add_key_value(name, field.contents(), kind)
    vocab = int(reader.fields["llama.vocab_size"].contents())
    rng = np.random.default_rng(0)

    def rand(*dims):
        return (rng.standard_normal(dims) * STD).astype(np.float32)

    head = WIDTH // HEADS
    writer.add_tensor("token_embd.weight", rand(vocab, WIDTH))
    for i in range(LAYERS):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(WIDTH, np.float32))
        writer.add_tensor(f"blk.{i}.attn_q.weight", rand(WIDTH, WIDTH))
        writer.add_tensor(f"blk.{i}.attn_k.weight", rand(KV_HEADS * head, WIDTH))
        writer.add_tensor(f"blk.{i}.attn_v.weight", rand(KV_HEADS * head, WIDTH))
        writer.add_tensor(f"blk.{i}.attn_output.weight", rand(WIDTH, WIDTH))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(WIDTH, np.float32))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", rand(FFN, WIDTH))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", rand(FFN, WIDTH))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", rand(WIDTH, FFN))
    writer.add_tensor("output_norm.weight", np.ones(WIDTH, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


if __name__ == "__main__":
    print(build())
