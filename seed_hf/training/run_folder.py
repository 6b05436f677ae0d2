"""A training run's folder: its complete checkpoints, its one writer (:func:`lock_run_folder`) and the
names of the files a run leaves (``run_info.json``, ``students/``). The scripts' decisions on a
folder (resume, finished run, another teacher) are in ``seed_hf.cli.runs``.

A checkpoint counts only once complete: :class:`seed_hf.training.callbacks.CheckpointCompletionCallback`
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

from transformers.trainer import TRAINER_STATE_NAME  # the Trainer writes it last into checkpoint-N
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

__all__ = [
    "COMPLETE_MARKER",
    "RunFolderInUseError",
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
]

logger = logging.getLogger(__name__)


# written into checkpoint-N after every process finished writing it: its absence means a killed save
COMPLETE_MARKER = "checkpoint_complete.json"
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
                f"save finished ({TRAINER_STATE_NAME})"
                + (f"; {skipped} were interrupted." if skipped else ".")
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


class RunFolderInUseError(RuntimeError):
    """Another live process holds the run folder's lock (:func:`lock_run_folder`): a refusal."""


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
            who = (
                f"process {owner['pid']} on {owner['host']} (started {owner['started']}: {owner['command']})"
            )
        except (OSError, ValueError, KeyError):
            who = "another process"
        raise RunFolderInUseError(
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
