"""Step 4 across processes (training.processes > 1): torchrun starts N copies of this module, each
loads the model, and all of them run step 4 (training.fit with the torch backend's primitives) on
the same seeded batches. Each process takes every N-th row of a batch; after the backward pass the
LoRA gradients, the loss and the token count are summed across processes (what DDP does, written
out because the loss bypasses the wrapped module's forward), so every process takes the same
optimizer step and the loss curve is the one-process curve up to float summation order. Process 0
saves the adapter. With training.shard each process holds only its share of the weights (FSDP2,
`shard` below) and FSDP sums the gradients.

CPU processes talk over gloo on loopback; on CUDA each process gets one GPU and NCCL. Generation,
filters and the check stay in the main process, which waits for the training job:

    python -m torch.distributed.run --standalone --nproc_per_node N -m isara_lite.distributed JOB.json
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from .errors import IsaraError

STEP = "isara-step "  # a progress line from process 0


def process_group() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside torchrun."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_sum(params, loss: float, tokens: int, device) -> tuple[float, int]:
    """Sum every parameter's gradient, the loss and the token count over the processes, in one call
    (no parameters: a sharded model's gradients are already reduced by FSDP)."""
    import torch
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1).float() for g in grads] + [torch.tensor([loss, tokens], dtype=torch.float32,
                                                                            device=device)])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    at = 0
    for p, g in zip(params, grads):
        p.grad = flat[at:at + g.numel()].view_as(g).to(g.dtype)
        at += g.numel()
    return float(flat[-2]), int(flat[-1])


def shard(model) -> None:
    """FSDP2: each decoder layer (the classes the model lists in _no_split_modules, as accelerate's
    FSDP wrapping does) becomes a unit whose weights are split across the processes and gathered for
    its forward and backward. The embeddings, final norm and head stay whole in every process: the
    loss calls them directly (answer_loss), and a tied head shares the embedding's weight. FSDP
    averages the gradients over the processes (gloo has no pre-multiplied sum), so TorchSteps
    scales its loss by their number to get the sum."""
    from torch.distributed.fsdp import fully_shard

    names = set(getattr(model.get_base_model(), "_no_split_modules", None) or [])
    units = [m for m in model.modules() if type(m).__name__ in names]
    if not units:
        raise IsaraError(f"training.shard: {type(model.get_base_model()).__name__} names no decoder layer class "
                         "(_no_split_modules) to shard by")
    for m in units:
        fully_shard(m)


def full_tensors(model) -> dict:
    """The trainable (LoRA) weights whole, gathered from a sharded model; every process must call it."""
    return {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().cpu()
            for n, p in model.named_parameters() if p.requires_grad}


def local_mb(model) -> float:
    """MB of weights this process holds (its shard of a sharded weight)."""
    local = [p.to_local() if hasattr(p, "to_local") else p for p in model.parameters()]
    return sum(t.numel() * t.element_size() for t in local) / 2**20


def train_processes(model: str, examples, config, learning_rate: float, adapter_in: Path | None, adapter_out: Path,
                    seed: int, device: str, threads: int, on_step=None):
    """Run one training job on config.processes processes; returns the TrainResult of process 0."""
    from .backends.base import default_threads
    from .training import TrainResult

    n = config.processes
    per = max(1, default_threads(threads) // n) if device != "cuda" else 1
    with tempfile.TemporaryDirectory(prefix="isara-train-") as tmp:
        job, result = Path(tmp) / "job.json", Path(tmp) / "result.json"
        job.write_text(json.dumps({
            "model": model, "examples": examples, "config": asdict(config), "learning_rate": learning_rate,
            "adapter_in": str(adapter_in) if adapter_in else None, "adapter_out": str(adapter_out),
            "seed": seed, "device": device, "threads": per, "result": str(result)}), encoding="utf-8")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
               "-m", "isara_lite.distributed", str(job)]
        env = {**os.environ, "OMP_NUM_THREADS": str(per)}
        with open(Path(tmp) / "stderr.txt", "w+", encoding="utf-8") as err:  # a file: a full pipe would block
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
            for line in proc.stdout:
                if line.startswith(STEP) and on_step:
                    on_step(*json.loads(line[len(STEP):]))
            err.seek(0)
            tail = " | ".join(err.read().strip().splitlines()[-3:])
        if proc.wait() != 0 or not result.is_file():
            errors = sorted(Path(tmp).glob("error*.txt"))  # a process's own one-line error, else torchrun's
            why = errors[0].read_text(encoding="utf-8") if errors else tail
            raise IsaraError(f"training.processes={n}: the training job failed (exit {proc.returncode}): {why}")
        out = json.loads(result.read_text())
    return TrainResult(Path(out["adapter"]), out["steps"], out["losses"], out["tokens"], out["seconds"], out["weights_mb"],
                       out["grad_norms"])


def main(job_path: str) -> None:
    import torch
    import torch.distributed as dist

    from .backends.torch import TorchBackend
    from .models import load_card
    from .recipe import TrainConfig

    job = json.loads(Path(job_path).read_text(encoding="utf-8"))
    cuda = job["device"] == "cuda" or (job["device"] == "auto" and torch.cuda.is_available())
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank()
    try:
        # "cuda" is the GPU set above: one per process
        backend = TorchBackend(load_card(job["model"]), threads=job["threads"], device="cuda" if cuda else "cpu",
                               seed=job["seed"])

        def on_step(*args):
            if rank == 0:
                print(STEP + json.dumps(args), flush=True)

        t0 = time.time()
        res = backend.train([tuple(e) for e in job["examples"]], TrainConfig(**job["config"]), job["learning_rate"],
                            Path(job["adapter_in"]) if job["adapter_in"] else None, Path(job["adapter_out"]), on_step)
        dist.barrier()  # the adapter is on disk before anyone reports success
        if rank == 0:
            Path(job["result"]).write_text(json.dumps({
                "adapter": str(res.adapter), "steps": res.steps, "losses": res.losses, "tokens": res.tokens,
                "seconds": time.time() - t0, "weights_mb": local_mb(backend.model), "grad_norms": res.grad_norms}),
                encoding="utf-8")
    except Exception as e:
        Path(job["result"]).with_name(f"error{rank}.txt").write_text(
            str(e) if isinstance(e, IsaraError) else f"{type(e).__name__}: {e}", encoding="utf-8")
        raise
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
