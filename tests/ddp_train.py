"""Trains a tiny BN-free SEED student for a few steps; run directly (1 process) or under
``torchrun --nproc_per_node 2`` (gloo). Writes per-rank queues and the logged losses."""

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from helpers import TensorImages, tiny_student, tiny_teacher  # noqa: E402

from seed_hf import KnnMonitor, SeedTrainer, SeedTrainingArguments, collate_batch  # noqa: E402
from seed_hf.training.distributed import shutdown_distributed  # noqa: E402


def main(out_dir: str, global_batch: int, steps: int, variant: str, knn: bool = False) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    args = SeedTrainingArguments(
        output_dir=out_dir,
        per_device_train_batch_size=global_batch // world,
        max_steps=steps,
        use_cpu=True,
        seed=0,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        base_learning_rate=3.0,  # large steps so that a wrong gradient shows in the losses
        **({"eval_strategy": "steps", "eval_steps": 2} if knn else {}),
    )
    # LayerNorm ViT: no per-rank BatchNorm statistics, so 2 x 8 must equal 1 x 16 exactly
    model = tiny_student(
        student_architecture="test_vit", student_model_args={"img_size": 32}, loss_variant=variant
    )
    trainer = SeedTrainer(
        model=model,
        teacher=tiny_teacher(),
        args=args,
        train_dataset=TensorImages(96),
        data_collator=collate_batch,
        knn_monitor=KnnMonitor(TensorImages(30, seed=1), TensorImages(14, seed=2), k=5, batch_size=4)
        if knn
        else None,
    )
    trainer.train()
    rank = trainer.args.process_index
    torch.save(
        {
            "queue": trainer.model.queue.embeddings,
            "ptr": int(trainer.model.queue.ptr),
            "head": trainer.model.head[2].weight.detach(),
        },
        os.path.join(out_dir, f"rank{rank}.pt"),
    )
    if rank == 0:
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        knn_top1 = [h["eval_knn_top1"] for h in trainer.state.log_history if "eval_knn_top1" in h]
        with open(os.path.join(out_dir, "losses.json"), "w") as f:
            json.dump({"losses": losses, "world_size": world, "knn_top1": knn_top1}, f)


if __name__ == "__main__":
    main(
        sys.argv[1],
        int(sys.argv[2]),
        int(sys.argv[3]),
        sys.argv[4],
        len(sys.argv) > 5 and sys.argv[5] == "knn",
    )
    shutdown_distributed()
