"""FIFO queue (ring buffer) of teacher embeddings, the dictionary D of SEED and MoCo."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["EmbeddingQueue"]


class EmbeddingQueue(nn.Module):
    """Ring buffer of ``size`` L2-normalised embeddings of width ``dim``.

    * Any ``size`` and batch size work: a batch that runs past the end wraps around to the
      start (no ``size % batch_size == 0`` requirement as in the official MoCo/SEED code).
      A single enqueue larger than ``size`` raises ``ValueError``.
    * The buffers are **persistent**: they are part of ``state_dict()``, so Trainer checkpoints
      and ``save_pretrained`` carry the queue and a resumed run continues with the exact same
      dictionary. ``num_filled`` counts the real keys written so far (capped at ``size``);
      the rest of the buffer holds the random unit vectors of :meth:`reset`, as in the
      official implementations.
    * ``enqueue`` must receive the keys of the *global* batch (see
      :func:`seed_hf.training.distributed.all_gather_no_grad`), so every rank holds the same queue.

    Args:
        size (`int`): number of embeddings K.
        dim (`int`): embedding width.
        seed (`int`, *optional*, defaults to 0): seed of the random initial content.

    Attributes:
        embeddings: ``(size, dim)`` buffer.
        ptr: scalar long buffer, next write position.
        num_filled: scalar long buffer, number of real keys held (≤ size).
    """

    def __init__(self, size: int, dim: int, seed: int = 0):
        super().__init__()
        if size <= 0:
            raise ValueError(f"queue_size must be a positive integer, got {size}.")
        if dim <= 0:
            raise ValueError(f"queue dim must be a positive integer, got {dim}.")
        self.size = int(size)
        self.dim = int(dim)
        self.seed = int(seed)
        _check_queue_memory(self.size, self.dim)
        try:
            self.register_buffer("embeddings", torch.empty(self.size, self.dim), persistent=True)
            self.register_buffer("ptr", torch.zeros((), dtype=torch.long), persistent=True)
            self.register_buffer("num_filled", torch.zeros((), dtype=torch.long), persistent=True)
            self.reset()
        except (RuntimeError, MemoryError) as error:
            if "alloc" not in str(error).lower():
                raise
            raise ValueError(
                f"--queue_size={self.size} could not be allocated: {_queue_memory(self.size, self.dim)} "
                f"({type(error).__name__}: {str(error)[:200]}). Pass a smaller --queue_size (the paper's: 65536)."
            ) from error

    @torch.no_grad()
    def reset(self) -> None:
        """Fills the queue with random unit vectors drawn from its ``seed`` and empties it."""
        generator = torch.Generator().manual_seed(self.seed)
        random = torch.randn(self.size, self.dim, generator=generator)
        self.embeddings.copy_(F.normalize(random, dim=1))
        self.ptr.zero_()
        self.num_filled.zero_()

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Writes ``keys`` (``(n, dim)``, n ≤ size) at the pointer, wrapping around (FIFO)."""
        if keys.ndim != 2 or keys.shape[1] != self.dim:
            raise ValueError(f"keys must have shape (n, {self.dim}), got {tuple(keys.shape)}.")
        n = keys.shape[0]
        if n > self.size:
            raise ValueError(
                f"Cannot enqueue {n} keys into a queue of size {self.size}: queue_size must be at "
                "least the global batch size (per_device_train_batch_size × world size)."
            )
        keys = keys.detach().to(device=self.embeddings.device, dtype=self.embeddings.dtype)
        start = int(self.ptr)
        first = min(n, self.size - start)
        self.embeddings[start : start + first] = keys[:first]
        if first < n:  # wrap around
            self.embeddings[: n - first] = keys[first:]
        self.ptr.fill_((start + n) % self.size)
        self.num_filled.fill_(min(int(self.num_filled) + n, self.size))

    @property
    def fill_fraction(self) -> float:
        return int(self.num_filled) / self.size

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.dim}"


def _gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.1f} GiB"


def _queue_memory(size: int, dim: int) -> str:
    n_bytes = size * dim * 4
    return (
        f"its {size} × {dim} float32 embeddings take {_gib(n_bytes)}, twice that while the random initial "
        "content is drawn"
    )


def _physical_memory() -> int | None:
    """This machine's memory in bytes (None where the OS does not say)."""
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _check_queue_memory(size: int, dim: int) -> None:
    """Refuses a queue that cannot fit in this machine's memory before allocating it, naming the
    memory it would need (an allocator error names neither the parameter nor the cause)."""
    total = _physical_memory()
    if total is not None and 2 * size * dim * 4 > total:
        raise ValueError(
            f"--queue_size={size} does not fit in memory: {_queue_memory(size, dim)}, and this machine has "
            f"{_gib(total)}. Pass a smaller --queue_size (the paper's: 65536)."
        )
