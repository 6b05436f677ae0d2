"""`TrainerCallback`s: what seed_hf adds to ``transformers.Trainer``'s loop, through its public
extension points only.

* :class:`DatasetEpochCallback`: tells a per-sample seeded dataset the epoch it serves.
* :class:`StreamPositionCallback`: keeps a :class:`seed_hf.data.shard_stream.ShardStream` where the run is.
* :class:`StepPathCallback`: records the step's memory format and precision (``seed_hf.fast_path``)
  in each checkpoint, for the resumed run to reuse.
* :class:`CheckpointCompletionCallback`: marks a checkpoint complete once every process has
  written it; ``seed_hf.runs.last_complete_checkpoint`` resumes only from marked ones, so a run
  killed while saving resumes from the checkpoint before (the Trainer writes ``checkpoint-N`` in
  place, so a Hub upload with ``hub_strategy="checkpoint"`` never sees a folder being renamed).
"""

from __future__ import annotations

import json
import logging
import os

from accelerate import PartialState
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from .data.shard_stream import ShardStream
from .fast_path import STEP_PATH_FILE
from .runs import COMPLETE_MARKER, checkpoint_dir

__all__ = [
    "DatasetEpochCallback",
    "CheckpointCompletionCallback",
    "StepPathCallback",
    "StreamPositionCallback",
]

logger = logging.getLogger(__name__)


class DatasetEpochCallback(TrainerCallback):
    """Calls ``train_dataset.set_epoch(epoch)`` at the start of every epoch, fresh or resumed.

    accelerate forwards ``set_epoch`` to the dataset only when the sampler has none, and a
    per-sample seeded dataset (:class:`seed_hf.data.rows.ArrayImageDataset`, ``SeededRowDataset``)
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

    def _unmark(self, args: TrainingArguments, state: TrainerState, control: TrainerControl) -> None:
        """Before the Trainer writes ``checkpoint-N`` again (``--overwrite_output_dir`` over an older
        run, a resume from an older checkpoint), its old marker goes: a save killed half-way through
        must not leave a marked mixture of two runs."""
        if not control.should_save:
            return
        if args.should_save:
            checkpoint = checkpoint_dir(args, state)
            marker = os.path.join(checkpoint, COMPLETE_MARKER)
            if os.path.isfile(marker):
                os.remove(marker)
        PartialState().wait_for_everyone()  # before any process writes into it

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        self._unmark(args, state, control)  # after DefaultFlowCallback decided should_save

    def on_epoch_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        self._unmark(args, state, control)

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        PartialState().wait_for_everyone()  # every rank wrote its files (RNG state, shards)
        if args.should_save:
            checkpoint = checkpoint_dir(args, state)
            if os.path.isdir(checkpoint):
                marker = {"global_step": state.global_step, "world_size": args.world_size}
                with open(os.path.join(checkpoint, COMPLETE_MARKER), "w") as f:
                    json.dump(marker, f)
                    f.flush()
                    os.fsync(f.fileno())
        PartialState().wait_for_everyone()


class StreamPositionCallback(TrainerCallback):
    """Keeps a :class:`ShardStream` where the run is: after ``global_step × gradient accumulation``
    batches when training (re)starts, then the next stream epoch at each Trainer epoch (the
    Trainer starts one when the stream's epoch is exhausted). It also gives the Trainer the
    stream's epoch (``state.epoch``: logs, ``trainer_state.json``, cards), and records how the
    stream was read in each checkpoint (``stream_position.json``) so that a resume with another
    reader layout, which cannot restore the position exactly, says so.

    Set ``resume_from`` (the trainers do) to the checkpoint a run resumes from."""

    FILE = "stream_position.json"

    def __init__(self, stream: ShardStream):
        self.stream = stream
        self.resume_from: str | None = None
        self._epoch: tuple[int, int, int] | None = None  # (stream epoch, its first step, its steps)

    def layout(self) -> dict:
        """What the position of a process depends on, besides the batches it took."""
        s = self.stream
        return {
            "readers": s.num_readers,
            "processes": s.num_processes,
            "batch_size": s.batch_size,
            "gradient_accumulation_steps": s.gradient_accumulation_steps,
            "shuffle_buffer_size": s.shuffle_buffer_size,
            "seed": s.seed,
            "num_shards": s.num_shards,
            "max_rows": s.max_rows,
        }

    def on_train_begin(self, args, state, control, **kwargs):
        position = self.stream.resume_after(state.global_step * args.gradient_accumulation_steps)
        if not state.global_step:
            return
        logger.info(
            f"Stream resumed at epoch {position.epoch}, batch {position.batches_in_epoch} of this process "
            "(no skipped batch is read or decoded)."
        )
        saved_file = os.path.join(self.resume_from or "", self.FILE)
        if self.resume_from and os.path.isfile(saved_file):
            with open(saved_file) as f:
                saved = json.load(f)
            changed = {k: (saved.get(k), v) for k, v in self.layout().items() if saved.get(k) != v}
            if changed:
                logger.warning(
                    "The stream is read differently from the run being resumed ("
                    + ", ".join(f"{k}: {a} then, {b} now" for k, (a, b) in changed.items())
                    + "): the position after the checkpoint's batches is not where that run stopped, so this "
                    "epoch repeats some images and misses others. Resume with the same processes, "
                    "--dataloader_num_workers, batch size, accumulation, shuffle buffer and seed for an exact resume."
                )

    def on_epoch_begin(self, args, state, control, **kwargs):
        position = self.stream.begin_epoch()
        steps = self.stream.batches_per_epoch(position.epoch) // args.gradient_accumulation_steps
        # epochs hold whole optimizer steps, so the stream epoch began a whole number of steps ago
        start = state.global_step - position.batches_in_epoch // args.gradient_accumulation_steps
        self._epoch = (position.epoch, start, steps)

    def on_step_end(self, args, state, control, **kwargs):
        if self._epoch is None:
            return
        epoch, start, steps = self._epoch
        # without a length the Trainer counts epochs as steps / max_steps: report the stream's own
        state.epoch = epoch + (state.global_step - start) / steps
        # the Trainer would also run max_steps update steps per epoch and, once the stream is exhausted,
        # spin through the rest of them on an empty iterator: end the epoch instead
        if state.global_step >= start + steps:
            control.should_epoch_stop = True

    def on_save(self, args, state, control, **kwargs):
        checkpoint = checkpoint_dir(args, state)
        if args.should_save and os.path.isdir(checkpoint):
            with open(os.path.join(checkpoint, self.FILE), "w") as f:
                json.dump({"global_step": state.global_step, **self.layout()}, f, indent=2)


class StepPathCallback(TrainerCallback):
    """Writes the trainer's :class:`seed_hf.fast_path.StepPath` (memory formats, student precision,
    the probe's timings) to ``step_path.json`` in every checkpoint, and in ``output_dir`` at the end
    of training: a resumed run continues on the same numerics, and a finished run says how it ran.
    ``get_path`` returns the trainer's current choice (None before it is resolved)."""

    def __init__(self, get_path):
        self.get_path = get_path

    def _write(self, folder: str) -> None:
        path = self.get_path()
        if path is not None and os.path.isdir(folder):
            with open(os.path.join(folder, STEP_PATH_FILE), "w") as f:
                json.dump(path.to_dict(), f, indent=2)

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if args.should_save:
            self._write(checkpoint_dir(args, state))

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if args.should_save:
            self._write(args.output_dir)
