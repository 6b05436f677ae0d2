#!/usr/bin/env python
"""Frozen-feature evaluation of SEED students, MoCo encoders and exported students:
weighted kNN (k=200, τ=0.07) and an optional linear probe, on Fashion-MNIST's test split.

    python examples/run_eval.py --models outputs/teacher outputs/student pixels --linear_probe
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser

from seed_hf.data import ArrayImageDataset, build_eval_transform, load_fashion_mnist
from seed_hf.evaluation import extract_features, knn_accuracy, label_subset, linear_probe, load_encoder


@dataclass
class EvalArguments:
    models: list[str] = field(metadata={"help": "Run folders, timm-format folders, or 'pixels'."})
    fashion_mnist_dir: str | None = field(default=None, metadata={"help": "Fashion-MNIST idx folder."})
    knn_k: int = field(default=200, metadata={"help": "k of the weighted kNN."})
    knn_temperature: float = field(default=0.07, metadata={"help": "τ of the kNN vote weights."})
    linear_probe: bool = field(default=False, metadata={"help": "Also train a linear probe."})
    probe_epochs: int = field(default=30, metadata={"help": "Linear probe epochs."})
    label_fraction: float = field(
        default=1.0, metadata={"help": "Fraction of train labels (0.01, 0.1, 1.0)."}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use the first N train images (debugging)."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Use the first N test images (debugging)."}
    )
    batch_size: int = field(default=512, metadata={"help": "Feature extraction batch size."})
    device: str = field(default="cuda" if torch.cuda.is_available() else "cpu", metadata={"help": "Device."})
    output_file: str | None = field(default=None, metadata={"help": "Write the results as JSON here."})


def evaluate_model(name: str, args: EvalArguments, splits) -> dict:
    spec = load_encoder(name)
    transform = build_eval_transform(
        spec.image_size, spec.mean, spec.std, crop_pct=1.0
    )  # pixels: 28 px, [0, 1]
    feats = {}
    for split, (images, labels) in splits.items():
        dataset = ArrayImageDataset(images, labels, None)
        feats[split] = extract_features(
            spec.module,
            dataset,
            args.batch_size,
            args.device,
            desc=f"{Path(name).name}/{split}",
            batch_transform=transform,
        )
    (x_train, y_train), (x_test, y_test) = feats["train"], feats["test"]
    if args.label_fraction < 1.0:
        keep = torch.from_numpy(label_subset(y_train.numpy(), args.label_fraction))
        x_train, y_train = x_train[keep], y_train[keep]
    result = {"model": name, "num_parameters": spec.num_parameters, "feature_dim": x_train.shape[1]}
    knn = knn_accuracy(x_train, y_train, x_test, y_test, args.knn_k, args.knn_temperature)
    result.update(
        {
            "knn_top1": knn["top1"],
            "knn_top5": knn["top5"],
            "knn_k": args.knn_k,
            "knn_temperature": args.knn_temperature,
        }
    )
    if args.linear_probe:
        probe = linear_probe(x_train, y_train, x_test, y_test, epochs=args.probe_epochs)
        result.update(
            {"linear_top1": probe["top1"], "linear_top5": probe["top5"], "probe_epochs": args.probe_epochs}
        )
    result["label_fraction"] = args.label_fraction
    result["dataset"] = "fashion_mnist"
    return result


def main(argv: list[str] | None = None) -> list[dict]:
    (args,) = HfArgumentParser(EvalArguments).parse_args_into_dataclasses(
        sys.argv[1:] if argv is None else argv
    )
    splits = {s: load_fashion_mnist(s, args.fashion_mnist_dir) for s in ("train", "test")}
    for split, limit in (("train", args.max_train_samples), ("test", args.max_eval_samples)):
        if limit:
            splits[split] = tuple(a[:limit] for a in splits[split])
    results = [evaluate_model(name, args, splits) for name in args.models]
    print(f"\n{'model':<40} {'params':>10} {'kNN top-1':>10} {'linear top-1':>13}")
    for r in results:
        linear = f"{r['linear_top1']:.2f}" if "linear_top1" in r else "-"
        print(f"{r['model'][-40:]:<40} {r['num_parameters']:>10,} {r['knn_top1']:>10.2f} {linear:>13}")
    if args.output_file:
        Path(args.output_file).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output_file).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
