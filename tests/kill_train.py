"""Trains a tiny SEED student with random augmentation (in-memory images, or a map-style
`datasets` source read by 2 dataloader workers); optionally SIGKILLs itself at a step
(or in the middle of writing that step's checkpoint). Re-running resumes from the last
complete checkpoint. Writes the final weights and queue to <out>/final.pt."""

import os
import signal
import sys
from types import SimpleNamespace

import torch

sys.path.insert(0, os.path.dirname(__file__))
from helpers import KillAtStep, tiny_student, tiny_teacher  # noqa: E402

from seed_hf import ArrayImageDataset, SeedTrainer, SeedTrainingArguments, build_ssl_transform, collate_batch  # noqa: E402
from seed_hf.cli.runs import resolve_checkpoint  # noqa: E402
from seed_hf.data.rows import ImageColumnTransform, SeededRowDataset  # noqa: E402


def augmented_images(n: int = 40, source: str = "array"):
    """Real random augmentation (crop, flip, jitter, blur) of uint8 images, seeded per sample: in
    memory, or JPEG rows of a map-style `datasets.Dataset` decoded crop-aware (OpenCV)."""
    images = (torch.rand(n, 32, 32, 3, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    transform = build_ssl_transform("moco_v2", 32)
    if source == "array":
        return ArrayImageDataset(images.numpy(), None, transform, seed=0)
    import io

    import datasets
    from PIL import Image

    def jpeg(array):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="JPEG", quality=90)
        return {"bytes": buffer.getvalue(), "path": None}

    rows = datasets.Dataset.from_dict({"image": [jpeg(a) for a in images.numpy()]})
    rows = rows.cast_column("image", datasets.Image(decode=False))
    return SeededRowDataset(rows, ImageColumnTransform(transform, "image", 3, to_array=True), seed=0)


def main(out_dir: str, max_steps: int, kill_at: int, mode: str, source: str = "array") -> None:
    args = SeedTrainingArguments(
        output_dir=out_dir,
        per_device_train_batch_size=8,
        max_steps=max_steps,
        use_cpu=True,
        seed=0,
        logging_steps=1,
        save_strategy="steps",
        save_steps=2,
        save_total_limit=2,
        report_to="none",
        disable_tqdm=True,
        full_determinism=True,
        dataloader_num_workers=0 if source == "array" else 2,
    )
    trainer = SeedTrainer(
        model=tiny_student(),
        teacher=tiny_teacher(),
        args=args,
        train_dataset=augmented_images(source=source),
        data_collator=collate_batch,
    )
    if mode == "step" and kill_at > 0:
        trainer.add_callback(KillAtStep(kill_at))
    elif mode == "save" and kill_at > 0:
        original = trainer._save_optimizer_and_scheduler

        def killed_while_saving(output_dir):
            if trainer.state.global_step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)  # model written, optimizer not yet
            original(output_dir)

        trainer._save_optimizer_and_scheduler = killed_while_saving
    checkpoint = resolve_checkpoint(
        SimpleNamespace(resume_from_checkpoint=None, output_dir=out_dir, overwrite_output_dir=False)
    )
    trainer.train(resume_from_checkpoint=checkpoint)
    torch.save(
        {"state": trainer.model.state_dict(), "resumed_from": checkpoint}, os.path.join(out_dir, "final.pt")
    )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], *sys.argv[5:])
