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

from seed_hf.data import build_ssl_transform, collate_batch, decode_image, hf_transform, load_fashion_mnist

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
        pil_ds = ours_ds.with_transform(hf_transform(pil_transform, "image", 3, label_column="label"))
        ours_ds.set_transform(hf_transform(ours_transform, "image", 3, label_column="label", to_array=True))
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
    print(json.dumps(out, indent=2))
    print(
        f"\nseed_hf {median['seed_hf_parquet_opencv']:.1f} img/s/core vs baseline {median['baseline_imagefolder_pil']:.1f}"
        f" -> ratio {out['ratio_seed_hf_vs_baseline']:.2f}; decode is {100 * decode_share:.0f}% of seed_hf's per-image time"
    )
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
