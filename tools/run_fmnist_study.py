#!/usr/bin/env python
"""Small-scale SEED study on Fashion-MNIST: does SEED beat MoCo-v2 for a small student?

A pipeline of seed_hf's scripts and library calls, its runs and its README rendered from the
templates in ``tools/templates/fmnist_study/`` (as the model cards are from theirs):
  1. the small student (MobileNetV3-Small, 1.5M parameters) trained by MoCo-v2 alone
     (``run_moco.py``);
  2. the same student distilled with SEED from the shipped MoCo-v2 teacher
     (``pretrained/fmnist-mocov2-resnet18``, ResNet-18, 11.2M; ``make teacher`` rebuilds it),
     same steps, batch and augmentation (``run_seed.py``);
  3. both students exported as timm/transformers folders;
  4. weighted kNN (k=200, τ=0.07) and the converged linear probe on the test split, with 100%,
     10% and 1% of the train labels (the paper's semi-supervised protocol), for the teacher,
     both exported students (evaluated as a Hub user loads them), raw and centred pixels
     (``run_eval.py``);
  5. plots (loss and online kNN vs step, 2-D PCA map), model cards, README table.

Each training is resumable: its run folder (:class:`~seed_hf.training.run_folder.RunFolder`) keeps
the recipe the study launched it with; re-running the command resumes it, skips it once finished,
and moves a folder trained with another recipe (or teacher weights) aside to
``<stage>.recipe-<hash>`` and trains again.

    python tools/run_fmnist_study.py --output_dir results/fmnist          # or: make study
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from transformers import HfArgumentParser

from seed_hf.scripts import run_eval, run_moco, run_seed  # the installed scripts, run as a user runs them
from seed_hf.teachers.fingerprint import weights_fingerprint
from seed_hf.training.run_folder import RunFolder

TEMPLATES = Path(__file__).resolve().parent / "templates" / "fmnist_study"
SCRIPTS = {"run_moco": run_moco, "run_seed": run_seed}


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
    contrastive_temperature: float = field(default=0.1, metadata={"help": "MoCo InfoNCE temperature."})
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


def render(template: str, **context) -> str:
    """``tools/templates/fmnist_study/<template>`` rendered with ``context`` (an unknown name is an error)."""
    environment = Environment(
        loader=FileSystemLoader(TEMPLATES), undefined=StrictUndefined, keep_trailing_newline=True
    )
    return environment.get_template(template).render(**context)


def write_recipe(path: Path, flags: dict) -> Path:
    """A ``--recipe`` file of the scripts (flags without ``--``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(flags, indent=2) + "\n")
    return path


def train_stage(name: str, stage: dict, work: Path, steps: int, timings: dict) -> None:
    """One training of the study: its run folder keeps ``stage["recipe"]`` (another recipe moves the
    old run aside), a finished run is skipped, anything else trains or resumes through the script."""
    run = RunFolder(work / name, max_steps=steps)
    existed = run.output_dir.exists()
    moved, differences = run.claim(stage["recipe"])
    if moved is not None:
        print(
            f"[study] {name}: {run.output_dir} was trained with another recipe ({'; '.join(differences)}): "
            f"moved to {moved}, training again"
        )
    if moved is not None or not existed:
        timings.pop(name, None)  # the wall time of the new run only
    if run.decide() == "finished":
        print(f"[study] {name}: done, skipping")
        return
    print(f"[study] {name}: training ({steps} steps)")
    launch = write_recipe(work / f"{name}.launch.json", stage["launch"])
    start = time.time()
    SCRIPTS[stage["script"]].main(["--recipe", str(run.pipeline_recipe_file), "--recipe", str(launch)])
    timings[name] = timings.get(name, 0) + time.time() - start


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

    from seed_hf.evaluation.features import eval_transform, extract_features, load_encoder
    from seed_hf.evaluation.labelled import LabelledImages, load_labelled_splits

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
    """``out/README.md`` from the measured ``rows`` (templates/fmnist_study/README.md)."""
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
        label = NAMES[name].format(student=args.student_architecture)
        table.append(f"| {label} | {params:,} | " + " | ".join(cells) + " |")

    def diff(a: str, b: str, metric: str = "knn_top1") -> str:
        return f"{by[(a, 1.0)][metric] - by[(b, 1.0)][metric]:+.2f}"

    text = render(
        "README.md",
        args=args,
        table=table,
        diff=diff,
        first=next(r for r in rows if r["label_fraction"] == 1.0),
        recorded=sorted({r["name"] for r in rows if r.get("recorded_in")}),
        device=torch.cuda.get_device_name()
        if not args.use_cpu
        else f"CPU, {torch.get_num_threads()} threads",
        timings=json.dumps({k: round(v) for k, v in timings.items()}),
        plots=plots,
    )
    (out / "README.md").write_text(text)


def main(argv=None) -> list[dict]:
    (args,) = HfArgumentParser(StudyArguments).parse_args_into_dataclasses(
        sys.argv[1:] if argv is None else argv
    )
    out, work = Path(args.output_dir), Path(args.work_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings_file = out / "timings.json"
    timings = json.loads(timings_file.read_text()) if timings_file.is_file() else {}
    teacher_sha = weights_fingerprint(args.teacher)
    stages = json.loads(render("stages.json", args=args, work_dir=str(work), teacher_sha256=teacher_sha))
    for name, stage in stages.items():
        train_stage(name, stage, work, args.student_steps, timings)
        timings_file.write_text(json.dumps(timings, indent=2))
    runs = {name: work / name for name in stages}

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
    measured = [m for m in models.values() if m not in {r["model"] for r in recorded}]
    evaluation = write_recipe(
        work / "evaluation.json", json.loads(render("evaluation.json", args=args, models=measured))
    )
    start = time.time()
    results = recorded + run_eval.main(["--recipe", str(evaluation)])
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
