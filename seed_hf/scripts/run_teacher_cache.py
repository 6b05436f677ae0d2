#!/usr/bin/env python
"""Runs a frozen teacher once over E epochs of a training set's seeded views and stores its
embeddings (a teacher cache, seed_hf.teachers.cache), so that any number of students train from it
without a teacher (run_seed.py --teacher_cache DIR, with the same data flags and --seed).

    python examples/run_teacher_cache.py --teacher_name_or_path pretrained/fmnist-mocov2-resnet18 \
        --image_size 64 --epochs 10 --per_device_train_batch_size 256 --output_dir caches/fmnist-r18

Resumable: run the same command again after an interruption (completed shards are kept). Under
`accelerate launch` / torchrun every process writes its own shards.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import set_seed

from seed_hf import SeedTrainingArguments, load_teacher
from seed_hf.cli import (
    DataTrainingArguments,
    SmallCropArguments,
    TeacherArguments,
    parse_script_args,
    script_parser,
    setup_logging,
)
from seed_hf.teachers.cache import CACHE_DTYPES
from seed_hf.teachers.cache_writer import write_teacher_cache
from seed_hf.teachers.fingerprint import weights_fingerprint
from seed_hf.training.distributed import shutdown_distributed
from seed_hf.training.run_folder import RunFolder


@dataclass
class CacheArguments:
    """What the cache stores."""

    epochs: int = field(
        default=1,
        metadata={
            "help": "Epochs of views to embed; a longer training run replays them (epoch e reads e mod E)."
        },
    )
    dtype: str = field(
        default="float16",
        metadata={
            "help": f"Stored precision, one of {CACHE_DTYPES} (float32: exactly the teacher's output)."
        },
    )
    shard_rows: int = field(
        default=16384, metadata={"help": "Rows per shard file (the unit a resumed writer skips)."}
    )


def main(argv: list[str] | None = None) -> dict:
    parser = script_parser(
        (TeacherArguments, SmallCropArguments, DataTrainingArguments, SeedTrainingArguments, CacheArguments)
    )
    return write(*parse_script_args(parser, argv))


def write(
    teacher_args: TeacherArguments,
    crops: SmallCropArguments,
    data_args: DataTrainingArguments,
    training_args: SeedTrainingArguments,
    cache_args: CacheArguments,
) -> dict:
    logger = setup_logging(training_args)
    if not teacher_args.teacher_name_or_path:
        raise ValueError("Pass --teacher_name_or_path: the teacher whose embeddings the cache stores.")
    # one writer per cache folder (main process); the other processes write their own shards
    RunFolder(training_args.output_dir).lock(training_args.process_index == 0)
    set_seed(training_args.seed)  # as run_seed.py: a random-weight teacher is the same one
    data = data_args.train_data()
    fingerprint = weights_fingerprint(teacher_args.teacher_name_or_path, teacher_args.teacher_checkpoint)
    teacher = load_teacher(**teacher_args.load_kwargs(), sha256=fingerprint)
    mixed = "bf16" if training_args.bf16 else "fp16" if training_args.fp16 else None
    manifest = write_teacher_cache(
        teacher,
        data,
        training_args.seed,
        cache_args.epochs,
        training_args.output_dir,
        batch_size=training_args.per_device_train_batch_size,
        dtype=cache_args.dtype,
        teacher_dtype=training_args.teacher_dtype,
        mixed_precision=mixed,
        channels_last=training_args.channels_last,  # "auto" follows the trainer's rule (teachers/inference.py)
        optimize_teacher=training_args.optimize_teacher,
        num_small_crops=crops.num_small_crops,
        small_crop_size=crops.small_crop_size,
        shard_rows=cache_args.shard_rows,
        num_workers=training_args.dataloader_num_workers,
        device=training_args.device,
        process_index=training_args.process_index,
        num_processes=training_args.world_size,
        teacher_arguments=teacher_args.recorded(),
        progress=not training_args.disable_tqdm,
    )
    if training_args.process_index == 0:
        logger.info(f"Teacher cache written to {training_args.output_dir}: {manifest.get('write')}")
    return manifest


def cli(argv: list[str] | None = None) -> None:
    """The command line (``seed-hf``, ``python -m``, ``examples/run_teacher_cache.py``): a refusal prints its message
    alone and exits with status 1."""
    from seed_hf.cli.script import run_script

    run_script(lambda: main(argv), cleanup=shutdown_distributed)


if __name__ == "__main__":
    cli()
