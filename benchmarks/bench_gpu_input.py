#!/usr/bin/env python
"""End-to-end SEED throughput with the CPU input pipeline and with the GPU input path.

ResNet-18 student ← frozen ResNet-50 teacher (random init: the speed does not depend on the
weights), ``SeedTrainer.training_step`` at 224 px, bf16 autocast, channels_last, batch 256
(the H200 configuration of ``bench_step.py``). Three rates, in images per second:

* (a) ``step``: the training step alone, on a pre-made batch already on the GPU (the ceiling;
  timed before and after the loader modes, the faster of the two counts);
* (b) ``cpu_pipeline``: end to end from webdataset shards of real photos: dataloader workers
  decode and augment (``moco_v2``, seed_hf's default crop-aware opencv pipeline, as
  ``build_train_dataset`` runs it for a stream), pinned batches copied to the GPU, the step;
* (c) ``gpu_input``: end to end from the same shards with ``--data_device cuda``'s path: the
  workers pass the JPEG bytes (``EncodedImageTransform`` + ``collate_encoded_batch``), the
  trainer's ``device_transform`` decodes them with nvJPEG and augments them on the GPU
  (``seed_hf.data.gpu_input``), then the step.

It prints the rates and the ratios (b)/(a) and (c)/(a) (goal: (c)/(a) ≥ 0.9) and writes them as
JSON, with the GPU input path's own rate (decode + augmentation, no training) and how far nvJPEG's
pixels are from libjpeg-turbo's on the same photos.

The shards are the real-photo set of ``make_photo_set.py`` (natural photos with ImageNet's sizes
and JPEG statistics), built on first use; they are read with the standard library's ``tarfile``
(no ``datasets`` needed), each worker cycling over its own shards. The loader modes first run
``--warmup`` steps (default: enough to drain or fill the workers' prefetch queues) so that the
timed steps see the steady state.

    # H200 (one prepared run, ~3 min):
    python benchmarks/bench_gpu_input.py --output_json bench_gpu_input.json
    # CPU smoke run (tests/test_benchmarks.py):
    python benchmarks/bench_gpu_input.py --device cpu --batch_size 8 --steps 3 --student resnet18 \\
        --teacher resnet18 --num_images 32 --num_shards 4 --num_workers 2 --image_size 64
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_step  # noqa: E402
from make_photo_set import ensure_photo_set  # noqa: E402

from seed_hf import collate_batch  # noqa: E402
from seed_hf.data import opencv_kernels  # noqa: E402
from seed_hf.data.batched_transforms import BatchedSSLTransform  # noqa: E402
from seed_hf.data.decode import SKIPPED_KEY  # noqa: E402
from seed_hf.data.gpu_input import (  # noqa: E402
    ENCODED_KEY,
    DeviceInputTransform,
    EncodedImageTransform,
    collate_encoded_batch,
    decode_images,
)
from seed_hf.data.rows import ImageColumnTransform  # noqa: E402
from seed_hf.data.shard_stream import ShardStream  # noqa: E402
from seed_hf.data.transforms import MultiViewTransform, build_ssl_transform  # noqa: E402

GOAL = 0.9


class Cycle(IterableDataset):
    """seed_hf's ``ShardStream`` (the training path for webdataset shards, read with ``tarfile``)
    over and over: each worker starts the next epoch when its share of one ends."""

    def __init__(self, stream: ShardStream):
        self.stream = stream

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            yield from self.stream
            self.stream.begin_epoch()


def shard_stream(files: list[str], row_transform: Callable, batch_size: int, num_workers: int) -> ShardStream:
    stream = ShardStream(files, row_transform, shuffle_buffer_size=256, seed=0)
    stream.configure(batch_size, 1, 0, num_workers).begin_epoch()
    return stream


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed_steps(
    batches: Iterator[dict[str, Any]] | None,
    step: Callable[[dict[str, Any]], None],
    to_device: Callable[[dict[str, Any]], dict[str, Any]],
    warmup: int,
    steps: int,
    device: str,
    fixed_batch: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Images per second over ``steps`` steps after ``warmup``, and the seconds the host waited
    for the dataloader in the timed steps."""
    waited, images = 0.0, 0
    for i in range(warmup + steps):
        if i == warmup:
            synchronize(device)
            start, waited, images = time.perf_counter(), 0.0, 0
        fetch = time.perf_counter()
        batch = dict(fixed_batch) if fixed_batch is not None else next(batches)
        waited += time.perf_counter() - fetch
        batch = to_device(batch)
        encoded = batch.get(ENCODED_KEY)
        images += len(encoded) if encoded is not None else len(batch["pixel_values"])
        step(batch)
    synchronize(device)
    elapsed = time.perf_counter() - start
    return {"img_per_s": images / elapsed, "seconds": elapsed, "images": images, "data_wait_s": waited}


def loader(files: list[str], row_transform: Callable, collate: Callable, args) -> DataLoader:
    return DataLoader(
        Cycle(shard_stream(files, row_transform, args.batch_size, args.num_workers)),
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        collate_fn=collate,
        pin_memory=args.device.startswith("cuda"),
        prefetch_factor=args.prefetch_factor if args.num_workers else None,
        drop_last=True,
    )


def run_loader_mode(data: DataLoader, step, to_device, warmup: int, args) -> dict[str, float]:
    batches = iter(data)
    try:
        return timed_steps(batches, step, to_device, warmup, args.steps, args.device)
    finally:
        del batches  # shuts the workers down before the next mode starts its own


@torch.no_grad()
def nvjpeg_vs_libjpeg(encoded, device: str) -> dict[str, float]:
    """Max and mean |Δ| (uint8 levels) of the device decode against libjpeg-turbo's on one batch."""
    on_device, on_cpu = decode_images(encoded, device), decode_images(encoded, "cpu")
    diffs = [(a.cpu().int() - b.int()).abs() for a, b in zip(on_device, on_cpu)]
    return {
        "max_abs": max(d.max().item() for d in diffs),
        "mean_abs": sum(d.float().mean().item() for d in diffs) / len(diffs),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--student", default="resnet18")
    parser.add_argument("--teacher", default="resnet50")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--queue_size", type=int, default=65536)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument(
        "--precision", choices=["bf16", "fp32"], default=None, help="default: bf16 on cuda, fp32 on cpu"
    )
    parser.add_argument("--no_channels_last", action="store_true")
    parser.add_argument("--steps", type=int, default=100, help="timed steps per mode")
    parser.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="untimed steps first (default: cuda 10, loaders +workers×prefetch; cpu 1)",
    )
    parser.add_argument("--num_workers", type=int, default=16, help="dataloader workers of (b) and (c)")
    parser.add_argument("--prefetch_factor", type=int, default=2)
    parser.add_argument("--num_images", type=int, default=2048, help="photos in the webdataset set")
    parser.add_argument("--num_shards", type=int, default=32, help="shards (≥ workers, so each has its own)")
    parser.add_argument(
        "--photo_dir", default=None, help="the set's folder (default: make_photo_set's cache)"
    )
    parser.add_argument("--output_json", default=None)
    args = parser.parse_args(argv)
    args.bf16 = (args.precision or ("bf16" if args.device.startswith("cuda") else "fp32")) == "bf16"
    args.teacher_dtype = "auto"  # bench_step.build_ours: the run's precision on GPUs
    cuda = args.device.startswith("cuda")
    step_warmup = args.warmup if args.warmup is not None else (10 if cuda else 1)
    loader_warmup = (
        args.warmup
        if args.warmup is not None
        else (step_warmup + args.num_workers * args.prefetch_factor if cuda else 1)
    )

    manifest = ensure_photo_set(args.num_images, cache_dir=args.photo_dir, num_shards=args.num_shards)
    files = manifest["webdataset_files"]
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = True
    with tempfile.TemporaryDirectory() as tmp:
        trainer = bench_step.build_ours(args, bench_step.build_teacher(args.teacher, args.dim), tmp)
        config = trainer.model.config
        mean, std = config.image_mean, config.image_std
        run_step = lambda batch: bench_step.training_step_fn(trainer, batch)()  # noqa: E731

        # (a) the step alone on a batch already on the device
        x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=args.device)
        x = x if args.no_channels_last else x.contiguous(memory_format=torch.channels_last)
        fixed = {"pixel_values": x}
        results = {
            "step": timed_steps(None, run_step, lambda b: b, step_warmup, args.steps, args.device, fixed)
        }

        # (b) CPU pipeline: decode + moco_v2 in the workers, as build_train_dataset streams it
        backend = "opencv" if opencv_kernels.cv2 is not None else "torchvision"
        cpu_rows = ImageColumnTransform(
            MultiViewTransform(build_ssl_transform("moco_v2", args.image_size, mean, std, backend=backend)),
            "jpg",
            3,
            drop_bad_rows=True,
            to_array=backend == "opencv",
        )

        def to_device(batch: dict[str, Any]) -> dict[str, Any]:
            """As accelerate's loader places a batch; the encoded images stay on the host for nvJPEG.
            The photo set has no bad images: the skip counts (which train() sums) are dropped."""
            batch.pop(SKIPPED_KEY, None)
            return {
                k: v if k == ENCODED_KEY else v.to(args.device, non_blocking=True) for k, v in batch.items()
            }

        results["cpu_pipeline"] = run_loader_mode(
            loader(files, cpu_rows, collate_batch, args), run_step, to_device, loader_warmup, args
        )

        # (c) GPU input path: JPEG bytes through the workers, nvJPEG + batched moco_v2 in the step
        gpu_rows = ImageColumnTransform(EncodedImageTransform(3), "jpg", 3, drop_bad_rows=True, to_array=True)
        device_transform = DeviceInputTransform(
            BatchedSSLTransform.from_preset("moco_v2", args.image_size, mean, std), trainer.args.device
        )
        trainer.device_transform = device_transform  # the attribute QueueTrainer's device_transform= sets
        gpu_loader = loader(files, gpu_rows, collate_encoded_batch, args)
        results["gpu_input"] = run_loader_mode(gpu_loader, run_step, to_device, loader_warmup, args)

        # the GPU input path alone (decode + augmentation of one collated batch, no training)
        sample = collate_encoded_batch(
            [
                row
                for _, row in zip(
                    range(args.batch_size), Cycle(shard_stream(files, gpu_rows, args.batch_size, 0))
                )
            ]
        )
        results["gpu_input_alone"] = timed_steps(
            None,
            lambda b: device_transform(b),
            lambda b: b,
            step_warmup,
            max(3, args.steps // 4),
            args.device,
            sample,
        )
        pixels = nvjpeg_vs_libjpeg(sample[ENCODED_KEY], trainer.args.device)
        trainer.device_transform = None
        # (a) again: the ceiling is the faster of the two (clocks, allocator and cuDNN warm by now)
        again = timed_steps(None, run_step, lambda b: b, step_warmup, args.steps, args.device, fixed)
        results["step_before"], results["step"] = (
            results["step"],
            max(results["step"], again, key=lambda r: r["img_per_s"]),
        )
        results["step_after"] = again

    rates = {name: r["img_per_s"] for name, r in results.items()}
    out = {
        "device": torch.cuda.get_device_name() if cuda else f"cpu ({os.cpu_count()} cores)",
        "config": f"{args.student} <- {args.teacher} (frozen, random init), {args.image_size}px, batch {args.batch_size}, "
        f"K {args.queue_size}, {'bf16' if args.bf16 else 'fp32'}, {'NCHW' if args.no_channels_last else 'channels_last'}",
        "workers": args.num_workers,
        "cpu_pipeline_backend": backend,
        "photo_set": {k: manifest[k] for k in ("num_images", "mean_width", "mean_height", "mean_kilobytes")}
        | {"shards": len(files)},
        "img_per_s": rates,
        "ratio_cpu_pipeline_vs_step": rates["cpu_pipeline"] / rates["step"],
        "ratio_gpu_input_vs_step": rates["gpu_input"] / rates["step"],
        "goal_gpu_input_vs_step": GOAL,
        "goal_met": rates["gpu_input"] / rates["step"] >= GOAL,
        "data_wait_s": {name: r["data_wait_s"] for name, r in results.items()},
        "timed_seconds": {name: r["seconds"] for name, r in results.items()},
        "nvjpeg_vs_libjpeg_uint8": pixels,
        "steps": args.steps,
        "warmup": {"step": step_warmup, "loaders": loader_warmup},
        "torch": torch.__version__,
    }
    print(json.dumps(out, indent=2))
    print(
        f"\n(a) step on GPU tensors {rates['step']:.0f} img/s | (b) CPU pipeline, {args.num_workers} workers "
        f"{rates['cpu_pipeline']:.0f} img/s -> (b)/(a) {out['ratio_cpu_pipeline_vs_step']:.2f} | (c) GPU input "
        f"{rates['gpu_input']:.0f} img/s -> (c)/(a) {out['ratio_gpu_input_vs_step']:.2f} (goal >= {GOAL}: "
        f"{'met' if out['goal_met'] else 'not met'}); GPU input alone {rates['gpu_input_alone']:.0f} img/s"
    )
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
