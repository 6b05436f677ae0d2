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
      :func:`seed_hf.distributed.all_gather_no_grad`), so every rank holds the same queue.

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
        self.register_buffer("embeddings", torch.empty(self.size, self.dim), persistent=True)
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long), persistent=True)
        self.register_buffer("num_filled", torch.zeros((), dtype=torch.long), persistent=True)
        self.reset()

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
