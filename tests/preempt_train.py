"""Trains a tiny RGB SEED student (random augmentation of in-memory 32 px images) through the
scripts' ``train_and_save``; optionally sends itself a signal in the middle of an optimizer step.
Run directly (1 process) or under ``torchrun --nproc_per_node 2`` (gloo), where only rank 0 is
signalled. Re-running resumes from the last complete checkpoint.

Usage: preempt_train.py OUT MAX_STEPS [SIGNAL STEP]. Writes <out>/final.pt (rank 0: the weights and
queue, the checkpoint it resumed from) when training ends, and <out>/preempted-rank<r>.json
(the step and exit code) on every rank that stopped on a signal."""

import json
import os
import signal
import sys
from types import SimpleNamespace

import torch
from transformers import TrainerCallback

sys.path.insert(0, os.path.dirname(__file__))
from helpers import tiny_student, tiny_teacher  # noqa: E402
from kill_train import augmented_images  # noqa: E402

from seed_hf import SeedTrainer, SeedTrainingArguments, collate_batch  # noqa: E402
from seed_hf.cli.runs import resolve_checkpoint, train_and_save  # noqa: E402
from seed_hf.training.callbacks import TrainingPreempted  # noqa: E402
from seed_hf.training.distributed import shutdown_distributed  # noqa: E402


class SignalDuringStep(TrainerCallback):
    """Sends ``signum`` to this process after the optimizer update of step ``step`` + 1, i.e.
    before that step ends (as a signal arriving while a step runs)."""

    def __init__(self, signum: int, step: int):
        self.signum, self.step = signum, step

    def on_optimizer_step(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step:  # global_step counts the steps already ended
            os.kill(os.getpid(), self.signum)


def main(out_dir: str, max_steps: int, signal_name: str = "none", at_step: int = -1) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    args = SeedTrainingArguments(
        output_dir=out_dir,
        per_device_train_batch_size=8 // world,
        max_steps=max_steps,
        use_cpu=True,
        seed=0,
        logging_steps=1,
        save_strategy="steps",
        save_steps=2,  # regular checkpoints at even steps; the preempted one is at an odd step
        save_total_limit=2,
        report_to="none",
        disable_tqdm=True,
        full_determinism=True,
    )
    trainer = SeedTrainer(
        model=tiny_student(),
        teacher=tiny_teacher(),
        args=args,
        train_dataset=augmented_images(),
        data_collator=collate_batch,
    )
    if signal_name != "none" and args.process_index == 0:  # under DDP the signal reaches rank 0 only
        trainer.add_callback(SignalDuringStep(getattr(signal, signal_name), at_step))
    checkpoint = resolve_checkpoint(
        SimpleNamespace(resume_from_checkpoint=None, output_dir=out_dir, overwrite_output_dir=False)
    )
    try:
        train_and_save(trainer, checkpoint)
    except TrainingPreempted as stop:
        record = {
            "step": stop.step,
            "code": stop.code,
            "signal": stop.signal_name,
            "checkpoint": stop.checkpoint,
        }
        with open(os.path.join(out_dir, f"preempted-rank{args.process_index}.json"), "w") as f:
            json.dump(record, f)
        raise
    if args.process_index == 0:
        torch.save(
            {"state": trainer.model.state_dict(), "resumed_from": checkpoint},
            os.path.join(out_dir, "final.pt"),
        )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), *sys.argv[3:4], *[int(a) for a in sys.argv[4:5]])
    shutdown_distributed()
