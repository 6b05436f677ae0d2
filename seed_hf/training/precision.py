"""Precision of the frozen teacher: what ``teacher_dtype="auto"`` means on each device.

The teacher only runs inference, and its outputs are L2-normalised embeddings that the loss
turns into softmax targets in fp32, so bf16 costs the targets little (``benchmarks/bench_step.py``
reports the KL between bf16 and fp32 targets) and speeds the teacher up on CPUs that compute in
bf16 natively: AVX512-BF16 (``vdpbf16ps``, Cooper Lake, Zen 4 and later) or AMX
(Sapphire Rapids and later). On other CPUs, oneDNN emulates bf16 through fp32 conversions and
bf16 is slower than fp32, so ``auto`` keeps fp32 there. On GPUs ``auto`` follows the run's
mixed precision (``--bf16`` / ``--fp16``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import torch

__all__ = [
    "NATIVE_BF16_CPU_FLAGS",
    "autocast_to",
    "cpu_flags",
    "cpu_has_native_bf16",
    "mixed_precision_dtype",
    "resolve_teacher_dtype",
    "teacher_autocast",
]

# /proc/cpuinfo flags of CPUs with bf16 dot-product instructions
NATIVE_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of ``/proc/cpuinfo`` (empty where there is none: macOS, Windows)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86 / arm64 spelling
            return frozenset(value.split())
    return frozenset()


def cpu_has_native_bf16(flags: frozenset[str] | set[str] | None = None) -> bool:
    """Whether the CPU computes bf16 natively (AVX512-BF16 or AMX-BF16). ``flags`` default to
    this machine's :func:`cpu_flags`. Where ``/proc/cpuinfo`` is missing the answer is False
    (fp32, the safe choice): torch's ``get_cpu_capability()`` says ``AVX512`` without telling
    whether BF16 is part of it."""
    return bool(NATIVE_BF16_CPU_FLAGS & set(cpu_flags() if flags is None else flags))


def resolve_teacher_dtype(
    teacher_dtype: str, device_type: str, flags: frozenset[str] | set[str] | None = None
) -> torch.dtype | None:
    """The teacher's autocast dtype: ``torch.bfloat16``, ``torch.float16``, ``torch.float32`` (autocast off), or
    None for "the run's mixed precision" (``accelerator.autocast()``).

    ``"auto"`` gives bf16 on CPUs with native bf16 (:func:`cpu_has_native_bf16` of ``flags``),
    None elsewhere (fp32 on other CPUs unless the run itself is bf16; the run's precision on
    GPUs); ``"bfloat16"``, ``"float16"`` (the official SEED code's teacher) and ``"float32"`` are taken as given.
    """
    explicit = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
    if teacher_dtype in explicit:
        return explicit[teacher_dtype]
    if teacher_dtype != "auto":
        raise ValueError(
            f"--teacher_dtype must be 'auto', 'bfloat16', 'float16' or 'float32', got {teacher_dtype!r}."
        )
    if device_type == "cpu" and cpu_has_native_bf16(flags):
        return torch.bfloat16
    return None


def mixed_precision_dtype(mixed_precision: str | None) -> torch.dtype:
    """The dtype of a run's mixed precision (``"bf16"``, ``"fp16"``; None or ``"no"``: fp32), for code
    that runs the teacher outside the Trainer's accelerator (the teacher cache's writer)."""
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "no": torch.float32, None: torch.float32}
    if mixed_precision not in dtypes:
        raise ValueError(f"`mixed_precision` must be 'bf16', 'fp16', 'no' or None, got {mixed_precision!r}.")
    return dtypes[mixed_precision]


def autocast_to(device_type: str, dtype: torch.dtype) -> torch.autocast:
    """Autocast to ``dtype`` on ``device_type``; ``torch.float32`` turns autocast off (also an
    enclosing one: the block then computes in fp32)."""
    return torch.autocast(device_type, dtype=dtype, enabled=dtype != torch.float32)


def teacher_autocast(
    teacher_dtype: str, device_type: str, run_autocast: Callable[[], AbstractContextManager]
) -> AbstractContextManager:
    """The context the teacher's forward runs in: :func:`autocast_to` the dtype
    :func:`resolve_teacher_dtype` gives, or ``run_autocast()`` (the run's own mixed precision, e.g.
    ``accelerator.autocast``) where it gives None."""
    dtype = resolve_teacher_dtype(teacher_dtype, device_type)
    return run_autocast() if dtype is None else autocast_to(device_type, dtype)
