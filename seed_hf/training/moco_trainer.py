"""The MoCo-v2 trainer (the teacher-training baseline): two augmented views of each image, the
query encoder trained, the momentum encoder's keys enqueued by the model itself
(:class:`seed_hf.models.modeling_moco.MocoForPretraining`); the loop, checkpoints and step choice are
:class:`seed_hf.training.queue_trainer.QueueTrainer`'s."""

from __future__ import annotations

from typing import Any

from torch import nn

from seed_hf.training.queue_trainer import QueueTrainer

__all__ = ["MocoTrainer"]


class MocoTrainer(QueueTrainer):
    """Trains [`MocoForPretraining`]: two views (the model enqueues its momentum keys itself)."""

    def compute_loss(
        self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch=None
    ):
        outputs = model(
            pixel_values=self._to_memory_format(inputs["pixel_values"]),
            pixel_values_k=self._to_memory_format(inputs["pixel_values_k"]),
        )
        return (outputs.loss, outputs) if return_outputs else outputs.loss
