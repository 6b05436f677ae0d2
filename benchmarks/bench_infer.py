#!/usr/bin/env python
"""Inference speed a student buys: teacher vs student, PyTorch eager (NCHW and channels_last) vs
ONNX Runtime fp32 vs int8, batch-1 latency (median ms) and batch-64 throughput (img/s).

Everything runs in one process on the same CPU with the same thread count, in interleaved rounds
(every configuration once per round, --rounds rounds), so the ratios hold even on a shared
machine; the CPU name, cores, threads and the load average before and after are recorded. Inputs
are real images (Fashion-MNIST test split) through each model's own preprocessing, which is not
timed. The student's ONNX graphs are its folder's ``onnx/`` when present (else exported into a
temporary folder); the teacher's are exported and int8-calibrated (on class-balanced train images)
into a temporary folder the same way (``seed_hf.export.onnx_export``).

    python benchmarks/bench_infer.py --student results/demo/student \
        --teacher pretrained/fmnist-mocov2-resnet18 --output_json results/speed/seed-demo-mobilenetv3-small-fmnist.json \
        --manifest model_cards/models.json --manifest_name seed-demo-mobilenetv3-small-fmnist

``--manifest`` puts the table into that model's card facts (``facts["speed"]``); ``make cards``
then renders it.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import numpy as np
import torch

from seed_hf.data.subsets import balanced_subset
from seed_hf.evaluation.features import eval_data_config, eval_transform
from seed_hf.evaluation.labelled import LabelledImages, load_labelled_splits
from seed_hf.export.onnx_export import export_onnx
from seed_hf.export.onnx_graph import ONNX_FILE, ONNX_INT8_FILE, export_pooled_onnx, ort_session, require_onnx
from seed_hf.export.onnx_int8 import quantize_int8
from seed_hf.export.onnx_verify import folder_transform

RUNTIMES = ("PyTorch eager, NCHW", "PyTorch eager, channels_last", "ONNX Runtime fp32", "ONNX Runtime int8")


def cpu_name() -> str:
    """The CPU model (``/proc/cpuinfo``) and the vector extensions that matter for fp32 / int8 / bf16."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    name = next(
        (line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), ""
    )
    flags = set(
        next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    )
    extensions = [f for f in ("avx512f", "avx512_vnni", "avx512_bf16", "amx_int8") if f in flags]
    return f"{name or platform.machine()} ({', '.join(extensions) or 'no AVX-512'})"


def pixel_batch(images, labels, transform, n: int, seed: int) -> np.ndarray:
    dataset = LabelledImages(images, labels, transform)
    keep = balanced_subset(labels, n, seed)
    return torch.stack([dataset[int(i)]["pixel_values"] for i in keep]).numpy()


def load_student(folder: Path, workdir: Path, data, args) -> dict:
    """The student folder's timm model and its ONNX graphs (the folder's own, else exported here)."""
    import timm

    model = timm.create_model(f"local-dir:{folder}", pretrained=True, num_classes=0).eval()
    transform, _ = folder_transform(folder)
    onnx_dir = folder
    if not ((folder / ONNX_FILE).is_file() and (folder / ONNX_INT8_FILE).is_file()):
        onnx_dir = workdir / "student"  # a copy: the benchmark never writes into the folder it measures
        onnx_dir.mkdir()
        for name in ("config.json", "model.safetensors"):
            (onnx_dir / name).symlink_to((folder / name).resolve())
        export_onnx(onnx_dir)  # the verified fp32 graph; int8 measured for speed whatever its quality
        calibration = pixel_batch(
            data.train_images, data.train_labels, transform, args.num_calibration, args.seed
        )
        quantize_int8(onnx_dir / ONNX_FILE, onnx_dir / ONNX_INT8_FILE, calibration)
    return {
        "role": "student",
        "name": f"student {model.pretrained_cfg.get('architecture', type(model).__name__)} (`{folder}`)",
        "module": model,
        "transform": transform,
        "onnx": onnx_dir / ONNX_FILE,
        "onnx_int8": onnx_dir / ONNX_INT8_FILE,
    }


def load_teacher(folder: Path, workdir: Path, data, args) -> dict:
    """A seed_hf teacher folder's encoder (pooled features: what a student replaces) and its graphs."""
    from seed_hf.models.modeling_moco import load_query_encoder

    encoder, _, config = load_query_encoder(folder)
    encoder = encoder.float().eval()
    transform = eval_transform(
        eval_data_config(config.in_chans, config.image_size, config.image_mean, config.image_std)
    )
    fp32, int8 = workdir / "teacher.onnx", workdir / "teacher_int8.onnx"
    calibration = pixel_batch(
        data.train_images, data.train_labels, transform, args.num_calibration, args.seed
    )
    export_pooled_onnx(encoder, fp32, torch.from_numpy(calibration[:2]))
    quantize_int8(fp32, int8, calibration)
    return {
        "role": "teacher",
        "name": f"teacher {config.architecture} (`{folder}`)",
        "module": encoder,
        "transform": transform,
        "onnx": fp32,
        "onnx_int8": int8,
    }


def runners(model: dict, threads: int) -> dict[str, Callable[[np.ndarray], object]]:
    """One callable per runtime: ``pixel_values (n, c, h, w) float32 -> features``."""
    module = model["module"]
    # channels_last weights, as a deployment that chose that layout would hold them
    last = copy.deepcopy(module).to(memory_format=torch.channels_last)
    fp32, int8 = ort_session(model["onnx"], threads), ort_session(model["onnx_int8"], threads)

    def eager(x: np.ndarray):
        with torch.inference_mode():
            return module(torch.from_numpy(x))

    def eager_channels_last(x: np.ndarray):
        with torch.inference_mode():
            return last(torch.from_numpy(x).contiguous(memory_format=torch.channels_last))

    return {
        RUNTIMES[0]: eager,
        RUNTIMES[1]: eager_channels_last,
        RUNTIMES[2]: lambda x: fp32.run(None, {"pixel_values": x}),
        RUNTIMES[3]: lambda x: int8.run(None, {"pixel_values": x}),
    }


def measure(configs: dict[tuple[str, str], Callable], inputs: dict[str, np.ndarray], args) -> dict:
    """Interleaved rounds: each configuration's batch-1 calls and batch-64 calls once per round."""
    single: dict = {key: [] for key in configs}
    batched: dict = {key: [] for key in configs}
    for key, run in configs.items():  # warm-up: kernels, caches, oneDNN primitives for both shapes
        for _ in range(args.warmup):
            run(inputs[key[0]][:1])
            run(inputs[key[0]])
    for round_ in range(args.rounds):
        order = list(configs.items())
        for key, run in order if round_ % 2 == 0 else reversed(order):
            x, x1 = inputs[key[0]], inputs[key[0]][:1]
            for _ in range(args.batch1_calls):
                start = time.perf_counter()
                run(x1)
                single[key].append(time.perf_counter() - start)
            for _ in range(args.batch_calls):
                start = time.perf_counter()
                run(x)
                batched[key].append(time.perf_counter() - start)
    return {
        key: {
            "batch1_ms": round(1e3 * statistics.median(single[key]), 3),
            "batch1_ms_p90": round(1e3 * float(np.percentile(single[key], 90)), 3),
            "batch64_img_s": round(len(inputs[key[0]]) / statistics.median(batched[key]), 1),
        }
        for key in configs
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--student", required=True, help="Exported student folder (timm format).")
    parser.add_argument("--teacher", required=True, help="seed_hf teacher folder (load_query_encoder).")
    parser.add_argument(
        "--output_json", default=None, help="Where to write the results (default: print only)."
    )
    parser.add_argument("--manifest", default=None, help="Shipped-models manifest to record the table in.")
    parser.add_argument("--manifest_name", default=None, help="Entry of --manifest (the student's card).")
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="Threads of both runtimes (intra-op)."
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument(
        "--batch1_calls", type=int, default=20, help="Batch-1 calls per configuration and round."
    )
    parser.add_argument("--batch_calls", type=int, default=3, help="Batch calls per configuration and round.")
    parser.add_argument(
        "--num_calibration", type=int, default=256, help="int8 calibration images (train split)."
    )
    parser.add_argument("--fashion_mnist_dir", default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.manifest and not args.manifest_name:
        parser.error("--manifest needs --manifest_name (the student's entry).")
    _, ort = require_onnx("bench_infer.py")
    torch.set_num_threads(args.threads)
    load_before = [round(v, 2) for v in os.getloadavg()]
    data = load_labelled_splits(fashion_mnist_dir=args.fashion_mnist_dir)
    with tempfile.TemporaryDirectory() as workdir:
        models = [
            load_teacher(Path(args.teacher), Path(workdir), data, args),
            load_student(Path(args.student), Path(workdir), data, args),
        ]
        inputs, configs = {}, {}
        for model in models:
            inputs[model["role"]] = pixel_batch(
                data.eval_images, data.eval_labels, model["transform"], args.batch_size, args.seed
            )
            for runtime, run in runners(model, args.threads).items():
                configs[(model["role"], runtime)] = run
        timings = measure(configs, inputs, args)
    load_after = [round(v, 2) for v in os.getloadavg()]
    rows = [
        {
            "model": model["name"],
            "role": model["role"],
            "parameters": sum(p.numel() for p in model["module"].parameters()),
            "runtime": runtime,
            **timings[(model["role"], runtime)],
        }
        for model in models
        for runtime in RUNTIMES
    ]
    by = {(r["role"], r["runtime"]): r for r in rows}
    result = {
        "date": date.today().isoformat(),
        "command": "python benchmarks/bench_infer.py " + shlex.join(sys.argv[1:] if argv is None else argv),
        "machine": {
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "threads": args.threads,
            "load_average": {
                "before": load_before,
                "after": load_after,
            },  # 1 / 5 / 15 min: was the CPU shared?
        },
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__.split("+")[0],
            "onnxruntime": ort.__version__,
        },
        "input": " and ".join(
            f"{m['role']} {'×'.join(map(str, inputs[m['role']].shape[1:]))}" for m in models
        ),
        "data": f"{args.batch_size} class-balanced {data.name} {data.eval_split} images (batch 1: the first)",
        "protocol": f"{args.rounds} interleaved rounds × ({args.batch1_calls} batch-1 + {args.batch_calls} batch-{args.batch_size} calls) "
        f"per row after {args.warmup} warm-up calls; medians",
        "rows": rows,
        "student_vs_teacher": {
            runtime: {
                "batch1_latency_ratio": round(
                    by[("teacher", runtime)]["batch1_ms"] / by[("student", runtime)]["batch1_ms"], 2
                ),
                "batch64_throughput_ratio": round(
                    by[("student", runtime)]["batch64_img_s"] / by[("teacher", runtime)]["batch64_img_s"], 2
                ),
            }
            for runtime in RUNTIMES
        },
    }
    for r in rows:
        print(
            f"{r['model']:<60} {r['runtime']:<30} {r['batch1_ms']:8.3f} ms  {r['batch64_img_s']:9.1f} img/s"
        )
    if args.output_json:
        Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output_json).write_text(json.dumps(result, indent=2) + "\n")
    if args.manifest:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))  # the repository's tooling
        from manifest import add_entry_facts

        speed = {k: v for k, v in result.items() if k != "student_vs_teacher"}
        try:
            add_entry_facts(args.manifest, args.manifest_name, speed=speed)
        except ValueError as error:  # the entry is missing: say it with the flag
            raise SystemExit(str(error).replace("`manifest_name`", "--manifest_name")) from None
    return result


if __name__ == "__main__":
    main()
