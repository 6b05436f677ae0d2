"""The training step's memory format and the student's precision, chosen per device and
architecture by what is measured faster (``channels_last="auto"``, ``student_dtype="auto"``).

Why measure instead of a fixed rule: channels_last speeds some students up and bf16 autocast
slows others down (depthwise convolutions), by amounts that depend on the architecture, the
CPU's instructions and the device (docs/performance.md). So the trainer times the real models at the real batch shape once, before the first step
(a few seconds), and keeps the fastest.

The rule, deterministic given the timings (tests inject them):

* The candidates run alternated (round robin), ``warmup`` untimed calls then ``repeats`` timed ones
  each, so a load change hits all of them alike; a candidate's time is its fastest call.
* The *prior* is the table measured on this project's machines: channels_last (student and
  teacher) and the run's own precision (fp32 unless ``--bf16``). Another candidate replaces it only
  when it is faster by more than :data:`MARGIN` (another layout) or :data:`PRECISION_MARGIN`
  (another precision: the numerics move more), so noise cannot flip a near tie, and a run and its
  repetition make the same choice where it matters little.
* A busy machine keeps the prior: when a candidate's timed calls differ by more than
  :data:`MAX_SPREAD` (or the budget left a single one), the timings say more about the other jobs
  than about the models (with other jobs on a small machine the candidates slow down alike and end
  close together).
* Tiny workloads (fewer than :data:`PROBE_MIN_PIXELS` pixels per batch: unit tests, toy runs) keep
  the prior without probing: their steps take milliseconds, the probe would be noise, and their
  results then do not depend on timing.
* A resumed run reuses the choice recorded in its checkpoint (:data:`STEP_CHOICE_FILE`), so it continues
  on the same numerics; under DDP every rank takes rank 0's choice.

The student's candidates are {channels_last, NCHW} × {fp32, bf16 autocast} where bf16 is native
(AVX512-BF16 / AMX CPUs, :func:`seed_hf.training.precision.cpu_has_native_bf16`) and the run is fp32; on
GPUs and other CPUs only the layout is probed and the precision is the run's (``--bf16``).
The loss's softmaxes stay in fp32 under any autocast (``seed_hf.models.losses``). The teacher keeps its
``teacher_dtype`` and only its layout is probed (forward only, ``inference_mode``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = [
    "MARGIN",
    "MAX_SPREAD",
    "PRECISION_MARGIN",
    "PROBE_BUDGET_S",
    "PROBE_MIN_PIXELS",
    "STEP_CHOICE_FILE",
    "StepChoice",
    "channels_last_backward_hazards",
    "choose",
    "is_noisy",
    "parse_switch",
    "preserved_state",
    "probe_images",
    "read_step_choice",
    "time_candidates",
    "timed_call",
]

logger = logging.getLogger(__name__)

# a candidate must beat the prior by more than this to replace it: above the run-to-run noise of the
# fastest of 2 alternated calls on a quiet machine, below the gains worth taking
MARGIN = 0.10
# the same for a candidate of another precision than the prior's (bf16 autocast moves the numerics
# more than a layout does)
PRECISION_MARGIN = 0.25
# fastest / slowest timed call of a candidate beyond which the probe counts as noisy
MAX_SPREAD = 1.15
# batch × height × width below which the probe is skipped: 64 images of 64 px (a test's 8 × 32 × 32 is
# 32x smaller; the Fashion-MNIST demo's 256 × 64 × 64 is 4x larger)
PROBE_MIN_PIXELS = 64 * 64 * 64
# a probe call longer than this (large models on CPU) is repeated on a proportionally smaller batch
MAX_PROBE_CALL_S = 2.0
# a probe stops after the round in which it passed this many seconds (at least one timed round runs):
# a loaded machine must not turn a few seconds of probing into minutes
PROBE_BUDGET_S = 30.0
STEP_CHOICE_FILE = "step_choice.json"  # in each checkpoint: what a resumed run reuses
SWITCH_VALUES = ("auto", "true", "false")
_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def parse_switch(value: str | bool | None, name: str) -> str:
    """``"auto"``, ``"true"`` or ``"false"`` from a tri-state flag: bools (Python callers, recipes'
    JSON ``true``), their usual spellings in any case, or None / ``"auto"``."""
    if value is None or isinstance(value, bool):
        return "auto" if value is None else str(value).lower()
    text = str(value).strip().lower()
    if text in _TRUE:
        return "true"
    if text in _FALSE:
        return "false"
    if text == "auto":
        return "auto"
    raise ValueError(f"--{name} must be one of {SWITCH_VALUES} (or a bool), got {value!r}.")


@dataclass
class StepChoice:
    """The training step's autotuned choice: the student's and the teacher's memory format, and the
    precision of the student's forward (``"float32"``; ``"bfloat16"``: bf16 autocast, the run's own
    under ``--bf16``; ``"float16"`` under ``--fp16``).

    ``sources`` says, per choice, where it came from: ``"given"`` (the user's flag), ``"probe"``
    (measured; ``timings_s`` holds the seconds per call of each candidate), ``"unsafe"`` (NCHW:
    the student's backward crashes in channels_last, :func:`channels_last_backward_hazards`),
    ``"prior"`` (the table: tiny workload, a single candidate, or no candidate faster by :data:`MARGIN`) or
    ``"resumed"`` (recorded in the checkpoint resumed from). ``noisy`` names the parts whose
    probe ran on a busy machine and so kept the prior (:func:`is_noisy`)."""

    student_channels_last: bool = True
    student_dtype: str = "float32"
    teacher_channels_last: bool | None = None  # None: no teacher (MoCo)
    sources: dict[str, str] = field(default_factory=dict)
    timings_s: dict[str, dict[str, float]] = field(default_factory=dict)
    probe_batch_size: int | None = None
    noisy: list[str] = field(default_factory=list)  # the parts ("student", "teacher") whose probe was noisy

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StepChoice:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)

    def describe(self) -> str:
        """One log line: each choice with its source, and the probe's timings."""

        def source(key: str) -> str:
            return f" ({self.sources.get(key, 'prior')})"

        def layout(channels_last: bool | None) -> str:
            return "channels_last" if channels_last else "NCHW"

        parts = [
            f"student {layout(self.student_channels_last)}{source('student_channels_last')}",
            f"student {self.student_dtype}{source('student_dtype')}",
        ]
        if self.teacher_channels_last is not None:
            parts.append(f"teacher {layout(self.teacher_channels_last)}{source('teacher_channels_last')}")
        timings = "; ".join(
            f"{part}: " + ", ".join(f"{name} {1000 * t:.0f} ms" for name, t in times.items())
            for part, times in self.timings_s.items()
        )
        batch = f" at batch {self.probe_batch_size}" if self.probe_batch_size else ""
        noisy = f"; noisy ({', '.join(self.noisy)}: a busy machine), the prior kept" if self.noisy else ""
        return ", ".join(parts) + (f" [probe{batch}: {timings}{noisy}]" if timings else "")


# torch's CPU backward of a strided 1x1 convolution on a channels_last input with fewer input
# channels per group than this aborts the process (SIGSEGV / "munmap_chunk(): invalid pointer")
UNSAFE_CHANNELS_LAST_MIN_CHANNELS = 8


def channels_last_backward_hazards(model: nn.Module, device: torch.device) -> list[str]:
    """The convolutions of ``model`` whose backward crashes the process under channels_last on
    ``device``: on CPU, 1x1 convolutions with a stride above 1 and fewer than
    :data:`UNSAFE_CHANNELS_LAST_MIN_CHANNELS` input channels per group (the stems of RepVGG, MobileOne,
    FastViT: their 1x1 branch sees the 3 image channels). A crash kills the process with no Python
    error, so the trainer must never probe or train such a student in channels_last. Empty on GPUs.
    """
    if device.type != "cpu":
        return []
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Conv2d)
        and tuple(module.kernel_size) == (1, 1)
        and max(module.stride) > 1
        and module.in_channels // module.groups < UNSAFE_CHANNELS_LAST_MIN_CHANNELS
    ]


def timed_call(name: str, fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds one call of ``fn`` takes on ``device`` (CUDA synchronised before and after).
    ``name`` is the candidate's: unused here, it lets tests inject timings per candidate."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def time_candidates(
    candidates: dict[str, Callable[[], Any]],
    device: torch.device,
    warmup: int = 1,
    repeats: int = 3,
    measure: Callable[[str, Callable[[], Any], torch.device], float] | None = None,
    setup: Callable[[str], Any] | None = None,
    budget_s: float | None = None,
) -> dict[str, list[float]]:
    """The seconds of ``repeats`` timed calls per candidate after ``warmup`` untimed ones, alternated
    round robin so that a change of load hits every candidate alike. ``setup(name)`` runs untimed
    before each call (e.g. converting the model to the candidate's memory format). After the first
    timed round, no new round starts once the measured calls add up to ``budget_s`` (default
    :data:`PROBE_BUDGET_S`). ``measure`` defaults to :func:`timed_call` (looked up at call time, so
    tests can replace it)."""
    measure = measure or timed_call
    budget_s = PROBE_BUDGET_S if budget_s is None else budget_s
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    spent = 0.0
    for round_ in range(warmup + repeats):
        if round_ > warmup and spent >= budget_s:
            break
        for name, fn in candidates.items():
            if setup is not None:
                setup(name)
            elapsed = measure(name, fn, device)
            spent += elapsed
            if round_ >= warmup:
                samples[name].append(elapsed)
    return samples


def is_noisy(samples: dict[str, list[float]], max_spread: float = MAX_SPREAD) -> bool:
    """Whether the timings cannot be trusted: a candidate with fewer than 2 timed calls, or whose
    slowest call took more than ``max_spread`` times its fastest."""
    return any(len(v) < 2 or max(v) > max_spread * min(v) for v in samples.values())


def choose(
    samples: dict[str, list[float]],
    prior: str,
    margins: dict[str, float] | float = MARGIN,
    max_spread: float = MAX_SPREAD,
) -> str:
    """The candidate whose fastest call is fastest if it beats ``prior``'s by more than its margin
    (a fraction; ``margins`` per candidate or one for all), else ``prior``; ``prior`` also when the
    timings are noisy (:func:`is_noisy`). Deterministic given the timings."""
    if prior not in samples:
        raise ValueError(f"The prior {prior!r} is not among the candidates {sorted(samples)}.")
    if is_noisy(samples, max_spread):
        return prior
    best = {name: min(v) for name, v in samples.items()}

    def margin(name: str) -> float:
        return margins.get(name, MARGIN) if isinstance(margins, dict) else margins

    winners = [name for name in best if best[name] * (1 + margin(name)) < best[prior]]
    return min(winners, key=best.__getitem__) if winners else prior


def probe_images(batch_size: int, in_chans: int, image_size: int, device: torch.device) -> torch.Tensor:
    """Random NCHW images of the real batch shape for a probe, drawn from their own generator so that
    the global RNG streams stay untouched."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, in_chans, image_size, image_size, generator=generator)
    return x.to(device)


@contextmanager
def preserved_state(module: nn.Module, device: torch.device) -> Iterator[None]:
    """Runs a probe on ``module`` without leaving a trace: its buffers (BatchNorm statistics,
    queues), its train/eval mode, its gradients (None afterwards) and the RNG streams (dropout,
    drop-path) are those it had before the probe."""
    buffers = [(buffer, buffer.detach().clone()) for buffer in module.buffers()]
    modes = [(m, m.training) for m in module.modules()]
    devices = (
        [device.index if device.index is not None else torch.cuda.current_device()]
        if device.type == "cuda"
        else []
    )
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
        for m, training in modes:
            m.training = training
        for p in module.parameters():
            p.grad = None


def read_step_choice(checkpoint: str | os.PathLike | None) -> StepChoice | None:
    """The choice recorded in ``checkpoint`` (None: no checkpoint, or one written before seed_hf
    recorded it)."""
    if not checkpoint:
        return None
    path = os.path.join(checkpoint, STEP_CHOICE_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return StepChoice.from_dict(json.load(f))
