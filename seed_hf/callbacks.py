"""`TrainerCallback`s and checkpoint discovery: what seed_hf adds to ``transformers.Trainer``
through its public extension points only.

* :class:`DatasetEpochCallback`: tells a per-sample seeded dataset the epoch it serves.
* :class:`CheckpointCompletionCallback`: marks a checkpoint complete once every process has
  written it; :func:`last_complete_checkpoint` resumes only from marked ones, so a run killed
  while saving resumes from the checkpoint before (the Trainer writes ``checkpoint-N`` in place,
  so a Hub upload with ``hub_strategy="checkpoint"`` never sees a folder being renamed).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil

from accelerate import PartialState
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

__all__ = [
    "COMPLETE_MARKER",
    "DatasetEpochCallback",
    "CheckpointCompletionCallback",
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


def is_complete_checkpoint(checkpoint: str) -> bool:
    """Whether every process finished writing ``checkpoint`` (it holds :data:`COMPLETE_MARKER`)."""
    return os.path.isfile(os.path.join(checkpoint, COMPLETE_MARKER))


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The newest complete ``checkpoint-N`` of ``output_dir`` (None when there is none); newer
    incomplete ones, left by a save that was killed, are skipped with a warning."""
    skipped = []
    for _, path in reversed(_checkpoints(output_dir)):
        if is_complete_checkpoint(path):
            if skipped:
                logger.warning(
                    f"Skipping incomplete checkpoint(s) {skipped} (a save was interrupted): resuming from "
                    f"{os.path.basename(path)}."
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


class DatasetEpochCallback(TrainerCallback):
    """Calls ``train_dataset.set_epoch(epoch)`` at the start of every epoch, fresh or resumed.

    accelerate forwards ``set_epoch`` to the dataset only when the sampler has none, and a
    per-sample seeded dataset (:class:`seed_hf.data.ArrayImageDataset`, ``SeededRowDataset``)
    draws each view from ``(seed, epoch, index)``: it must know the true epoch, also after a
    resume. ``on_epoch_begin`` runs before the epoch's dataloader iterator (and its workers) is
    created, so the workers receive the new epoch."""

    def __init__(self, dataset):
        self.dataset = dataset

    def on_epoch_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        # state.epoch = epochs done + fraction of the current one; an epoch's last step sets it exactly
        # to the next integer (k/k == 1.0), so flooring gives the epoch the Trainer starts
        self.dataset.set_epoch(int(state.epoch or 0))


class CheckpointCompletionCallback(TrainerCallback):
    """Writes :data:`COMPLETE_MARKER` into ``checkpoint-N`` after the Trainer saved it on every
    process (a barrier first). Checkpoints without it are never resumed from.

    The Trainer deletes old checkpoints (``save_total_limit``) before ``on_save``, so a limit
    of 1 would leave, for an instant, only an unmarked checkpoint: ``SeedTrainingArguments``
    keeps at least 2."""

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        PartialState().wait_for_everyone()  # every rank wrote its files (RNG state, shards)
        if args.should_save:
            checkpoint = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
            if os.path.isdir(checkpoint):
                marker = {"global_step": state.global_step, "world_size": args.world_size}
                with open(os.path.join(checkpoint, COMPLETE_MARKER), "w") as f:
                    json.dump(marker, f)
                    f.flush()
                    os.fsync(f.fileno())
        PartialState().wait_for_everyone()
