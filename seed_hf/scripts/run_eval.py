#!/usr/bin/env python
"""Frozen-feature evaluation of SEED students, MoCo encoders and exported students: weighted
kNN (k=200, τ=0.07) and a linear probe, with the preprocessing a Hub user gets
(timm's evaluation transform from the model's data config).

    python examples/run_eval.py --models outputs/teacher outputs/student pixels pixels_centred --linear_probe
    python examples/run_eval.py --models exported/seed-effb0 --train_dir data/train --validation_dir data/val
    python examples/run_eval.py --models exported/seed-effb0 --dataset_name cifar10 --image_column img

With no dataset argument it evaluates on Fashion-MNIST (train → test). ``pixels`` is cosine kNN
on raw [0, 1] pixels, ``pixels_centred`` the same after subtracting the train split's mean image.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from seed_hf.cli.command_line import parse_script_args, script_parser
from seed_hf.data.subsets import label_subset
from seed_hf.evaluation.features import (
    PIXEL_BASELINES,
    eval_data_config,
    eval_transform,
    extract_features,
    load_encoder,
)
from seed_hf.evaluation.knn import knn_accuracy
from seed_hf.evaluation.labelled import LabelledImages, LabelledSplits, load_labelled_splits
from seed_hf.evaluation.probe import LINEAR_PROBE_PROTOCOL, linear_probe
from seed_hf.teachers.fingerprint import weights_fingerprint
from seed_hf.training.run_folder import STUDENTS_DIR


@dataclass
class EvalArguments:
    models: list[str] = field(
        metadata={
            "help": "Run folders (a multi-student run: each of its students), timm-format (exported) folders, "
            "'pixels' or 'pixels_centred'."
        }
    )
    dataset_name: str | None = field(default=None, metadata={"help": "datasets hub id or local dataset."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Its configuration name."})
    train_dir: str | None = field(
        default=None, metadata={"help": "Labelled imagefolder for the kNN/probe fit."}
    )
    validation_dir: str | None = field(
        default=None, metadata={"help": "Labelled imagefolder to evaluate on."}
    )
    train_split: str = field(default="train", metadata={"help": "Split of --dataset_name to fit on."})
    validation_split: str | None = field(
        default=None, metadata={"help": "Split to evaluate on (default: validation, else test)."}
    )
    image_column: str = field(default="image", metadata={"help": "Image column of --dataset_name."})
    label_column: str = field(default="label", metadata={"help": "Label column of --dataset_name."})
    fashion_mnist_dir: str | None = field(default=None, metadata={"help": "Fashion-MNIST idx folder."})
    knn_k: int = field(default=200, metadata={"help": "k of the weighted kNN."})
    knn_temperature: float = field(default=0.07, metadata={"help": "τ of the kNN vote weights."})
    linear_probe: bool = field(default=False, metadata={"help": "Also fit the linear probe."})
    label_fractions: list[float] = field(
        default_factory=lambda: [1.0],
        metadata={"help": "Fractions of train labels to use, one result row each (e.g. 0.01 0.1 1.0)."},
    )
    max_train_samples: int | None = field(
        default=None,
        metadata={
            "help": "Use N train images: a class-balanced random draw (seed --subset_seed, never the first N of a "
            "class-sorted folder), recorded in each result row (train_subset: seed, images per class)."
        },
    )
    max_eval_samples: int | None = field(
        default=None,
        metadata={"help": "Use N eval images, drawn as --max_train_samples (eval_subset in the rows)."},
    )
    subset_seed: int = field(
        default=0, metadata={"help": "Seed of the --max_train_samples / --max_eval_samples draws."}
    )
    pixel_size: int | None = field(
        default=None,
        metadata={
            "help": "Resize images to N px (short side, centre crop N×N, bilinear) for the pixels / pixels_centred "
            "baselines, e.g. on folders of mixed sizes (refused without it, before any model runs); default: each "
            "image at its own size."
        },
    )
    batch_size: int = field(default=256, metadata={"help": "Feature extraction batch size."})
    num_workers: int = field(default=0, metadata={"help": "Dataloader workers for feature extraction."})
    device: str = field(default="cuda" if torch.cuda.is_available() else "cpu", metadata={"help": "Device."})
    output_file: str | None = field(
        default=None, metadata={"help": "Write the results as JSON here (rewritten as each model finishes)."}
    )
    reference_results: list[str] | None = field(
        default=None,
        metadata={
            "help": "Results JSONs of earlier runs on the same data (e.g. results/teacher/eval_results.json: the "
            "shipped teacher and the pixel baselines); their rows are printed next to the new ones, marked 'recorded'."
        },
    )

    def __post_init__(self):
        if bad := [f for f in self.label_fractions if not 0 < f <= 1]:
            raise ValueError(
                f"--label_fractions must each be in (0, 1] (a share of the train labels), got {bad}."
            )
        if self.knn_k < 1:
            raise ValueError(f"--knn_k must be ≥ 1, got {self.knn_k}.")


def pixel_data_config(data: LabelledSplits, size: int) -> dict:
    """The evaluation transform of the pixel baselines at ``size`` px: no normalisation, the image's
    own channels (1 for a grayscale source, else 3)."""
    first = LabelledImages(data.train_images, data.train_labels).image(0)
    channels = 1 if first.mode in ("L", "I", "I;16", "F") else 3
    return eval_data_config(channels, size, [0.0] * channels, [1.0] * channels)


def expand_models(models: list[str]) -> list[str]:
    """``--models`` with each multi-student run folder (no config.json, ``students/<name>/``) replaced
    by its students."""
    expanded = []
    for name in models:
        students = sorted(p.parent for p in (Path(name) / STUDENTS_DIR).glob("*/config.json"))
        if name not in PIXEL_BASELINES and not (Path(name) / "config.json").is_file() and students:
            expanded += [str(p) for p in students]
        else:
            expanded.append(name)
    return expanded


def pixel_features(data: LabelledSplits, args: EvalArguments):
    """(data config, train features, eval features) of the pixel baselines: each image flattened,
    at its own size or resized to ``--pixel_size``. Extracted once for both baselines, before any
    model runs, so that images of mixed sizes are refused before any model's time is spent."""
    data_config = pixel_data_config(data, args.pixel_size) if args.pixel_size else None
    transform = eval_transform(data_config) if data_config else None
    out = []
    for split, images, labels in (
        ("train", data.train_images, data.train_labels),
        ("eval", data.eval_images, data.eval_labels),
    ):
        dataset = LabelledImages(images, labels, transform)
        try:
            out.append(
                extract_features(
                    None, dataset, args.batch_size, "cpu", args.num_workers, desc=f"pixels/{split}"
                )
            )
        except RuntimeError as error:
            if "equal size" not in str(error) and "same size" not in str(error):
                raise
            raise ValueError(
                f"The pixel baselines compare images pixel by pixel, and the {split} images of {data.name} are of "
                "different sizes: pass --pixel_size N to resize them (short side to N, centre crop N×N, bilinear; "
                "recorded in the rows). No model was evaluated."
            ) from None
    return data_config, out[0], out[1]


def features_of(name: str, data: LabelledSplits, args: EvalArguments, pixels=None):
    """(spec, train features, eval features) of one model; the pixel baselines take the features of
    :func:`pixel_features` (``pixels``), ``pixels_centred`` minus the train split's mean image."""
    spec = load_encoder(name)
    if spec.module is None:
        spec.data_config, (x_train, y_train), (x_eval, y_eval) = pixels
        if name == "pixels_centred":  # the train split's mean image: the baseline a sceptical reader uses
            mean = x_train.mean(0, keepdim=True)
            x_train, x_eval = x_train - mean, x_eval - mean
        return spec, (x_train, y_train), (x_eval, y_eval)
    transform = eval_transform(spec.data_config)
    out = []
    for split, images, labels in (
        ("train", data.train_images, data.train_labels),
        ("eval", data.eval_images, data.eval_labels),
    ):
        dataset = LabelledImages(images, labels, transform)
        desc = f"{Path(name).name}/{split}"
        out.append(
            extract_features(spec.module, dataset, args.batch_size, args.device, args.num_workers, desc=desc)
        )
    return spec, out[0], out[1]


def evaluate_model(name: str, args: EvalArguments, data: LabelledSplits, pixels=None) -> list[dict]:
    spec, (x_train, y_train), (x_eval, y_eval) = features_of(name, data, args, pixels)
    sha = weights_fingerprint(name)
    rows = []
    for fraction in args.label_fractions:
        xt, yt = x_train, y_train
        if fraction < 1.0:
            keep = torch.from_numpy(label_subset(y_train.numpy(), fraction))
            xt, yt = x_train[keep], y_train[keep]
        row = {
            "model": name,
            "weights_sha256": sha,
            "num_parameters": spec.num_parameters,
            "feature_dim": x_train.shape[1],
            "dataset": data.name,
            "eval_split": data.eval_split,
            "num_train": len(yt),
            "num_eval": len(y_eval),
            "label_fraction": fraction,
            "train_subset": data.train_subset,
            "eval_subset": data.eval_subset,
            "preprocessing": {
                k: list(v) if isinstance(v, tuple) else v for k, v in (spec.data_config or {}).items()
            }
            or "raw [0, 1] pixels",
        }
        knn = knn_accuracy(xt, yt, x_eval, y_eval, min(args.knn_k, len(yt)), args.knn_temperature)
        row.update(
            knn_top1=knn["top1"],
            knn_top5=knn["top5"],
            knn_k=min(args.knn_k, len(yt)),
            knn_temperature=args.knn_temperature,
        )
        if args.linear_probe:
            probe = linear_probe(xt, yt, x_eval, y_eval)
            row.update(
                linear_top1=probe["top1"],
                linear_top5=probe["top5"],
                probe_l2=probe["l2"],
                probe_protocol=LINEAR_PROBE_PROTOCOL,
            )
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    # its flags and --recipe files, as every script's
    (args,) = parse_script_args(script_parser(EvalArguments), argv)
    return _evaluate(args)


def _evaluate(args: EvalArguments) -> list[dict]:
    data = load_labelled_splits(
        args.dataset_name,
        args.dataset_config_name,
        args.train_dir,
        args.validation_dir,
        args.train_split,
        args.validation_split,
        args.image_column,
        args.label_column,
        args.fashion_mnist_dir,
    ).subsample(args.max_train_samples, args.max_eval_samples, args.subset_seed)
    names = expand_models(args.models)
    if missing := [n for n in names if n not in PIXEL_BASELINES and not (Path(n) / "config.json").is_file()]:
        raise FileNotFoundError(
            f"--models {' '.join(missing)}: not a model folder with a config.json (a run folder, an exported folder, "
            f"or one of {list(PIXEL_BASELINES)}). No model was evaluated."
        )
    pixels = pixel_features(data, args) if set(names) & set(PIXEL_BASELINES) else None
    results = []
    for name in names:
        results += evaluate_model(name, args, data, pixels)
        if args.output_file:  # each model's rows as it finishes: a later failure keeps them
            write_results(args.output_file, results)
    recorded = []
    for reference in args.reference_results or []:
        rows = [
            r
            for r in json.loads(Path(reference).read_text())
            if r.get("dataset") == data.name and r.get("num_eval") == len(data.eval_labels)
        ]
        if not rows:
            print(
                f"warning: {reference} has no rows for {data.name} with {len(data.eval_labels)} eval images"
            )
        recorded += rows
    print(f"\n{data.name}: {len(data.train_labels)} train → {len(data.eval_labels)} {data.eval_split} images")
    print(f"{'model':<44} {'labels':>7} {'params':>11} {'kNN top-1':>10} {'linear top-1':>13}")
    fractions = set(args.label_fractions)
    for r in [*(r for r in recorded if r["label_fraction"] in fractions), *results]:
        linear = f"{r['linear_top1']:.2f}" if "linear_top1" in r else "-"
        name = r["model"][-34:] + (" (recorded)" if r in recorded else "")
        print(
            f"{name:<44} {r['label_fraction']:>6.0%} {r['num_parameters']:>11,} "
            f"{r['knn_top1']:>10.2f} {linear:>13}"
        )
    return results


def write_results(path: str, rows: list[dict]) -> None:
    """``rows`` as the JSON list of ``path``, replaced atomically (a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(rows, indent=2) + "\n")
    partial.replace(path)


def cli(argv: list[str] | None = None) -> None:
    """The command line (``seed-hf``, ``python -m``, ``examples/run_eval.py``): a refusal prints its message
    alone and exits with status 1."""
    from seed_hf.cli.script import run_script

    run_script(lambda: main(argv))


if __name__ == "__main__":
    cli()
