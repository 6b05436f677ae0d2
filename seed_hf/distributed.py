"""Collectives with single-process fallbacks.

Every collective used by seed_hf goes through this module so that the same code runs
unchanged in one CPU process, under ``torchrun`` (gloo / nccl) and under ``accelerate``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["is_distributed", "rank", "world_size", "all_gather_no_grad"]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


@torch.no_grad()
def all_gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenates ``tensor`` from every rank along dim 0, in rank order.

    No gradient flows through the result (as MoCo's ``concat_all_gather``): it is used for
    teacher keys, which never need one. All ranks must pass tensors of the same shape.

    Shape: ``(batch_size, ...)`` -> ``(world_size * batch_size, ...)``.
    """
    if not is_distributed() or world_size() == 1:
        return tensor.detach()
    tensor = tensor.detach().contiguous()
    gathered = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(gathered, tensor)
    return torch.cat(gathered, dim=0)
