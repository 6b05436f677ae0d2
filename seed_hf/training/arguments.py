"""Arguments of the SEED and MoCo trainers (``TrainingArguments`` plus the knobs of seed_hf's
trainers), in their own module as TRL keeps ``GKDConfig`` beside ``GKDTrainer``."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from transformers import TrainingArguments

from seed_hf.training.step_choice import parse_switch

__all__ = ["STUDENT_DTYPES", "TEACHER_DTYPES", "SeedTrainingArguments", "scaled_learning_rate"]

logger = logging.getLogger(__name__)


def scaled_learning_rate(base_learning_rate: float, total_batch_size: int) -> float:
    """Linear scaling rule of MoCo / SEED: ``lr = base_lr × total_batch / 256``."""
    return base_learning_rate * total_batch_size / 256


TEACHER_DTYPES = ("auto", "bfloat16", "float16", "float32")
STUDENT_DTYPES = ("auto", "bfloat16", "float32")


@dataclass
class SeedTrainingArguments(TrainingArguments):
    """`TrainingArguments` with the paper's optimisation defaults (SGD, cosine, wd 1e-4) and
    the SEED specifics.

    One learning-rate rule: an explicit `learning_rate` is used as is; otherwise it is the paper's
    linear scaling `base_learning_rate × global batch / 256` (global batch = per-device batch ×
    processes × gradient accumulation steps)."""

    learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "Peak learning rate, used as is when given. Default: base_learning_rate × global batch / 256 "
            "(global batch = per_device_train_batch_size × processes × gradient_accumulation_steps)."
        },
    )
    base_learning_rate: float = field(
        default=0.03,
        metadata={
            "help": "Learning rate per 256 images of the linear scaling rule (the paper: 0.03); ignored when "
            "--learning_rate is given."
        },
    )
    # a str, not a bool: "auto" is the default; a bare --channels_last still means true (nargs/const),
    # and Python callers and recipes may pass True / False (normalised in __post_init__)
    channels_last: str = field(
        default="auto",
        metadata={
            "help": "Memory format of student and teacher: auto (default: a few timed steps of the real models at the "
            "real batch shape before the first step keep the faster of channels_last and NCHW, per model; "
            "seed_hf.training.step_choice), true (channels_last) or false (NCHW). A resumed run reuses its recorded choice.",
            "nargs": "?",
            "const": True,
        },
    )
    student_dtype: str = field(
        default="auto",
        metadata={
            "help": "Precision of the student's forward: auto (on CPUs with native bf16, AVX512-BF16 or AMX, the "
            "faster of fp32 and bf16 autocast in the same timed probe as --channels_last auto: bf16 wins for "
            "ResNets, loses for depthwise MobileNetV3; elsewhere the run's precision, --bf16 / --fp16), float32 "
            "or bfloat16 (bf16 autocast without --bf16). The loss's softmaxes run in fp32 either way."
        },
    )
    optimize_teacher: bool = field(
        default=True,
        metadata={"help": "Fold the frozen teacher's BatchNorm into its convolutions (exact, faster)."},
    )
    teacher_dtype: str = field(
        default="auto",
        metadata={
            "help": "Precision of the frozen teacher's forward: auto (bf16 on CPUs with native bf16, "
            "AVX512-BF16 or AMX; otherwise the run's mixed precision: fp32 on other CPUs, --bf16/--fp16 on GPUs), "
            "bfloat16 (bf16 autocast even when the student trains in fp32: a faster teacher on CPUs with "
            "AVX512-BF16/AMX and on GPUs), float16 (fp16 autocast, the official SEED code's teacher precision) "
            "or float32 (fp32 teacher even under --bf16)."
        },
    )
    decay_all_parameters: bool = field(
        default=False,
        metadata={
            "help": "Apply weight_decay to every parameter, biases and norm layers included, as the official "
            "SEED / MoCo code does (torch.optim.SGD(model.parameters(), weight_decay=...)); default: the "
            "Trainer's grouping, which exempts biases and norm weights."
        },
    )
    compile_teacher: bool = field(
        default=False,
        metadata={
            "help": "torch.compile the frozen teacher with inductor freezing (weights folded in as constants, "
            "fused conv epilogues): a faster teacher forward, one compile per input shape (docs/performance.md). "
            "Combine with --torch_compile for the student."
        },
    )
    sync_bn: bool = field(
        default=False, metadata={"help": "Convert the student's BatchNorm to SyncBatchNorm under DDP."}
    )
    optim: str = field(default="sgd", metadata={"help": "Optimizer (the paper: SGD, momentum 0.9)."})
    optim_args: str | None = field(default="momentum=0.9", metadata={"help": "Optimizer arguments."})
    weight_decay: float = field(default=1e-4, metadata={"help": "Weight decay (the paper: 1e-4)."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "LR schedule (the paper: cosine)."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep all columns (views, labels)."})
    report_to: None | str | list[str] = field(
        default="none", metadata={"help": "Trackers to report to (tensorboard, wandb, ...)."}
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Allow a non-empty output_dir that holds no checkpoint."}
    )
    logging_steps: float = field(default=10, metadata={"help": "Log every N steps."})
    max_grad_norm: float = field(
        default=0.0,
        metadata={
            "help": "Clip the gradients' global norm to this value; 0 (default): no clipping, as the official SEED "
            "and MoCo code (transformers' default is 1.0)."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.max_steps < -1:  # transformers would read any negative value as "train by epochs", silently
            raise ValueError(
                f"max_steps={self.max_steps}: pass a positive number of steps, or -1 (the default) to train for "
                "num_train_epochs."
            )
        if self.max_steps == 0:  # transformers would read 0 as "train by epochs", silently
            raise ValueError(
                "max_steps=0 trains nothing: pass a positive number of steps, or -1 (the default) to train "
                "for num_train_epochs."
            )
        if self.save_total_limit == 1 and self.save_strategy != "no":
            logger.warning(
                "save_total_limit=1 would delete the last complete checkpoint while the next one is still being "
                "written (a run killed then could not resume): keeping 2."
            )
            self.save_total_limit = 2
        if self.teacher_dtype not in TEACHER_DTYPES:
            raise ValueError(f"--teacher_dtype must be one of {TEACHER_DTYPES}, got {self.teacher_dtype!r}.")
        self.channels_last = parse_switch(self.channels_last, "channels_last")
        if self.student_dtype not in STUDENT_DTYPES:
            raise ValueError(f"--student_dtype must be one of {STUDENT_DTYPES}, got {self.student_dtype!r}.")
        if self.student_dtype == "float32" and (self.bf16 or self.fp16):
            raise ValueError("student_dtype=float32 contradicts --bf16 / --fp16 (mixed precision): drop one.")
        if self.student_dtype == "bfloat16" and self.fp16:
            raise ValueError("student_dtype=bfloat16 contradicts --fp16: pass --bf16 instead.")
        scaled = self.learning_rate is None
        if self.learning_rate is None:
            if self.base_learning_rate is None:
                raise ValueError("Pass --learning_rate or --base_learning_rate.")
            total = (
                self.per_device_train_batch_size * max(1, self.world_size) * self.gradient_accumulation_steps
            )
            self.learning_rate = scaled_learning_rate(self.base_learning_rate, total)
        if not self.learning_rate > 0:
            given = (
                f"base_learning_rate={self.base_learning_rate}"
                if scaled
                else f"learning_rate={self.learning_rate}"
            )
            raise ValueError(f"The learning rate must be > 0, got {given}.")
