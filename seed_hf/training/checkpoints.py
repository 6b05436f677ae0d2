"""A run folder's ``checkpoint-N`` folders: which are complete, the newest complete one, and the
interrupted saves a resumed run removes.

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

from transformers.trainer import TRAINER_STATE_NAME  # the Trainer writes it last into checkpoint-N
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

__all__ = [
    "COMPLETE_MARKER",
    "checkpoint_dir",
    "checkpoint_step",
    "is_complete_checkpoint",
    "last_complete_checkpoint",
    "remove_incomplete_checkpoints",
]

logger = logging.getLogger(__name__)


# written into checkpoint-N after every process finished writing it: its absence means a killed save
COMPLETE_MARKER = "checkpoint_complete.json"


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


def checkpoint_step(checkpoint: str | os.PathLike | None) -> int | None:
    """The step a checkpoint was saved at (its ``trainer_state.json``; None: no checkpoint or state)."""
    state_file = os.path.join(checkpoint or "", TRAINER_STATE_NAME)
    if not checkpoint or not os.path.isfile(state_file):
        return None
    with open(state_file) as f:
        return json.load(f)["global_step"]


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
