#!/usr/bin/env python
"""Input-pipeline throughput: decode + ``moco_v2`` augmentation, images/s per core.

seed_hf's path (parquet of JPEG bytes → ``datasets`` → ``seed_hf.data.decode_image`` to an
ndarray + ``build_ssl_transform`` with the default ``opencv`` backend: torchvision-v2
parameters, OpenCV kernels) against the official-style baseline (JPEG files →
``torchvision.datasets.ImageFolder`` with the PIL loader → torchvision v1 transforms as in
MoCo-v2's ``main_moco.py``) over the same images, alternated, median of --repeats, one
process and one thread (so the rate is per core). seed_hf's ``torchvision`` backend (PIL
kernels) runs too, for reference. Also times each stage alone (decode; augment from decoded
images) so the dominant stage is visible.

The images are real: Fashion-MNIST, colourised and upscaled to 256–500 px JPEGs.

    python benchmarks/bench_data.py --num_images 512
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter
from torch.utils.data import DataLoader
from torchvision import datasets as tv_datasets
from torchvision import transforms as T

from seed_hf.data import (
    ImageColumnTransform,
    build_ssl_transform,
    collate_batch,
    decode_image,
    load_fashion_mnist,
)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class PilGaussianBlur:
    """MoCo-v2's blur (moco/loader.py): PIL ImageFilter with sigma ~ U[0.1, 2.0]."""

    def __call__(self, image):
        return image.filter(ImageFilter.GaussianBlur(radius=float(np.random.uniform(0.1, 2.0))))


def official_transform(size: int) -> T.Compose:
    return T.Compose(
        [
            T.RandomResizedCrop(size, scale=(0.2, 1.0)),
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            T.RandomGrayscale(p=0.2),
            T.RandomApply([PilGaussianBlur()], p=0.5),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(MEAN, STD),
        ]
    )


def make_images(folder: Path, n: int, seed: int = 0) -> tuple[Path, Path]:
    """Writes n JPEGs into an ImageFolder tree and the same bytes into one parquet file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    images, labels = load_fashion_mnist("train")
    root = folder / "imagefolder"
    rows = {"image": [], "label": []}
    for i in range(n):
        gray = Image.fromarray(images[i])
        side = int(rng.integers(256, 501))
        tint = rng.uniform(0.5, 1.0, size=3)
        rgb = Image.merge("RGB", [gray.point(lambda v, t=t: int(v * t)) for t in tint])
        rgb = rgb.resize((side, int(side * rng.uniform(0.75, 1.33))), Image.BICUBIC)
        buffer = io.BytesIO()
        rgb.save(buffer, format="JPEG", quality=90)
        label = int(labels[i])
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        (root / str(label) / f"{i:06d}.jpg").write_bytes(buffer.getvalue())
        rows["image"].append({"bytes": buffer.getvalue(), "path": None})
        rows["label"].append(label)
    parquet = folder / "train.parquet"
    pq.write_table(pa.table(rows), parquet)
    return root, parquet


def op_costs(decoded_pil: list, decoded_arrays: list, size: int, repeats: int) -> dict[str, dict[str, float]]:
    """Milliseconds per call of each ``moco_v2`` op, applied every time (p=1), for the official
    PIL pipeline and seed_hf's opencv backend; crops are timed on the decoded images, the other
    ops on 224-px crops of them."""
    from seed_hf import augment
    from seed_hf.data import RandomGaussianBlur, ToNormalizedTensor

    pil_crops = [im.resize((size, size), Image.BILINEAR) for im in decoded_pil]
    array_crops = [np.asarray(im).copy() for im in pil_crops]
    official_ops = {
        "random_resized_crop": (T.RandomResizedCrop(size, scale=(0.2, 1.0)), decoded_pil),
        "color_jitter": (T.ColorJitter(0.4, 0.4, 0.4, 0.1), pil_crops),
        "grayscale": (T.Grayscale(3), pil_crops),
        "gaussian_blur": (PilGaussianBlur(), pil_crops),
        "horizontal_flip": (T.RandomHorizontalFlip(1.0), pil_crops),
        "to_tensor_normalize": (T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)]), pil_crops),
    }
    ours_ops = {
        "random_resized_crop": (augment.ArrayRandomResizedCrop(size, scale=(0.2, 1.0)), decoded_arrays),
        "color_jitter": (augment.ArrayColorJitter(0.4, 0.4, 0.4, 0.1), array_crops),
        "grayscale": (augment.ArrayRandomGrayscale(1.0), array_crops),
        "gaussian_blur": (RandomGaussianBlur(kernel_size=23), array_crops),
        "horizontal_flip": (augment.ArrayRandomHorizontalFlip(1.0), array_crops),
        "to_tensor_normalize": (ToNormalizedTensor(MEAN, STD), array_crops),
    }
    costs: dict[str, dict[str, float]] = {}
    for pipeline, ops in (("official_pil", official_ops), ("seed_hf_opencv", ours_ops)):
        costs[pipeline] = {}
        for name, (op, images) in ops.items():
            runs = []
            for _ in range(repeats):
                start = time.perf_counter()
                for image in images:
                    op(image)
                runs.append(1000 * (time.perf_counter() - start) / len(images))
            costs[pipeline][name] = statistics.median(runs)
    return costs


def rate(loader, n: int) -> float:
    start = time.perf_counter()
    count = 0
    for batch in loader:
        count += len(batch["pixel_values"]) if isinstance(batch, dict) else len(batch[0])
    assert count == n, (count, n)
    return n / (time.perf_counter() - start)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--num_images", type=int, default=512)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output_json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    import datasets

    with tempfile.TemporaryDirectory() as tmp:
        root, parquet = make_images(Path(tmp), args.num_images)
        baseline_ds = tv_datasets.ImageFolder(str(root), transform=official_transform(args.image_size))
        ours_ds = datasets.load_dataset(
            "parquet", data_files=str(parquet), split="train", cache_dir=f"{tmp}/cache"
        )
        ours_ds = ours_ds.cast_column("image", datasets.Image(decode=False))
        ours_transform = build_ssl_transform("moco_v2", args.image_size, MEAN, STD, backend="opencv")
        pil_transform = build_ssl_transform("moco_v2", args.image_size, MEAN, STD, backend="torchvision")
        pil_ds = ours_ds.with_transform(ImageColumnTransform(pil_transform, "image", 3, label_column="label"))
        ours_ds.set_transform(ImageColumnTransform(ours_transform, "image", 3, label_column="label", to_array=True))
        n = args.num_images
        loaders = {
            "baseline_imagefolder_pil": DataLoader(baseline_ds, batch_size=args.batch_size),
            "seed_hf_parquet_opencv": DataLoader(ours_ds, batch_size=args.batch_size, collate_fn=collate_batch),
            "seed_hf_parquet_torchvision_backend": DataLoader(
                pil_ds, batch_size=args.batch_size, collate_fn=collate_batch
            ),
        }
        # stages alone: decode only, and augmentation of already-decoded images
        files = sorted(str(p) for p in root.rglob("*.jpg"))
        raw = [Path(f).read_bytes() for f in files]
        decoded_pil = [Image.open(io.BytesIO(b)).convert("RGB") for b in raw]
        decoded_arrays = [decode_image(b, 3, stats=None, to_array=True) for b in raw]
        official = official_transform(args.image_size)
        stages = {
            "decode_pil_convert (baseline)": lambda: [Image.open(f).convert("RGB") for f in files],
            "decode_seed_hf": lambda: [decode_image(b, 3, stats=None, to_array=True) for b in raw],
            "augment_official_v1_pil": lambda: [official(im) for im in decoded_pil],
            "augment_seed_hf_opencv": lambda: [ours_transform(a) for a in decoded_arrays],
            "augment_seed_hf_torchvision_backend": lambda: [pil_transform(im) for im in decoded_pil],
        }
        results = {name: [] for name in [*loaders, *stages]}
        for _ in range(args.repeats):  # alternated
            for name, loader in loaders.items():
                results[name].append(rate(loader, n))
            for name, fn in stages.items():
                start = time.perf_counter()
                fn()
                results[name].append(n / (time.perf_counter() - start))
        costs = op_costs(decoded_pil, decoded_arrays, args.image_size, args.repeats)
    median = {name: statistics.median(v) for name, v in results.items()}
    out = {
        "images_per_s_per_core": median,
        "ratio_seed_hf_vs_baseline": median["seed_hf_parquet_opencv"] / median["baseline_imagefolder_pil"],
        "ratio_torchvision_backend_vs_baseline": median["seed_hf_parquet_torchvision_backend"]
        / median["baseline_imagefolder_pil"],
        "num_images": args.num_images,
        "image_size": args.image_size,
        "repeats": args.repeats,
    }
    decode_share = (1 / median["decode_seed_hf"]) / (
        1 / median["decode_seed_hf"] + 1 / median["augment_seed_hf_opencv"]
    )
    out["seed_hf_decode_share_of_time"] = decode_share
    out["ms_per_call_p1"] = costs
    print(json.dumps(out, indent=2))
    print(
        f"\nseed_hf {median['seed_hf_parquet_opencv']:.1f} img/s/core vs baseline {median['baseline_imagefolder_pil']:.1f}"
        f" -> ratio {out['ratio_seed_hf_vs_baseline']:.2f}; decode is {100 * decode_share:.0f}% of seed_hf's per-image time"
    )
    print("ms per call (each op applied every time; moco_v2 applies jitter at p=0.8, grayscale 0.2, blur 0.5):")
    for op in costs["official_pil"]:
        print(f"  {op:22s} official PIL {costs['official_pil'][op]:6.3f}   seed_hf opencv {costs['seed_hf_opencv'][op]:6.3f}")
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
