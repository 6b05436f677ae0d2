#!/usr/bin/env python
"""SEED training-step throughput: seed_hf's step against an official-style eager step.

Both use the same timm models and the same loss math; they run alternated in one process,
median of --repeats after --warmup. The official-style step follows jacobswan1/SEED:
NCHW, teacher under ``no_grad`` with its BatchNorm layers, einsum logits against a cloned
(dim, K) queue, plain autograd. Ours is ``SeedTrainer.training_step`` (channels_last, teacher
BN folded and under ``inference_mode``, one GEMM for student and teacher logits).

It also reports the overhead: our step ÷ (teacher inference alone + student train step
alone), i.e. how close the step is to the cost of its two unavoidable parts.

The default seed_hf path uses ``--teacher_dtype auto``: a bf16 teacher on CPUs with native
bf16 (AVX512-BF16/AMX), fp32 elsewhere (``seed_hf.precision``); the official-style step keeps
the run's precision. The effect of bf16 on the targets is reported as the KL between the
fp32 and bf16 teacher softmax distributions.

    python benchmarks/bench_step.py                      # CPU: ResNet-18 <- ResNet-50, 224 px, batch 32
    python benchmarks/bench_step.py --device cuda --batch_size 256 --bf16
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

from seed_hf import (
    SeedConfig,
    SeedForDistillation,
    SeedStudentGroup,
    SeedTrainer,
    SeedTrainingArguments,
    collate_batch,
)
from seed_hf.backbones import ProjectionHead, create_backbone, pooled_features, pooled_width
from seed_hf.precision import resolve_teacher_dtype
from seed_hf.teachers import FrozenTeacher


def build_teacher(arch: str, dim: int) -> FrozenTeacher:
    backbone = create_backbone(arch, 3, None, "teacher")
    width = pooled_width(backbone)
    return FrozenTeacher(backbone, ProjectionHead(width, width, dim), 3, arch)


class OfficialStyleStep:
    """The official SEED step: eager NCHW models, einsum logits, queue buffer (dim, K) cloned."""

    def __init__(self, student_arch, teacher, queue_size, dim, lr, device, tau_s=0.2, tau_t=0.01):
        self.student = create_backbone(student_arch).to(device).train()
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


def build_ours(args, teacher: FrozenTeacher, output_dir: str, num_students: int = 1, compiled: bool = False):
    config = SeedConfig(
        student_architecture=args.student,
        queue_size=args.queue_size,
        projection_dim=args.dim,
        image_size=args.image_size,
    )
    model = SeedForDistillation(config)
    if num_students > 1:
        model = SeedStudentGroup({f"s{i}": SeedForDistillation(config) for i in range(num_students)})
    training_args = SeedTrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=args.batch_size,
        use_cpu=args.device == "cpu",
        channels_last=not args.no_channels_last,
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
    # as train() does: accelerate wraps the forward in its autocast (bf16) and places the model
    trainer.model_wrapped = trainer.accelerator.prepare_model(trainer.model)
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1  # set by train(); we call training_step directly
    return trainer


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
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU; slow on this CPU)")
    parser.add_argument("--no_channels_last", action="store_true")
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

    torch.manual_seed(0)
    device = args.device
    torch.backends.cudnn.benchmark = True  # both steps: fixed shapes, let cuDNN pick its kernels
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    baseline_teacher = build_teacher(args.teacher, args.dim).to(device)
    baseline = OfficialStyleStep(args.student, baseline_teacher, args.queue_size, args.dim, 0.03, device)
    with tempfile.TemporaryDirectory() as tmp:
        ours = build_ours(args, build_teacher(args.teacher, args.dim), tmp)
        x_ours = x.contiguous(memory_format=torch.channels_last) if not args.no_channels_last else x
        batch = {"pixel_values": x_ours}

        def student_alone_fn(model, compiled=False):
            """Forward + backward + SGD of the same student, no teacher, no loss logic."""
            opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9)

            def embed(pixel_values):
                return model.head(model.get_features(pixel_values))

            embed = torch.compile(embed) if compiled else embed

            def run():
                with torch.autocast(device, dtype=torch.bfloat16, enabled=args.bf16):
                    out = embed(x_ours)
                out.float().square().mean().backward()
                opt.step()
                opt.zero_grad()

            return run

        runs = {
            "official_style": lambda: baseline(x, args.bf16),
            "seed_hf": training_step_fn(ours, batch),
            "teacher_inference": lambda: ours.teacher_embeddings(x_ours),
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
        kl = target_kl(ours.teacher, x_ours, args.queue_size)
    median = {name: statistics.median(v) for name, v in times.items()}
    resolved = resolve_teacher_dtype(args.teacher_dtype, device)
    result = {
        "device": torch.cuda.get_device_name()
        if device == "cuda"
        else f"cpu ({torch.get_num_threads()} threads)",
        "config": f"{args.student} <- {args.teacher}, {args.image_size}px, batch {args.batch_size}, K {args.queue_size}"
        + (", bf16" if args.bf16 else ", fp32")
        + ("" if args.teacher_dtype == "auto" else f", seed_hf teacher {args.teacher_dtype}"),
        "img_per_s": {name: args.batch_size / t for name, t in median.items()},
        "ratio_seed_hf_vs_official": median["official_style"] / median["seed_hf"],
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
        "repeats": args.repeats,
    }
    print(json.dumps(result, indent=2))
    print(
        f"\nseed_hf {result['img_per_s']['seed_hf']:.1f} img/s vs official-style {result['img_per_s']['official_style']:.1f} img/s"
        f" -> ratio {result['ratio_seed_hf_vs_official']:.2f}; overhead {result['overhead']:.3f}"
        f" (limit {result['limit_img_per_s']:.1f} img/s); seed_hf teacher {result['seed_hf_teacher_dtype']}"
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
