#!/usr/bin/env python
"""What a teacher cache buys (seed_hf.teachers.cache): end-to-end ``examples/run_seed.py`` images/s
from a cache against the online default path, for the demo's teacher and a larger one, against
the student-only limit (the student's forward + backward + SGD step alone at the same shape), all
measured in one process, one after the other (ratios against baselines of the same run).

For each teacher it runs, on the same data (Fashion-MNIST unless ``--data_args`` says otherwise,
``--max_train_samples`` = steps × batch so one cached epoch covers the run):

1. run_seed.py online (the teacher runs every step) for ``--steps`` steps;
2. run_teacher_cache.py with the same data flags (1 epoch; its views/s and bytes per view);
3. run_seed.py ``--teacher_cache`` for the same steps;

and, with ``--sweep N``, N online runs against one cache + N cached runs (wall time, the
"several students" case). img/s are timed over the steps after the first ``max(2, steps // 5)``
(data loader start, first-step allocations).

    # the demo's shape (shipped teacher -> MobileNetV3-S, 64 px, batch 256) and a random ViT-B/16 at 64 px
    python benchmarks/bench_teacher_cache.py --steps 60 --output_json results/bench_teacher_cache.json
    # smoke: tiny models
    python benchmarks/bench_teacher_cache.py --teacher test_resnet --large_teacher test_efficientnet \
        --student test_resnet --image_size 32 --batch_size 8 --steps 3 --queue_size 64
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))  # run as a script or imported by the tests

from bench_infer import cpu_name  # noqa: E402
from bench_step import timed_run_seed  # noqa: E402


def _teacher_flags(teacher: str, model_args: str | None) -> list[str]:
    flags = ["--teacher_name_or_path", teacher]
    if not os.path.isdir(teacher):
        flags.append("--allow_random_teacher")
    if model_args:
        flags += ["--teacher_model_args", model_args]
    return flags


def _common(args) -> list[str]:
    return [
        "--image_size", str(args.image_size), "--per_device_train_batch_size", str(args.batch_size),
        "--max_train_samples", str(args.steps * args.batch_size), "--report_to", "none", "--disable_tqdm", "true",
        *(["--use_cpu"] if args.device == "cpu" else []), *shlex.split(args.data_args),
    ]  # fmt: skip


def run_seed_timed(args, output_dir: str, extra: list[str]) -> dict:
    """run_seed.py in this process (:func:`bench_step.timed_run_seed`): img/s over the steps after the
    warm-up, and wall time."""
    argv = [
        "--student_architecture", args.student, "--queue_size", str(args.queue_size),
        "--teacher_temperature", str(args.teacher_temperature), "--max_steps", str(args.steps),
        "--save_strategy", "no", "--output_dir", output_dir, "--overwrite_output_dir", *_common(args), *extra,
    ]  # fmt: skip
    return timed_run_seed(argv, args.batch_size)


def write_cache(args, teacher_flags: list[str], output_dir: str) -> dict:
    from seed_hf.scripts import run_teacher_cache

    start = time.perf_counter()
    manifest = run_teacher_cache.main(
        [*teacher_flags, *_common(args), "--epochs", "1", "--output_dir", output_dir]
    )
    wall = time.perf_counter() - start
    return {
        "wall_s": wall,
        "views_per_s": manifest["write"]["views_per_second_last_session"],
        "bytes_per_view": manifest["write"]["bytes_per_view"],
        "views": manifest["write"]["views"],
    }


def student_limit(args, in_chans: int, repeats: int = 5) -> dict:
    """The student's forward + backward + SGD step alone (no teacher, no loss against a queue), at
    the run's batch and size, in the faster of NCHW and channels_last: the bound of any SEED step."""
    from seed_hf import SeedConfig, SeedForDistillation

    device = torch.device(args.device)
    model = SeedForDistillation(
        SeedConfig(
            student_architecture=args.student,
            in_chans=in_chans,
            image_size=args.image_size,
            projection_dim=128,
            queue_size=args.queue_size,
        )  # fmt: skip
    ).to(device)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9)
    x = torch.randn(args.batch_size, in_chans, args.image_size, args.image_size, device=device)
    results = {}
    for name, fmt in (("nchw", torch.contiguous_format), ("channels_last", torch.channels_last)):
        model.to(memory_format=fmt)
        xi = x.contiguous(memory_format=fmt)
        samples = []
        for i in range(repeats + 1):
            start = time.perf_counter()
            model.head(model.get_features(xi)).float().square().mean().backward()
            opt.step()
            opt.zero_grad()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i:  # the first is the warm-up
                samples.append(time.perf_counter() - start)
        results[name] = args.batch_size / statistics.median(samples)
    return {"img_per_s": max(results.values()), "by_layout": results}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--teacher", default=str(REPO / "pretrained" / "fmnist-mocov2-resnet18"))
    parser.add_argument("--teacher_model_args", default=None)
    parser.add_argument(
        "--large_teacher", default="vit_base_patch16_224", help="random-weight timm teacher; '' skips"
    )
    parser.add_argument(
        "--large_teacher_model_args", default=None, help='default for ViTs: {"img_size": image_size}'
    )
    parser.add_argument("--student", default="mobilenetv3_small_100")
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--queue_size", type=int, default=4096)
    parser.add_argument("--teacher_temperature", type=float, default=1e-4)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--sweep", type=int, default=0, help="N: N online runs vs one cache + N cached runs")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--data_args", default="--dataloader_num_workers 1", help="extra data / training flags"
    )
    parser.add_argument("--output_json", default=None)
    args = parser.parse_args(argv)

    teachers = {"demo_teacher": _teacher_flags(args.teacher, args.teacher_model_args)}
    if args.large_teacher:
        model_args = args.large_teacher_model_args
        if model_args is None and "vit" in args.large_teacher:
            model_args = json.dumps({"img_size": args.image_size})
        teachers["large_teacher"] = _teacher_flags(args.large_teacher, model_args)
    result: dict = {
        "device": args.device,
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "shape": {"student": args.student, "image_size": args.image_size, "batch_size": args.batch_size},
        "teachers": {},
    }
    in_chans = 1 if "--train_files" not in args.data_args and "--dataset_name" not in args.data_args else 3
    with tempfile.TemporaryDirectory() as tmp:
        for name, flags in teachers.items():
            cache = os.path.join(tmp, f"{name}-cache")
            online = run_seed_timed(args, os.path.join(tmp, f"{name}-online"), flags)
            written = write_cache(args, flags, cache)
            cached = run_seed_timed(args, os.path.join(tmp, f"{name}-cached"), ["--teacher_cache", cache])
            row = {
                "teacher_flags": flags,
                "online_img_per_s": online["img_per_s"],
                "cached_img_per_s": cached["img_per_s"],
                "ratio_cached_vs_online": cached["img_per_s"] / online["img_per_s"],
                "cache_write": written,
                "online_wall_s": online["wall_s"],
                "cached_wall_s": cached["wall_s"],
            }
            if args.sweep:
                online_walls = [online["wall_s"]] + [
                    run_seed_timed(args, os.path.join(tmp, f"{name}-online-{i}"), flags)["wall_s"]
                    for i in range(1, args.sweep)
                ]
                cached_walls = [cached["wall_s"]] + [
                    run_seed_timed(args, os.path.join(tmp, f"{name}-cached-{i}"), ["--teacher_cache", cache])[
                        "wall_s"
                    ]
                    for i in range(1, args.sweep)
                ]
                row["sweep"] = {
                    "students": args.sweep,
                    "online_wall_s": sum(online_walls),
                    "cache_write_plus_cached_wall_s": written["wall_s"] + sum(cached_walls),
                    "ratio": (written["wall_s"] + sum(cached_walls)) / sum(online_walls),
                }
            result["teachers"][name] = row
        limit = student_limit(args, in_chans)
        result["student_only"] = limit
        for row in result["teachers"].values():
            row["cached_vs_student_only"] = row["cached_img_per_s"] / limit["img_per_s"]
    for name, row in result["teachers"].items():
        print(
            f"{name}: online {row['online_img_per_s']:.1f} img/s, cached {row['cached_img_per_s']:.1f} img/s "
            f"(×{row['ratio_cached_vs_online']:.2f}), {row['cached_vs_student_only']:.0%} of the student-only "
            f"{limit['img_per_s']:.1f} img/s; cache write {row['cache_write']['views_per_s']} views/s, "
            f"{row['cache_write']['bytes_per_view']} B/view"
            + (
                f"; sweep of {args.sweep}: ×{row['sweep']['ratio']:.2f} of the online wall time"
                if args.sweep
                else ""
            )
        )
    if args.output_json:
        Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output_json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
