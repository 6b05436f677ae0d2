"""A run folder's one writer: an OS file lock beside the folder, held by the main process of the
run that writes into it (:func:`lock_run_folder`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["RUN_LOCK_SUFFIX", "RunFolderInUseError", "lock_run_folder", "run_lock_files"]

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
