"""The SEED trainer: distils a frozen teacher into a student that owns its queue
(:class:`seed_hf.training.queue_trainer.QueueTrainer` for the loop, checkpoints and step choice).

The teacher is not part of the model, so it stays out of the optimizer, the checkpoints and
autograd; it is prepared, laid out and run as the teacher cache's writer runs it
(:mod:`seed_hf.teachers.inference`), so a cached run trains on the values an online one computes.
``compute_loss`` runs the teacher (or reads its cached embeddings from the batch), gathers the
global batch's keys and calls the model's own ``forward``, which computes the loss and fills the queue.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from seed_hf.teachers.frozen import FrozenTeacher
from seed_hf.teachers.inference import (
    choose_teacher_layout,
    prepare_teacher,
    probe_teacher_layout,
    set_teacher_layout,
    teacher_forward,
    teacher_input,
)
from seed_hf.training.distributed import all_gather_no_grad
from seed_hf.training.precision import teacher_autocast
from seed_hf.training.queue_trainer import QueueTrainer, unwrapped
from seed_hf.training.step_choice import StepChoice, is_noisy, probe_images
from seed_hf.training.student_probe import probe_pixels

__all__ = ["SeedTrainer"]

logger = logging.getLogger(__name__)


class SeedTrainer(QueueTrainer):
    """Distils a frozen ``teacher`` into a [`SeedForDistillation`] student.

    The teacher is not part of the model: it is moved to the accelerator's device, runs in
    eval mode under inference mode and ``teacher_dtype``'s autocast on the **same** augmented
    view as the student, and never reaches the optimizer or the checkpoints.

    Args:
        teacher (`FrozenTeacher` or `nn.Module`, *optional*): maps ``pixel_values`` to embeddings
            ``(batch, projection_dim)``. None: the batches carry the teacher's embeddings
            (``teacher_embeds``, ``teacher_embeds_small``: a teacher cache,
            :class:`seed_hf.teachers.cache.CachedTeacherDataset`) and no teacher runs.
        All other arguments are those of `transformers.Trainer`.
    """

    def __init__(self, *args, teacher: nn.Module | None, **kwargs):
        super().__init__(*args, **kwargs)
        for student in getattr(unwrapped(self), "students", {"": unwrapped(self)}).values():
            c = student.config
            if getattr(c, "num_small_crops", 0) and c.small_crop_size >= c.image_size:
                logger.warning(
                    f"The small crops ({c.small_crop_size} px, --small_crop_size) are not smaller than the "
                    f"global views ({c.image_size} px): multi-crop takes them well below (96 of 224 px in "
                    f"SwAV and SEED), e.g. --small_crop_size {max(1, round(c.image_size * 96 / 224))}."
                )
        if teacher is None:  # a teacher cache: the embeddings come with the batch
            self.teacher = None
            if self.uses_teacher_patches:
                raise ValueError(
                    "local_loss_weight > 0 needs the teacher's patch features, which a teacher cache does not hold: "
                    "set local_loss_weight=0, or train with the teacher (no teacher cache)."
                )
            return
        model = unwrapped(self)
        # BN folded now; the layout is the step choice's (resolve_step_choice), applied to the folded model
        self.teacher = prepare_teacher(
            teacher,
            model.config.image_mean,
            model.config.image_std,
            self.args.device,
            self._probe_input(),
            optimize=self.args.optimize_teacher,
            feature_map=self.uses_teacher_patches,
        )
        if isinstance(teacher, FrozenTeacher):
            # the students record their teacher (cards and run folders name it): written here, once
            for student in getattr(model, "students", {"": model}).values():
                if getattr(student.config, "teacher_name_or_path", "unset") is None:
                    student.config.teacher_name_or_path = teacher.description
                student.config.teacher = teacher.record.to_dict()
            trained_at, size = teacher.record.image_size, model.config.image_size
            if trained_at and trained_at != size and teacher.input_size is None:
                logger.warning(
                    f"The teacher ({teacher.record.name}) was trained at {trained_at} px and the student's views are "
                    f"{size} px: its embeddings at {size} px may be poor targets. Train at {trained_at} px "
                    f"(--image_size {trained_at}), or resize the teacher's inputs to it (--teacher_image_size "
                    f"{trained_at}; load_teacher(teacher_image_size={trained_at}))."
                )
        self._validate_teacher()
        if self.args.compile_teacher:
            # after validation, so the probe batch does not make the batch size dynamic
            self.teacher.compile(dynamic=False, options={"freezing": True})

    @torch.no_grad()
    def _validate_teacher(self) -> None:
        model = unwrapped(self)
        try:
            width = self.teacher(self._probe_input()).shape[-1]
        except Exception as error:
            raise ValueError(
                f"The teacher cannot take the training images ({model.config.in_chans} channels, "
                f"{model.config.image_size} px): {str(error).rstrip('.')}. A 1-channel teacher (trained on 1-channel images, its "
                "config's in_chans=1) needs 1-channel data; 1-channel data is repeated to 3 channels for 3-channel "
                "teachers."
            ) from error
        if width is not None and width != model.config.projection_dim:
            raise ValueError(
                f"The teacher's embedding width ({width}) differs from projection_dim "
                f"({model.config.projection_dim}): set projection_dim={width}."
            )
        if any(p.requires_grad for p in self.teacher.parameters()):
            raise ValueError("The teacher must be frozen (requires_grad=False).")
        if self.uses_teacher_patches:  # a teacher without patch features fails now, not at the first step
            if not isinstance(self.teacher, FrozenTeacher):
                raise ValueError(
                    "local_loss_weight > 0 needs a FrozenTeacher (load_teacher): its forward_with_patches gives "
                    "the patch features the local term distils."
                )
            _, _, grid = self.teacher.forward_with_patches(self._probe_input())
            # one patch: its self-similarity is 1, the term would be 0 at every step
            if grid[0] * grid[1] < 2:
                raise ValueError(
                    f"local_loss_weight > 0 needs a teacher feature map of at least 2 patches, but the teacher's "
                    f"is {grid[0]}x{grid[1]} at image_size={unwrapped(self).config.image_size}: raise image_size (or "
                    "the teacher's teacher_image_size when its inputs are resized; a ResNet's map is 1/32 of its "
                    "input) or set local_loss_weight=0."
                )

    @property
    def uses_teacher_patches(self) -> bool:
        """Whether a student has the local term on (``local_loss_weight > 0``): the teacher then
        returns its patch features too, from the same forward."""
        model = unwrapped(self)
        students = getattr(model, "students", {"": model}).values()
        return any(getattr(student.config, "local_loss_weight", 0) > 0 for student in students)

    def _teacher_autocast(self):
        return teacher_autocast(self.args.teacher_dtype, self.args.device.type, self.accelerator.autocast)

    def _teacher_layout(self) -> bool | None:
        return self.step_choice.teacher_channels_last if self.step_choice is not None else None

    def _teacher_input(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The teacher's input in the teacher's memory layout (:func:`seed_hf.teachers.inference.teacher_input`)."""
        return teacher_input(pixel_values, self._teacher_layout())

    def teacher_embeddings(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Teacher embeddings ``(batch, dim)`` in fp32, computed under ``teacher_dtype``'s autocast
        and inference mode (:func:`seed_hf.teachers.inference.teacher_forward`)."""
        return teacher_forward(self.teacher, pixel_values, self._teacher_autocast(), self._teacher_layout())

    def teacher_embeddings_and_patches(
        self, pixel_values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """``(embeds (batch, dim) fp32, patches (batch, rows·cols, width), (rows, cols))`` from one
        teacher forward (:meth:`FrozenTeacher.forward_with_patches`), as :meth:`teacher_embeddings`."""
        return teacher_forward(
            self.teacher, pixel_values, self._teacher_autocast(), self._teacher_layout(), with_patches=True
        )

    def _choose_step(self, recorded: StepChoice | None) -> StepChoice:
        """The student's choice (QueueTrainer) and the teacher's layout
        (:func:`seed_hf.teachers.inference.choose_teacher_layout`; timed on the student probe's batch)."""
        choice = super()._choose_step(recorded)
        if self.teacher is None:  # a teacher cache: no teacher layout to choose
            return choice
        config = unwrapped(self).config

        def probe():
            # the choice is not applied yet: teacher_forward passes the probe's inputs through as they are
            batch = probe_images(
                choice.probe_batch_size or self.args.per_device_train_batch_size,
                config.in_chans,
                config.image_size,
                self.args.device,
            )
            patches = self.uses_teacher_patches
            autocast = self._teacher_autocast

            def forward(x):
                return teacher_forward(self.teacher, x, autocast(), None, with_patches=patches)

            return probe_teacher_layout(self.teacher, forward, batch, self.args.device)

        channels_last, source, samples = choose_teacher_layout(
            self.args.channels_last,
            recorded.teacher_channels_last if recorded is not None else None,
            probe_pixels(self.args, config.image_size),
            self.args.compile_teacher,
            probe,
        )
        choice.teacher_channels_last, choice.sources["teacher_channels_last"] = channels_last, source
        if samples is not None:
            choice.timings_s["teacher"] = {name: min(v) for name, v in samples.items()}
            if is_noisy(samples):
                choice.noisy.append("teacher")
        return choice

    def _apply_step_choice(self, choice: StepChoice) -> None:
        super()._apply_step_choice(choice)
        if choice.teacher_channels_last is not None:
            set_teacher_layout(self.teacher, choice.teacher_channels_last)

    def loss_terms(self, outputs: Any) -> dict[str, torch.Tensor]:
        """Each student's loss of a [`SeedStudentGroup`] (``loss_<student>``) and the unweighted local
        term (``loss_local``; ``loss_local_<student>`` in a group)."""
        terms = dict(getattr(outputs, "losses", None) or {})
        if getattr(outputs, "local_loss", None) is not None:
            terms["local"] = outputs.local_loss
        for name, value in (getattr(outputs, "local_losses", None) or {}).items():
            terms[f"local_{name}"] = value
        return terms

    def compute_loss(
        self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch=None
    ):
        pixel_values = self._to_memory_format(inputs["pixel_values"])
        local_kwargs = {}
        if inputs.get("teacher_embeds") is not None:  # a teacher cache: the teacher's output of these views
            teacher_embeds = inputs["teacher_embeds"].float()
        elif self.teacher is None:
            raise ValueError("SeedTrainer has no teacher and the batch carries no `teacher_embeds`.")
        elif (
            self.uses_teacher_patches
        ):  # the local term: embeddings and patch features from one teacher forward
            teacher_embeds, patches, grid = self.teacher_embeddings_and_patches(pixel_values)
            local_kwargs = dict(teacher_patches=patches, teacher_grid_size=grid)
        else:
            teacher_embeds = self.teacher_embeddings(pixel_values)
        global_keys = all_gather_no_grad(teacher_embeds)
        small_kwargs, small_keys = {}, None
        if inputs.get("pixel_values_small") is not None:  # (n, m, c, s, s): small-patch variant
            small = inputs["pixel_values_small"]
            cached = inputs.get("teacher_embeds_small")
            small_teacher = (
                cached.flatten(0, 1).float()
                if cached is not None
                else self.teacher_embeddings(self._to_memory_format(small.flatten(0, 1)))
            )
            small_keys = all_gather_no_grad(small_teacher)
            small_kwargs = dict(
                small_pixel_values=small,
                small_teacher_embeds=small_teacher,
                batch_small_teacher_embeds=small_keys,
            )
        outputs = model(
            pixel_values=pixel_values,
            teacher_embeds=teacher_embeds,
            batch_teacher_embeds=global_keys,
            **small_kwargs,
            **local_kwargs,
        )
        if model.training:  # loss_<student>, loss_local: averaged over the logging interval by log()
            self.record_loss_terms(outputs)
        return (outputs.loss, outputs) if return_outputs else outputs.loss
