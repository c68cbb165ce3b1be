"""PEFT <-> mlx-lm LoRA conversion (numpy only: runs without mlx installed)."""

import json

import numpy as np
import pytest

from isara_lite.adapters import (mlx_num_layers, mlx_to_peft, peft_scale, peft_to_mlx, read_peft, write_mlx_adapter,
                                 write_peft)
from isara_lite.errors import IsaraError

R, D_IN, D_OUT = 4, 6, 5


def _peft(layers=(0, 1, 2), modules=("self_attn.q_proj", "mlp.down_proj"), alpha=8.0, **extra):
    rng = np.random.default_rng(0)
    tensors = {}
    for i in layers:
        for m in modules:
            base = f"base_model.model.model.layers.{i}.{m}"
            tensors[f"{base}.lora_A.weight"] = rng.standard_normal((R, D_IN)).astype(np.float32)
            tensors[f"{base}.lora_B.weight"] = rng.standard_normal((D_OUT, R)).astype(np.float32)
    cfg = {"peft_type": "LORA", "r": R, "lora_alpha": alpha, "lora_dropout": 0.05,
           "target_modules": ["q_proj", "down_proj"], **extra}
    return cfg, tensors


def _delta(a, b, scale):  # what each side adds to a Linear weight (out, in)
    return scale * (b @ a)


def test_peft_to_mlx_transposes_and_keeps_the_product():
    cfg, tensors = _peft()
    weights, params = peft_to_mlx(cfg, tensors)
    assert params == {"rank": R, "scale": 2.0, "dropout": 0.05, "keys": ["mlp.down_proj", "self_attn.q_proj"]}
    a = weights["model.layers.1.self_attn.q_proj.lora_a"]
    b = weights["model.layers.1.self_attn.q_proj.lora_b"]
    assert a.shape == (D_IN, R) and b.shape == (R, D_OUT)
    pa = tensors["base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"]
    pb = tensors["base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight"]
    # mlx-lm: y += scale * (x @ lora_a) @ lora_b, i.e. W += scale * (lora_a @ lora_b).T
    np.testing.assert_allclose((params["scale"] * a @ b).T, _delta(pa, pb, cfg["lora_alpha"] / R), rtol=1e-6)


def test_round_trip_is_exact():
    cfg, tensors = _peft()
    back_cfg, back = mlx_to_peft(*peft_to_mlx(cfg, tensors))
    assert set(back) == set(tensors)
    for k in tensors:
        np.testing.assert_array_equal(back[k], tensors[k])
    assert back_cfg["r"] == R and back_cfg["lora_alpha"] == cfg["lora_alpha"]
    assert back_cfg["target_modules"] == ["down_proj", "q_proj"] and back_cfg["lora_dropout"] == 0.05


def test_rslora_scale():
    assert peft_scale({"r": 16, "lora_alpha": 8, "use_rslora": True}) == pytest.approx(2.0)
    cfg, tensors = _peft(use_rslora=True)
    _, params = peft_to_mlx(cfg, tensors)
    assert params["scale"] == pytest.approx(8.0 / 2.0)
    back_cfg, _ = mlx_to_peft(*peft_to_mlx(cfg, tensors))  # written as plain LoRA with the same product
    assert peft_scale(back_cfg) == pytest.approx(params["scale"])


def test_num_layers_counts_from_the_lowest_block():
    weights, _ = peft_to_mlx(*_peft(layers=(3, 5)))
    assert mlx_num_layers(weights, 8) == 5
    weights, _ = peft_to_mlx(*_peft(layers=(0,)))
    assert mlx_num_layers(weights, 8) == 8


@pytest.mark.parametrize("extra, message", [
    ({"use_dora": True}, "DoRA"),
    ({"rank_pattern": {"q_proj": 8}}, "rank/alpha patterns"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
    ({"peft_type": "IA3"}, "not LoRA"),
])
def test_unsupported_peft_adapters_are_clear_errors(tmp_path, extra, message):
    cfg, tensors = _peft(**extra)
    write_peft(tmp_path, cfg, tensors)
    with pytest.raises(IsaraError, match=message):
        read_peft(tmp_path)


def test_bad_tensors_are_clear_errors(tmp_path):
    cfg, tensors = _peft()
    with pytest.raises(IsaraError, match="unexpected tensor 'base_model.model.lm_head.weight'"):
        peft_to_mlx(cfg, {**tensors, "base_model.model.lm_head.weight": np.zeros((2, 2), np.float32)})
    with pytest.raises(IsaraError, match=r"shape \(4, 6\), not a rank-3 LoRA factor"):
        peft_to_mlx({**cfg, "r": 3}, tensors)
    with pytest.raises(IsaraError, match="DoRA is not supported"):
        mlx_to_peft({"model.layers.0.self_attn.q_proj.m": np.zeros(3, np.float32)}, {"rank": 4, "scale": 2.0})
    with pytest.raises(IsaraError, match="no adapter_model.safetensors"):
        read_peft(tmp_path)


def test_files_on_disk(tmp_path):
    from safetensors.numpy import load_file

    cfg, tensors = _peft()
    write_peft(tmp_path / "peft", cfg, tensors)
    read_cfg, read_tensors = read_peft(tmp_path / "peft")
    assert read_cfg == cfg and set(read_tensors) == set(tensors)
    weights, params = peft_to_mlx(read_cfg, read_tensors)
    out = write_mlx_adapter(tmp_path / "mlx", weights, params, mlx_num_layers(weights, 3))
    mlx_cfg = json.loads((out / "adapter_config.json").read_text())
    assert mlx_cfg == {"fine_tune_type": "lora", "num_layers": 3, "lora_parameters": params}
    assert set(load_file(str(out / "adapters.safetensors"))) == set(weights)
