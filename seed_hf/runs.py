"""A training run's folder: which checkpoint to resume from, whether the run is already finished
or belongs to another model, and the files a finished run leaves (``train_and_save``).

A checkpoint counts only once complete: :class:`seed_hf.callbacks.CheckpointCompletionCallback`
writes :data:`COMPLETE_MARKER` into ``checkpoint-N`` after every process finished saving it, so
a run killed while saving resumes from the checkpoint before.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

__all__ = [
    "COMPLETE_MARKER",
    "checkpoint_dir",
    "RUN_INFO_FILE",
    "RUN_LOCK_SUFFIX",
    "run_lock_files",
    "lock_run_folder",
    "STUDENTS_DIR",
    "TRAINER_STATE_NAME",
    "is_complete_checkpoint",
    "last_complete_checkpoint",
    "remove_incomplete_checkpoints",
    "resolve_checkpoint",
    "finished_run_results",
    "check_resumable",
    "check_same_teacher",
    "train_and_save",
]

logger = logging.getLogger(__name__)


# written into checkpoint-N after every process finished writing it: its absence means a killed save
COMPLETE_MARKER = "checkpoint_complete.json"
TRAINER_STATE_NAME = "trainer_state.json"  # the Trainer writes it last into checkpoint-N
# a multi-student run saves each student into output_dir/students/<name>
STUDENTS_DIR = "students"


_CHECKPOINT_RE = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def _checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """``(step, path)`` of the ``checkpoint-N`` folders in ``output_dir``, oldest first."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        match = _CHECKPOINT_RE.match(name)
        if match and os.path.isdir(os.path.join(output_dir, name)):
            found.append((int(match.group(1)), os.path.join(output_dir, name)))
    return sorted(found)


def checkpoint_dir(args, state) -> str:
    """``output_dir/checkpoint-<global_step>``: where the Trainer writes the current step's checkpoint."""
    return os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")


def is_complete_checkpoint(checkpoint: str) -> bool:
    """Whether every process finished writing ``checkpoint`` (it holds :data:`COMPLETE_MARKER`)."""
    return os.path.isfile(os.path.join(checkpoint, COMPLETE_MARKER))


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The newest complete ``checkpoint-N`` of ``output_dir`` (None when there is none); newer
    incomplete ones, left by a save that was killed, are skipped with a warning.

    When no checkpoint carries :data:`COMPLETE_MARKER` (a run of a seed_hf without markers or of
    another program), the newest one the Trainer finished writing counts: it holds
    ``trainer_state.json``, the last file the Trainer writes."""
    checkpoints = _checkpoints(output_dir)
    skipped = []
    for _, path in reversed(checkpoints):
        if is_complete_checkpoint(path):
            if skipped:
                logger.warning(
                    f"Skipping incomplete checkpoint(s) {skipped} (a save was interrupted): resuming from "
                    f"{os.path.basename(path)}."
                )
            return path
        skipped.append(os.path.basename(path))
    skipped = []
    for _, path in reversed(checkpoints):
        if os.path.isfile(os.path.join(path, TRAINER_STATE_NAME)):
            logger.warning(
                f"No checkpoint in {output_dir} has a completion marker ({COMPLETE_MARKER}): they were written by "
                f"another program or an older seed_hf. Resuming from {os.path.basename(path)}, the newest whose "
                f"save finished ({TRAINER_STATE_NAME})" + (f"; {skipped} were interrupted." if skipped else ".")
            )
            return path
        skipped.append(os.path.basename(path))
    if skipped:
        logger.warning(f"No complete checkpoint in {output_dir}: {skipped} were interrupted while saving.")
    return None


def remove_incomplete_checkpoints(output_dir: str, keep: str | None = None) -> list[str]:
    """Deletes the incomplete checkpoints newer than the last complete one (what killed saves
    leave; the resumed run writes those steps again), except ``keep``, and returns their names."""
    last = last_complete_checkpoint(output_dir)
    last_step = -1 if last is None else int(_CHECKPOINT_RE.match(os.path.basename(last)).group(1))
    removed = []
    for step, path in _checkpoints(output_dir):
        if step > last_step and not is_complete_checkpoint(path) and not _same_path(path, keep):
            shutil.rmtree(path)
            removed.append(os.path.basename(path))
    return removed


def _same_path(path: str, other: str | None) -> bool:
    return other is not None and os.path.abspath(path) == os.path.abspath(other)



RUN_INFO_FILE = "run_info.json"
# held (OS-level file lock) by the main process of the run writing into the folder
RUN_LOCK_SUFFIX = ".seed_hf_run.lock"
_held_locks: dict[str, Any] = {}  # resolved folder -> lock this process holds (kept until exit)


def run_lock_files(output_dir: str | os.PathLike) -> tuple[Path, Path]:
    """The lock and its owner record (pid, host, start, command) of a run folder: siblings of the
    folder (``.<name>.seed_hf_run.lock``), so that taking the lock creates no run folder and a run
    that stops before training leaves none."""
    folder = Path(output_dir).resolve()
    lock_file = folder.parent / f".{folder.name}{RUN_LOCK_SUFFIX}"
    return lock_file, lock_file.with_name(lock_file.name + ".owner.json")


def lock_run_folder(output_dir: str | os.PathLike, is_main_process: bool = True) -> Path | None:
    """Takes the run folder's lock for this process, until it exits: a second run started into the
    same ``output_dir`` (which would interleave and delete the first one's checkpoints) is refused
    with a message naming the other process. The lock is an OS file lock (``filelock``, ``flock``),
    so a run that dies, even by SIGKILL, releases it and the next run takes it over. Only the main
    process (``is_main_process``) locks; a process that already holds the lock keeps it (an
    in-process re-run, a resumed study stage). Returns the lock file (None off the main process).

    Raises:
        RuntimeError: another process holds the lock of ``output_dir``.
    """
    if not is_main_process:
        return None
    import socket
    import sys
    import time

    from filelock import FileLock, Timeout

    folder = Path(output_dir).resolve()
    lock_file, owner_file = run_lock_files(folder)
    if str(folder) in _held_locks:
        return lock_file
    folder.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_file, timeout=0, thread_local=False)
    try:
        lock.acquire()
    except Timeout:
        try:
            owner = json.loads(owner_file.read_text())
            who = f"process {owner['pid']} on {owner['host']} (started {owner['started']}: {owner['command']})"
        except (OSError, ValueError, KeyError):
            who = "another process"
        raise RuntimeError(
            f"output_dir {str(folder)!r} is in use: {who} holds its lock {str(lock_file)!r}. Two runs writing one "
            "folder interleave and delete each other's checkpoints: wait for that run to end, stop it, or give this "
            "run another output_dir."
        ) from None
    owner_file.write_text(
        json.dumps(
            {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            }
        )
        + "\n"
    )
    _held_locks[str(folder)] = lock
    return lock_file


def finished_run_results(training_args) -> dict | None:
    """The train results of a run in ``output_dir`` that already reached the requested length.

    Resuming it would train 0 steps and overwrite its results with zeros: the scripts return
    these results instead (and say so). None when there is no such run, or with
    ``--overwrite_output_dir``."""
    output_dir = Path(training_args.output_dir)
    state_file, results_file = output_dir / "trainer_state.json", output_dir / "train_results.json"
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
        "are kept. Pass a larger --max_steps to train on (the learning-rate schedule then follows the new length: "
        "a warm restart), or --overwrite_output_dir to start over."
    )
    remove_incomplete_checkpoints(str(output_dir))
    return json.loads(results_file.read_text())


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


def check_resumable(checkpoint: str | None, configs: list) -> None:
    """Refuses to resume from a checkpoint of another model (architecture, widths, queue size) with
    one message naming what the folder holds and what was asked for, instead of a state-dict
    size-mismatch dump. ``configs``: the config of each model (one per student of a group)."""
    if checkpoint is None:
        return
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
            and not (name.startswith("checkpoint-") and not is_complete_checkpoint(os.path.join(output_dir, name)))
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


def train_and_save(trainer, resume_from_checkpoint: str | None, run_info: dict[str, Any] | None = None) -> dict:
    """``train`` → ``save_model`` → metrics and state files, as the transformers examples do. A
    resumed run that had nothing left to train keeps the results it saved when it finished.
    ``run_info`` (data, method, teacher) is written to ``output_dir/run_info.json`` for exports
    and model cards."""
    if run_info is not None and trainer.args.should_save:
        Path(trainer.args.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(trainer.args.output_dir) / RUN_INFO_FILE).write_text(json.dumps(run_info, indent=2) + "\n")
    start_step = None
    if resume_from_checkpoint and (Path(resume_from_checkpoint) / "trainer_state.json").is_file():
        start_step = json.loads((Path(resume_from_checkpoint) / "trainer_state.json").read_text())[
            "global_step"
        ]
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

