#!/usr/bin/env python
"""SEED: self-supervised distillation of a frozen teacher into a small student
(Fang et al., ICLR 2021, https://arxiv.org/abs/2101.04731).

    accelerate launch examples/run_seed.py \
        --teacher_name_or_path resnet50 --teacher_checkpoint moco_v2_800ep_pretrain.pth.tar \
        --student_architecture efficientnet_b0 --dataset_name timm/imagenet-1k-wds --streaming \
        --max_steps 1000000 --per_device_train_batch_size 32 --output_dir seed-effb0

With no dataset argument it distils on Fashion-MNIST (apt-get install -y dataset-fashion-mnist).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from transformers import set_seed

from seed_hf import (
    SeedConfig,
    SeedForDistillation,
    SeedStudentGroup,
    SeedTrainer,
    SeedTrainingArguments,
    load_teacher,
)
from seed_hf.cli import (
    DataTrainingArguments,
    OnnxArguments,
    SmallCropArguments,
    TeacherArguments,
    build_device_input,
    build_knn_monitor,
    build_script_dataset,
    cached_training_dataset,
    check_hub_arguments,
    onnx_export_options,
    open_teacher_cache,
    parse_script_args,
    replayed_epochs,
    script_parser,
    setup_logging,
    train_and_save,
)
from seed_hf.cli.script import int8_refusals
from seed_hf.teachers.fingerprint import weights_fingerprint
from seed_hf.training.distributed import shutdown_distributed
from seed_hf.training.run_folder import STUDENTS_DIR, RunFolder
from seed_hf.training.run_recipe import run_recipe


@dataclass
class ModelArguments(SmallCropArguments, TeacherArguments):
    """Teacher (or teacher cache), student and SEED hyperparameters (defaults: the paper's)."""

    teacher_cache: str | None = field(
        default=None,
        metadata={
            "help": "A teacher cache folder (this script's teacher pass stored by `seed-hf cache` / run_teacher_cache.py with "
            "the same data flags and seed): no teacher is loaded or run, the cached embeddings of each view feed "
            "the loss and the queue. Teacher flags, when given, are checked against the cache's."
        },
    )
    teacher_ssl_method: str | None = field(
        default=None, metadata={"help": "Provenance: moco_v2, swav, simclr, ..."}
    )
    student_architecture: str = field(
        default="resnet18",
        metadata={
            "help": "timm architecture of the student; several comma-separated names distil all of them "
            "from one teacher forward per step (saved to output_dir/students/<name>)."
        },
    )
    student_model_args: str | None = field(
        default=None,
        metadata={
            "help": 'JSON dict of extra timm.create_model args (e.g. {"drop_rate": 0.2}); with several '
            'students, a dict keyed by architecture gives each its own ({"efficientnet_b0": {...}, ...}).'
        },
    )
    projection_dim: int | None = field(
        default=None, metadata={"help": "Head output width (default: the teacher's)."}
    )
    head_hidden_dim: int | None = field(
        default=None, metadata={"help": "Head hidden width (default: pooled width)."}
    )
    queue_size: int = field(default=65536, metadata={"help": "K, queued teacher embeddings."})
    student_temperature: float = field(default=0.2, metadata={"help": "τ_S."})
    teacher_temperature: float = field(default=0.01, metadata={"help": "τ_T (official code: 1e-4)."})
    loss_variant: str = field(default="official", metadata={"help": "official or batch_keys."})
    small_queue_keys: str = field(
        default="first_crop",
        metadata={
            "help": "Small-crop keys enqueued per image: first_crop (official: one, in lockstep with the "
            "main queue) or all_crops."
        },
    )
    local_loss_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the local term (LightlyTrain distillationv3, its default since 0.15.0, weight 1.0 there): "
            "KL between each image's patch-to-patch similarity matrices of teacher and student (the student's last "
            "feature map resized to the teacher's grid). 0 (default): off, nothing extra is computed."
        },
    )
    local_student_temperature: float = field(
        default=0.07, metadata={"help": "τ of the student's patch-similarity softmax (LightlyTrain: 0.07)."}
    )
    local_teacher_temperature: float = field(
        default=0.07, metadata={"help": "τ of the teacher's patch-similarity softmax (LightlyTrain: 0.07)."}
    )


def student_model_args_for(architecture: str, architectures: list[str], value: str | None) -> dict | None:
    """``--student_model_args`` for one student: the JSON dict itself, or its entry for
    ``architecture`` when its keys are exactly the student architectures (per-student args)."""
    if not value:
        return None
    parsed = json.loads(value)
    if not isinstance(parsed, dict):
        raise ValueError(f"--student_model_args must be a JSON dict, got {value!r}.")
    if set(parsed) == set(architectures):
        return parsed[architecture]
    if set(parsed) & set(architectures):
        raise ValueError(
            f"--student_model_args keyed by architecture must name every student {architectures}, "
            f"got {sorted(parsed)}."
        )
    return parsed


def main(argv: list[str] | None = None) -> dict:
    parser = script_parser((ModelArguments, DataTrainingArguments, SeedTrainingArguments, OnnxArguments))
    return distil(*parse_script_args(parser, argv))


def distil(
    model_args: ModelArguments,
    data_args: DataTrainingArguments,
    training_args: SeedTrainingArguments,
    onnx_args: OnnxArguments,
) -> dict:
    logger = setup_logging(training_args)
    check_hub_arguments(training_args)
    # --onnx without the onnx extra, or --onnx_int8 without the student's own labelled data, stops before training
    onnx = onnx_export_options(onnx_args, data_args.source().describe()["dataset"])
    # fresh, resumed or finished; refused when in use (one writer per folder) or of another teacher / recipe
    run = RunFolder.of(training_args).lock(training_args.should_save)
    data = data_args.train_data()  # resolution, channels, normalisation: derived once, passed on
    cache = None
    if model_args.teacher_cache:  # the teacher's stored pass: no teacher loaded (seed_hf.teachers.cache)
        cache = open_teacher_cache(
            model_args.teacher_cache,
            model_args,
            data,
            model_args.local_loss_weight,
            model_args.projection_dim,
        )
        fingerprint = cache.manifest["teacher_sha256"]
    elif not model_args.teacher_name_or_path:
        raise ValueError("Pass --teacher_name_or_path (the teacher) or --teacher_cache (its stored pass).")
    else:
        fingerprint = weights_fingerprint(model_args.teacher_name_or_path, model_args.teacher_checkpoint)
    # fresh, resume or finished; refused: another teacher, files of no run
    run.decide(teacher_sha256=fingerprint)
    set_seed(training_args.seed)

    teacher = None if cache is not None else load_teacher(**model_args.load_kwargs(), sha256=fingerprint)
    embed_dim = cache.embed_dim if cache is not None else teacher.embed_dim
    # the students' initialisation depends neither on the teacher's loading nor a cache
    set_seed(training_args.seed)
    architectures = [a.strip() for a in model_args.student_architecture.split(",") if a.strip()]
    configs = [
        SeedConfig(
            student_architecture=architecture,
            student_model_args=student_model_args_for(
                architecture, architectures, model_args.student_model_args
            ),
            in_chans=data.in_chans,
            image_size=data.image_size,
            projection_dim=embed_dim if model_args.projection_dim is None else model_args.projection_dim,
            head_hidden_dim=model_args.head_hidden_dim,
            queue_size=model_args.queue_size,
            student_temperature=model_args.student_temperature,
            teacher_temperature=model_args.teacher_temperature,
            loss_variant=model_args.loss_variant,
            num_small_crops=model_args.num_small_crops,
            small_crop_size=model_args.small_crop_size,
            small_queue_keys=model_args.small_queue_keys,
            local_loss_weight=model_args.local_loss_weight,
            local_student_temperature=model_args.local_student_temperature,
            local_teacher_temperature=model_args.local_teacher_temperature,
            image_mean=data.mean,
            image_std=data.std,
            teacher_ssl_method=model_args.teacher_ssl_method,
            # a cached run records the cache's teacher (a live teacher: SeedTrainer writes it)
            **(
                dict(
                    teacher=cache.manifest["teacher"],
                    teacher_name_or_path=cache.manifest["teacher_description"],
                )
                if cache is not None
                else {}
            ),
        )
        for architecture in architectures
    ]
    recipe = run_recipe(data, training_args.seed, configs)  # run_info.json's; a resume must match it
    run.check_recipe(configs, recipe, training_args)
    if run.finished:  # its results, now that it is found of the same recipe
        if onnx is not None or training_args.push_to_hub:  # the export runs after training, which is done
            raise ValueError(
                f"The run in {training_args.output_dir} is already complete, so this command exports nothing: export "
                f"it with `seed-hf export` (run_export.py) --student_dir {training_args.output_dir} --output_dir DIR and the "
                "same --onnx* / --push_to_hub flags."
            )
        return run.results
    config = configs[0]
    if len(configs) == 1:
        model = SeedForDistillation(config)
    else:
        model = SeedStudentGroup(
            {c.student_architecture.replace(".", "_"): SeedForDistillation(c) for c in configs}
        )
    train_dataset = build_script_dataset(data, training_args, config, num_views=1)
    cached = None
    if cache is not None:  # refused unless the views are the cache's; epochs beyond it replay it
        train_dataset = cached_training_dataset(train_dataset, cache, data, training_args.seed, config)
        cached = replayed_epochs(cache, training_args)
    teacher_record = cache.manifest["teacher"] if cache is not None else teacher.record.to_dict()
    teacher_description = (
        f"{cache.manifest['teacher_description']} (cached)" if cache is not None else teacher.description
    )
    # --data_device cuda: the workers pass JPEG bytes, decoded and augmented on the GPU by the trainer
    device_transform, data_collator = build_device_input(data, config, training_args, num_views=1)
    logger.info(
        f"SEED {', '.join(architectures)} <- {teacher_description}, lr {training_args.learning_rate:.4g}, "
        f"K {config.queue_size}, tau_S {config.student_temperature}, tau_T {config.teacher_temperature}"
    )

    # the distillation folder (student + head + queue) is not what users load: export the student
    # backbone as a timm-format repo at the end instead of letting the Trainer push checkpoints
    push_to_hub, training_args.push_to_hub = training_args.push_to_hub, False
    trainer = SeedTrainer(
        model=model,
        teacher=teacher,
        args=training_args,
        train_dataset=train_dataset,
        data_collator=data_collator,
        knn_monitor=build_knn_monitor(data_args, config.image_mean, config.image_std, data.image_size),
        device_transform=device_transform,
    )
    run_info = {
        "method": "seed",
        **recipe,
        # the weights' fingerprint once: teacher_sha256, what RunFolder.decide compares on resume
        "teacher": {key: value for key, value in teacher_record.items() if key != "sha256"},
        "teacher_sha256": fingerprint,
    }
    if cached is not None:
        run_info["teacher_cache"] = cached
        run_info["teacher_pass"] = f"cached: {cached['epochs']} epochs, replayed ×{cached['replayed']:g}"
    metrics = train_and_save(trainer, run.checkpoint, run_info=run_info)
    if isinstance(model, SeedStudentGroup) and training_args.should_save:
        for folder in model.save_students(Path(training_args.output_dir) / STUDENTS_DIR):
            logger.info(f"Saved student to {folder}")
    if (push_to_hub or onnx is not None) and training_args.should_save:  # --onnx: export even without a push
        from seed_hf.export.cards import run_summary
        from seed_hf.export.hub import export_student, push_student_to_hub

        students = model.students.items() if isinstance(model, SeedStudentGroup) else [("", model)]
        onnx_records = {}
        for name, student in students:
            repo_id = training_args.hub_model_id and training_args.hub_model_id + (f"-{name}" if name else "")
            folder = export_student(
                student,
                f"{training_args.output_dir}/export/{name}",
                training_summary=run_summary(training_args.output_dir),
                repo_id=repo_id,
                on_exported=lambda record: onnx_records.update(
                    {str(record.folder): record.facts.get("onnx")}
                ),
                onnx=onnx,
            )
            logger.info(
                push_student_to_hub(folder, repo_id, token=training_args.hub_token)
                if push_to_hub
                else f"Exported {folder}"
            )
        refusal = int8_refusals(onnx_records)  # after every export and push: the rest is written
        if refusal:
            raise SystemExit(refusal)
    return metrics


def cli(argv: list[str] | None = None) -> None:
    """The command line (``seed-hf``, ``python -m``, ``examples/run_seed.py``): a refusal prints its message
    alone and exits with status 1."""
    from seed_hf.cli.script import run_script

    run_script(lambda: main(argv), cleanup=shutdown_distributed)


if __name__ == "__main__":
    cli()
