"""One way to derive a seed from several integers, for new code: ``mix_seed(seed, epoch, index, ...)``.

Why one helper: a seed derived per (run seed, epoch, sample, reader, ...) must not depend on the
process, the worker count or Python's hash randomisation, and two derivations must not collide by
construction (``seed + epoch`` gives (1, 0) and (0, 1) the same seed); a hash of the whole tuple
gives both. The per-sample augmentation seed (:func:`seed_hf.data.rows.sample_seed`) keeps its own
formula: changing it would change the views of every run already trained, shipped ones included.
"""

from __future__ import annotations

import hashlib

__all__ = ["mix_seed"]


def mix_seed(*parts: int) -> int:
    """A seed in ``[0, 2**64)`` from integers: BLAKE2b (8 bytes) of their tuple, the same in every
    process and Python run. ``torch.Generator.manual_seed`` takes it as is."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")
