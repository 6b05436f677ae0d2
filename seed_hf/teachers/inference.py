"""The frozen teacher as training and the teacher cache run it: one preparation, one choice of its
memory layout and one forward, called by :class:`seed_hf.training.seed_trainer.SeedTrainer` and by
:func:`seed_hf.teachers.cache_writer.write_teacher_cache`.

Why one place: a cache stores what the online teacher would compute, so both must fold the data's
normalisation into the teacher's input the same way, fold BatchNorm the same way, run under the
same autocast and inference mode and choose the memory layout by the same rule
(:mod:`seed_hf.training.step_choice`: given, resumed, the prior for tiny workloads, else timed).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn

import seed_hf.training.step_choice as step_choice
from seed_hf.teachers.frozen import FrozenTeacher

__all__ = [
    "choose_teacher_layout",
    "prepare_teacher",
    "probe_teacher_layout",
    "set_teacher_layout",
    "teacher_forward",
    "teacher_input",
]

LayoutSamples = dict[str, list[float]]


def prepare_teacher(
    teacher: nn.Module,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device,
    probe: torch.Tensor,
    optimize: bool = True,
    feature_map: bool = False,
) -> nn.Module:
    """Freezes ``teacher`` (no gradients, eval mode) on ``device``; a :class:`FrozenTeacher` also
    takes inputs normalised with the data's ``mean``/``std`` (re-normalised to its own statistics)
    and, with ``optimize``, has its BatchNorm folded into its convolutions, checked on ``probe``
    (``feature_map``: the feature-map forward the local term reads). Its layout is set apart
    (:func:`set_teacher_layout`), once chosen. Returns the teacher on ``device``."""
    if not isinstance(teacher, FrozenTeacher):
        teacher.requires_grad_(False)
    teacher.eval()
    teacher = teacher.to(device)
    if isinstance(teacher, FrozenTeacher):
        teacher.set_data_normalization(list(mean), list(std))
        if optimize:
            teacher.optimize_for_inference(channels_last=False, probe=probe, feature_map=feature_map)
    return teacher


def set_teacher_layout(teacher: nn.Module, channels_last: bool) -> None:
    """Converts the teacher's weights to channels_last or NCHW."""
    teacher.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def teacher_input(pixel_values: torch.Tensor, channels_last: bool | None) -> torch.Tensor:
    """The teacher's input in its memory layout (no copy when it already is, e.g. 1-channel images,
    whose NCHW and channels_last layouts coincide); ``channels_last=None`` (not chosen yet: a
    probe) passes it through as it is."""
    if channels_last is None or pixel_values.ndim != 4:
        return pixel_values
    if channels_last:
        return pixel_values.contiguous(memory_format=torch.channels_last)
    return pixel_values.contiguous()


def teacher_forward(
    teacher: nn.Module,
    pixel_values: torch.Tensor,
    autocast: AbstractContextManager,
    channels_last: bool | None,
    with_patches: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """The teacher's embeddings ``(batch, dim)`` in fp32, computed under ``autocast`` and inference
    mode; ``with_patches``: ``(embeds, patches (batch, rows·cols, width), (rows, cols))`` from the
    same forward (:meth:`FrozenTeacher.forward_with_patches`). The outputs are clones: ordinary
    tensors that autograd may save for the student's loss."""
    with torch.inference_mode(), autocast:
        pixels = teacher_input(pixel_values, channels_last)
        if with_patches:
            embeds, patches, grid = teacher.forward_with_patches(pixels)
        else:
            embeds = teacher(pixels)
        embeds = embeds.float()
    if with_patches:
        return embeds.clone(), patches.clone(), grid
    return embeds.clone()


def probe_teacher_layout(
    teacher: nn.Module, forward: Callable[[torch.Tensor], Any], batch: torch.Tensor, device: torch.device
) -> tuple[bool, LayoutSamples]:
    """Times ``forward`` (the teacher's, input passed as it is) in channels_last and NCHW, alternated,
    on ``batch`` (cut down when one call is slow: a large teacher on CPU); returns whether
    channels_last, the prior, stays (:func:`seed_hf.training.step_choice.choose`) and the timings."""
    formats = {"channels_last": torch.channels_last, "nchw": torch.contiguous_format}
    teacher.to(memory_format=torch.channels_last)
    first = step_choice.timed_call("channels_last", lambda: forward(batch), device)  # also its warm-up
    if first > step_choice.MAX_PROBE_CALL_S:
        batch = batch[: max(8, int(batch.shape[0] * step_choice.MAX_PROBE_CALL_S / first))]
    inputs = {name: batch.contiguous(memory_format=fmt) for name, fmt in formats.items()}
    samples = step_choice.time_candidates(
        {name: (lambda x=x: forward(x)) for name, x in inputs.items()},
        device,
        measure=step_choice.timed_call,
        setup=lambda name: teacher.to(memory_format=formats[name]),
    )
    return step_choice.choose(samples, "channels_last") == "channels_last", samples


def choose_teacher_layout(
    given: str,
    recorded: bool | None,
    workload_pixels: int,
    compiled: bool,
    probe: Callable[[], tuple[bool, LayoutSamples]],
) -> tuple[bool, str, LayoutSamples | None]:
    """``(channels_last, source, timings)`` of the teacher: ``given`` (``"true"``/``"false"``; ``"auto"``
    chooses), else ``recorded`` (a resumed run or cache), else the prior channels_last when the
    workload (batch × height × width) is below :data:`~seed_hf.training.step_choice.PROBE_MIN_PIXELS`
    or the teacher is compiled (a probe would compile it once per layout), else ``probe()``."""
    if given != "auto":
        return given == "true", "given", None
    if recorded is not None:
        return recorded, "resumed", None
    if workload_pixels < step_choice.PROBE_MIN_PIXELS or compiled:
        return True, "prior", None
    channels_last, samples = probe()
    return channels_last, "probe", samples
