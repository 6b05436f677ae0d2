"""Several SEED students distilled from one teacher forward.

The teacher's forward is a large part of a SEED step (docs/performance.md); distilling N students at
once pays for it once instead of N times. Each student keeps its own head and queue (queues receive the same
teacher keys) and is saved / exported on its own.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch
from torch import nn
from transformers.utils import ModelOutput

from seed_hf.models.modeling_seed import SeedForDistillation

__all__ = ["SeedStudentGroup", "SeedGroupOutput"]


@dataclass
class SeedGroupOutput(ModelOutput):
    """
    Args:
        loss (`torch.FloatTensor` of shape `()`): sum of the students' SEED losses (their
            gradients are independent, so the sum trains each student as if alone).
        losses (`dict[str, torch.FloatTensor]`): each student's loss.
        local_losses (`dict[str, torch.FloatTensor]`, *optional*): the unweighted local term of each
            student that has it on (`local_loss_weight > 0`), shape `()`.
    """

    loss: torch.FloatTensor | None = None
    losses: dict[str, torch.Tensor] | None = None
    local_losses: dict[str, torch.Tensor] | None = None


class SeedStudentGroup(nn.Module):
    """A Trainer-compatible model holding named [`SeedForDistillation`] students.

    All students must share ``in_chans``, ``image_size`` and ``projection_dim`` (they see the
    same views and the same teacher embeddings).

    Example:

    ```python
    >>> group = SeedStudentGroup({"r18": SeedForDistillation(c1), "mnv3": SeedForDistillation(c2)})
    >>> trainer = SeedTrainer(model=group, teacher=teacher, args=args, train_dataset=ds)
    >>> trainer.train(); group.save_students("out/students")   # out/students/r18, out/students/mnv3
    ```
    """

    main_input_name = "pixel_values"
    accepts_loss_kwargs = False

    def __init__(self, students: dict[str, SeedForDistillation]):
        super().__init__()
        if len(students) < 1:
            raise ValueError("SeedStudentGroup needs at least one student.")
        for name in students:
            if not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
                raise ValueError(
                    f"Student name {name!r} must be letters, digits, '_' or '-' (it becomes a folder)."
                )
        first = next(iter(students.values())).config
        for name, student in students.items():
            for key in ("in_chans", "image_size", "projection_dim"):
                if getattr(student.config, key) != getattr(first, key):
                    raise ValueError(
                        f"Student {name!r} has {key}={getattr(student.config, key)}, the others {getattr(first, key)}."
                    )
        self.students = nn.ModuleDict(students)

    def state_dict(self, *args, **kwargs):
        # channels_last weights are not contiguous: safetensors (Trainer checkpoints) needs them packed
        state = super().state_dict(*args, **kwargs)
        for key, value in state.items():
            state[key] = value.contiguous()
        return state

    @property
    def config(self):
        """The first student's config (shared fields: in_chans, image_size, projection_dim)."""
        return next(iter(self.students.values())).config

    @property
    def queue(self):
        return next(iter(self.students.values())).queue

    def get_features(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: student.get_features(pixel_values) for name, student in self.students.items()}

    @torch.no_grad()
    def enqueue(self, teacher_embeds: torch.Tensor, small_teacher_embeds: torch.Tensor | None = None) -> None:
        for student in self.students.values():
            student.enqueue(teacher_embeds, small_teacher_embeds)

    def forward(
        self,
        pixel_values: torch.Tensor,
        teacher_embeds: torch.Tensor | None = None,
        batch_teacher_embeds: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **student_kwargs,
    ) -> SeedGroupOutput:
        # student_kwargs: small crops, teacher_patches / teacher_grid_size (used by the students whose
        # local_loss_weight > 0, ignored by the others)
        outputs = {
            name: student(
                pixel_values, teacher_embeds, batch_teacher_embeds, return_dict=True, **student_kwargs
            )
            for name, student in self.students.items()
        }
        losses = {name: out.loss for name, out in outputs.items()}
        local_losses = {name: out.local_loss for name, out in outputs.items() if out.local_loss is not None}
        total = None if teacher_embeds is None else torch.stack(list(losses.values())).sum()
        return SeedGroupOutput(loss=total, losses=losses, local_losses=local_losses or None)

    def save_students(self, out_dir: str | os.PathLike) -> list[str]:
        """``save_pretrained`` of each student into ``out_dir/<name>``; returns the folders."""
        folders = []
        for name, student in self.students.items():
            folder = os.path.join(out_dir, name)
            student.save_pretrained(folder)
            folders.append(folder)
        return folders
