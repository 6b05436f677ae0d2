"""Trainers for SEED distillation and the MoCo-v2 baseline on top of ``transformers.Trainer``
(their arguments: :mod:`seed_hf.training.arguments`).

``accelerate`` (through the Trainer) provides DDP, multi-node and mixed precision; these classes
add what SEED needs: a frozen teacher outside the model, the optimizer and the checkpoints; the
model's own queue, which its training ``forward`` reads as a snapshot and then fills with the
global batch's keys (the trainer never writes it); the step path (:mod:`seed_hf.training.step_choice`); the
online kNN monitor (:class:`seed_hf.evaluation.evaluate.KnnMonitor`).
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
from seed_hf.evaluation.evaluate import KnnMonitor
from seed_hf.models.backbones import input_size_hint
from seed_hf.teachers.loading import FrozenTeacher
from seed_hf.training import step_choice as fast_path
from seed_hf.training.arguments import SeedTrainingArguments
from seed_hf.training.callbacks import (
    CheckpointCompletionCallback,
    DatasetEpochCallback,
    PreemptionCallback,
    StepPathCallback,
    StreamPositionCallback,
)
from seed_hf.training.distributed import all_gather_no_grad
from seed_hf.training.precision import cpu_has_native_bf16, resolve_teacher_dtype
from seed_hf.training.run_folder import (
    is_complete_checkpoint,
    last_complete_checkpoint,
    remove_incomplete_checkpoints,
)
from seed_hf.training.step_choice import StepPath, choose, is_noisy, preserved_state, read_step_path

__all__ = ["MocoTrainer", "QueueTrainer", "SeedTrainer"]

logger = logging.getLogger(__name__)


def _unwrapped(trainer: Trainer, model: nn.Module | None = None) -> nn.Module:
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
        # recorded choice, which the checkpoint only names then), or by resolve_step_path()
        self.step_path: StepPath | None = None
        self.add_callback(StepPathCallback(lambda: self.step_path))
        self.add_callback(PreemptionCallback())  # SIGTERM/SIGUSR1: save the step, exit; before the marker
        # last: its on_save marks a checkpoint complete after the other callbacks wrote their files
        self.add_callback(CheckpointCompletionCallback())
        self._validate_batch_size()
        self._validate_precision()
        self._validate_image_size()
        if self.args.sync_bn and self.args.world_size > 1:
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        if resume_from_checkpoint is True:
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir)
        elif resume_from_checkpoint and not is_complete_checkpoint(resume_from_checkpoint):
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
        self.resolve_step_path(resume_from_checkpoint if isinstance(resume_from_checkpoint, str) else None)
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
        config = _unwrapped(self).config
        return torch.zeros(2, config.in_chans, config.image_size, config.image_size, device=self.args.device)

    @torch.no_grad()
    def _validate_image_size(self) -> None:
        """One tiny forward before the first step, so a size the student cannot take fails now."""
        model = _unwrapped(self)
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
        config = _unwrapped(self).config
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
                "`per_device_train_batch_size` must be ≥ 2 (BatchNorm in training mode needs more than one sample)."
            )
        queue_size = _unwrapped(self).queue.size
        if global_batch > queue_size:
            raise ValueError(
                f"`queue_size` ({queue_size}) is smaller than the global batch ({global_batch} = "
                f"`per_device_train_batch_size` × {max(1, self.args.world_size)} processes): raise `queue_size`."
            )

    def evaluate(
        self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"
    ) -> dict[str, float]:
        if self.knn_monitor is None:
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        metrics = self.knn_monitor.evaluate(
            _unwrapped(self), self.accelerator, metric_key_prefix, to_input=self._to_memory_format
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
        if self.step_path is not None and self.step_path.student_channels_last and pixel_values.ndim == 4:
            return pixel_values.contiguous(memory_format=torch.channels_last)
        return pixel_values

    # ---- the step's memory format and precision (seed_hf.training.step_choice) ----

    def resolve_step_path(self, resume_from_checkpoint: str | None = None) -> StepPath:
        """Chooses, once, the student's (and teacher's) memory format and the student's precision,
        applies them and returns the :class:`StepPath` (also ``self.step_path``, logged at INFO and
        written to ``step_path.json`` in every checkpoint). Flags given explicitly are kept; a choice
        recorded in ``resume_from_checkpoint`` is reused; the rest is probed (``seed_hf.training.step_choice``).
        ``train()`` calls it first; call it yourself to drive ``training_step`` directly."""
        if self.step_path is not None:
            return self.step_path
        recorded = read_step_path(resume_from_checkpoint)
        path = self._choose_step_path(recorded)
        if self.args.world_size > 1:  # every rank probed; all take rank 0's choice (one numerics per run)
            from accelerate.utils import broadcast_object_list

            path = StepPath.from_dict(broadcast_object_list([path.to_dict()], from_process=0)[0])
        self._apply_step_path(path)
        self.step_path = path
        logger.info(f"Training step: {path.describe()}")
        return path

    def _student_candidates(self) -> tuple[list[bool], list[str], dict[str, str]]:
        """(layouts, precisions, sources of the fixed ones): what the student's probe may choose from,
        the prior first (``fast_path`` module docstring)."""
        sources: dict[str, str] = {}
        given = self.args.channels_last
        layouts = [True, False] if given == "auto" else [given == "true"]
        if given != "auto":
            sources["student_channels_last"] = "given"
        hazards = fast_path.channels_last_backward_hazards(_unwrapped(self), self.args.device)
        if hazards and True in layouts:
            where = f"{', '.join(hazards[:3])}{' ...' if len(hazards) > 3 else ''}"
            if given == "true":
                raise ValueError(
                    f"channels_last=true: the student's strided 1x1 convolutions with few input channels ({where}) "
                    f"crash PyTorch's {self.args.device.type.upper()} backward in channels_last (the process dies). "
                    "Pass --channels_last false or auto (auto trains such a student in NCHW)."
                )
            layouts = [False]
            sources["student_channels_last"] = "unsafe"
            logger.warning(
                f"The student trains in NCHW: its strided 1x1 convolutions with few input channels ({where}) crash "
                f"PyTorch's {self.args.device.type.upper()} backward in channels_last."
            )
        dtype = self.args.student_dtype
        if self.args.bf16 or self.args.fp16:  # the run's mixed precision, as asked
            precisions = ["bfloat16" if self.args.bf16 else "float16"]
            sources["student_dtype"] = "given"
        elif dtype != "auto":
            precisions = [dtype]
            sources["student_dtype"] = "given"
        elif self.args.device.type == "cpu" and cpu_has_native_bf16():
            precisions = ["float32", "bfloat16"]
        else:  # emulated bf16 on other CPUs is slower; on GPUs the precision is the user's (--bf16)
            precisions = ["float32"]
        return layouts, precisions, sources

    def _probe_pixels(self) -> int:
        config = _unwrapped(self).config
        return self.args.per_device_train_batch_size * config.image_size * config.image_size

    def _probe_batch(self, batch_size: int | None = None) -> torch.Tensor:
        config = _unwrapped(self).config
        n = batch_size or self.args.per_device_train_batch_size
        generator = torch.Generator().manual_seed(0)  # the global RNG streams stay untouched
        x = torch.randn(n, config.in_chans, config.image_size, config.image_size, generator=generator)
        return x.to(self.args.device)

    def _student_autocast(self, dtype: str):
        if dtype == "bfloat16" and not self.args.bf16:
            return torch.autocast(self.args.device.type, dtype=torch.bfloat16)
        return self.accelerator.autocast()  # the run's precision

    def _probe_student(
        self, layouts: list[bool], precisions: list[str]
    ) -> tuple[tuple[bool, str], dict[str, list[float]], int]:
        """Times forward + backward of the student's backbone for every (layout, precision), alternated,
        on random images of the real batch shape; the model is left exactly as it was."""
        model = _unwrapped(self)
        device = self.args.device
        names = {
            f"{'channels_last' if cl else 'nchw'}/{dtype}": (cl, dtype)
            for cl in layouts
            for dtype in precisions
        }
        prior = next(iter(names))
        batch = self._probe_batch()

        def call(name: str):
            channels_last, dtype = names[name]
            x = batch.contiguous(memory_format=torch.channels_last) if channels_last else batch

            def run():
                with self._student_autocast(dtype):
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
            first = fast_path.timed_call(prior, call(prior), device)  # also the prior's warm-up
            if first > fast_path.MAX_PROBE_CALL_S:  # large model on CPU: probe on a smaller batch
                n = max(8, int(batch.shape[0] * fast_path.MAX_PROBE_CALL_S / first))
                batch = batch[:n]
            samples = fast_path.time_candidates(
                {name: call(name) for name in names}, device, measure=fast_path.timed_call, setup=setup
            )
        # another precision than the prior's must win by more: it moves the numerics more than a layout
        margins = {
            name: fast_path.PRECISION_MARGIN if dtype != names[prior][1] else fast_path.MARGIN
            for name, (_, dtype) in names.items()
        }
        return names[choose(samples, prior, margins)], samples, batch.shape[0]

    def _choose_step_path(self, recorded: StepPath | None) -> StepPath:
        """The student's part of the choice (SeedTrainer adds the teacher's)."""
        layouts, precisions, sources = self._student_candidates()
        path = StepPath(student_channels_last=layouts[0], student_dtype=precisions[0], sources=sources)
        if recorded is not None:  # reuse the resumed run's choice for what was not given now
            if "student_channels_last" not in sources and (recorded.student_channels_last in layouts):
                path.student_channels_last = recorded.student_channels_last
                sources["student_channels_last"] = "resumed"
            if "student_dtype" not in sources and recorded.student_dtype in precisions:
                path.student_dtype = recorded.student_dtype
                sources["student_dtype"] = "resumed"
            layouts = [path.student_channels_last] if "student_channels_last" in sources else layouts
            precisions = [path.student_dtype] if "student_dtype" in sources else precisions
        if len(layouts) * len(precisions) > 1 and self._probe_pixels() >= fast_path.PROBE_MIN_PIXELS:
            (path.student_channels_last, path.student_dtype), samples, path.probe_batch_size = (
                self._probe_student(layouts, precisions)
            )
            path.timings_s["student"] = {name: min(v) for name, v in samples.items()}
            if is_noisy(samples):
                path.noisy.append("student")
            for key, options in (("student_channels_last", layouts), ("student_dtype", precisions)):
                sources.setdefault(key, "probe" if len(options) > 1 else "prior")
        for key in ("student_channels_last", "student_dtype"):
            sources.setdefault(key, "prior")
        return path

    def _apply_step_path(self, path: StepPath) -> None:
        fmt = torch.channels_last if path.student_channels_last else torch.contiguous_format
        _unwrapped(self).to(memory_format=fmt)

    def autocast_smart_context_manager(self, cache_enabled: bool | None = True):
        """The Trainer's hook around ``compute_loss``: bf16 autocast for the student when the step
        path chose it on an fp32 run (``--bf16`` runs get the accelerator's own autocast)."""
        if self.step_path is not None and self.step_path.student_dtype == "bfloat16" and not self.args.bf16:
            return torch.autocast(self.args.device.type, dtype=torch.bfloat16, cache_enabled=cache_enabled)
        return super().autocast_smart_context_manager(cache_enabled)

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch=None
    ) -> torch.Tensor:
        if self.step_path is None:  # training_step driven directly (benchmarks); train() resolves it first
            self.resolve_step_path()
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
            logs["queue_fill"] = round(_unwrapped(self).queue.fill_fraction, 4)
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


class SeedTrainer(QueueTrainer):
    """Distils a frozen ``teacher`` into a [`SeedForDistillation`] student.

    The teacher is not part of the model: it is moved to the accelerator's device, runs in
    eval mode under ``torch.no_grad`` and the accelerator's autocast on the **same**
    augmented view as the student, and never reaches the optimizer or the checkpoints.

    Args:
        teacher (`FrozenTeacher` or `nn.Module`, *optional*): maps ``pixel_values`` to embeddings
            ``(batch, projection_dim)``. None: the batches carry the teacher's embeddings
            (``teacher_embeds``, ``teacher_embeds_small``: a teacher cache,
            :class:`seed_hf.teachers.cache.CachedTeacherDataset`) and no teacher runs.
        All other arguments are those of `transformers.Trainer`.
    """

    def __init__(self, *args, teacher: nn.Module | None, **kwargs):
        super().__init__(*args, **kwargs)
        for student in getattr(_unwrapped(self), "students", {"": _unwrapped(self)}).values():
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
        if not isinstance(teacher, FrozenTeacher):
            teacher.requires_grad_(False)
        teacher.eval()
        self.teacher = teacher.to(self.args.device)
        if isinstance(teacher, FrozenTeacher):
            model = _unwrapped(self)
            teacher.set_data_normalization(model.config.image_mean, model.config.image_std)
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
        if self.args.optimize_teacher and isinstance(teacher, FrozenTeacher):
            # BN folded now; the memory format is the step path's (resolve_step_path), applied to the folded model
            self.teacher.optimize_for_inference(
                channels_last=False, probe=self._probe_input(), feature_map=self.uses_teacher_patches
            )
        self._validate_teacher()
        if self.args.compile_teacher:
            # after validation, so the probe batch does not make the batch size dynamic
            self.teacher.compile(dynamic=False, options={"freezing": True})

    @torch.no_grad()
    def _validate_teacher(self) -> None:
        model = _unwrapped(self)
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
                    f"is {grid[0]}x{grid[1]} at image_size={_unwrapped(self).config.image_size}: raise image_size (or "
                    "the teacher's teacher_image_size when its inputs are resized; a ResNet's map is 1/32 of its "
                    "input) or set local_loss_weight=0."
                )

    @property
    def uses_teacher_patches(self) -> bool:
        """Whether a student has the local term on (``local_loss_weight > 0``): the teacher then
        returns its patch features too, from the same forward."""
        model = _unwrapped(self)
        students = getattr(model, "students", {"": model}).values()
        return any(getattr(student.config, "local_loss_weight", 0) > 0 for student in students)

    def _teacher_autocast(self):
        dtype = resolve_teacher_dtype(self.args.teacher_dtype, self.args.device.type)
        if dtype is None:  # the run's mixed precision
            return self.accelerator.autocast()
        return torch.autocast(self.args.device.type, dtype=dtype, enabled=dtype != torch.float32)

    def _teacher_input(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The teacher's input in the teacher's memory format (no copy when it already is, e.g. 1-channel
        images, whose NCHW and channels_last layouts coincide)."""
        if self.step_path is not None and self.step_path.teacher_channels_last and pixel_values.ndim == 4:
            return pixel_values.contiguous(memory_format=torch.channels_last)
        if self.step_path is not None and pixel_values.ndim == 4:
            return pixel_values.contiguous()
        return pixel_values

    def teacher_embeddings(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Teacher embeddings ``(batch, dim)`` in fp32, computed under ``teacher_dtype``'s autocast
        and inference_mode (the clone turns the inference tensor into one autograd may save for
        the student's loss)."""
        with torch.inference_mode(), self._teacher_autocast():
            embeds = self.teacher(self._teacher_input(pixel_values)).float()
        return embeds.clone()

    def _choose_step_path(self, recorded: StepPath | None) -> StepPath:
        """The student's choice (QueueTrainer) and the teacher's layout: given (--channels_last
        true/false), resumed, the prior (channels_last) when the workload is tiny or the teacher is
        compiled (a probe would compile it once per layout), else probed."""
        path = super()._choose_step_path(recorded)
        if self.teacher is None:  # a teacher cache: no teacher layout to choose
            return path
        given = self.args.channels_last
        if given != "auto":
            path.teacher_channels_last, path.sources["teacher_channels_last"] = given == "true", "given"
        elif recorded is not None and recorded.teacher_channels_last is not None:
            path.teacher_channels_last, path.sources["teacher_channels_last"] = (
                recorded.teacher_channels_last,
                "resumed",
            )
        elif self._probe_pixels() < fast_path.PROBE_MIN_PIXELS or self.args.compile_teacher:
            path.teacher_channels_last, path.sources["teacher_channels_last"] = True, "prior"
        else:
            path.teacher_channels_last, samples = self._probe_teacher(path.probe_batch_size)
            path.timings_s["teacher"] = {name: min(v) for name, v in samples.items()}
            path.sources["teacher_channels_last"] = "probe"
            if is_noisy(samples):
                path.noisy.append("teacher")
        return path

    def _probe_teacher(self, batch_size: int | None) -> tuple[bool, dict[str, list[float]]]:
        """Times the teacher's forward (its dtype, inference_mode, the local term's patches if on) in
        channels_last and NCHW, alternated; prior channels_last."""
        batch = self._probe_batch(batch_size)
        # step_path is still None here, so _teacher_input passes these inputs through as they are
        forward = (
            self.teacher_embeddings_and_patches if self.uses_teacher_patches else self.teacher_embeddings
        )
        formats = {"channels_last": torch.channels_last, "nchw": torch.contiguous_format}
        self.teacher.to(memory_format=torch.channels_last)
        first = fast_path.timed_call("channels_last", lambda: forward(batch), self.args.device)  # + warm-up
        if first > fast_path.MAX_PROBE_CALL_S:  # a large teacher on CPU: probe on a smaller batch
            batch = batch[: max(8, int(batch.shape[0] * fast_path.MAX_PROBE_CALL_S / first))]
        inputs = {name: batch.contiguous(memory_format=fmt) for name, fmt in formats.items()}
        samples = fast_path.time_candidates(
            {name: (lambda x=x: forward(x)) for name, x in inputs.items()},
            self.args.device,
            measure=fast_path.timed_call,
            setup=lambda name: self.teacher.to(memory_format=formats[name]),
        )
        return choose(samples, "channels_last") == "channels_last", samples

    def _apply_step_path(self, path: StepPath) -> None:
        super()._apply_step_path(path)
        if path.teacher_channels_last is not None:
            self.teacher.to(
                memory_format=torch.channels_last if path.teacher_channels_last else torch.contiguous_format
            )

    def teacher_embeddings_and_patches(
        self, pixel_values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """``(embeds (batch, dim) fp32, patches (batch, rows·cols, width), (rows, cols))`` from one
        teacher forward (:meth:`FrozenTeacher.forward_with_patches`), as :meth:`teacher_embeddings`."""
        with torch.inference_mode(), self._teacher_autocast():
            embeds, patches, grid = self.teacher.forward_with_patches(self._teacher_input(pixel_values))
        return embeds.float().clone(), patches.clone(), grid

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
