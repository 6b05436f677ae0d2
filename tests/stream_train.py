"""SEED on a streamed local parquet through the library's data path; records the ids each
rank trained on. Run directly or under torchrun (gloo)."""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from helpers import tiny_student, tiny_teacher  # noqa: E402

from seed_hf import SeedTrainer, SeedTrainingArguments, collate_batch  # noqa: E402
from seed_hf.arguments import DataTrainingArguments, build_train_dataset  # noqa: E402


class RecordingTrainer(SeedTrainer):
    seen: list = []

    def compute_loss(self, model, inputs, *args, **kwargs):
        self.seen.extend(inputs["id"].tolist())
        return super().compute_loss(model, inputs, *args, **kwargs)


def main(out_dir: str, files: list[str], max_steps: int, per_device: int, streaming: bool) -> None:
    data_args = DataTrainingArguments(
        train_files=files, streaming=streaming, image_size=32, augmentation="none", shuffle_buffer_size=16
    )
    args = SeedTrainingArguments(
        output_dir=out_dir,
        per_device_train_batch_size=per_device,
        max_steps=max_steps,
        use_cpu=True,
        seed=0,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        logging_steps=1,
        accelerator_config={"dispatch_batches": False} if streaming else None,
    )
    dataset = build_train_dataset(data_args, 1, 3, [0.5] * 3, [0.5] * 3, seed=0)
    trainer = RecordingTrainer(
        model=tiny_student(queue_size=64),
        teacher=tiny_teacher(),
        args=args,
        train_dataset=dataset,
        data_collator=collate_batch,
    )
    trainer.train()
    with open(os.path.join(out_dir, f"ids_rank{args.process_index}.json"), "w") as f:
        json.dump({"ids": trainer.seen, "steps": trainer.state.global_step}, f)


if __name__ == "__main__":
    out, n_files, steps, per_device, streaming = (
        sys.argv[1],
        int(sys.argv[2]),
        int(sys.argv[3]),
        int(sys.argv[4]),
        sys.argv[5] == "stream",
    )
    main(out, sys.argv[6 : 6 + n_files], steps, per_device, streaming)
