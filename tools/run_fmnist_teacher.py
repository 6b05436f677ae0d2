#!/usr/bin/env python
"""Trains the MoCo-v2 teacher that seed_hf ships for Fashion-MNIST (``make teacher``).

The whole train split sits on the device as one uint8 tensor and both MoCo views are
augmented there in batches (:class:`seed_hf.data.batched_transforms.BatchedSSLTransform`, the
``grayscale_small`` preset with per-sample parameters), so a GPU is never starved by Python
per-image work; on a CPU the same script runs (bf16 autocast where the CPU has native bf16).

Why a loop of its own and not ``MocoTrainer``: the data never leave the device (no DataLoader,
no collation), so the step is ``model(q, pixel_values_k=k)``, backward, optimizer. The model's
``forward`` computes the loss against a snapshot of its queue and enqueues the keys itself; this
loop never touches the queue (``tests/test_trust.py`` counts the keys enqueued per step).

The learning rate warms up linearly and follows a cosine from ``--base_learning_rate`` × ``--batch_size``
/ 256 (the shipped teacher's schedule: transformers' ``get_cosine_schedule_with_warmup`` starts its warm-up
one step lower, at 0, so it would not retrain that teacher).
Resumable: ``--output_dir`` keeps ``checkpoint/`` (accelerate's ``save_state`` of model, optimizer
and scheduler, plus the step; written atomically every ``--save_steps``); re-running the same
command continues from it. Views are
seeded by (seed, step), batches by (seed, epoch), so a resumed run draws the same data.

    python tools/run_fmnist_teacher.py --output_dir outputs/fmnist_teacher \
        --export_dir pretrained/mocov2-resnet18-fmnist
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
from accelerate import Accelerator
from transformers import HfArgumentParser

from seed_hf import MocoConfig, MocoForPretraining
from seed_hf.data.batched_transforms import BATCHED_PRESETS, BatchedSSLTransform
from seed_hf.data.fashion_mnist import FASHION_MNIST_MEAN, FASHION_MNIST_STD, load_fashion_mnist
from seed_hf.evaluation.features import PooledBackbone, eval_data_config, eval_transform, extract_features
from seed_hf.evaluation.knn import knn_accuracy
from seed_hf.evaluation.labelled import LabelledImages, load_labelled_splits
from seed_hf.models.modeling_moco import load_query_encoder, save_query_encoder
from seed_hf.training.arguments import scaled_learning_rate
from seed_hf.training.distributed import shutdown_distributed
from seed_hf.training.precision import cpu_has_native_bf16
from seed_hf.training.run_folder import lock_run_folder


@dataclass
class TeacherArguments:
    output_dir: str = field(
        default="outputs/fmnist_teacher", metadata={"help": "Run folder (checkpoint, logs)."}
    )
    export_dir: str | None = field(
        default=None,
        metadata={"help": "Where the shipped teacher folder is written at the end (None: skip)."},
    )
    fashion_mnist_dir: str | None = field(
        default=None, metadata={"help": "Fashion-MNIST idx folder (default: Debian's)."}
    )
    init_from: str | None = field(
        default=None,
        metadata={
            "help": "Start a new run from this MoCo folder's query encoder and head (e.g. the shipped teacher, to "
            "continue it with another recipe); its architecture and model_args must match. Key encoder = copy, "
            "queue = fresh. Ignored when the run resumes from its own checkpoint."
        },
    )
    architecture: str = field(default="resnet18", metadata={"help": "timm architecture of the encoder."})
    model_args: str | None = field(
        default=None,
        metadata={
            "help": "JSON keyword arguments of timm.create_model, e.g. '{\"output_stride\": 16}' (saved in the config)."
        },
    )
    augmentation: str = field(
        default="grayscale_small",
        metadata={"help": f"Batched augmentation preset, one of {tuple(BATCHED_PRESETS)}."},
    )
    augmentation_overrides: str | None = field(
        default=None,
        metadata={
            "help": "JSON fields of BatchedSSLTransform that replace the preset's, e.g. '{\"scale\": [0.2, 1.0], "
            '"jitter": [0.8, 0.8, 0, 0], "blur_p": 0.5}\'.'
        },
    )
    image_size: int = field(
        default=64, metadata={"help": "Training and evaluation resolution (28 px upsampled)."}
    )
    batch_size: int = field(default=512, metadata={"help": "Images per step."})
    max_steps: int | None = field(
        default=None,
        metadata={
            "help": "Optimizer steps (cosine schedule length; default 20000). A resumed run keeps its saved length "
            "unless this is given: a larger value extends the run (the cosine is stretched from the current step)."
        },
    )
    time_budget_seconds: float | None = field(
        default=None,
        metadata={
            "help": "Fit the run into this many seconds: after 30 timed steps max_steps is set from the measured rate."
        },
    )
    base_learning_rate: float = field(
        default=0.06,
        metadata={
            "help": "SGD learning rate per 256 images of the linear scaling rule: lr = base_learning_rate × "
            "batch_size / 256 (run_seed.py's and run_moco.py's --base_learning_rate)."
        },
    )
    weight_decay: float = field(default=5e-4, metadata={"help": "SGD weight decay."})
    warmup_steps: int = field(
        default=100,
        metadata={
            "help": "Linear warm-up steps of transformers' cosine schedule (as the Trainer's --warmup_steps)."
        },
    )
    contrastive_temperature: float = field(
        default=0.2, metadata={"help": "InfoNCE temperature (MoCo-v2: 0.2)."}
    )
    moco_momentum: float = field(default=0.99, metadata={"help": "Key-encoder momentum."})
    queue_size: int = field(default=16384, metadata={"help": "Number of negative keys K."})
    key_bn_splits: int = field(default=8, metadata={"help": "Shuffle-BN sub-batches of the key encoder."})
    save_steps: int = field(default=500, metadata={"help": "Checkpoint every this many steps."})
    log_steps: int = field(default=100, metadata={"help": "Log every this many steps."})
    seed: int = field(default=0, metadata={"help": "Seed of init, batches and views."})
    mixed_precision: str = field(default="auto", metadata={"help": "auto (bf16 where native), bf16 or no."})
    max_eval_samples: int | None = field(
        default=None,
        metadata={"help": "Evaluate the final kNN on the first N train / N test images (smoke runs)."},
    )


def build_augmentation(args: TeacherArguments) -> BatchedSSLTransform:
    """The preset, with the JSON overrides applied (unknown fields are an error, not ignored)."""
    augment = BatchedSSLTransform.from_preset(
        args.augmentation, args.image_size, FASHION_MNIST_MEAN, FASHION_MNIST_STD
    )
    overrides = json.loads(args.augmentation_overrides) if args.augmentation_overrides else {}
    known = {f.name for f in fields(BatchedSSLTransform)} - {"image_size", "mean", "std"}
    if unknown := set(overrides) - known:
        raise ValueError(f"unknown augmentation_overrides {sorted(unknown)}; known: {sorted(known)}")
    return replace(augment, **{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})


def warm_start(model: MocoForPretraining, path: str) -> None:
    """Query and key encoder (and heads) from the MoCo folder ``path``; a mismatch is an error."""
    encoder, head, source = load_query_encoder(path)
    c = model.config
    if (source.architecture, source.model_args or {}, source.in_chans) != (
        c.architecture,
        c.model_args or {},
        c.in_chans,
    ):
        raise ValueError(
            f"--init_from {path} is {source.architecture} {source.model_args} with {source.in_chans} channel(s); "
            f"this run builds {c.architecture} {c.model_args} with {c.in_chans}."
        )
    for target in (model.encoder, model.encoder_k):
        target.load_state_dict(encoder.state_dict())
    for target in (model.head, model.head_k):
        target.load_state_dict(head.state_dict())
    print(f"initialised from {path}")


def native_bf16(device: torch.device) -> bool:
    return torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_native_bf16()


def batch_indices(step: int, batch_size: int, n: int, seed: int, device) -> torch.Tensor:
    """The images of ``step``: consecutive slices of a per-epoch permutation seeded by (seed, epoch)."""
    per_epoch = n // batch_size
    epoch, offset = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch))
    return perm[offset * batch_size : (offset + 1) * batch_size].to(device)


def save_checkpoint(accelerator: Accelerator, out: Path, step: int, max_steps: int) -> None:
    tmp, final = out / "checkpoint.tmp", out / "checkpoint"
    shutil.rmtree(tmp, ignore_errors=True)
    accelerator.save_state(str(tmp))
    (tmp / "progress.json").write_text(json.dumps({"step": step, "max_steps": max_steps}))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)


@torch.no_grad()
def evaluate(model: MocoForPretraining, args: TeacherArguments, device) -> dict:
    """Weighted kNN (k=200, τ=0.07) of the pooled encoder features, train → test, with the
    evaluation preprocessing of ``run_eval.py`` (``seed_hf.evaluation.features``)."""
    data = load_labelled_splits(fashion_mnist_dir=args.fashion_mnist_dir).subsample(
        args.max_eval_samples, args.max_eval_samples
    )
    c = model.config
    transform = eval_transform(eval_data_config(c.in_chans, c.image_size, c.image_mean, c.image_std))
    encoder = PooledBackbone(model.encoder)
    train, test = (
        extract_features(encoder, LabelledImages(images, labels, transform), 1024, device, desc=split)
        for split, images, labels in (
            ("train", data.train_images, data.train_labels),
            ("test", data.eval_images, data.eval_labels),
        )
    )
    model.train()
    scores = knn_accuracy(*train, *test)
    return {f"knn_{k}": v for k, v in scores.items()}


def warmup_cosine_schedule(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, last_epoch: int = -1
) -> torch.optim.lr_scheduler.LambdaLR:
    """The shipped teacher's schedule: (step + 1) / warmup_steps for the warm-up steps, then a cosine
    from 1 to 0 over the remaining ``total_steps - warmup_steps``."""

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier, last_epoch=last_epoch)


def main(argv: list[str] | None = None) -> dict:
    (args,) = HfArgumentParser(TeacherArguments).parse_args_into_dataclasses(argv)
    out = Path(args.output_dir)
    lock_run_folder(out)  # one writer per run folder
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = args.mixed_precision
    if precision == "auto":
        precision = "bf16" if native_bf16(device) else "no"
    # autocast here rather than Accelerator(mixed_precision=...): accelerate's process-wide state
    # refuses another precision once a Trainer in the same process has set it up
    accelerator = Accelerator(cpu=device.type == "cpu")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    torch.manual_seed(args.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    config = MocoConfig(
        architecture=args.architecture,
        model_args=json.loads(args.model_args) if args.model_args else None,
        in_chans=1,
        image_size=args.image_size,
        queue_size=args.queue_size,
        contrastive_temperature=args.contrastive_temperature,
        momentum=args.moco_momentum,
        key_bn_splits=args.key_bn_splits,
        image_mean=FASHION_MNIST_MEAN,
        image_std=FASHION_MNIST_STD,
    )
    model = MocoForPretraining(config)
    progress_file = out / "checkpoint" / "progress.json"
    if args.init_from and not progress_file.is_file():
        warm_start(model, args.init_from)
    model = model.to(device, memory_format=torch.channels_last)
    lr = scaled_learning_rate(args.base_learning_rate, args.batch_size)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=args.weight_decay)
    max_steps = args.max_steps or 20000
    if progress_file.is_file() and args.max_steps is None:  # a resumed run keeps its schedule
        max_steps = json.loads(progress_file.read_text())["max_steps"]
    # linear warm-up and cosine over max_steps (a resume: over its new length, from its step)
    scheduler = warmup_cosine_schedule(optimizer, args.warmup_steps, max_steps)
    sgd = optimizer
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    start = 0
    if progress_file.is_file():
        accelerator.load_state(str(out / "checkpoint"))
        start = json.loads(progress_file.read_text())["step"]
        print(f"resumed from step {start}/{max_steps}")

    images, _ = load_fashion_mnist("train", args.fashion_mnist_dir)
    data = torch.from_numpy(images).unsqueeze(1).to(device)  # (60000, 1, 28, 28) uint8
    augment = build_augmentation(args)
    log = out / "log.jsonl"
    unwrapped = accelerator.unwrap_model(model)
    t0, timed_from = time.time(), None
    step = start
    while step < max_steps:
        idx = batch_indices(step, args.batch_size, len(data), args.seed, device)
        generator = torch.Generator(device=device).manual_seed(args.seed * 1_000_003 + step)
        x = data[idx]
        q = augment(x, generator).contiguous(memory_format=torch.channels_last)
        k = augment(x, generator).contiguous(memory_format=torch.channels_last)
        with autocast:
            output = model(q, pixel_values_k=k)
        accelerator.backward(output.loss)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)  # the model's forward enqueued the keys itself
        step += 1
        if args.time_budget_seconds and step - start == 10:
            if device.type == "cuda":
                torch.cuda.synchronize()
            timed_from = (time.time(), step)
        if args.time_budget_seconds and timed_from and step - timed_from[1] == 30 and start == 0:
            if device.type == "cuda":
                torch.cuda.synchronize()
            rate = 30 / (time.time() - timed_from[0])
            max_steps = max(step + 1, int(rate * (args.time_budget_seconds - (time.time() - t0))) + step)
            # the schedule over the new length from this step on (the prepared scheduler wraps the new one)
            scheduler.scheduler = warmup_cosine_schedule(
                sgd, args.warmup_steps, max_steps, last_epoch=step - 1
            )
            print(f"{rate:.2f} steps/s ({rate * args.batch_size:.0f} img/s): max_steps set to {max_steps}")
        if step % args.log_steps == 0 or step == max_steps:
            record = {
                "step": step,
                "loss": output.loss.item(),
                "lr": scheduler.get_last_lr()[0],
                "elapsed": time.time() - t0,
                "epoch": step * args.batch_size / len(data),
            }
            print(json.dumps(record), flush=True)
            with log.open("a") as f:
                f.write(json.dumps(record) + "\n")
        if step % args.save_steps == 0 or step == max_steps:
            save_checkpoint(accelerator, out, step, max_steps)

    metrics = evaluate(unwrapped, args, device)
    metrics.update(
        steps=max_steps,
        batch_size=args.batch_size,
        epochs=max_steps * args.batch_size / len(data),
        train_seconds=time.time() - t0,
        device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        mixed_precision=precision,
        recipe=asdict(args),
    )
    print(json.dumps(metrics), flush=True)
    (out / "teacher_results.json").write_text(json.dumps(metrics, indent=2))
    if args.export_dir:
        save_query_encoder(unwrapped, args.export_dir, dtype=torch.float16, training=metrics)
        print(f"teacher written to {args.export_dir}")
    return metrics


if __name__ == "__main__":
    main()
    shutdown_distributed()
