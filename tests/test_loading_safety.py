"""Safety of loading, checked on the source: no pickle, no unsafe YAML, no shell built from strings,
remote code only when a model card asks for it, safetensors for weights."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "isara_lite"
FILES = sorted(PACKAGE.rglob("*.py"))


def calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
            yield node, owner, name


def test_no_pickle_no_unsafe_yaml_no_shell():
    problems = []
    for path in FILES:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if any(n.split(".")[0] in ("pickle", "dill", "cloudpickle", "joblib") for n in names):
                    problems.append(f"{path.name}:{node.lineno}: imports a pickle library")
        for node, owner, name in calls(tree):
            where = f"{path.name}:{node.lineno}"
            if owner == "torch" and name == "load":
                problems.append(f"{where}: torch.load (pickle)")
            if owner == "yaml" and name in ("load", "unsafe_load", "full_load", "load_all"):
                problems.append(f"{where}: yaml.{name}")
            if owner == "os" and name in ("system", "popen"):
                problems.append(f"{where}: os.{name}")
            if name in ("eval", "exec") and isinstance(node.func, ast.Name):
                problems.append(f"{where}: {name}()")
            for kw in node.keywords:
                if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                    problems.append(f"{where}: shell=")
    assert problems == []


def test_remote_code_only_from_the_card_and_weights_from_safetensors():
    problems = []
    for path in FILES:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node, _, name in calls(tree):
            kws = {kw.arg: kw.value for kw in node.keywords}
            v = kws.get("trust_remote_code")
            if isinstance(v, ast.Constant) and v.value is not False:
                problems.append(f"{path.name}:{node.lineno}: trust_remote_code={v.value!r}")
            if name == "from_pretrained" and "use_safetensors" in kws:
                s = kws["use_safetensors"]
                if not (isinstance(s, ast.Constant) and s.value is True):
                    problems.append(f"{path.name}:{node.lineno}: use_safetensors not True")
    assert problems == []
    from isara_lite.models import ModelCard, list_cards

    assert ModelCard.__dataclass_fields__["trust_remote_code"].default is False
    assert not any(c.trust_remote_code for c in list_cards())  # no bundled card turns it on
