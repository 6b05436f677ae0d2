"""`TrainerCallback`s: what seed_hf adds to ``transformers.Trainer``'s loop, through its public
extension points only.

* :class:`DatasetEpochCallback`: tells a per-sample seeded dataset the epoch it serves.
* :class:`StreamPositionCallback`: keeps a :class:`seed_hf.data.shard_stream.ShardStream` where the run is.
* :class:`StepChoiceCallback`: records the step's autotuned memory layout and precision
  (:mod:`seed_hf.training.step_choice`) in each checkpoint, for the resumed run to reuse.
* :class:`CheckpointCompletionCallback`: marks a checkpoint complete once every process has
  written it; ``seed_hf.training.checkpoints.last_complete_checkpoint`` resumes only from marked ones, so a run
  killed while saving resumes from the checkpoint before (the Trainer writes ``checkpoint-N`` in
  place, so a Hub upload with ``hub_strategy="checkpoint"`` never sees a folder being renamed).
* :class:`PreemptionCallback`: on SIGTERM or SIGUSR1, every process finishes its optimizer step,
  the run saves a complete checkpoint of it and the process exits with :data:`PREEMPTED_EXIT_CODE`.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading

import torch
import torch.distributed as dist
from accelerate import PartialState
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from seed_hf.data.shard_stream import ShardStream
from seed_hf.training.checkpoints import COMPLETE_MARKER, checkpoint_dir, is_complete_checkpoint
from seed_hf.training.distributed import is_distributed, shutdown_distributed
from seed_hf.training.step_choice import STEP_CHOICE_FILE

__all__ = [
    "DatasetEpochCallback",
    "CheckpointCompletionCallback",
    "PREEMPTED_EXIT_CODE",
    "PREEMPTION_SIGNALS",
    "PreemptionCallback",
    "StepChoiceCallback",
    "StreamPositionCallback",
    "TrainingPreempted",
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


class StepChoiceCallback(TrainerCallback):
    """Writes the trainer's :class:`seed_hf.training.step_choice.StepChoice` (memory layouts, student
    precision, the probe's timings) to :data:`~seed_hf.training.step_choice.STEP_CHOICE_FILE` in every
    checkpoint, and in ``output_dir`` at the end of training: a resumed run continues on the same
    numerics, and a finished run says how it ran. ``get_choice`` returns the trainer's current
    choice (None before it is resolved)."""

    def __init__(self, get_choice):
        self.get_choice = get_choice

    def _write(self, folder: str) -> None:
        choice = self.get_choice()
        if choice is not None and os.path.isdir(folder):
            with open(os.path.join(folder, STEP_CHOICE_FILE), "w") as f:
                json.dump(choice.to_dict(), f, indent=2)

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if args.should_save:
            self._write(checkpoint_dir(args, state))

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if args.should_save:
            self._write(args.output_dir)


# what SLURM (scancel, preemption, the time limit; `--signal=USR1@<seconds>` to be warned earlier) and
# Kubernetes (pod deletion, eviction) send a job before they kill it
PREEMPTION_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGUSR1)
# sysexits.h EX_TEMPFAIL ("temporary failure, the user is invited to retry"): not 0, so that a shell chain
# (`run_seed.py ... && run_eval.py ...`), a Kubernetes Job or a workflow engine does not take the stopped run
# for a finished one; not 143 (what a process killed by SIGTERM before it could save reports), so that a
# wrapper can requeue on this code alone (slurm.conf RequeueExit=75, a Job's podFailurePolicy onExitCodes)
PREEMPTED_EXIT_CODE = 75


class TrainingPreempted(SystemExit):
    """Raised at the end of ``Trainer.train()`` when :class:`PreemptionCallback` stopped the run on
    a signal: a ``SystemExit`` with code :data:`PREEMPTED_EXIT_CODE`, so an uncaught one ends the
    process with that code and no traceback, and code after ``train()`` (a final ``save_model``,
    results, an export) never treats the stopped run as finished; ``except Exception`` does not
    catch it. ``checkpoint`` is the complete checkpoint a re-run resumes from (None if none)."""

    def __init__(self, signal_name: str, step: int, checkpoint: str | None):
        super().__init__(PREEMPTED_EXIT_CODE)
        self.signal_name = signal_name
        self.step = step
        self.checkpoint = checkpoint


class PreemptionCallback(TrainerCallback):
    """Turns SIGTERM / SIGUSR1 (:data:`PREEMPTION_SIGNALS`) during ``train()`` into a checkpoint and
    a clean exit: the signal only sets a flag; at the end of the current optimizer step the flag is
    all-reduced over the processes (under DDP a signal may reach one rank only, and a rank that
    stopped alone would leave the others waiting in a collective), and if any process got one, every
    process sets ``control.should_save`` and ``control.should_training_stop``: the Trainer writes the
    usual ``checkpoint-N`` of that step (model with its queue, optimizer, scheduler, RNG states,
    stream position, step path, completion marker), and ``on_train_end`` raises
    :class:`TrainingPreempted` (exit code :data:`PREEMPTED_EXIT_CODE`) after shutting the process
    group down. A re-run of the same command resumes from that checkpoint and ends exactly where an
    uninterrupted run ends.

    A signal during the last step lets the run finish normally (its final model and results are
    written as usual): a checkpoint after the last step would resume into a run with nothing left
    to train. The handlers are installed at ``on_train_begin`` and the previous ones restored at
    ``on_train_end``, except after a preemption: then, until the process exits, a further signal is
    logged and ignored (``torchrun`` sends SIGTERM to the ranks still exiting once one has exited,
    which would turn their clean exit into a kill). A dataloader worker started during training inherits them, so a signal sent to
    the whole process group does not stop the data of the step being finished. Python installs
    handlers in the main thread only: ``train()`` in another thread warns that signals keep their
    previous effect. The check costs one scalar all-reduce per optimizer step under DDP. Remove the
    callback (``trainer.remove_callback(PreemptionCallback)``) to handle these signals yourself."""

    def __init__(self, signals: tuple[signal.Signals, ...] = PREEMPTION_SIGNALS):
        self.signals = tuple(signals)
        self.received = 0  # number of the first signal this process received during training; 0: none
        self.stop_signal = 0  # the signal the processes agreed to stop on
        self.stopped_at: int | None = None  # the global step the run stopped and saved at
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame) -> None:
        if not self.received:
            self.received = signum
            logger.warning(
                f"{signal.Signals(signum).name} received: finishing the current optimizer step, then saving a "
                "checkpoint and exiting."
            )

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        self.received, self.stop_signal, self.stopped_at = 0, 0, None
        if threading.current_thread() is not threading.main_thread():
            logger.warning(
                "train() runs outside the main thread, where Python cannot install signal handlers: "
                f"{', '.join(s.name for s in self.signals)} will not save a checkpoint before the process stops."
            )
            return
        self._restore()  # a train() that raised before on_train_end left its handlers
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._handle)

    def _agreed_signal(self, args: TrainingArguments) -> int:
        """The largest signal number received by any process (0: none); a collective on every rank."""
        if not is_distributed():
            return self.received
        flag = torch.tensor([self.received], dtype=torch.int64, device=args.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        signum = self._agreed_signal(args)
        if not signum or control.should_training_stop:  # none received, or the run ends here anyway
            return
        control.should_save = True
        control.should_training_stop = True
        self.stop_signal, self.stopped_at = signum, state.global_step
        if state.is_world_process_zero:
            logger.warning(
                f"{signal.Signals(signum).name}: stopping after step {state.global_step} of {state.max_steps} "
                f"and saving {checkpoint_dir(args, state)}."
            )

    def on_epoch_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        # its checkpoint is written: no second one (save_strategy="epoch")
        if self.stopped_at == state.global_step:
            control.should_save = False

    def _exiting(self, signum: int, frame) -> None:
        logger.info(
            f"{signal.Signals(signum).name} received while exiting after a preemption checkpoint: ignored."
        )

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if self.stopped_at is not None and self._previous:  # the process exits now (see the class docstring)
            for signum in self.signals:
                signal.signal(signum, self._exiting)
            self._previous = {}
        self._restore()
        if self.stopped_at is None:
            if self.received:
                logger.warning(
                    f"{signal.Signals(self.received).name} received during the last step: the run is complete and "
                    "finishes normally."
                )
            return
        name = signal.Signals(self.stop_signal).name
        checkpoint = checkpoint_dir(args, state)
        if not is_complete_checkpoint(checkpoint):
            checkpoint = None
        if state.is_world_process_zero:
            if checkpoint is None:
                logger.error(
                    f"{name}: training stopped after step {self.stopped_at}, but no complete checkpoint of that step "
                    f"was written (save_strategy={args.save_strategy}): a re-run resumes from the last complete one."
                )
            logger.warning(
                f"Preempted by {name}: training stopped after step {self.stopped_at} of {state.max_steps}"
                + (f" and saved {checkpoint}" if checkpoint else "")
                + f". Run the same command again to resume; exiting with code {PREEMPTED_EXIT_CODE}."
            )
        shutdown_distributed()  # else a gloo thread may abort the exiting interpreter (see shutdown_distributed)
        raise TrainingPreempted(name, self.stopped_at, checkpoint)
