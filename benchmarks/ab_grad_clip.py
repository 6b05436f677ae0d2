#!/usr/bin/env python
"""Gradient clipping A/B on the demo's recipe: the official code's no clipping (seed_hf's default,
``--max_grad_norm 0``) against transformers' default (``--max_grad_norm 1.0``), paired.

Both arms run the same ``run_seed.py`` command as ``make demo`` (shipped teacher → MobileNetV3-Small,
64 px, batch 256, τ_T 1e-4, the same seed, hence the same views and initialisation) and differ only
in ``--max_grad_norm``; each student is exported and scored by ``run_eval.py`` (kNN k=200 on the
Fashion-MNIST test split, as the demo's card). Arms alternate per seed. The table gives each arm's
kNN top-1, the paired difference and the logged gradient norms.

    python benchmarks/ab_grad_clip.py --max_steps 400 --seeds 0 --output_json benchmarks/results/ab_grad_clip.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARMS = {"no_clip": "0", "clip_1.0": "1.0"}


def demo_command(output_dir: Path, max_steps: int, seed: int, max_grad_norm: str) -> list[str]:
    """``make demo``'s training command (Makefile), at ``max_steps``, with one ``max_grad_norm``."""
    return [
        sys.executable,
        str(ROOT / "examples" / "run_seed.py"),
        "--teacher_name_or_path",
        str(ROOT / "pretrained" / "fmnist-mocov2-resnet18"),
        "--student_architecture",
        "mobilenetv3_small_100",
        "--image_size",
        "64",
        "--queue_size",
        "4096",
        "--base_learning_rate",
        "0.06",
        "--teacher_temperature",
        "1e-4",
        "--per_device_train_batch_size",
        "256",
        "--max_steps",
        str(max_steps),
        "--warmup_steps",
        "20",
        "--save_steps",
        str(max_steps),
        "--logging_steps",
        "25",
        "--use_cpu",
        "--disable_tqdm",
        "true",
        "--dataloader_num_workers",
        "1",
        "--seed",
        str(seed),
        "--max_grad_norm",
        max_grad_norm,
        "--output_dir",
        str(output_dir),
    ]


def run_arm(work: Path, arm: str, max_steps: int, seed: int, eval_flags: list[str]) -> dict:
    run = work / f"{arm}_seed{seed}"
    start = time.perf_counter()
    subprocess.run(demo_command(run, max_steps, seed, ARMS[arm]), check=True)
    wall = time.perf_counter() - start
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "run_export.py"),
            "--student_dir",
            str(run),
            "--output_dir",
            str(run / "export"),
        ],
        check=True,
    )
    results = run / "eval_results.json"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "run_eval.py"),
            "--models",
            str(run / "export"),
            "--output_file",
            str(results),
        ],
        check=True,
    )
    row = json.loads(results.read_text())[0]
    state = json.loads((run / "trainer_state.json").read_text())
    norms = [h["grad_norm"] for h in state["log_history"] if "grad_norm" in h]
    return {
        "arm": arm,
        "seed": seed,
        "knn_top1": row["knn_top1"],
        "knn_k": row.get("knn_k"),
        "wall_s": round(wall, 1),
        "grad_norm_median": statistics.median(norms) if norms else None,
        "grad_norm_max": max(norms) if norms else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--max_steps", type=int, default=400)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--work_dir", default="outputs/ab_grad_clip")
    parser.add_argument("--output_json", default=None)
    parser.add_argument(
        "--eval_flags",
        default="",
        help="Extra run_eval.py flags, e.g. '--max_train_samples 10000 --max_eval_samples 2000' (default: all).",
    )
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(args.work_dir)
    rows = []
    for i, seed in enumerate(args.seeds):
        arms = list(ARMS) if i % 2 == 0 else list(reversed(ARMS))  # alternate which arm runs first
        rows += [run_arm(work, arm, args.max_steps, seed, args.eval_flags.split()) for arm in arms]
    by_seed = {seed: {r["arm"]: r for r in rows if r["seed"] == seed} for seed in args.seeds}
    differences = [s["no_clip"]["knn_top1"] - s["clip_1.0"]["knn_top1"] for s in by_seed.values()]
    print(
        f"\nDemo recipe, {args.max_steps} steps, seeds {args.seeds}, run_eval {args.eval_flags or 'defaults'}:"
    )
    print("| seed | arm | kNN top-1 | grad norm median / max | wall s |")
    print("|---|---|---|---|---|")
    for r in rows:
        norms = (
            f"{r['grad_norm_median']:.3g} / {r['grad_norm_max']:.3g}"
            if r["grad_norm_median"]
            else "not logged"
        )
        print(f"| {r['seed']} | {r['arm']} | {r['knn_top1']:.2f} | {norms} | {r['wall_s']} |")
    print(f"paired kNN difference (no_clip - clip_1.0): {', '.join(f'{d:+.2f}' for d in differences)}")
    if args.output_json:
        Path(args.output_json).write_text(
            json.dumps(
                {"max_steps": args.max_steps, "rows": rows, "paired_differences": differences}, indent=2
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
