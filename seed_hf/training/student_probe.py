"""The student's part of the training step's autotuned choice (:mod:`seed_hf.training.step_choice`):
which memory layouts and precisions it may take on this device, and their timed forward + backward
on the real model at the real batch shape.

Why apart from the trainer: the rule (candidates, prior first; what a flag or a resumed checkpoint
fixes; when to probe) is the same for every trainer, and a probe must leave the model exactly as
it found it (:func:`seed_hf.training.step_choice.preserved_state`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
from torch import nn

import seed_hf.training.step_choice as step_choice
from seed_hf.training.arguments import SeedTrainingArguments
from seed_hf.training.precision import cpu_has_native_bf16
from seed_hf.training.step_choice import StepChoice, choose, is_noisy, preserved_state, probe_images

__all__ = ["choose_student", "probe_pixels", "probe_student", "student_autocast", "student_candidates"]

logger = logging.getLogger(__name__)

Samples = dict[str, list[float]]


def student_candidates(
    model: nn.Module, args: SeedTrainingArguments
) -> tuple[list[bool], list[str], dict[str, str]]:
    """(layouts, precisions, sources of the fixed ones): what the student's probe may choose from,
    the prior first (:mod:`seed_hf.training.step_choice`).

    Raises:
        ValueError: ``channels_last="true"`` for a student whose channels_last backward crashes the
            process (:func:`~seed_hf.training.step_choice.channels_last_backward_hazards`).
    """
    sources: dict[str, str] = {}
    given = args.channels_last
    layouts = [True, False] if given == "auto" else [given == "true"]
    if given != "auto":
        sources["student_channels_last"] = "given"
    hazards = step_choice.channels_last_backward_hazards(model, args.device)
    if hazards and True in layouts:
        where = f"{', '.join(hazards[:3])}{' ...' if len(hazards) > 3 else ''}"
        if given == "true":
            raise ValueError(
                f"channels_last=true: the student's strided 1x1 convolutions with few input channels ({where}) "
                f"crash PyTorch's {args.device.type.upper()} backward in channels_last (the process dies). "
                "Pass --channels_last false or auto (auto trains such a student in NCHW)."
            )
        layouts = [False]
        sources["student_channels_last"] = "unsafe"
        logger.warning(
            f"The student trains in NCHW: its strided 1x1 convolutions with few input channels ({where}) crash "
            f"PyTorch's {args.device.type.upper()} backward in channels_last."
        )
    dtype = args.student_dtype
    if args.bf16 or args.fp16:  # the run's mixed precision, as asked
        precisions = ["bfloat16" if args.bf16 else "float16"]
        sources["student_dtype"] = "given"
    elif dtype != "auto":
        precisions = [dtype]
        sources["student_dtype"] = "given"
    elif args.device.type == "cpu" and cpu_has_native_bf16():
        precisions = ["float32", "bfloat16"]
    else:  # emulated bf16 on other CPUs is slower; on GPUs the precision is the user's (--bf16)
        precisions = ["float32"]
    return layouts, precisions, sources


def probe_pixels(args: SeedTrainingArguments, image_size: int) -> int:
    """The workload a probe is measured against :data:`~seed_hf.training.step_choice.PROBE_MIN_PIXELS`:
    batch × height × width."""
    return args.per_device_train_batch_size * image_size * image_size


def student_autocast(
    dtype: str, args: SeedTrainingArguments, run_autocast: Callable[[], AbstractContextManager]
) -> AbstractContextManager:
    """bf16 autocast for a ``"bfloat16"`` student of an fp32 run; the run's own precision
    (``run_autocast()``) otherwise."""
    if dtype == "bfloat16" and not args.bf16:
        return torch.autocast(args.device.type, dtype=torch.bfloat16)
    return run_autocast()


def probe_student(
    model: nn.Module,
    args: SeedTrainingArguments,
    layouts: list[bool],
    precisions: list[str],
    run_autocast: Callable[[], AbstractContextManager],
) -> tuple[tuple[bool, str], Samples, int]:
    """Times forward + backward of the student's backbone for every (layout, precision), alternated,
    on random images of the real batch shape; the model is left exactly as it was. Returns the
    chosen (layout, precision), the timings and the batch size they were measured at."""
    device = args.device
    names = {
        f"{'channels_last' if cl else 'nchw'}/{dtype}": (cl, dtype) for cl in layouts for dtype in precisions
    }
    prior = next(iter(names))
    config = model.config
    batch = probe_images(args.per_device_train_batch_size, config.in_chans, config.image_size, device)

    def call(name: str):
        channels_last, dtype = names[name]
        x = batch.contiguous(memory_format=torch.channels_last) if channels_last else batch

        def run():
            with student_autocast(dtype, args, run_autocast):
                out = model.get_features(x)
            outs = out.values() if isinstance(out, dict) else [out]
            sum(o.float().square().mean() for o in outs).backward()
            model.zero_grad(set_to_none=True)

        return run

    def setup(name: str):
        fmt = torch.channels_last if names[name][0] else torch.contiguous_format
        model.to(memory_format=fmt)

    with preserved_state(model, device):
        model.train()
        setup(prior)
        first = step_choice.timed_call(prior, call(prior), device)  # also the prior's warm-up
        if first > step_choice.MAX_PROBE_CALL_S:  # large model on CPU: probe on a smaller batch
            n = max(8, int(batch.shape[0] * step_choice.MAX_PROBE_CALL_S / first))
            batch = batch[:n]
        samples = step_choice.time_candidates(
            {name: call(name) for name in names}, device, measure=step_choice.timed_call, setup=setup
        )
    # another precision than the prior's must win by more: it moves the numerics more than a layout
    margins = {
        name: step_choice.PRECISION_MARGIN if dtype != names[prior][1] else step_choice.MARGIN
        for name, (_, dtype) in names.items()
    }
    return names[choose(samples, prior, margins)], samples, batch.shape[0]


def choose_student(
    model: nn.Module,
    args: SeedTrainingArguments,
    recorded: StepChoice | None,
    run_autocast: Callable[[], AbstractContextManager],
) -> StepChoice:
    """The student's part of the step choice: what the flags give, else what ``recorded`` (the
    checkpoint resumed from) chose, else the probe's choice (the prior for tiny workloads)."""
    layouts, precisions, sources = student_candidates(model, args)
    choice = StepChoice(student_channels_last=layouts[0], student_dtype=precisions[0], sources=sources)
    if recorded is not None:  # reuse the resumed run's choice for what was not given now
        if "student_channels_last" not in sources and (recorded.student_channels_last in layouts):
            choice.student_channels_last = recorded.student_channels_last
            sources["student_channels_last"] = "resumed"
        if "student_dtype" not in sources and recorded.student_dtype in precisions:
            choice.student_dtype = recorded.student_dtype
            sources["student_dtype"] = "resumed"
        layouts = [choice.student_channels_last] if "student_channels_last" in sources else layouts
        precisions = [choice.student_dtype] if "student_dtype" in sources else precisions
    workload = probe_pixels(args, model.config.image_size)
    if len(layouts) * len(precisions) > 1 and workload >= step_choice.PROBE_MIN_PIXELS:
        (choice.student_channels_last, choice.student_dtype), samples, choice.probe_batch_size = (
            probe_student(model, args, layouts, precisions, run_autocast)
        )
        choice.timings_s["student"] = {name: min(v) for name, v in samples.items()}
        if is_noisy(samples):
            choice.noisy.append("student")
        for key, options in (("student_channels_last", layouts), ("student_dtype", precisions)):
            sources.setdefault(key, "probe" if len(options) > 1 else "prior")
    for key in ("student_channels_last", "student_dtype"):
        sources.setdefault(key, "prior")
    return choice
