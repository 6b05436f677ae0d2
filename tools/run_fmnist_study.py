#!/usr/bin/env python
"""Small-scale SEED study on Fashion-MNIST: does SEED beat MoCo-v2 for a small student?

Stages (each resumable: re-running the command continues from the last checkpoint, and a
finished stage is skipped; a stage's run folder trained with another recipe, or with none recorded
in ``<work_dir>/study_recipes.json``, is moved aside to ``<stage>.recipe-<hash>`` and trained again):
  1. the small student (MobileNetV3-Small, 1.5M parameters) trained by MoCo-v2 alone;
  2. the same student distilled with SEED from the shipped MoCo-v2 teacher
     (``pretrained/fmnist-mocov2-resnet18``, ResNet-18, 11.2M; ``make teacher`` rebuilds it),
     same steps, batch and augmentation;
  3. both students exported as timm/transformers folders;
  4. weighted kNN (k=200, τ=0.07) and the converged linear probe on the test split, with 100%,
     10% and 1% of the train labels (the paper's semi-supervised protocol), for the teacher,
     both exported students (evaluated as a Hub user loads them), raw and centred pixels;
  5. plots (loss and online kNN vs step, 2-D PCA map), model cards, README table.

    python tools/run_fmnist_study.py --output_dir results/fmnist          # or: make study
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser

from seed_hf.scripts import run_eval, run_moco, run_seed  # the installed scripts, run as a user runs them
from seed_hf.teachers.fingerprint import weights_fingerprint


@dataclass
class StudyArguments:
    output_dir: str = field(default="results/fmnist", metadata={"help": "Where everything goes."})
    work_dir: str = field(
        default="outputs/fmnist_study", metadata={"help": "Checkpoints (large, not committed)."}
    )
    teacher: str = field(
        default="pretrained/fmnist-mocov2-resnet18",
        metadata={"help": "The SEED teacher (any load_teacher spec)."},
    )
    student_architecture: str = field(default="mobilenetv3_small_100", metadata={"help": "Small student."})
    image_size: int = field(default=64, metadata={"help": "Training resolution (the teacher's)."})
    augmentation_backend: str = field(
        default="opencv", metadata={"help": "Augmentation pixel kernels: opencv or torchvision."}
    )
    student_steps: int = field(default=1000, metadata={"help": "Steps of each student (MoCo-v2 and SEED)."})
    batch_size: int = field(default=256, metadata={"help": "Batch size of every run."})
    queue_size: int = field(default=4096, metadata={"help": "K for MoCo and SEED."})
    moco_momentum: float = field(
        default=0.99, metadata={"help": "MoCo key-encoder momentum (0.99 for short runs)."}
    )
    moco_temperature: float = field(default=0.1, metadata={"help": "MoCo InfoNCE temperature."})
    base_learning_rate: float = field(
        default=0.06, metadata={"help": "lr = base × batch / 256 (SGD, cosine)."}
    )
    teacher_temperature: float = field(
        default=1e-4,
        metadata={"help": "SEED τ_T (the official code's 1e-4, as `make demo`; the paper's is 0.01)."},
    )
    eval_steps: int = field(default=250, metadata={"help": "Online kNN monitor interval (steps)."})
    monitor_samples: int = field(default=5000, metadata={"help": "Train images of the online kNN monitor."})
    label_fractions: list[float] = field(
        default_factory=lambda: [1.0, 0.1, 0.01],
        metadata={"help": "Train-label fractions of the evaluation."},
    )
    eval_train_samples: int | None = field(
        default=None, metadata={"help": "Limit final-eval train images (smoke tests)."}
    )
    eval_test_samples: int | None = field(
        default=None, metadata={"help": "Limit final-eval test images (smoke tests)."}
    )
    license: str = field(default="apache-2.0", metadata={"help": "License of the exported students."})
    manifest: str | None = field(
        default="model_cards/models.json",
        metadata={"help": "Record the exported students in this shipped-models manifest ('' to skip)."},
    )
    reference_results: str | None = field(
        default="results/teacher/eval_results.json",
        metadata={
            "help": "Evaluation JSON of the teacher and pixel baselines (written by `make teacher`): rows found there "
            "for the same data and label fractions are reused instead of re-measured; '' measures everything."
        },
    )
    use_cpu: bool = field(default=not torch.cuda.is_available(), metadata={"help": "Train on CPU."})


def _done(run_dir: Path, steps: int) -> bool:
    state = run_dir / "trainer_state.json"
    return state.is_file() and json.loads(state.read_text()).get("global_step", 0) >= steps


RECIPES_FILE = "study_recipes.json"  # in work_dir: stage → the recipe its run folder was trained with
# flags that do not change what a run learns: where it writes, how it logs, checkpoints and monitors,
# and the device (a run started on the CPU may be resumed on a GPU)
NOT_RECIPE = frozenset(
    {
        "--output_dir",
        "--logging_steps",
        "--report_to",
        "--save_steps",
        "--save_total_limit",
        "--eval_strategy",
        "--eval_steps",
        "--knn_monitor_samples",
        "--use_cpu",
    }
)


def recipe_flags(argv: list[str]) -> dict[str, list[str]]:
    """The recipe in a stage's arguments: ``["--a", "1", "--b", "x", "y", "--c"]`` →
    ``{"--a": ["1"], "--b": ["x", "y"], "--c": []}``, without the ``NOT_RECIPE`` flags."""
    flags: dict[str, list[str]] = {}
    key = None
    for token in argv:
        if token.startswith("--"):
            key = token
            flags[key] = []
        elif key is not None:
            flags[key].append(token)
    return {k: v for k, v in flags.items() if k not in NOT_RECIPE}


def recipe_differences(recorded: dict | None, recipe: dict) -> list[str]:
    """What differs between the recipe a run folder was trained with and the one asked for now, one
    ``"--flag old → new"`` line each (a recipe: ``{"argv": [...], "teacher_sha256": ...}``)."""
    if recorded is None:
        return ["no recipe recorded for it: trained before seed_hf recorded them, or by another command"]
    old, new = recipe_flags(recorded.get("argv", [])), recipe_flags(recipe.get("argv", []))

    def shown(values: list[str] | None) -> str:
        return "(unset)" if values is None else " ".join(values) or "(set)"

    lines = [
        f"{flag} {shown(old.get(flag))} → {shown(new.get(flag))}"
        for flag in sorted(old.keys() | new.keys())
        if old.get(flag) != new.get(flag)
    ]
    if recorded.get("teacher_sha256") != recipe.get("teacher_sha256"):
        lines.append(
            f"teacher weights sha256 {recorded.get('teacher_sha256')} → {recipe.get('teacher_sha256')}"
        )
    return lines


def move_stale_run(work_dir: Path, name: str, recipe: dict) -> Path | None:
    """A stage's run folder ``work_dir/name`` trained with another recipe than ``recipe`` (other
    flags, or another teacher's weights: ``make teacher`` rebuilt it), or with none recorded, is
    moved aside, never resumed or reused, and what differs is printed; returns where it went (None:
    nothing there, or the same recipe). ``recipe`` is then recorded in ``work_dir/study_recipes.json``
    before the stage runs, so that an interrupted run resumes as its own."""
    recipes_file = work_dir / RECIPES_FILE
    recipes = json.loads(recipes_file.read_text()) if recipes_file.is_file() else {}
    run_dir, stale = work_dir / name, None
    differences = recipe_differences(recipes.get(name), recipe)
    if run_dir.exists() and differences:
        tag = "unrecorded"
        if name in recipes:
            tag = hashlib.sha256(json.dumps(recipes[name], sort_keys=True).encode()).hexdigest()[:8]
        stale = run_dir.with_name(f"{name}.recipe-{tag}")
        for n in itertools.count(2):  # never over an earlier stale run
            if not stale.exists():
                break
            stale = run_dir.with_name(f"{name}.recipe-{tag}-{n}")
        run_dir.rename(stale)
        print(
            f"[study] {name}: {run_dir} was trained with another recipe ({'; '.join(differences)}): "
            f"moved to {stale}, training again"
        )
    work_dir.mkdir(parents=True, exist_ok=True)
    partial = recipes_file.with_suffix(".json.partial")  # a kill while writing leaves the old file whole
    partial.write_text(json.dumps({**recipes, name: recipe}, indent=2) + "\n")
    os.replace(partial, recipes_file)
    return stale


def _common(args: StudyArguments, run_dir: Path) -> list[str]:
    """Arguments every student run shares: same data, resolution, batch, schedule and monitor."""
    return [
        "--output_dir",
        str(run_dir),
        "--image_size",
        str(args.image_size),
        "--max_steps",
        str(args.student_steps),
        "--per_device_train_batch_size",
        str(args.batch_size),
        "--base_learning_rate",
        str(args.base_learning_rate),
        "--queue_size",
        str(args.queue_size),
        "--warmup_steps",
        str(min(100, args.student_steps // 10)),
        "--save_steps",
        "250",
        "--save_total_limit",
        "2",  # the fewest that keeps a complete checkpoint while the next one is written
        "--logging_steps",
        "25",
        "--eval_strategy",
        "steps",
        "--eval_steps",
        str(args.eval_steps),
        "--knn_monitor_samples",
        str(args.monitor_samples),
        "--augmentation_backend",
        args.augmentation_backend,
        # the shipped study's figures were trained with transformers' clipping (seed_hf's default is
        # none, as the official code): benchmarks/ab_grad_clip.py compares the two on the demo's recipe
        "--max_grad_norm",
        "1.0",
        "--report_to",
        "tensorboard",
        *(["--use_cpu"] if args.use_cpu else []),
    ]


def _recorded_rows(args: StudyArguments, models: dict[str, str], teacher_sha: str | None) -> list[dict]:
    """Rows of the teacher / pixel baselines already measured on the full data (make teacher), for
    every label fraction of this study, each marked with where it came from."""
    if not args.reference_results or args.eval_train_samples or args.eval_test_samples:
        return []
    path = Path(args.reference_results)
    if not path.is_file():
        return []
    fixed = {models["teacher"], "pixels", "pixels_centred"}
    rows = [
        {**r, "recorded_in": str(path)}
        for r in json.loads(path.read_text())
        if r["model"] in fixed
        and r["label_fraction"] in args.label_fractions
        and r.get("num_eval") == 10000
        # a teacher row counts only if it measured the teacher's current weights
        and (r["model"] != models["teacher"] or r.get("weights_sha256") == teacher_sha)
    ]
    complete = {
        m
        for m in fixed
        if {r["label_fraction"] for r in rows if r["model"] == m} == set(args.label_fractions)
    }
    return [r for r in rows if r["model"] in complete]


def _history(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "trainer_state.json").read_text())["log_history"]


def plot(args: StudyArguments, runs: dict[str, Path], models: dict[str, str], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, run_dir in runs.items():
        history = _history(run_dir)
        steps = [h["step"] for h in history if "loss" in h]
        axes[0].plot(steps, [h["loss"] for h in history if "loss" in h], label=name)
        knn = [(h["step"], h["eval_knn_top1"]) for h in history if "eval_knn_top1" in h]
        if knn:
            axes[1].plot(*zip(*knn), marker="o", label=name)
    axes[0].set(xlabel="step", ylabel="training loss", title="loss (MoCo: InfoNCE, SEED: distillation)")
    axes[1].set(
        xlabel="step",
        ylabel="kNN top-1 (%)",
        title=f"online kNN monitor ({args.monitor_samples} train / {args.monitor_samples // 5} test)",
    )
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)

    from sklearn.decomposition import PCA

    from seed_hf.evaluation.evaluate import (
        LabelledImages,
        eval_transform,
        extract_features,
        load_encoder,
        load_labelled_splits,
    )

    data = load_labelled_splits().subsample(None, 3000)
    fig, axes = plt.subplots(1, 3, figsize=(16, 5))
    for ax, name in zip(axes, ("teacher", "moco_student", "seed_student")):
        spec = load_encoder(models[name])
        dataset = LabelledImages(data.eval_images, data.eval_labels, eval_transform(spec.data_config))
        feats, y = extract_features(spec.module, dataset, 500)
        xy = PCA(2).fit_transform(torch.nn.functional.normalize(feats, dim=1).numpy())
        scatter = ax.scatter(xy[:, 0], xy[:, 1], c=y.numpy(), cmap="tab10", s=3)
        ax.set(title=f"{name}: PCA of pooled features (3k test images)")
    fig.colorbar(scatter, ax=axes, ticks=range(10), label="class")
    fig.savefig(out / "embedding_pca.png", dpi=110)
    return ["curves.png", "embedding_pca.png"]


NAMES = {
    "teacher": "MoCo-v2 teacher (resnet18, shipped)",
    "moco_student": "{student}, MoCo-v2 alone",
    "seed_student": "{student}, SEED from the teacher",
    "pixels": "raw pixels",
    "pixels_centred": "centred pixels",
}


def write_readme(args: StudyArguments, out: Path, rows: list[dict], timings: dict, plots: list[str]) -> None:
    fractions = sorted({r["label_fraction"] for r in rows}, reverse=True)
    header = "| model | parameters | " + " | ".join(f"kNN {f:.0%} | linear {f:.0%}" for f in fractions) + " |"
    table = [header, "|---|---|" + "---|---|" * len(fractions)]
    by = {(r["name"], r["label_fraction"]): r for r in rows}
    for name in NAMES:
        cells = []
        for f in fractions:
            r = by.get((name, f), {})
            cells += [
                f"{r['knn_top1']:.2f}" if "knn_top1" in r else "—",
                f"{r['linear_top1']:.2f}" if "linear_top1" in r else "—",
            ]
        params = by.get((name, 1.0), {}).get("num_parameters", 0)
        table.append(
            f"| {NAMES[name].format(student=args.student_architecture)} | {params:,} | "
            + " | ".join(cells)
            + " |"
        )

    def diff(a: str, b: str, metric: str = "knn_top1") -> str:
        return f"{by[(a, 1.0)][metric] - by[(b, 1.0)][metric]:+.2f}"

    device = torch.cuda.get_device_name() if not args.use_cpu else f"CPU, {torch.get_num_threads()} threads"
    first = next(r for r in rows if r["label_fraction"] == 1.0)
    text = f"""# SEED vs MoCo-v2 for a small student on Fashion-MNIST

Generated by `tools/run_fmnist_study.py` from `results.json` (every number is measured by the
run, none typed). Students are evaluated from their exported timm folders, with the preprocessing
`AutoImageProcessor` / timm / the pipeline apply (`config.json`'s `pretrained_cfg`).

{chr(10).join(table)}

At 100% labels, kNN top-1: SEED student − MoCo-v2 student **{diff("seed_student", "moco_student")}**;
SEED student − centred pixels **{diff("seed_student", "pixels_centred")}**; teacher − centred pixels
{diff("teacher", "pixels_centred")}; SEED student − teacher {diff("seed_student", "teacher")}.
Linear probe: SEED − MoCo-v2 {diff("seed_student", "moco_student", "linear_top1")}, teacher − pixels
{diff("teacher", "pixels", "linear_top1")}.

- Weighted kNN: k={first["knn_k"]}, τ={first["knn_temperature"]}, cosine on pooled backbone features,
  {first["num_train"]} train → {first["num_eval"]} test images (10% / 1%: class-balanced label subsets of the train split).
- Linear probe: {first.get("probe_protocol", "not run")}.
- Pixels: 28×28 in [0, 1]; centred: minus the train split's mean image (linear probes standardise, so both
  pixel rows get the same probe result).
- Rows of the teacher and the pixel baselines are taken from `{args.reference_results}` (measured by `make teacher`
  with the same code) when it holds them: {", ".join(sorted({r["name"] for r in rows if r.get("recorded_in")})) or "none here"}.

## Recipe
- teacher: `{args.teacher}` (MoCo-v2 ResNet-18 at 64 px, trained by `make teacher`; see `results/teacher/`).
- students: {args.student_architecture} at {args.image_size} px, {args.student_steps} steps × batch {args.batch_size}
  ({args.student_steps * args.batch_size / 60000:.1f} epochs) each, SGD lr {args.base_learning_rate}×batch/256, cosine,
  `grayscale_small` augmentation ({args.augmentation_backend} kernels).
  MoCo-v2: K={args.queue_size}, τ={args.moco_temperature}, momentum {args.moco_momentum}, shuffle-BN over 4
  sub-batches. SEED: K={args.queue_size}, τ_S=0.2, τ_T={args.teacher_temperature}, the same view to teacher and student.

## Compute
{device}; wall time per stage (s): {json.dumps({k: round(v) for k, v in timings.items()})}.

## Reproduce
```bash
make study            # = python tools/run_fmnist_study.py --output_dir results/fmnist
```
Re-running resumes from the last checkpoints in `{args.work_dir}` and skips finished stages.

## Files
`results.json`, {", ".join(f"`{p}`" for p in plots)}, `students/seed/` and `students/moco/`
(timm-format folders that load with `AutoModel`, the image-feature-extraction pipeline and timm; their
cards are also in `model_cards/`).

![curves](curves.png)
![pca](embedding_pca.png)
"""
    (out / "README.md").write_text(text)


def main(argv=None) -> list[dict]:
    (args,) = HfArgumentParser(StudyArguments).parse_args_into_dataclasses(
        sys.argv[1:] if argv is None else argv
    )
    out, work = Path(args.output_dir), Path(args.work_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings_file = out / "timings.json"
    timings = json.loads(timings_file.read_text()) if timings_file.is_file() else {}
    runs = {"moco_student": work / "moco_student", "seed_student": work / "seed_student"}
    teacher_sha = weights_fingerprint(args.teacher)
    # stage → (its training script, its arguments, what else its recipe depends on)
    stages = {
        "moco_student": (
            run_moco.main,
            [
                "--architecture",
                args.student_architecture,
                "--key_bn_splits",
                "4",
                "--momentum",
                str(args.moco_momentum),
                "--temperature",
                str(args.moco_temperature),
                *_common(args, runs["moco_student"]),
            ],
            {},
        ),
        "seed_student": (
            run_seed.main,
            [
                "--teacher_name_or_path",
                args.teacher,
                "--teacher_ssl_method",
                "moco_v2",
                "--student_architecture",
                args.student_architecture,
                "--teacher_temperature",
                str(args.teacher_temperature),
                *_common(args, runs["seed_student"]),
            ],
            {"teacher_sha256": teacher_sha},
        ),
    }
    for name, (train, argv, depends_on) in stages.items():
        move_stale_run(work, name, {"argv": argv, **depends_on})
        if not runs[name].exists():
            timings.pop(name, None)  # the wall time of the new run only
        if _done(runs[name], args.student_steps):
            print(f"[study] {name}: done, skipping")
            continue
        print(f"[study] {name}: training ({args.student_steps} steps)")
        start = time.time()
        train(argv)
        timings[name] = timings.get(name, 0) + time.time() - start
        timings_file.write_text(json.dumps(timings, indent=2))

    from manifest import shipped_model_recorder

    from seed_hf.export.cards import run_summary
    from seed_hf.export.hub import export_moco_encoder, export_student

    exports = {"seed_student": out / "students" / "seed", "moco_student": out / "students" / "moco"}
    exporters = {"seed_student": export_student, "moco_student": export_moco_encoder}

    def export_all(eval_results=None):
        for name, folder in exports.items():
            exporters[name](
                runs[name],
                folder,
                eval_results=eval_results,
                training_summary=run_summary(runs[name]),
                repo_id=f"your-org/{folder.name}-fmnist-{args.student_architecture}",
                license=args.license,
                # shipped models: model_cards/ re-renders their cards from results.json (make cards)
                on_exported=shipped_model_recorder(
                    args.manifest, f"{folder.name}-fmnist-{args.student_architecture}", eval_results
                )
                if args.manifest and eval_results
                else None,
            )

    export_all()
    models = {
        "teacher": args.teacher,
        **{k: str(v) for k, v in exports.items()},
        "pixels": "pixels",
        "pixels_centred": "pixels_centred",
    }
    recorded = _recorded_rows(args, models, teacher_sha)
    start = time.time()
    results = recorded + run_eval.main(
        [
            "--models",
            *(m for m in models.values() if m not in {r["model"] for r in recorded}),
            "--linear_probe",
            "--label_fractions",
            *(str(f) for f in args.label_fractions),
            *(["--max_train_samples", str(args.eval_train_samples)] if args.eval_train_samples else []),
            *(["--max_eval_samples", str(args.eval_test_samples)] if args.eval_test_samples else []),
        ]
    )
    timings["evaluation"] = time.time() - start
    names = {v: k for k, v in models.items()}
    rows = [{"name": names[r["model"]], **r} for r in results]
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    timings_file.write_text(json.dumps(timings, indent=2))
    export_all(out / "results.json")  # the cards now carry the measured rows of each student
    plots = plot(args, runs, models, out)
    write_readme(args, out, rows, timings, plots)
    print((out / "README.md").read_text())
    return rows


if __name__ == "__main__":
    main()
