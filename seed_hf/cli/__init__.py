"""The example scripts' layer: their argument dataclasses (:mod:`.arguments`), the command line
with its ``--recipe`` files (:mod:`.command_line`), set-up (:mod:`.script`) and training into a run
folder (:mod:`.runs`; the decision on the folder is :class:`seed_hf.training.run_folder.RunFolder`'s).
A flag is named as the library parameter it sets, so the library's errors name the flags. The library
(everything outside ``seed_hf.cli``) never imports it."""

from seed_hf.cli.arguments import (
    DataTrainingArguments,
    OnnxArguments,
    SmallCropArguments,
    TeacherArguments,
)
from seed_hf.cli.command_line import parse_script_args, script_parser
from seed_hf.cli.runs import resolve_checkpoint, train_and_save
from seed_hf.cli.script import (
    build_device_input,
    build_knn_monitor,
    build_script_dataset,
    check_hub_arguments,
    onnx_export_options,
    setup_logging,
)
from seed_hf.cli.teacher_cache import cached_training_dataset, open_teacher_cache, replayed_epochs

__all__ = [
    "DataTrainingArguments",
    "OnnxArguments",
    "SmallCropArguments",
    "TeacherArguments",
    "build_device_input",
    "build_knn_monitor",
    "build_script_dataset",
    "cached_training_dataset",
    "check_hub_arguments",
    "onnx_export_options",
    "open_teacher_cache",
    "parse_script_args",
    "replayed_epochs",
    "resolve_checkpoint",
    "script_parser",
    "setup_logging",
    "train_and_save",
]
