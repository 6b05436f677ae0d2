"""The example scripts' decisions on a run folder: which checkpoint to resume from
(``--resume_from_checkpoint`` or the last complete one), whether the run is already finished or
belongs to another model or teacher, and the files a finished run leaves (:func:`train_and_save`).
They take the scripts' ``TrainingArguments`` and name its flags."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from seed_hf.training.run_folder import (
    RUN_INFO_FILE,
    STUDENTS_DIR,
    TRAINER_STATE_NAME,
    is_complete_checkpoint,
    last_complete_checkpoint,
    remove_incomplete_checkpoints,
)
from seed_hf.training.step_choice import STEP_PATH_FILE

__all__ = [
    "RUN_FIELDS",
    "ScheduleOnResumeCallback",
    "check_resumable",
    "check_run_folder",
    "check_same_teacher",
    "clear_previous_run",
    "finished_run_results",
    "global_batch",
    "optimization_recipe",
    "recorded_teacher",
    "resolve_checkpoint",
    "run_recipe",
    "train_and_save",
]

logger = logging.getLogger(__name__)


def finished_run_results(training_args) -> dict | None:
    """The train results of a run in ``output_dir`` that already reached the requested length.

    Resuming it would train 0 steps and overwrite its results with zeros: the scripts return
    these results instead (and say so). None when there is no such run, or with
    ``--overwrite_output_dir``."""
    output_dir = Path(training_args.output_dir)
    state_file, results_file = output_dir / TRAINER_STATE_NAME, output_dir / "train_results.json"
    if training_args.overwrite_output_dir or not (state_file.is_file() and results_file.is_file()):
        return None
    state = json.loads(state_file.read_text())
    step = state.get("global_step", 0)
    if training_args.max_steps > 0:
        target = training_args.max_steps
    elif state.get("num_train_epochs") == training_args.num_train_epochs:
        target = state.get("max_steps")
    else:  # another length in epochs: the Trainer works out what is left
        return None
    if not target or step < target:
        return None
    logger.warning(
        f"The run in {output_dir} is already complete ({step} of {target} steps): nothing to train, its results "
        f"are kept. Pass a larger --max_steps to train on (its steps {step + 1}, {step + 2}, ... then follow the "
        "learning-rate schedule over the new length, as if the run had been planned that long: a cosine rises "
        "again from its end), or --overwrite_output_dir to start over."
    )
    remove_incomplete_checkpoints(str(output_dir))
    return json.loads(results_file.read_text())


class ScheduleOnResumeCallback(TrainerCallback):
    """A resumed run's first step at the learning rate of its own schedule.

    On a resume the Trainer builds the scheduler for this run's length (``--max_steps``, or the
    epochs) and then loads the checkpoint's scheduler and optimizer states: the schedule's step
    counter comes from the checkpoint, its formula from this run, but the optimizer keeps the
    learning rate it held when saved, and that rate drives the first resumed step. With the same
    length both agree; with another length the first step would run at the old schedule's rate
    (0 at the end of a finished cosine) and the following ones on the new schedule. This callback
    sets that first rate from the new schedule too, so that every step ``s`` (counted from 1) of a
    resumed run trains at ``base_lr × λ(s − 1)``, ``λ`` being the schedule over the new length
    (transformers' ``get_scheduler``; cosine without warm-up: ``λ(t) = ½ (1 + cos(π t / T))``,
    ``T`` the new total steps), exactly as if the run had been planned that long from the start,
    and logs the change. Schedulers other than ``LambdaLR`` (whose rate is a function of the step) are
    left as the Trainer leaves them, with a warning."""

    def on_train_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
        if optimizer is None or lr_scheduler is None or state.global_step == 0:
            return
        held = [group["lr"] for group in optimizer.param_groups]
        if not isinstance(lr_scheduler, torch.optim.lr_scheduler.LambdaLR):
            logger.warning(
                f"Resumed at step {state.global_step} with a {type(lr_scheduler).__name__} scheduler: the "
                f"first step runs at the checkpoint's learning rate {held[0]:.4g}, which seed_hf cannot check "
                "against a schedule over this run's length."
            )
            return
        step = lr_scheduler.last_epoch
        scheduled = [
            base * factor(step) for factor, base in zip(lr_scheduler.lr_lambdas, lr_scheduler.base_lrs)
        ]
        if scheduled == held:
            return
        lr_scheduler.last_epoch = step - 1
        lr_scheduler.step()  # last_epoch back to `step`: every group's rate and the logged rate from the schedule
        logger.warning(
            f"Resumed at step {state.global_step} of {state.max_steps}: the checkpoint's optimizer was at learning "
            f"rate {held[0]:.4g}, this run's schedule (over {state.max_steps} steps) gives {scheduled[0]:.4g} for "
            f"step {state.global_step + 1}; the run follows its schedule (another --max_steps or "
            "--num_train_epochs than the checkpoint's changes the rate of every remaining step)."
        )


# config fields that decide the shapes of a checkpoint's tensors
RUN_FIELDS = (
    "model_type",
    "student_architecture",
    "architecture",
    "student_model_args",
    "model_args",
    "in_chans",
    "projection_dim",
    "head_hidden_dim",
    "queue_size",
    "num_small_crops",
)


def recorded_teacher(output_dir: str | os.PathLike) -> str | None:
    """The teacher fingerprint a run in ``output_dir`` recorded in ``run_info.json`` (None: no
    run there, or one from before fingerprints were recorded)."""
    info = Path(output_dir) / RUN_INFO_FILE
    return json.loads(info.read_text()).get("teacher_sha256") if info.is_file() else None


def check_same_teacher(training_args, fingerprint: str | None) -> None:
    """Refuses to resume (or to return the results of) a distillation in ``output_dir`` whose
    recorded teacher differs from the teacher now at the same path: the student would mix two
    teachers, or a finished student of the old teacher would pass for one of the new."""
    if training_args.overwrite_output_dir or fingerprint is None:
        return
    recorded = recorded_teacher(training_args.output_dir)
    if recorded is not None and recorded != fingerprint:
        raise ValueError(
            f"--output_dir {training_args.output_dir} holds a run distilled from another teacher (sha256 {recorded}; "
            f"the teacher given now is {fingerprint}). Pass another --output_dir, or --overwrite_output_dir to "
            "start over there."
        )


# config fields a resumed run may differ in: provenance the trainer writes (the teacher is
# compared by its weights' fingerprint, check_same_teacher) and serialisation metadata
UNCOMPARED_FIELDS = frozenset(
    {
        "architectures",
        "dtype",
        "torch_dtype",
        "transformers_version",
        "use_cache",
        "teacher",
        "teacher_name_or_path",
    }
)


def check_resumable(
    checkpoint: str | None,
    configs: list,
    recipe: dict[str, Any] | None = None,
    train_batch_size: int | None = None,
    run_dir: str | os.PathLike | None = None,
    batch: dict[str, int] | None = None,
    optimization: dict[str, Any] | None = None,
) -> None:
    """Refuses to resume from a checkpoint of another model (architecture, widths, queue size) with
    one message naming what the folder holds and what was asked for, instead of a state-dict
    size-mismatch dump; then refuses to resume it with another recipe (any other config field, of
    every student; the ``recipe`` recorded in ``run_dir``'s ``run_info.json``: the data, its
    source, the students' configs; the per-device ``train_batch_size``; the global ``batch`` of
    :func:`global_batch`, whose processes and accumulation steps the run recorded; the
    ``optimization`` recipe of :func:`optimization_recipe`, learning rate and seed): the rest of its
    steps would be trained differently from the first, and its card would describe the new recipe
    for all. ``configs``: the config of each model (one per student of a group); ``run_dir``: the
    run's folder (default: the checkpoint's parent; a finished run's folder is its own)."""
    if checkpoint is None:
        return
    _check_same_shapes(checkpoint, configs)
    run_dir = Path(checkpoint).parent if run_dir is None else Path(run_dir)
    _check_same_recipe(Path(checkpoint), run_dir, configs, recipe, train_batch_size, batch, optimization)


# run_info.json's key for the global batch (global_batch): recorded by train_and_save, compared on resume
GLOBAL_BATCH_KEY = "global_batch"


def global_batch(training_args) -> dict[str, int]:
    """The images per optimizer step and their factors: ``per_process`` (the per-device batch
    times the GPUs of a DataParallel process, the Trainer's ``train_batch_size``), ``processes``
    and ``gradient_accumulation_steps``. :func:`train_and_save` records it in ``run_info.json``
    and a resume must match it factor by factor: with another number of processes (or
    accumulation steps) the remaining steps would see another batch, their learning rate (set
    from the global batch) would disagree with the optimizer's, and the epoch counter would jump."""
    per_process = int(training_args.train_batch_size)
    processes = max(1, int(training_args.world_size))
    accumulation = int(training_args.gradient_accumulation_steps)
    return {
        "images": per_process * processes * accumulation,
        "per_process": per_process,
        "processes": processes,
        "gradient_accumulation_steps": accumulation,
    }


# run_info.json's key for the optimisation recipe (optimization_recipe): recorded by train_and_save,
# compared on resume
OPTIMIZATION_KEY = "optimization"
# the TrainingArguments that decide how every step trains (max_steps may change on resume: README)
OPTIMIZATION_FIELDS = (
    "seed",
    "learning_rate",
    "weight_decay",
    "optim",
    "optim_args",
    "lr_scheduler_type",
    "warmup_steps",
    "warmup_ratio",
    "max_grad_norm",
    "decay_all_parameters",
)


def optimization_recipe(training_args) -> dict[str, Any]:
    """The :data:`OPTIMIZATION_FIELDS` of ``training_args``: a resume with another learning rate,
    schedule or seed would be silently trained with the checkpoint's (the scheduler's state holds the
    rates) or with other views (the seed draws every view), so :func:`train_and_save` records them
    and a resume must match them."""
    return _as_json({name: getattr(training_args, name, None) for name in OPTIMIZATION_FIELDS})


# global_batch's factors -> the names a refused resume gives them
BATCH_FACTORS = {
    "per_process": "per_device_train_batch_size",
    "processes": "processes",
    "gradient_accumulation_steps": "gradient_accumulation_steps",
}


def _describe_batch(batch: dict[str, Any]) -> str:
    processes, steps = batch.get("processes"), batch.get("gradient_accumulation_steps")
    return (
        f"{batch.get('images')} images ({batch.get('per_process')} per process × {processes} "
        f"process{'es' if processes != 1 else ''} × {steps} accumulation step{'s' if steps != 1 else ''})"
    )


def run_recipe(data, seed: int, configs: list) -> dict[str, Any]:
    """The recipe a run records in ``run_info.json`` and a resume must match: the data as the
    cards read it (``data``: a ``TrainData``; the ``seed`` that draws its subset), the source's
    identity and, for a group (whose checkpoints hold no ``config.json``), each student's config."""
    recipe = {**data.describe(seed), "source_id": data.source.identity()}
    if len(configs) > 1:
        recipe["student_configs"] = {c.student_architecture: c.to_dict() for c in configs}
    return recipe


def check_run_folder(
    training_args, finished: dict | None, checkpoint: str | None, configs: list, recipe: dict[str, Any]
) -> None:
    """:func:`check_resumable` on what a script found in ``output_dir``: the ``finished`` run there
    (:func:`finished_run_results`; its folder is its own checkpoint) or the ``checkpoint`` it resumes."""
    run_dir = training_args.output_dir if finished is not None else None  # a finished run: its own checkpoint
    check_resumable(
        run_dir or checkpoint,
        configs,
        recipe,
        training_args.train_batch_size,
        run_dir,
        global_batch(training_args),
        optimization_recipe(training_args),
    )


# recipe keys compared even when only one side has them (a subset dropped on resume)
OPTIONAL_RECIPE_KEYS = frozenset({"train_subset"})


def _config_differences(saved: dict, requested: dict, prefix: str = "") -> dict[str, tuple]:
    keys = (saved.keys() & requested.keys()) - UNCOMPARED_FIELDS - set(RUN_FIELDS)
    return {f"{prefix}{k}": (saved[k], requested[k]) for k in sorted(keys) if saved[k] != requested[k]}


def _check_same_recipe(
    checkpoint: Path,
    run_dir: Path,
    configs: list,
    recipe: dict[str, Any] | None,
    train_batch_size: int | None,
    batch: dict[str, int] | None = None,
    optimization: dict[str, Any] | None = None,
) -> None:
    differences: dict[str, tuple] = {}
    info_file = run_dir / RUN_INFO_FILE
    recorded_info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    recorded_batch = recorded_info.get(GLOBAL_BATCH_KEY)
    batch_changed = False
    if batch is not None and isinstance(recorded_batch, dict):
        for key, name in BATCH_FACTORS.items():
            if recorded_batch.get(key) != batch[key]:
                differences[name], batch_changed = (recorded_batch.get(key), batch[key]), True
    recorded_optimization = recorded_info.get(OPTIMIZATION_KEY)
    if optimization is not None and isinstance(recorded_optimization, dict):  # runs that recorded it
        for key in OPTIMIZATION_FIELDS:
            # a learning rate scaled from another global batch: the batch's difference says it
            if key == "learning_rate" and batch_changed:
                continue
            if key in recorded_optimization and recorded_optimization[key] != optimization.get(key):
                differences[key] = (recorded_optimization[key], optimization.get(key))
    config_file = checkpoint / "config.json"
    if config_file.is_file() and len(configs) == 1:  # both with their defaults, as JSON values
        saved = _as_json(type(configs[0]).from_json_file(str(config_file)).to_dict())
        differences |= _config_differences(saved, _as_json(configs[0].to_dict()))
    if recipe is not None and info_file.is_file():
        recorded, recipe = recorded_info, _as_json(recipe)
        for key in sorted(
            recipe.keys() & recorded.keys() | (recipe.keys() | recorded.keys()) & OPTIONAL_RECIPE_KEYS
        ):
            if key == "student_configs" and isinstance(recorded[key], dict):  # a group: field by field
                for name in recipe[key].keys() & recorded[key].keys():
                    differences |= _config_differences(recorded[key][name], recipe[key][name], f"{name}.")
            elif recorded.get(key) != recipe.get(key):
                differences[key] = (recorded.get(key), recipe.get(key))
    state_file = checkpoint / TRAINER_STATE_NAME
    if train_batch_size is not None and state_file.is_file():  # also a run that recorded no global batch
        recorded_per_device = json.loads(state_file.read_text()).get("train_batch_size")
        if recorded_per_device is not None and recorded_per_device != train_batch_size:
            differences["per_device_train_batch_size"] = (recorded_per_device, train_batch_size)
    if differences:
        held = ", ".join(f"{k}={v[0]!r}" for k, v in differences.items())
        asked = ", ".join(f"{k}={v[1]!r}" for k, v in differences.items())
        batches = (
            f" Its global batch was {_describe_batch(recorded_batch)}, this run's would be "
            f"{_describe_batch(batch)}: its remaining steps would see another batch at a learning rate set for "
            "another batch, and its epoch counter would jump."
            if batch_changed
            else ""
        )
        raise ValueError(
            f"The run in {run_dir} ({checkpoint.name}) was trained with {held}; this run asks for {asked}, "
            "which would train its remaining steps (or report its results) with another recipe than the one "
            f"it was trained with.{batches} Pass the flags it was trained with (and launch as many processes), "
            "another --output_dir, or --overwrite_output_dir to start a new run there."
        )


def _as_json(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` as written to and read back from a JSON file (tuples become lists)."""
    return json.loads(json.dumps(values, default=str))


def _check_same_shapes(checkpoint: str, configs: list) -> None:
    config_file = Path(checkpoint) / "config.json"
    requested = [c.to_dict() for c in configs]
    if config_file.is_file():
        saved = json.loads(config_file.read_text())
        if len(requested) > 1:
            names = [c.get("student_architecture") for c in requested]
            held, asked = f"one student ({saved.get('student_architecture')})", f"students {names}"
        else:
            differences = [
                key
                for key in RUN_FIELDS
                if key in saved or key in requested[0]
                if saved.get(key) != requested[0].get(key)
            ]
            if not differences:
                return
            held = ", ".join(f"{key}={saved.get(key)!r}" for key in differences)
            asked = ", ".join(f"{key}={requested[0].get(key)!r}" for key in differences)
    else:  # a SeedStudentGroup checkpoint: students.<name>.* keys
        weights = Path(checkpoint) / "model.safetensors"
        if not weights.is_file():
            return
        from safetensors import safe_open

        with safe_open(str(weights), "pt") as f:
            held_names = sorted({k.split(".")[1] for k in f.keys() if k.startswith("students.")})
        asked_names = sorted(c.get("student_architecture", "").replace(".", "_") for c in requested)
        if held_names == asked_names or not held_names:
            return
        held, asked = f"students {held_names}", f"students {asked_names}"
    raise ValueError(
        f"--output_dir {Path(checkpoint).parent} holds a run of {held} ({Path(checkpoint).name}), but this "
        f"run asks for {asked}: pass another --output_dir, or --overwrite_output_dir to start a new run there."
    )


# what a run leaves in its folder besides its checkpoints: what a later run would resume or report
# (state, results, run record) and its outputs (final model, students, export)
PREVIOUS_RUN_FILES = (
    TRAINER_STATE_NAME,
    "train_results.json",
    "all_results.json",
    "eval_results.json",
    RUN_INFO_FILE,
    "config.json",
    "model.safetensors",
    "training_args.bin",
    STEP_PATH_FILE,
    STUDENTS_DIR,
    "export",
)


def clear_previous_run(output_dir: str | os.PathLike) -> list[str]:
    """``--overwrite_output_dir``: removes the previous run's checkpoints, state, results and
    outputs (:data:`PREVIOUS_RUN_FILES`) from ``output_dir`` (other files stay), so that no later
    run resumes from them or reports them as its own. :func:`train_and_save` calls it once every
    check has passed, as training starts. Returns the names removed, which are logged."""
    output_dir = Path(output_dir)
    removed = sorted(
        path.name
        for path in output_dir.iterdir()
        if (path.is_dir() and path.name.startswith("checkpoint-")) or path.name in PREVIOUS_RUN_FILES
    )
    for name in removed:
        path = output_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    if removed:
        logger.warning(
            f"--overwrite_output_dir: removed the previous run's {', '.join(removed)} from {output_dir}."
        )
    return removed


def resolve_checkpoint(training_args) -> str | None:
    """The checkpoint to resume from: ``--resume_from_checkpoint`` or the last complete one in
    ``output_dir``; raises on a non-empty ``output_dir`` without checkpoints."""
    if training_args.resume_from_checkpoint is not None:
        if training_args.resume_from_checkpoint in ("True", "true", True):
            return last_complete_checkpoint(training_args.output_dir)
        return training_args.resume_from_checkpoint
    output_dir = training_args.output_dir
    if os.path.isdir(output_dir) and not training_args.overwrite_output_dir:
        last = last_complete_checkpoint(output_dir)
        ours = {RUN_INFO_FILE}  # written before the first step; interrupted saves are removed at the start
        leftovers = [
            name
            for name in os.listdir(output_dir)
            if name not in ours
            and not (
                name.startswith("checkpoint-") and not is_complete_checkpoint(os.path.join(output_dir, name))
            )
        ]
        if last is None and leftovers:
            raise ValueError(
                f"Output directory ({output_dir}) already exists and is not empty. "
                "Use --overwrite_output_dir to overwrite it."
            )
        if last is not None:
            logger.info(f"Checkpoint detected, resuming training at {last}.")
        return last
    return None


def train_and_save(
    trainer, resume_from_checkpoint: str | None, run_info: dict[str, Any] | None = None
) -> dict:
    """``train`` → ``save_model`` → metrics and state files, as the transformers examples do. A
    resumed run that had nothing left to train keeps the results it saved when it finished.
    ``run_info`` (data, method, teacher) is written to ``output_dir/run_info.json`` for exports
    and model cards."""
    overwrite = trainer.args.overwrite_output_dir and resume_from_checkpoint is None
    if overwrite and trainer.args.should_save and Path(trainer.args.output_dir).is_dir():
        # now, not when the folder was first looked at: every argument, the teacher and the model passed their checks
        clear_previous_run(trainer.args.output_dir)
    if run_info is not None and trainer.args.should_save:
        run_info = {  # what a resume must match
            **run_info,
            GLOBAL_BATCH_KEY: global_batch(trainer.args),
            OPTIMIZATION_KEY: optimization_recipe(trainer.args),
        }
        Path(trainer.args.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(trainer.args.output_dir) / RUN_INFO_FILE).write_text(json.dumps(run_info, indent=2) + "\n")
    start_step = None
    if resume_from_checkpoint and (Path(resume_from_checkpoint) / TRAINER_STATE_NAME).is_file():
        start_step = json.loads((Path(resume_from_checkpoint) / TRAINER_STATE_NAME).read_text())[
            "global_step"
        ]
    if resume_from_checkpoint:
        trainer.add_callback(ScheduleOnResumeCallback())
    result = trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    results_file = Path(trainer.args.output_dir) / "train_results.json"
    if trainer.state.global_step == start_step and results_file.is_file():
        logger.warning(
            f"The run in {trainer.args.output_dir} is already complete (step {start_step}): nothing was trained, "
            "its results are kept."
        )
        return json.loads(results_file.read_text())
    trainer.save_model()
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    return result.metrics
