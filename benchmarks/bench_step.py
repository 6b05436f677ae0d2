#!/usr/bin/env python
"""SEED training-step throughput: seed_hf's step against an official-style eager step.

Both use the same timm models and the same loss math; they run alternated in one process,
median of --repeats after --warmup. The official-style step follows jacobswan1/SEED:
NCHW, teacher under ``no_grad`` with its BatchNorm layers, einsum logits against a cloned
(dim, K) queue, plain autograd. Ours is ``SeedTrainer.training_step`` as ``run_seed.py`` runs it
by default: ``SeedTrainingArguments``' defaults resolved by the trainer's own
``resolve_step_choice`` (``--channels_last auto --student_dtype auto``: a timed probe of the real
models picks each one's memory format and the student's precision, ``seed_hf.training.step_choice``), teacher
BN folded and under ``inference_mode``, one GEMM for student and teacher logits. The row
``seed_hf_previous_default`` is the step run_seed.py ran before the autotuned choice (NCHW, fp32 student,
same teacher).

``--end_to_end_steps N`` also runs ``examples/run_seed.py`` itself for N steps on Fashion-MNIST
(the data loader, augmentation, logging and checkpoints included) with the same models and batch,
and reports its img/s against the step alone: what is lost outside the model step.

It also reports the overhead: our step ÷ (teacher inference alone + student train step
alone), i.e. how close the step is to the cost of its two unavoidable parts.

The default seed_hf path uses ``--teacher_dtype auto``: a bf16 teacher on CPUs with native
bf16 (AVX512-BF16/AMX), fp32 elsewhere (``seed_hf.training.precision``); the official-style step keeps
the run's precision. The effect of bf16 on the targets is reported as the KL between the
fp32 and bf16 teacher softmax distributions.

    python benchmarks/bench_step.py                      # CPU: ResNet-18 <- ResNet-50, 224 px, batch 32
    python benchmarks/bench_step.py --device cuda --batch_size 256 --bf16
    # the demo's shape: shipped teacher -> MobileNetV3-S, 64 px, batch 256, + 60 steps of run_seed.py
    python benchmarks/bench_step.py --teacher pretrained/fmnist-mocov2-resnet18 --student mobilenetv3_small_100 \
        --image_size 64 --batch_size 256 --queue_size 4096 --teacher_temperature 1e-4 --num_students 0 \
        --end_to_end_steps 60 --end_to_end_args "--dataloader_num_workers 1"
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import TrainerCallback

from seed_hf import (
    SeedConfig,
    SeedForDistillation,
    SeedStudentGroup,
    SeedTrainer,
    SeedTrainingArguments,
    collate_batch,
)
from seed_hf.models.backbones import ProjectionHead, create_backbone, pooled_features, pooled_width
from seed_hf.teachers.frozen import FrozenTeacher
from seed_hf.teachers.loading import load_teacher
from seed_hf.training.precision import resolve_teacher_dtype

REPO = Path(__file__).resolve().parents[1]


def build_teacher(arch: str, dim: int) -> FrozenTeacher:
    """A random timm ``arch`` with a ``dim``-d head, or the teacher a seed_hf folder holds
    (``--teacher pretrained/fmnist-mocov2-resnet18``: its own width and input channels)."""
    if os.path.isdir(arch):
        return load_teacher(arch)
    backbone = create_backbone(arch, 3, None, "teacher")
    width = pooled_width(backbone)
    return FrozenTeacher(backbone, ProjectionHead(width, width, dim), 3, arch)


class OfficialStyleStep:
    """The official SEED step: eager NCHW models, einsum logits, queue buffer (dim, K) cloned."""

    def __init__(self, student_arch, teacher, queue_size, dim, lr, device, tau_s=0.2, tau_t=0.01, in_chans=3):
        self.student = create_backbone(student_arch, in_chans).to(device).train()
        width = pooled_width(self.student)
        self.head = ProjectionHead(width, width, dim).to(device)
        self.teacher = teacher
        self.queue = F.normalize(torch.randn(dim, queue_size, device=device), dim=0)
        self.ptr = 0
        params = [*self.student.parameters(), *self.head.parameters()]
        self.optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4)
        self.tau_s, self.tau_t = tau_s, tau_t

    def __call__(self, x: torch.Tensor, autocast: bool) -> None:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            with torch.no_grad():
                t = F.normalize(self.teacher.head(pooled_features(self.teacher.backbone, x)), dim=1)
            s = F.normalize(self.head(pooled_features(self.student, x)), dim=1)
        s, t = s.float(), t.float()
        queue = self.queue.clone().detach()
        logit_s = torch.cat(
            [torch.einsum("nc,nc->n", s, t)[:, None], torch.einsum("nc,ck->nk", s, queue)], dim=1
        )
        logit_t = torch.cat(
            [torch.einsum("nc,nc->n", t, t)[:, None], torch.einsum("nc,ck->nk", t, queue)], dim=1
        )
        loss = (
            -(F.softmax(logit_t / self.tau_t, dim=1) * F.log_softmax(logit_s / self.tau_s, dim=1))
            .sum(1)
            .mean()
        )
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        n, k = t.shape[0], self.queue.shape[1]
        idx = (torch.arange(n, device=t.device) + self.ptr) % k
        self.queue[:, idx] = t.T
        self.ptr = (self.ptr + n) % k


def build_ours(
    args,
    teacher: FrozenTeacher,
    output_dir: str,
    num_students: int = 1,
    compiled: bool = False,
    channels_last: str | None = None,
    student_dtype: str | None = None,
):
    """A SeedTrainer on ``SeedTrainingArguments``' defaults (unless the flags say otherwise), its step
    choice resolved by the trainer's own ``resolve_step_choice``, as ``train()`` does. ``args`` may also
    be another benchmark's (bench_gpu_input.py: ``no_channels_last``, no ``in_chans``)."""
    if channels_last is None:
        channels_last = getattr(args, "channels_last", None) or ("false" if args.no_channels_last else "auto")
    config = SeedConfig(
        student_architecture=args.student,
        queue_size=args.queue_size,
        projection_dim=args.dim,
        image_size=args.image_size,
        in_chans=getattr(args, "in_chans", None) or 3,
        teacher_temperature=getattr(args, "teacher_temperature", 0.01),
    )
    model = SeedForDistillation(config)
    if num_students > 1:
        model = SeedStudentGroup({f"s{i}": SeedForDistillation(config) for i in range(num_students)})
    training_args = SeedTrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=args.batch_size,
        use_cpu=args.device == "cpu",
        channels_last=channels_last,
        student_dtype=student_dtype or getattr(args, "student_dtype", "auto"),
        bf16=args.bf16,
        torch_compile=compiled,
        teacher_dtype=args.teacher_dtype,
        compile_teacher=compiled,
        report_to="none",
        disable_tqdm=True,
        max_steps=1,
    )
    trainer = SeedTrainer(
        model=model, teacher=teacher, args=training_args, train_dataset=[], data_collator=collate_batch
    )
    trainer.resolve_step_choice()  # first, as train() does: the optimizer sees the final memory format
    # as train() does: accelerate wraps the forward in its autocast (bf16) and places the model
    trainer.model_wrapped = trainer.accelerator.prepare_model(trainer.model)
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1  # set by train(); we call training_step directly
    return trainer


class _StepTimes(TrainerCallback):
    def __init__(self):
        self.ends: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())


def timed_run_seed(argv: list[str], batch_size: int) -> dict:
    """``examples/run_seed.py`` with ``argv`` in this process: img/s over the steps after the first
    ``max(2, steps // 5)`` (data loader start, first-step allocations) and the wall time."""
    from seed_hf.scripts import run_seed

    times = _StepTimes()

    class TimedSeedTrainer(run_seed.SeedTrainer):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.add_callback(times)

    original, run_seed.SeedTrainer = run_seed.SeedTrainer, TimedSeedTrainer
    try:
        start = time.perf_counter()
        run_seed.main(argv)
        wall = time.perf_counter() - start
    finally:
        run_seed.SeedTrainer = original
    skip = max(2, len(times.ends) // 5)
    if len(times.ends) <= skip:
        raise ValueError(
            f"{len(times.ends)} steps: more than {skip} are needed to time steps after the warm-up."
        )
    timed = len(times.ends) - skip
    per_step = (times.ends[-1] - times.ends[skip - 1]) / timed
    return {
        "steps": len(times.ends),
        "timed_steps": timed,
        "img_per_s": batch_size / per_step,
        "wall_s": wall,
        "argv": argv,
    }


def end_to_end(args, output_dir: str) -> dict:
    """``examples/run_seed.py`` for ``--end_to_end_steps`` steps on Fashion-MNIST, in this process
    (its own defaults plus ``--end_to_end_args``), timed by :func:`timed_run_seed`."""
    teacher = ["--teacher_name_or_path", args.teacher]
    if not os.path.isdir(args.teacher):
        teacher += ["--allow_random_teacher"]
    argv = [
        *teacher, "--student_architecture", args.student, "--image_size", str(args.image_size),
        "--queue_size", str(args.queue_size), "--per_device_train_batch_size", str(args.batch_size),
        "--teacher_temperature", str(args.teacher_temperature),
        "--max_steps", str(args.end_to_end_steps), "--output_dir", output_dir, "--overwrite_output_dir",
        "--report_to", "none", "--disable_tqdm", "true", *(["--use_cpu"] if args.device == "cpu" else []),
        *(["--bf16"] if args.bf16 else []), *shlex.split(args.end_to_end_args),
    ]  # fmt: skip
    return timed_run_seed(argv, args.batch_size)


def training_step_fn(trainer: SeedTrainer, batch: dict):
    """One optimisation step of ``trainer`` on ``batch``, as its training loop runs it."""

    def run():
        trainer.training_step(trainer.model_wrapped, batch)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad()

    return run


@torch.inference_mode()
def target_kl(teacher, x: torch.Tensor, queue_size: int, tau_t: float = 0.01) -> dict[str, float]:
    """Effect of a bf16 teacher on SEED's targets: KL(p_fp32 ‖ p_bf16) of the teacher softmax
    ``softmax([t·t, t·Q] / τ_T)``, Q = the other images' fp32 keys of the batch plus random unit
    vectors up to ``queue_size``; mean over the batch, in nats; and the cosine of the keys."""
    device = x.device.type
    keys = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        with torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            keys[name] = F.normalize(teacher(x).float(), dim=1)
    n = x.shape[0]
    generator = torch.Generator(device=device).manual_seed(0)
    noise = torch.randn(max(0, queue_size - n), keys["fp32"].shape[1], device=x.device, generator=generator)
    queue = torch.cat([keys["fp32"], F.normalize(noise, dim=1)])
    log_p = {}
    for name, t in keys.items():
        others = t @ queue.T  # n x (n + K'): the own fp32 key is masked below, t·t comes first
        others[torch.arange(n), torch.arange(n)] = float("-inf")
        log_p[name] = torch.log_softmax(torch.cat([(t * t).sum(1, keepdim=True), others], 1) / tau_t, dim=1)
    p = log_p["fp32"].exp()
    kl = (p * (log_p["fp32"] - log_p["bf16"])).nan_to_num().sum(1)
    return {
        "tau_t": tau_t,
        "kl_mean_nats": kl.mean().item(),
        "kl_max_nats": kl.max().item(),
        "key_cosine_min": F.cosine_similarity(keys["fp32"], keys["bf16"]).min().item(),
    }


def timed(fn, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--student", default="resnet18")
    parser.add_argument("--teacher", default="resnet50")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--queue_size", type=int, default=65536)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument(
        "--teacher_temperature", type=float, default=0.01, help="tau_T of both steps (the demo's: 1e-4)"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU; slow on this CPU)")
    parser.add_argument(
        "--channels_last", default="auto", choices=["auto", "true", "false"],
        help="seed_hf's --channels_last (default auto: the trainer's probe decides, as in run_seed.py)",
    )  # fmt: skip
    parser.add_argument("--no_channels_last", action="store_true", help="same as --channels_last false")
    parser.add_argument(
        "--student_dtype", default="auto", choices=["auto", "float32", "bfloat16"],
        help="seed_hf's --student_dtype (default auto: the trainer's probe decides)",
    )  # fmt: skip
    parser.add_argument(
        "--in_chans", type=int, default=None,
        help="input channels (default: a loaded teacher's, else 3)",
    )  # fmt: skip
    parser.add_argument(
        "--end_to_end_steps", type=int, default=0,
        help="also run examples/run_seed.py for N steps on Fashion-MNIST and report its img/s (0: skip)",
    )  # fmt: skip
    parser.add_argument(
        "--end_to_end_args", default="", help="extra run_seed.py flags, e.g. '--dataloader_num_workers 1'"
    )
    parser.add_argument(
        "--teacher_dtype",
        default="auto",
        choices=["auto", "bfloat16", "float32"],
        help="seed_hf's teacher precision (the official-style step keeps the run's precision)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time seed_hf with --torch_compile (student) and --compile_teacher (and their parts compiled)",
    )
    parser.add_argument(
        "--num_students", type=int, default=2, help="students fed by one teacher forward (0: skip)"
    )
    parser.add_argument("--output_json", default=None)
    args = parser.parse_args(argv)
    if args.no_channels_last:
        args.channels_last = "false"

    torch.manual_seed(0)
    device = args.device
    torch.backends.cudnn.benchmark = True  # both steps: fixed shapes, let cuDNN pick its kernels
    baseline_teacher = build_teacher(args.teacher, args.dim).to(device)
    if args.in_chans is None:
        args.in_chans = baseline_teacher.in_chans if os.path.isdir(args.teacher) else 3
    args.dim = baseline_teacher.embed_dim if os.path.isdir(args.teacher) else args.dim
    # NCHW, as the data loader delivers it: each step converts to its own memory format
    x = torch.randn(args.batch_size, args.in_chans, args.image_size, args.image_size, device=device)
    baseline = OfficialStyleStep(
        args.student, baseline_teacher, args.queue_size, args.dim, 0.03, device, tau_t=args.teacher_temperature,
        in_chans=args.in_chans,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        ours = build_ours(args, build_teacher(args.teacher, args.dim), tmp)
        previous = build_ours(args, build_teacher(args.teacher, args.dim), tmp, channels_last="false",
                              student_dtype="float32")  # fmt: skip
        x_ours = ours._to_memory_format(x)
        batch = {"pixel_values": x}

        def student_alone_fn(model, compiled=False):
            """Forward + backward + SGD of the same student, no teacher, no loss logic."""
            opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9)

            def embed(pixel_values):
                return model.head(model.get_features(pixel_values))

            embed = torch.compile(embed) if compiled else embed

            def run():
                # the step choice's student precision (bf16 autocast where the probe chose it)
                bf16 = args.bf16 or ours.step_choice.student_dtype == "bfloat16"
                with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
                    out = embed(x_ours)
                out.float().square().mean().backward()
                opt.step()
                opt.zero_grad()

            return run

        runs = {
            "official_style": lambda: baseline(x, args.bf16),
            "seed_hf": training_step_fn(ours, batch),
            "seed_hf_previous_default": training_step_fn(previous, batch),
            "teacher_inference": lambda: ours.teacher_embeddings(x),
            "student_train": student_alone_fn(ours.model),
        }
        if args.compile:
            fast = build_ours(args, build_teacher(args.teacher, args.dim), tmp, compiled=True)
            runs["seed_hf_compiled"] = training_step_fn(fast, batch)
            runs["teacher_inference_compiled"] = lambda: fast.teacher_embeddings(x_ours)
            runs["student_train_compiled"] = student_alone_fn(fast.model, compiled=True)
        if args.num_students > 1:
            group = build_ours(args, build_teacher(args.teacher, args.dim), tmp, args.num_students)
            runs[f"group_of_{args.num_students}"] = training_step_fn(group, batch)
        times = {name: [] for name in runs}
        for i in range(args.warmup + args.repeats):
            for name, fn in runs.items():  # alternated, so drifts hit all equally
                elapsed = timed(fn, device)
                if i >= args.warmup:
                    times[name].append(elapsed)
        kl = target_kl(ours.teacher, ours._teacher_input(x), args.queue_size)
        e2e = end_to_end(args, os.path.join(tmp, "run_seed")) if args.end_to_end_steps else None
    median = {name: statistics.median(v) for name, v in times.items()}
    resolved = resolve_teacher_dtype(args.teacher_dtype, device)
    result = {
        "device": torch.cuda.get_device_name()
        if device == "cuda"
        else f"cpu ({torch.get_num_threads()} threads)",
        "config": f"{args.student} <- {args.teacher}, {args.image_size}px, batch {args.batch_size}, K {args.queue_size}"
        + f", tau_T {args.teacher_temperature}"
        + (", bf16" if args.bf16 else ", fp32")
        + ("" if args.teacher_dtype == "auto" else f", seed_hf teacher {args.teacher_dtype}"),
        "img_per_s": {name: args.batch_size / t for name, t in median.items()},
        "ratio_seed_hf_vs_official": median["official_style"] / median["seed_hf"],
        "ratio_seed_hf_vs_previous_default": median["seed_hf_previous_default"] / median["seed_hf"],
        "ratio_previous_default_vs_official": median["official_style"] / median["seed_hf_previous_default"],
        "seed_hf_step_choice": ours.step_choice.to_dict(),
        "seed_hf_teacher_dtype": f"{args.teacher_dtype} -> "
        + ("run's precision" if resolved is None else str(resolved).removeprefix("torch.")),
        "teacher_targets_bf16_vs_fp32": kl,
        "overhead": median["seed_hf"] / (median["teacher_inference"] + median["student_train"]),
        "limit_img_per_s": args.batch_size / (median["teacher_inference"] + median["student_train"]),
        **(
            {
                "ratio_compiled_vs_official": median["official_style"] / median["seed_hf_compiled"],
                "overhead_compiled": median["seed_hf_compiled"]
                / (median["teacher_inference_compiled"] + median["student_train_compiled"]),
            }
            if args.compile
            else {}
        ),
        "median_s": median,
        **(
            {
                "multi_student": {
                    "students": args.num_students,
                    "one_teacher_s": median[f"group_of_{args.num_students}"],
                    "separate_runs_s": args.num_students * median["seed_hf"],
                    "time_saved": 1
                    - median[f"group_of_{args.num_students}"] / (args.num_students * median["seed_hf"]),
                }
            }
            if args.num_students > 1
            else {}
        ),
        **(
            {
                "end_to_end": {
                    **e2e,
                    "ratio_vs_official_step": e2e["img_per_s"] * median["official_style"] / args.batch_size,
                    "ratio_vs_seed_hf_step": e2e["img_per_s"] * median["seed_hf"] / args.batch_size,
                }
            }
            if e2e
            else {}
        ),
        "repeats": args.repeats,
    }
    print(json.dumps(result, indent=2))
    print(
        f"\nseed_hf {result['img_per_s']['seed_hf']:.1f} img/s vs official-style {result['img_per_s']['official_style']:.1f} img/s"
        f" -> ratio {result['ratio_seed_hf_vs_official']:.2f}; overhead {result['overhead']:.3f}"
        f" (limit {result['limit_img_per_s']:.1f} img/s); seed_hf teacher {result['seed_hf_teacher_dtype']}"
    )
    print(f"seed_hf default step choice: {ours.step_choice.describe()}")
    print(
        f"previous default (NCHW, fp32 student) {result['img_per_s']['seed_hf_previous_default']:.1f} img/s"
        f" -> ratio {result['ratio_previous_default_vs_official']:.2f} vs official-style;"
        f" default path / previous default {result['ratio_seed_hf_vs_previous_default']:.2f}"
    )
    if e2e:
        e = result["end_to_end"]
        print(
            f"run_seed.py end to end ({e['timed_steps']} timed steps of {e['steps']}): {e['img_per_s']:.1f} img/s"
            f" -> {e['ratio_vs_official_step']:.2f}x the official-style step,"
            f" {e['ratio_vs_seed_hf_step']:.2f}x seed_hf's step alone"
        )
    print(
        f"bf16 vs fp32 teacher targets (tau_T {kl['tau_t']}): KL mean {kl['kl_mean_nats']:.2e} nats,"
        f" max {kl['kl_max_nats']:.2e}; key cosine min {kl['key_cosine_min']:.5f}"
    )
    if args.compile:
        print(
            f"compiled (--torch_compile --compile_teacher): {result['img_per_s']['seed_hf_compiled']:.1f} img/s"
            f" -> ratio {result['ratio_compiled_vs_official']:.2f}; overhead {result['overhead_compiled']:.3f}"
        )
    if args.num_students > 1:
        m = result["multi_student"]
        print(
            f"{m['students']} students, one teacher forward: {m['one_teacher_s']:.3f} s/step vs "
            f"{m['separate_runs_s']:.3f} s for separate runs -> {100 * m['time_saved']:.1f}% time saved"
        )
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
