"""SEED distillation model: timm student + projection head + queue of teacher embeddings."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from seed_hf.models.backbones import (
    ProjectionHead,
    check_input_size,
    create_backbone,
    feature_map,
    init_module_weights,
    pooled_features,
    pooled_width,
    resize_feature_map,
    token_grid,
)
from seed_hf.models.configuration_seed import SeedConfig
from seed_hf.models.embedding_queue import EmbeddingQueue
from seed_hf.models.losses import LocalSimilarityLoss, SeedLoss
from seed_hf.training.distributed import all_gather_no_grad
from seed_hf.training.progress import QuietHubMixin

__all__ = ["SeedOutput", "SeedPreTrainedModel", "SeedForDistillation"]


@dataclass
class SeedOutput(ModelOutput):
    """
    Output of [`SeedForDistillation`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*):
            SEED loss, returned when `teacher_embeds` is given; with the local term on
            (`config.local_loss_weight > 0`) the SEED loss + `local_loss_weight` × `local_loss`.
        student_embeds (`torch.FloatTensor` of shape `(batch_size, projection_dim)`):
            L2-normalised student projections z^S.
        teacher_embeds (`torch.FloatTensor` of shape `(batch_size, projection_dim)`, *optional*):
            L2-normalised teacher embeddings z^T.
        logits (`torch.FloatTensor` of shape `(batch_size, 1 + queue_size)`, *optional*):
            Student logits z^S·D⁺/τ_S (`(batch_size, global_batch_size + queue_size)` for `batch_keys`).
        pooler_output (`torch.FloatTensor` of shape `(batch_size, pooled_width)`):
            Pooled backbone features: the representation used downstream.
        local_loss (`torch.FloatTensor` of shape `()`, *optional*):
            The local term, unweighted: mean KL between the teacher's and the student's patch-to-patch
            similarity distributions ([`~seed_hf.models.losses.LocalSimilarityLoss`]); returned when
            `config.local_loss_weight > 0` and `teacher_patches` are given.
    """

    loss: torch.FloatTensor | None = None
    student_embeds: torch.FloatTensor | None = None
    teacher_embeds: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    local_loss: torch.FloatTensor | None = None


class SeedPreTrainedModel(QuietHubMixin, PreTrainedModel):
    config_class = SeedConfig
    base_model_prefix = "student"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["SeedForDistillation"]
    # Trainer: the loss is a per-batch mean, no num_items_in_batch re-scaling
    accepts_loss_kwargs = False

    def _init_weights(self, module: nn.Module) -> None:
        init_module_weights(module)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None) -> None:
        self.student.set_grad_checkpointing(True)

    def gradient_checkpointing_disable(self) -> None:
        self.student.set_grad_checkpointing(False)


class SeedForDistillation(SeedPreTrainedModel):
    """
    Student of SEED (arXiv:2101.04731): ``student`` (timm backbone, no classifier) → ``head``
    (Linear-ReLU-Linear) → L2-normalised embedding, trained to match the teacher's similarity
    distribution over ``queue`` (K teacher embeddings). The teacher is not part of this model:
    [`SeedTrainer`] runs it and passes `teacher_embeds`.

    Example:

    ```python
    >>> import torch
    >>> from seed_hf import SeedConfig, SeedForDistillation
    >>> model = SeedForDistillation(SeedConfig(student_architecture="resnet18", queue_size=256))
    >>> out = model(torch.randn(4, 3, 64, 64), teacher_embeds=torch.randn(4, 128))
    >>> out.student_embeds.shape, out.logits.shape
    (torch.Size([4, 128]), torch.Size([4, 257]))
    ```
    """

    def __init__(self, config: SeedConfig):
        super().__init__(config)
        self.student = create_backbone(
            config.student_architecture, config.in_chans, config.student_model_args
        )
        check_input_size(
            self.student,
            config.student_architecture,
            config.image_size,
            config.small_crop_size if config.num_small_crops > 0 else None,
        )
        width = pooled_width(self.student)
        self.head = ProjectionHead(width, config.head_hidden_dim or width, config.projection_dim)
        self.queue = EmbeddingQueue(config.queue_size, config.projection_dim, seed=config.queue_seed)
        self.loss_fn = SeedLoss(config.student_temperature, config.teacher_temperature, config.loss_variant)
        # no parameters: the similarities are compared in each model's own space (nothing to checkpoint)
        self.local_loss_fn = LocalSimilarityLoss(
            config.local_student_temperature, config.local_teacher_temperature
        )
        if config.num_small_crops > 0:
            self.small_queue = EmbeddingQueue(
                config.small_queue_size or config.queue_size,
                config.projection_dim,
                seed=config.queue_seed + 1,
            )
        self.post_init()

    @property
    def pooled_width(self) -> int:
        return pooled_width(self.student)

    def get_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features ``(batch, pooled_width)`` (the exported representation)."""
        return pooled_features(self.student, pixel_values)

    @torch.compiler.disable
    @torch.no_grad()
    def enqueue(self, teacher_embeds: torch.Tensor, small_teacher_embeds: torch.Tensor | None = None) -> None:
        """Pushes the teacher keys of the *global* batch ``(global_batch, projection_dim)`` to the
        queue, and those of its small crops to the second queue.

        ``small_teacher_embeds`` is ``(global_batch × num_small_crops, projection_dim)``: each
        process's flattened ``(n, m)`` crops, gathered in process order, so rows ``i·m … i·m+m−1``
        belong to image ``i``. With ``config.small_queue_keys="first_crop"`` (default) only row
        ``i·m`` of each image is enqueued, as the official code does: jacobswan1/SEED
        ``seed/small_patch_builder.py``, ``SEED.forward`` passes ``t_small_emb.view(B, N, dim)[:, 0]``
        ("use just one of the small patches as enqueue samples") to ``_dequeue_and_enqueue``, which
        gathers it and writes it at the main queue's pointer into a ``small_queue`` of the same
        size K. ``"all_crops"`` enqueues every row.
        """
        self.queue.enqueue(F.normalize(teacher_embeds.float(), dim=1))
        if small_teacher_embeds is not None and hasattr(self, "small_queue"):
            crops = self.config.num_small_crops
            if small_teacher_embeds.ndim != 2 or small_teacher_embeds.shape[0] % crops:
                raise ValueError(
                    f"small_teacher_embeds must be (images × num_small_crops={crops}, dim), "
                    f"got {tuple(small_teacher_embeds.shape)}."
                )
            if self.config.small_queue_keys == "first_crop":
                small_teacher_embeds = small_teacher_embeds.view(-1, crops, small_teacher_embeds.shape[1])[
                    :, 0
                ]
            self.small_queue.enqueue(F.normalize(small_teacher_embeds.float(), dim=1))

    # eager under torch.compile: a compiled graph may save the queue buffer itself for backward in
    # place of the snapshot, which the enqueue then modifies in place (autograd refuses the backward)
    @torch.compiler.disable
    def _distill(self, student_embeds, teacher_embeds, queue, batch_teacher_embeds):
        """SEED loss and logits against a snapshot of ``queue`` (the buffer itself is updated in
        place by :meth:`enqueue` after this forward, while autograd still needs the snapshot).
        Returns ``(loss, logits, teacher_embeds, global keys)``; the keys of the global batch are
        gathered once, when the loss (``batch_keys``) or the enqueue (training) needs them."""
        teacher_embeds = F.normalize(teacher_embeds.float(), dim=1)
        if batch_teacher_embeds is None and (self.training or self.config.loss_variant == "batch_keys"):
            batch_teacher_embeds = all_gather_no_grad(teacher_embeds)
        snapshot = queue.clone() if self.training else queue
        loss, logits = self.loss_fn(
            student_embeds, teacher_embeds, snapshot, batch_teacher_embeds, return_logits=True
        )
        return loss, logits, teacher_embeds, batch_teacher_embeds

    def _local_loss(
        self,
        student_features: torch.Tensor,
        image_size: tuple[int, int],
        teacher_patches: torch.Tensor,
        teacher_grid_size: tuple[int, int] | None,
    ) -> torch.Tensor:
        """The local term of the student's ``forward_features`` output against the teacher's patches
        ``(n, rows·cols, width)``: the student's map is resized to the teacher's grid first."""
        if teacher_grid_size is None:
            teacher_grid_size = token_grid(teacher_patches.shape[1], image_size)
        grid = (int(teacher_grid_size[0]), int(teacher_grid_size[1]))
        student_map = resize_feature_map(feature_map(self.student, student_features, image_size), grid)
        return self.local_loss_fn(student_map.flatten(2).transpose(1, 2), teacher_patches)

    def forward(
        self,
        pixel_values: torch.Tensor,
        teacher_embeds: torch.Tensor | None = None,
        batch_teacher_embeds: torch.Tensor | None = None,
        return_dict: bool | None = None,
        small_pixel_values: torch.Tensor | None = None,
        small_teacher_embeds: torch.Tensor | None = None,
        batch_small_teacher_embeds: torch.Tensor | None = None,
        teacher_patches: torch.Tensor | None = None,
        teacher_grid_size: tuple[int, int] | None = None,
    ) -> SeedOutput | tuple:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, in_chans, height, width)`):
                The augmented view, the same one the teacher saw.
            teacher_embeds (`torch.FloatTensor` of shape `(batch_size, projection_dim)`, *optional*):
                Teacher embeddings of `pixel_values`; when given, the loss is computed against the
                queue and, in training mode, the keys of the global batch are then enqueued (the
                model owns its queue: a plain training loop needs nothing else).
            batch_teacher_embeds (`torch.FloatTensor` of shape `(global_batch_size, projection_dim)`, *optional*):
                Teacher embeddings of the global batch (the keys enqueued, and D⁺ of
                `loss_variant="batch_keys"`); gathered across processes here when not given.
            return_dict (`bool`, *optional*):
                Return a [`SeedOutput`] instead of a tuple.
            small_pixel_values (`torch.FloatTensor` of shape `(batch_size, num_small_crops, in_chans, s, s)`, *optional*):
                Small crops of the same images; each is distilled against the second queue and
                its loss added (official SEED small-patch variant).
            small_teacher_embeds (`torch.FloatTensor` of shape `(batch_size * num_small_crops, projection_dim)`, *optional*):
                Teacher embeddings of the flattened small crops.
            batch_small_teacher_embeds (`torch.FloatTensor`, *optional*):
                Global-batch small-crop keys for `loss_variant="batch_keys"`.
            teacher_patches (`torch.FloatTensor` of shape `(batch_size, rows * cols, teacher_width)`, *optional*):
                The teacher's patch features of `pixel_values` ([`FrozenTeacher.forward_with_patches`]), for the
                local term (`config.local_loss_weight > 0`; required then in training, ignored otherwise).
            teacher_grid_size (`tuple[int, int]`, *optional*):
                `(rows, cols)` of the teacher's patch grid (default: square, or the images' aspect ratio).
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        local = self.config.local_loss_weight > 0 and teacher_embeds is not None
        if local and teacher_patches is None:
            if self.training:  # a loop that forgets them would silently train without the local term
                raise ValueError(
                    f"local_loss_weight={self.config.local_loss_weight} needs teacher_patches (and teacher_grid_size): "
                    "the teacher's patch features, from FrozenTeacher.forward_with_patches (SeedTrainer passes them)."
                )
            local = False
        if local:  # one student forward: its last feature map, pooled for the global term
            student_features = self.student.forward_features(pixel_values)
            features = self.student.forward_head(student_features, pre_logits=True)
        else:
            features = self.get_features(pixel_values)
        student_embeds = F.normalize(self.head(features), dim=1)

        loss = logits = local_loss = None
        if teacher_embeds is not None:
            loss, logits, teacher_embeds, keys = self._distill(
                student_embeds, teacher_embeds, self.queue.embeddings, batch_teacher_embeds
            )
            if local:
                local_loss = self._local_loss(
                    student_features, tuple(pixel_values.shape[-2:]), teacher_patches, teacher_grid_size
                )
                loss = loss + self.config.local_loss_weight * local_loss
            small_keys = None
            if small_pixel_values is not None:
                if small_teacher_embeds is None or not hasattr(self, "small_queue"):
                    raise ValueError(
                        "small_pixel_values need small_teacher_embeds and config.num_small_crops > 0."
                    )
                # (n, m, c, h, w) -> (n·m, c, h, w): every small crop is one more distillation sample
                small = small_pixel_values.flatten(0, 1)
                small_embeds = F.normalize(self.head(self.get_features(small)), dim=1)
                small_loss, _, _, small_keys = self._distill(
                    small_embeds,
                    small_teacher_embeds,
                    self.small_queue.embeddings,
                    batch_small_teacher_embeds,
                )
                loss = loss + small_loss
            if self.training:  # the model owns its queue: push this global batch's keys (FIFO)
                self.enqueue(keys, small_keys)

        output = SeedOutput(
            loss=loss,
            student_embeds=student_embeds,
            teacher_embeds=teacher_embeds,
            logits=logits,
            pooler_output=features,
            local_loss=local_loss,
        )
        return output if return_dict else output.to_tuple()
