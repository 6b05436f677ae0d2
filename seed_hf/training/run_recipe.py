"""What a training run records about how it trains (``run_info.json``, its checkpoints' configs and
trainer state) and what a resume must match: the model's shapes, the data and views, the global
batch, the optimisation recipe. :class:`seed_hf.training.run_folder.RunFolder` compares them before
a run resumes its folder or reports a finished one; a difference is a refusal naming each field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers.trainer import TRAINER_STATE_NAME  # the Trainer writes it last into checkpoint-N

__all__ = [
    "GLOBAL_BATCH_KEY",
    "OPTIMIZATION_FIELDS",
    "OPTIMIZATION_KEY",
    "RUN_FIELDS",
    "RUN_INFO_FILE",
    "RunFolderRefused",
    "check_same_recipe",
    "check_same_shapes",
    "global_batch",
    "optimization_recipe",
    "run_recipe",
]


# what a run records about itself when it starts (data, method, teacher, batch, optimisation)
RUN_INFO_FILE = "run_info.json"


class RunFolderRefused(ValueError):
    """A run folder that this run may not resume or report: it holds a run of another model, recipe
    or teacher. ``differences`` maps each differing field to ``(recorded, requested)``."""

    def __init__(self, message: str, differences: dict[str, tuple] | None = None):
        super().__init__(message)
        self.differences = differences or {}


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
# config fields a resumed run may differ in: provenance the trainer writes (the teacher is
# compared by its weights' fingerprint, RunFolder.decide) and serialisation metadata
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
# recipe keys compared even when only one side has them (a subset dropped on resume)
OPTIONAL_RECIPE_KEYS = frozenset({"train_subset"})

# run_info.json's key for the global batch (global_batch): recorded when a run starts, compared on resume
GLOBAL_BATCH_KEY = "global_batch"
# global_batch's factors -> the names a refused resume gives them
BATCH_FACTORS = {
    "per_process": "per_device_train_batch_size",
    "processes": "processes",
    "gradient_accumulation_steps": "gradient_accumulation_steps",
}
# run_info.json's key for the optimisation recipe (optimization_recipe)
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


def global_batch(training_args) -> dict[str, int]:
    """The images per optimizer step and their factors: ``per_process`` (the per-device batch
    times the GPUs of a DataParallel process, the Trainer's ``train_batch_size``), ``processes``
    and ``gradient_accumulation_steps``. A run records it in ``run_info.json`` and a resume must
    match it factor by factor: with another number of processes (or accumulation steps) the
    remaining steps would see another batch, their learning rate (set from the global batch) would
    disagree with the optimizer's, and the epoch counter would jump."""
    per_process = int(training_args.train_batch_size)
    processes = max(1, int(training_args.world_size))
    accumulation = int(training_args.gradient_accumulation_steps)
    return {
        "images": per_process * processes * accumulation,
        "per_process": per_process,
        "processes": processes,
        "gradient_accumulation_steps": accumulation,
    }


def optimization_recipe(training_args) -> dict[str, Any]:
    """The :data:`OPTIMIZATION_FIELDS` of ``training_args``: a resume with another learning rate,
    schedule or seed would be silently trained with the checkpoint's (the scheduler's state holds the
    rates) or with other views (the seed draws every view), so a run records them and a resume must
    match them."""
    return as_json({name: getattr(training_args, name, None) for name in OPTIMIZATION_FIELDS})


def run_recipe(data, seed: int, configs: list) -> dict[str, Any]:
    """The recipe a run records in ``run_info.json`` and a resume must match: the data as the
    cards read it (``data``: a ``TrainData``; the ``seed`` that draws its subset), the source's
    identity and, for a group (whose checkpoints hold no ``config.json``), each student's config."""
    recipe = {**data.describe(seed), "source_id": data.source.identity()}
    if len(configs) > 1:
        recipe["student_configs"] = {c.student_architecture: c.to_dict() for c in configs}
    return recipe


def as_json(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` as written to and read back from a JSON file (tuples become lists)."""
    return json.loads(json.dumps(values, default=str))


def _describe_batch(batch: dict[str, Any]) -> str:
    processes, steps = batch.get("processes"), batch.get("gradient_accumulation_steps")
    return (
        f"{batch.get('images')} images ({batch.get('per_process')} per process × {processes} "
        f"process{'es' if processes != 1 else ''} × {steps} accumulation step{'s' if steps != 1 else ''})"
    )


def _config_differences(saved: dict, requested: dict, prefix: str = "") -> dict[str, tuple]:
    keys = (saved.keys() & requested.keys()) - UNCOMPARED_FIELDS - set(RUN_FIELDS)
    return {f"{prefix}{k}": (saved[k], requested[k]) for k in sorted(keys) if saved[k] != requested[k]}


def check_same_shapes(checkpoint: str | Path, configs: list) -> None:
    """Refuses a checkpoint of another model (architecture, widths, queue size: :data:`RUN_FIELDS`)
    with one message naming what the folder holds and what was asked for, instead of a state-dict
    size-mismatch dump. ``configs``: the config of each model (one per student of a group)."""
    checkpoint = Path(checkpoint)
    config_file = checkpoint / "config.json"
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
        weights = checkpoint / "model.safetensors"
        if not weights.is_file():
            return
        from safetensors import safe_open

        with safe_open(str(weights), "pt") as f:
            held_names = sorted({k.split(".")[1] for k in f.keys() if k.startswith("students.")})
        asked_names = sorted(c.get("student_architecture", "").replace(".", "_") for c in requested)
        if held_names == asked_names or not held_names:
            return
        held, asked = f"students {held_names}", f"students {asked_names}"
    raise RunFolderRefused(
        f"--output_dir {checkpoint.parent} holds a run of {held} ({checkpoint.name}), but this "
        f"run asks for {asked}: pass another --output_dir, or --overwrite_output_dir to start a new run there."
    )


def check_same_recipe(
    checkpoint: str | Path,
    run_dir: str | Path,
    configs: list,
    recipe: dict[str, Any] | None,
    train_batch_size: int | None,
    batch: dict[str, int] | None = None,
    optimization: dict[str, Any] | None = None,
) -> None:
    """Refuses to resume ``checkpoint`` (or report the finished run ``run_dir``) with another recipe:
    any other config field of every student (:data:`UNCOMPARED_FIELDS` aside), the ``recipe``
    recorded in ``run_dir``'s ``run_info.json`` (:func:`run_recipe`), the per-device
    ``train_batch_size``, the global ``batch`` (:func:`global_batch`) and the ``optimization``
    recipe (:func:`optimization_recipe`): its remaining steps would be trained differently from the
    first, and its card would describe the new recipe for all."""
    checkpoint, run_dir = Path(checkpoint), Path(run_dir)
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
        saved = as_json(type(configs[0]).from_json_file(str(config_file)).to_dict())
        differences |= _config_differences(saved, as_json(configs[0].to_dict()))
    if recipe is not None and info_file.is_file():
        recorded, recipe = recorded_info, as_json(recipe)
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
        raise RunFolderRefused(
            f"The run in {run_dir} ({checkpoint.name}) was trained with {held}; this run asks for {asked}, "
            "which would train its remaining steps (or report its results) with another recipe than the one "
            f"it was trained with.{batches} Pass the flags it was trained with (and launch as many processes), "
            "another --output_dir, or --overwrite_output_dir to start a new run there.",
            differences,
        )
