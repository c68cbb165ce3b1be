"""Every shipped recipe loads, and the 7B recipes stay inside the memory their comments promise.

The estimate is the arithmetic written in recipes/llama2-7b-*.yaml, from Llama 2 7B's shapes; it
fails when a recipe's sizes (batch, context, max_length, LoRA rank, checkpointing) are raised past
the device's budget without the comment's numbers being redone.
"""

from __future__ import annotations

import pytest

from isara_lite.recipe import load_recipe

from conftest import REPO

RECIPES = sorted((REPO / "recipes").glob("*.yaml"))

# Llama 2 7B (meta-llama/Llama-2-7b-hf config.json)
LAYERS, HIDDEN, INTER, VOCAB = 32, 4096, 11008, 32000
GB = 2**30


def test_there_are_recipes():
    assert {"quickstart.yaml", "llama2-7b-mac16gb.yaml", "llama2-7b-gpu8-12gb.yaml"} <= {p.name for p in RECIPES}


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_every_recipe_loads(path):
    recipe = load_recipe(path)
    assert all(p.is_file() for p in recipe.seed_files())
    for held_out in (recipe.check.harmful, recipe.check.benign):
        assert held_out is None or recipe.path(held_out).is_file()


def peak_gb(recipe, weight_bits: float, runtime_gb: float = 1.0) -> float:
    """Weights + LoRA states + the larger of training activations and the generation KV cache."""
    t, g = recipe.training, recipe.generation
    linear = LAYERS * (4 * HIDDEN * HIDDEN + 3 * HIDDEN * INTER)
    weights = (linear + 2 * VOCAB * HIDDEN) * weight_bits / 8
    targets = {"q_proj": (HIDDEN, HIDDEN), "k_proj": (HIDDEN, HIDDEN), "v_proj": (HIDDEN, HIDDEN),
               "o_proj": (HIDDEN, HIDDEN), "gate_proj": (HIDDEN, INTER), "up_proj": (HIDDEN, INTER),
               "down_proj": (INTER, HIDDEN)}
    lora = LAYERS * sum(t.lora_rank * sum(targets[m]) for m in t.target_modules) * 16  # fp32 w, grad, Adam m, v
    tokens = t.batch_size * t.max_length
    kept_per_layer = 1 if t.gradient_checkpointing else 30  # 16-bit vectors of HIDDEN per token and layer
    train = tokens * HIDDEN * 2 * (LAYERS * kept_per_layer + 30) + tokens * VOCAB * 4 / 8  # + one layer recomputed, logits
    answer = max(g.question_max_tokens, g.answer_max_tokens)
    kv = 2 * LAYERS * HIDDEN * 2 * g.batch_size * (recipe.context_tokens + answer)
    return (weights + lora + max(train, kv)) / GB + runtime_gb


def test_gpu_recipe_fits_8gb():
    recipe = load_recipe(REPO / "recipes" / "llama2-7b-gpu8-12gb.yaml")
    assert recipe.backend == "unsloth" and recipe.model == "llama-2-7b"  # 4-bit by the backend's > 3B rule
    assert peak_gb(recipe, weight_bits=4.13) < 7.8  # NF4 + double quantization; 8 GB cards show ~7.8 GB free


def test_mac_recipe_fits_16gb():
    recipe = load_recipe(REPO / "recipes" / "llama2-7b-mac16gb.yaml")
    assert recipe.backend == "mlx"
    assert peak_gb(recipe, weight_bits=4.5) < 16 * 2 / 3  # macOS wires about 2/3 of RAM for the GPU


def test_scale_out_recipe_trains_on_24gb_gpus():
    recipe = load_recipe(REPO / "recipes" / "scale-out-vllm.yaml")
    assert recipe.backend == "openai" and recipe.training.precision == "bf16"
    recipe.generation.batch_size = 0  # generation runs on the server: only training's memory is here
    assert peak_gb(recipe, weight_bits=16) < 24  # even one process holding the whole batch


def test_the_estimate_can_fail():
    """Sanity of the check itself: the same 7B at the recipe defaults (batch 8, 1500-token prompts,
    no checkpointing) does not fit an 8 GB GPU."""
    recipe = load_recipe(REPO / "recipes" / "llama2-7b-gpu8-12gb.yaml",
                         ["generation.batch_size=8", "context_tokens=1500", "training.gradient_checkpointing=false"])
    assert peak_gb(recipe, weight_bits=4.13) > 8
