"""The trainer of models that own a queue (SEED, MoCo) on top of ``transformers.Trainer``
(its arguments: :mod:`seed_hf.training.arguments`).

``accelerate`` (through the Trainer) provides DDP, multi-node and mixed precision; this class adds
what both methods need: the model's own queue, which its training ``forward`` reads as a snapshot
and then fills with the global batch's keys (the trainer never writes it); the step's autotuned
choice of memory layout and precision (:mod:`seed_hf.training.step_choice`), applied before the
first step; the checks of the first batch against the config the export publishes; the run
folder's checkpoints (complete, preempted, resumed); the online kNN monitor
(:class:`seed_hf.evaluation.monitor.KnnMonitor`). It extends the Trainer through its public
methods and ``TrainerCallback``s (:mod:`seed_hf.training.callbacks`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from transformers import Trainer

from seed_hf.data.decode import DECODE_STATS, SKIPPED_KEY
from seed_hf.data.shard_stream import ShardStream
from seed_hf.evaluation.monitor import KnnMonitor
from seed_hf.models.backbones import input_size_hint
from seed_hf.training.arguments import SeedTrainingArguments
from seed_hf.training.callbacks import (
    CheckpointCompletionCallback,
    DatasetEpochCallback,
    PreemptionCallback,
    StepChoiceCallback,
    StreamPositionCallback,
)
from seed_hf.training.checkpoints import is_complete_checkpoint, remove_incomplete_checkpoints
from seed_hf.training.run_folder import RunFolder
from seed_hf.training.step_choice import StepChoice, read_step_choice
from seed_hf.training.student_probe import choose_student

__all__ = ["QueueTrainer", "unwrapped"]

logger = logging.getLogger(__name__)


def unwrapped(trainer: Trainer, model: nn.Module | None = None) -> nn.Module:
    """``model`` (default: the trainer's) without the wrappers accelerate put around it (DDP, compile)."""
    return trainer.accelerator.unwrap_model(model if model is not None else trainer.model)


class QueueTrainer(Trainer):
    """Trainer for models that own a ``queue`` (SEED, MoCo): their training forward computes the
    loss against a snapshot of the queue and enqueues the global batch's keys itself. Logs include ``queue_fill``;
    the train metrics include ``skipped_images``, the undecodable images of the run summed over
    dataloader workers and processes (``num_skipped_images`` of ``collate_batch``).

    Args:
        knn_monitor (`KnnMonitor`, *optional*): labelled train / test datasets; ``evaluate()``
            (e.g. ``eval_strategy="steps"``) then reports weighted-kNN top-1 of the backbone's
            pooled features, computed on all ranks from ``gather_for_metrics`` (no rank-0-only
            collectives, so DDP cannot deadlock).
        device_transform (`Callable`, *optional*): turns each training batch into device pixels
            before the loss, e.g. ``seed_hf.data.gpu_input.DeviceInputTransform`` (``--data_device cuda``:
            the workers pass encoded JPEGs, decoded by nvJPEG and augmented batched on the GPU).
    """

    def __init__(
        self,
        *args,
        knn_monitor: KnnMonitor | None = None,
        device_transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        **kwargs,
    ):
        self.knn_monitor = knn_monitor
        self.device_transform = device_transform
        self.stream_callback: StreamPositionCallback | None = None
        self._first_batch_checked = False
        # running sums of the loss_terms() of the steps since the last log (detached, on the device)
        self.loss_term_sums: dict[str, torch.Tensor] = {}
        self.loss_term_steps = 0
        if knn_monitor is not None and kwargs.get("eval_dataset") is None:
            kwargs["eval_dataset"] = knn_monitor.eval_dataset  # the Trainer requires one for eval_strategy
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, SeedTrainingArguments):
            raise TypeError(
                f"args must be SeedTrainingArguments (TrainingArguments plus the knobs of seed_hf's trainers), got "
                f"{type(self.args).__name__}: build it as SeedTrainingArguments(output_dir=..., ...)."
            )
        if hasattr(self.train_dataset, "set_epoch"):  # per-sample seeded augmentation
            if self.args.dataloader_persistent_workers and self.args.dataloader_num_workers > 0:
                raise ValueError(
                    "dataloader_persistent_workers keeps the workers' copy of the dataset from the first epoch, so "
                    "its per-sample seeded augmentation would repeat epoch 0's views: turn it off."
                )
            self.add_callback(DatasetEpochCallback(self.train_dataset))
        if isinstance(self.train_dataset, ShardStream):
            self.train_dataset.configure(
                self.args.per_device_train_batch_size,
                self.args.world_size,
                self.args.process_index,
                self.args.dataloader_num_workers,
                self.args.gradient_accumulation_steps,
            )
            # the stream resumes from global_step itself; the Trainer would re-read every skipped batch
            if not self.args.ignore_data_skip:
                logger.info(
                    "ignore_data_skip set to True: a ShardStream resumes at the checkpoint's batch itself, so the "
                    "Trainer must not re-read the batches before it."
                )
                self.args.ignore_data_skip = True
            self.stream_callback = StreamPositionCallback(self.train_dataset)
            self.add_callback(self.stream_callback)
        # memory formats and student precision: resolved at the start of train() (a resumed run reuses the
        # recorded choice, which the checkpoint only names then), or by resolve_step_choice()
        self.step_choice: StepChoice | None = None
        self.add_callback(StepChoiceCallback(lambda: self.step_choice))
        self.add_callback(PreemptionCallback())  # SIGTERM/SIGUSR1: save the step, exit; before the marker
        # last: its on_save marks a checkpoint complete after the other callbacks wrote their files
        self.add_callback(CheckpointCompletionCallback())
        self._validate_batch_size()
        self._validate_precision()
        self._validate_image_size()
        if self.args.sync_bn and self.args.world_size > 1:
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        # True: the last complete checkpoint (the one expansion, RunFolder's)
        resume_from_checkpoint = RunFolder.resume_checkpoint(self.args.output_dir, resume_from_checkpoint)
        if resume_from_checkpoint and not is_complete_checkpoint(resume_from_checkpoint):
            logger.warning(
                f"{resume_from_checkpoint} has no completion marker: it was written by another program or its save "
                "was interrupted (then it may lack files)."
            )
        self._skipped_images = torch.zeros((), dtype=torch.long, device=self.args.device)
        if self.stream_callback is not None:
            self.stream_callback.resume_from = resume_from_checkpoint or None
        if self.args.should_save:
            keep = resume_from_checkpoint if isinstance(resume_from_checkpoint, str) else None
            removed = remove_incomplete_checkpoints(self.args.output_dir, keep=keep)
            if removed:
                logger.warning(f"Removed {removed}: checkpoints whose save was interrupted.")
        # before super().train(): the optimizer, DDP and torch.compile then see the final memory format
        self.resolve_step_choice(resume_from_checkpoint if isinstance(resume_from_checkpoint, str) else None)
        decoded_bad_before = DECODE_STATS.skipped  # this process's decode warnings (num_workers 0)
        output = super().train(resume_from_checkpoint, *args, **kwargs)
        # every rank calls train(), so the reduction cannot deadlock
        skipped = int(self.accelerator.reduce(self._skipped_images, reduction="sum").item())
        output.metrics["skipped_images"] = skipped
        if self.is_world_process_zero() and (skipped or DECODE_STATS.skipped > decoded_bad_before):
            # the decode warnings also name images of batches read ahead and never trained on
            logger.warning(
                f"Skipped {skipped} undecodable image(s) in the batches this run trained on (all dataloader "
                "workers and processes); the warnings above name them, and may name more: images of batches "
                "the dataloader read ahead and the run never used."
            )
        return output

    def get_train_dataloader(self) -> DataLoader:
        """A plain DataLoader for a :class:`ShardStream` (it splits itself over processes and workers;
        accelerate's ``IterableDatasetShard`` would make every process read all of it); the
        Trainer's otherwise. The Trainer moves each batch to the device in ``training_step``."""
        if not isinstance(self.train_dataset, ShardStream):
            return super().get_train_dataloader()
        workers = self.args.dataloader_num_workers
        return DataLoader(
            self.train_dataset,
            batch_size=self.args.per_device_train_batch_size,
            collate_fn=self.data_collator,
            num_workers=workers,
            pin_memory=self.args.dataloader_pin_memory,
            prefetch_factor=self.args.dataloader_prefetch_factor if workers else None,
        )

    def _validate_precision(self) -> None:
        if self.args.fp16 and self.args.device.type == "cpu":
            raise ValueError(
                "fp16 mixed precision needs a GPU: on CPU train in fp32 (default) or pass --bf16."
            )

    def _probe_input(self) -> torch.Tensor:
        config = unwrapped(self).config
        return torch.zeros(2, config.in_chans, config.image_size, config.image_size, device=self.args.device)

    @torch.no_grad()
    def _validate_image_size(self) -> None:
        """One tiny forward before the first step, so a size the student cannot take fails now."""
        model = unwrapped(self)
        was_training = model.training
        model.eval()
        try:
            model.get_features(self._probe_input())
        except Exception as error:
            raise ValueError(
                f"The student ({model.config.architecture}) "
                f"cannot take {model.config.in_chans}x{model.config.image_size}x{model.config.image_size} images "
                f"(image_size / in_chans): {error}{input_size_hint(model, model.config.image_size)}"
            ) from error
        finally:
            model.train(was_training)

    def _check_first_batch(self, inputs: dict[str, Any]) -> None:
        """The first batch against the config the export will publish: a student trained on other
        sizes, channels or normalisation than its config says would be exported with a
        ``pretrained_cfg`` that preprocesses Hub users' images differently from its training."""
        self._first_batch_checked = True
        config = unwrapped(self).config
        pixels = inputs.get("pixel_values")
        if isinstance(pixels, torch.Tensor) and pixels.ndim == 4:
            c, h, w = pixels.shape[1:]
            if (c, h, w) != (config.in_chans, config.image_size, config.image_size):
                raise ValueError(
                    f"The first training batch holds {c}×{h}×{w} images, but the model's config says in_chans="
                    f"{config.in_chans}, image_size={config.image_size}: set them to the data's (the export's "
                    "pretrained_cfg and card are written from the config)."
                )
        stated = getattr(self.train_dataset, "normalization", None)
        if stated is None:
            logger.warning(
                f"The training dataset does not state its normalisation (a `normalization` attribute (mean, std), as "
                f"seed_hf's datasets have): the export records the config's image_mean={list(config.image_mean)}, "
                f"image_std={list(config.image_std)}. Make sure the data was normalised with them."
            )
        elif not (
            torch.allclose(
                torch.tensor(stated[0], dtype=torch.float), torch.tensor(config.image_mean, dtype=torch.float)
            )
            and torch.allclose(
                torch.tensor(stated[1], dtype=torch.float), torch.tensor(config.image_std, dtype=torch.float)
            )
        ):
            raise ValueError(
                f"The training data is normalised with mean {list(stated[0])}, std {list(stated[1])}, but the "
                f"model's config says image_mean={list(config.image_mean)}, image_std={list(config.image_std)} (what "
                "the export publishes): build the config with the data's normalisation."
            )

    def _validate_batch_size(self) -> None:
        global_batch = self.args.per_device_train_batch_size * max(1, self.args.world_size)
        if self.args.per_device_train_batch_size < 2:
            raise ValueError(
                "--per_device_train_batch_size must be ≥ 2 (BatchNorm in training mode needs more than one sample)."
            )
        queue_size = unwrapped(self).queue.size
        if global_batch > queue_size:
            raise ValueError(
                f"--queue_size ({queue_size}) is smaller than the global batch ({global_batch} = "
                f"--per_device_train_batch_size × {max(1, self.args.world_size)} processes): raise --queue_size."
            )

    def evaluate(
        self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"
    ) -> dict[str, float]:
        if self.knn_monitor is None:
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        metrics = self.knn_monitor.evaluate(
            unwrapped(self), self.accelerator, metric_key_prefix, to_input=self._to_memory_format
        )
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def get_decay_parameter_names(self, model: nn.Module) -> list[str]:
        """Every parameter with ``decay_all_parameters`` (official SEED), else the Trainer's choice."""
        if self.args.decay_all_parameters:
            return [name for name, _ in model.named_parameters()]
        return super().get_decay_parameter_names(model)

    def _to_memory_format(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The student's input in the student's memory format (no copy when it already is)."""
        if self.step_choice is not None and self.step_choice.student_channels_last and pixel_values.ndim == 4:
            return pixel_values.contiguous(memory_format=torch.channels_last)
        return pixel_values

    # ---- the step's autotuned memory layout and precision (seed_hf.training.step_choice) ----

    def resolve_step_choice(self, resume_from_checkpoint: str | None = None) -> StepChoice:
        """Chooses, once, the student's (and teacher's) memory layout and the student's precision,
        applies them and returns the :class:`StepChoice` (also ``self.step_choice``, logged at INFO and
        written to each checkpoint, :class:`~seed_hf.training.callbacks.StepChoiceCallback`). Flags
        given explicitly are kept; a choice recorded in ``resume_from_checkpoint`` is reused; the rest
        is probed. ``train()`` calls it first; call it yourself to drive ``training_step`` directly."""
        if self.step_choice is not None:
            return self.step_choice
        recorded = read_step_choice(resume_from_checkpoint)
        choice = self._choose_step(recorded)
        if self.args.world_size > 1:  # every rank probed; all take rank 0's choice (one numerics per run)
            from accelerate.utils import broadcast_object_list

            choice = StepChoice.from_dict(broadcast_object_list([choice.to_dict()], from_process=0)[0])
        self._apply_step_choice(choice)
        self.step_choice = choice
        logger.info(f"Training step: {choice.describe()}")
        return choice

    def _choose_step(self, recorded: StepChoice | None) -> StepChoice:
        """The student's part of the choice (SeedTrainer adds the teacher's)."""
        return choose_student(unwrapped(self), self.args, recorded, self.accelerator.autocast)

    def _apply_step_choice(self, choice: StepChoice) -> None:
        fmt = torch.channels_last if choice.student_channels_last else torch.contiguous_format
        unwrapped(self).to(memory_format=fmt)

    def autocast_smart_context_manager(self, cache_enabled: bool | None = True):
        """The Trainer's hook around ``compute_loss``: bf16 autocast for the student when the step
        choice took it on an fp32 run (``--bf16`` runs get the accelerator's own autocast)."""
        if (
            self.step_choice is not None
            and self.step_choice.student_dtype == "bfloat16"
            and not self.args.bf16
        ):
            return torch.autocast(self.args.device.type, dtype=torch.bfloat16, cache_enabled=cache_enabled)
        return super().autocast_smart_context_manager(cache_enabled)

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch=None
    ) -> torch.Tensor:
        if self.step_choice is None:  # training_step driven directly (benchmarks); train() resolves it first
            self.resolve_step_choice()
        if self.device_transform is not None:  # first: its skipped images are counted below
            inputs = self.device_transform(inputs)
        if not self._first_batch_checked:
            self._check_first_batch(inputs)
        skipped = inputs.pop(SKIPPED_KEY, None)
        if skipped is not None:  # device-side sum: no sync per step
            self._skipped_images = self._skipped_images.to(skipped.device) + skipped.sum()
        return super().training_step(model, inputs, num_items_in_batch)

    def loss_terms(self, outputs: Any) -> dict[str, torch.Tensor]:
        """Public hook: named scalar terms of one training forward's ``outputs``, logged as
        ``loss_<name>`` next to ``loss``, averaged like it over the steps since the last log (and
        over processes). Default: none; [`SeedTrainer`] logs each student's loss of a group and the
        local term (``loss_local``)."""
        return {}

    def record_loss_terms(self, outputs: Any) -> None:
        """Adds this step's :meth:`loss_terms` to the running sums (device tensors: no sync per step)."""
        terms = self.loss_terms(outputs)
        for name, value in terms.items():
            value = value.detach().float()
            previous = self.loss_term_sums.get(name)
            self.loss_term_sums[name] = value if previous is None else previous + value
        if terms:
            self.loss_term_steps += 1

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            logs["queue_fill"] = round(unwrapped(self).queue.fill_fraction, 4)
            if self.loss_term_steps:
                names = sorted(self.loss_term_sums)
                means = torch.stack([self.loss_term_sums[n] for n in names]) / self.loss_term_steps
                if (
                    self.args.world_size > 1
                ):  # every rank logs the training loss: the reduction cannot deadlock
                    means = self.accelerator.reduce(means, reduction="mean")
                logs.update({f"loss_{n}": float(v) for n, v in zip(names, means.tolist())})
                self.loss_term_sums, self.loss_term_steps = {}, 0
        super().log(logs, start_time)
