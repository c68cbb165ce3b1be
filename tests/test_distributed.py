"""Step 4 in two CPU processes (torchrun, gloo on loopback) trains like one process (on the tiny model:
the processes' arithmetic, not the model, is under test)."""

import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from isara_lite.errors import IsaraError

import tiny_model


def _examples(repo, renderer, n=12):
    seeds = [json.loads(line) for line in (repo / "recipes" / "seeds" / "safety.jsonl").read_text().splitlines()][:n]
    return [(renderer.chat_prompt(s["prompt"]), s["response"]) for s in seeds]


def test_two_processes_reach_the_one_process_loss_curve(tmp_path, repo, tiny_card, renderer):
    from isara_lite.backends.torch import TorchBackend
    from isara_lite.distributed import train_processes
    from isara_lite.recipe import TrainConfig

    examples = _examples(repo, renderer)
    # 3 steps of 5 rows: the ranks get 3 and 2 rows, and the third batch wraps into the second epoch
    config = TrainConfig(batch_size=5, epochs=2, max_steps=3, precision="fp32", warmup_ratio=0.0)
    one = TorchBackend(tiny_card, threads=2, device="cpu").train(examples, config, 5e-3, None, tmp_path / "one")
    steps = []
    config.processes = 2
    two = train_processes(str(tiny_model.CARD), examples, config, 5e-3, None, tmp_path / "two", seed=0, device="cpu",
                          threads=2, on_step=lambda *a: steps.append(a))
    assert two.steps == one.steps == 3 and len(two.losses) == 3
    assert two.losses == pytest.approx(one.losses, rel=1e-4)  # float summation order only
    # Adam and the clip at norm 1 hide a wrongly scaled gradient from losses and weights; the norms show it
    assert len(two.grad_norms) == 3 and two.grad_norms == pytest.approx(one.grad_norms, rel=1e-4)
    assert [s[2] for s in steps] == two.losses and two.tokens == one.tokens
    a, b = load_file(tmp_path / "one" / "adapter_model.safetensors"), load_file(tmp_path / "two" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    # Adam turns float-order noise in near-zero gradients into whole steps of a few weights; every
    # tensor as a whole agrees to well under 1%
    assert max(np.linalg.norm(a[k] - b[k]) / np.linalg.norm(a[k]) for k in a) < 1e-2
    assert sum(int((abs(a[k] - b[k]) > 1e-4).sum()) for k in a) < 1e-4 * sum(a[k].size for k in a)
    assert (tmp_path / "two" / "adapter_config.json").is_file()


def test_a_failed_job_is_one_line(tmp_path, repo, renderer):
    from isara_lite.distributed import train_processes
    from isara_lite.recipe import TrainConfig

    config = TrainConfig(batch_size=4, max_steps=1, processes=2)
    with pytest.raises(IsaraError, match=r"training.processes=2: the training job failed \(exit 1\).*no adapter_model"):
        train_processes(str(tiny_model.CARD), _examples(repo, renderer, 4), config, 1e-3, tmp_path / "missing", tmp_path / "out",
                        seed=0, device="cpu", threads=2)
    assert not (tmp_path / "out").exists()


def test_sharded_processes_reach_the_one_process_loss_curve(tmp_path, repo, tiny_card, renderer):
    """training.shard: FSDP2 splits the weights across the two processes; the steps are the same."""
    from isara_lite.backends.torch import TorchBackend
    from isara_lite.distributed import train_processes
    from isara_lite.recipe import TrainConfig

    examples = _examples(repo, renderer)
    config = TrainConfig(batch_size=5, epochs=2, max_steps=3, precision="fp32", warmup_ratio=0.0)
    backend = TorchBackend(tiny_card, threads=2, device="cpu")
    one = backend.train(examples, config, 5e-3, None, tmp_path / "one")
    config.processes, config.shard = 2, True
    two = train_processes(str(tiny_model.CARD), examples, config, 5e-3, None, tmp_path / "two", seed=0, device="cpu",
                          threads=2)
    assert two.steps == 3 and two.losses == pytest.approx(one.losses, rel=1e-4) and two.tokens == one.tokens
    assert two.grad_norms == pytest.approx(one.grad_norms, rel=1e-4)  # FSDP's average scaled back to the sum
    a, b = load_file(tmp_path / "one" / "adapter_model.safetensors"), load_file(tmp_path / "two" / "adapter_model.safetensors")
    # process 0 held half of each decoder layer's weights, LoRA included; the embeddings and head stay
    # whole (counted on the one-process model, which keeps its LoRA after training)
    trained = dict(backend.model.named_parameters())
    layers = sum(p.numel() * 4 for n, p in trained.items() if ".layers." in n)
    whole = sum(p.numel() * 4 for p in trained.values())
    assert two.weights_mb * 2**20 == pytest.approx(whole - layers / 2, rel=1e-4)
    assert a.keys() == b.keys() and all(b[k].dtype == np.float32 for k in b)
    assert max(np.linalg.norm(a[k] - b[k]) / np.linalg.norm(a[k]) for k in a) < 1e-2
