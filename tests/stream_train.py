"""SEED on local parquet / webdataset shards through the library's data path (streamed or
map-style); records the ids each rank trained on, optionally SIGKILLs itself after a step and
resumes from the last complete checkpoint when run again. Run directly or under torchrun (gloo).

    stream_train.py OUT STEPS PER_DEVICE {stream,map} [--workers W] [--save_steps N] [--kill_at N]
        [--augmentation none] [--gradient_accumulation_steps N] -- FILES...
"""

import argparse
import json
import logging
import os
import sys
from types import SimpleNamespace

import torch

sys.path.insert(0, os.path.dirname(__file__))
from helpers import KillAtStep, tiny_student, tiny_teacher  # noqa: E402

from seed_hf import SeedTrainer, SeedTrainingArguments, collate_batch  # noqa: E402
from seed_hf.cli.arguments import DataTrainingArguments  # noqa: E402
from seed_hf.cli.runs import resolve_checkpoint  # noqa: E402
from seed_hf.data.train_dataset import build_train_dataset  # noqa: E402
from seed_hf.training.distributed import shutdown_distributed  # noqa: E402


class RecordingTrainer(SeedTrainer):
    seen: list = []

    def compute_loss(self, model, inputs, *args, **kwargs):
        if "id" in inputs:
            self.seen.extend(inputs["id"].tolist())
        return super().compute_loss(model, inputs, *args, **kwargs)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("steps", type=int)
    parser.add_argument("per_device", type=int)
    parser.add_argument("mode", choices=["stream", "map"])
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--save_steps", type=int, default=0)
    parser.add_argument("--kill_at", type=int, default=0)
    parser.add_argument("--augmentation", default="none")
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    parser.add_argument("files", nargs="+")
    opts = parser.parse_args(argv)
    logging.basicConfig()
    logging.getLogger("seed_hf").setLevel(logging.INFO)
    streaming = opts.mode == "stream"
    data_args = DataTrainingArguments(
        train_files=opts.files,
        streaming=streaming,
        image_size=32,
        augmentation=opts.augmentation,
        shuffle_buffer_size=16,
    )
    args = SeedTrainingArguments(
        output_dir=opts.out,
        per_device_train_batch_size=opts.per_device,
        max_steps=opts.steps,
        use_cpu=True,
        seed=0,
        save_strategy="steps" if opts.save_steps else "no",
        save_steps=opts.save_steps or 500,
        report_to="none",
        disable_tqdm=True,
        logging_steps=1,
        dataloader_num_workers=opts.workers,
        gradient_accumulation_steps=opts.gradient_accumulation_steps,
        full_determinism=bool(opts.save_steps),
        accelerator_config={"dispatch_batches": False} if streaming else None,
    )
    dataset = build_train_dataset(
        data_args.train_data(), 1, 3, [0.5] * 3, [0.5] * 3, seed=0, world_size=args.world_size
    )
    trainer = RecordingTrainer(
        model=tiny_student(queue_size=64, image_mean=[0.5] * 3, image_std=[0.5] * 3),  # the data's
        teacher=tiny_teacher(),
        args=args,
        train_dataset=dataset,
        data_collator=collate_batch,
    )
    if opts.kill_at:
        trainer.add_callback(KillAtStep(opts.kill_at))
    checkpoint = None
    if opts.save_steps:  # a resumable run: resume from the last complete checkpoint, if any
        checkpoint = resolve_checkpoint(
            SimpleNamespace(resume_from_checkpoint=True, output_dir=opts.out, overwrite_output_dir=False)
        )
    trainer.train(resume_from_checkpoint=checkpoint)
    rank = args.process_index
    with open(os.path.join(opts.out, f"ids_rank{rank}.json"), "w") as f:
        json.dump({"ids": trainer.seen, "steps": trainer.state.global_step, "resumed_from": checkpoint}, f)
    torch.save(trainer.model.state_dict(), os.path.join(opts.out, f"final_rank{rank}.pt"))


if __name__ == "__main__":
    main()
    shutdown_distributed()
