"""Collectives with single-process fallbacks.

Every collective used by seed_hf goes through this module so that the same code runs
unchanged in one CPU process, under ``torchrun`` (gloo / nccl) and under ``accelerate``.
"""

from __future__ import annotations

import gc

import torch
import torch.distributed as dist

__all__ = ["is_distributed", "world_size", "all_gather_no_grad", "shutdown_distributed"]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def shutdown_distributed() -> None:
    """Destroys the default process group while the interpreter is still alive: the last call of
    every script that trains (a no-op in one process).

    A trainer's DDP wrapper holds the group through reference cycles that only a garbage
    collection breaks. Left to the interpreter's exit, a gloo worker thread that frees the last
    collective's tensors asks a finalising interpreter for the GIL and the process aborts
    ("terminate called without an active exception", SIGABRT), so the cycles are collected first.
    """
    gc.collect()
    if is_distributed():
        dist.destroy_process_group()


@torch.no_grad()
def all_gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenates ``tensor`` from every rank along dim 0, in rank order.

    No gradient flows through the result (as MoCo's ``concat_all_gather``): it is used for
    teacher keys, which never need one. Ranks may hold different batch sizes (a skipped
    corrupt image, a last partial batch): rows are padded for the collective and trimmed.

    Shape: ``(batch_size_r, ...)`` on rank r -> ``(Σ_r batch_size_r, ...)``.
    """
    if not is_distributed() or world_size() == 1:
        return tensor.detach()
    tensor = tensor.detach().contiguous()
    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.empty_like(size) for _ in range(world_size())]
    dist.all_gather(sizes, size)
    sizes = [int(s) for s in sizes]
    longest = max(sizes)
    if longest != tensor.shape[0]:
        padding = tensor.new_zeros((longest - tensor.shape[0], *tensor.shape[1:]))
        tensor = torch.cat([tensor, padding])
    gathered = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(gathered, tensor)
    return torch.cat([g[:n] for g, n in zip(gathered, sizes)], dim=0)
