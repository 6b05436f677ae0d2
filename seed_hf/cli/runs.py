"""The example scripts' side of a run folder (the decision itself is
:class:`seed_hf.training.run_folder.RunFolder`'s): ``train`` → ``save_model`` → metrics and state, as
the transformers examples do (:func:`train_and_save`), and a resumed run's first step on its own
schedule (:class:`ScheduleOnResumeCallback`)."""

from __future__ import annotations

import logging
from typing import Any

import torch
from transformers import TrainerCallback

from seed_hf.training.checkpoints import checkpoint_step
from seed_hf.training.run_folder import RunFolder

__all__ = ["ScheduleOnResumeCallback", "resolve_checkpoint", "train_and_save"]

logger = logging.getLogger(__name__)


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


def resolve_checkpoint(training_args) -> str | None:
    """:meth:`RunFolder.find_checkpoint` of ``training_args`` (test helpers): ``--resume_from_checkpoint``
    or the last complete one in ``output_dir``; raises on a non-empty ``output_dir`` without checkpoints."""
    return RunFolder(
        training_args.output_dir,
        overwrite=training_args.overwrite_output_dir,
        resume_from_checkpoint=training_args.resume_from_checkpoint,
    ).find_checkpoint()


def train_and_save(
    trainer, resume_from_checkpoint: str | None, run_info: dict[str, Any] | None = None
) -> dict:
    """``train`` → ``save_model`` → metrics and state files, as the transformers examples do, from
    the checkpoint :class:`RunFolder` chose (None: from the start). :meth:`RunFolder.start` first
    records ``run_info`` (data, method, teacher; written to ``output_dir/run_info.json`` for
    resumes, exports and model cards); a resumed run that had nothing left to train keeps the
    results it saved when it finished."""
    run = RunFolder(trainer.args.output_dir)
    run.start(trainer.args, run_info, resuming=resume_from_checkpoint is not None)
    start_step = checkpoint_step(resume_from_checkpoint)
    if resume_from_checkpoint:
        trainer.add_callback(ScheduleOnResumeCallback())
    result = trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    kept = run.untrained_results(start_step, trainer.state.global_step)
    if kept is not None:
        return kept
    trainer.save_model()
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    return result.metrics
