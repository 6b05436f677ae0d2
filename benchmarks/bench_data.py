#!/usr/bin/env python
"""Input-pipeline throughput on real photographs: decode + SSL augmentation, images/s per core.

The images are the real-photo set of ``make_photo_set.py`` (natural photographs with
ImageNet-1k's sizes and JPEG statistics), built into a cache folder on first use. For each
preset (``moco_v2``, ``moco_v1``, ``simclr``, ``swav``) three pipelines run over the same JPEG
bytes, alternated, median of --repeats, one process and one thread (so rates are per core):

* ``official_pil``: PIL decode + the torchvision-v1 transforms of the official code (MoCo's
  ``main_moco.py``, the SimCLR/SwAV recipes, PIL Gaussian blur);
* ``opencv_full_decode``: seed_hf without crop-aware decoding: libjpeg-turbo full decode to an
  ndarray (``decode_image(..., to_array=True)``) + ``build_ssl_transform`` (opencv backend);
* ``opencv_crop_aware``: seed_hf's default for JPEG bytes: the random crop drawn from the
  header, DCT-scaled decode of what the crop needs (``seed_hf.data.crop_decode``), same transform.

For ``moco_v2`` it also times the stages alone (decode; augmentation of decoded images; full
decode + crop against crop-aware decode + crop), the end-to-end loaders (parquet →
``datasets`` → DataLoader for seed_hf, ``torchvision.datasets.ImageFolder`` for the official
pipeline) and ms per op.

    python benchmarks/bench_data.py                   # 1000 photos, 224 px, ~2 min
    python benchmarks/bench_data.py --num_images 200 --repeats 2 --presets moco_v2
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import DataLoader
from torchvision import datasets as tv_datasets
from torchvision import transforms as T

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_photo_set import ensure_photo_set  # noqa: E402

from seed_hf.data import crop_decode, opencv_kernels  # noqa: E402
from seed_hf.data.decode import collate_batch, decode_image  # noqa: E402
from seed_hf.data.rows import ImageColumnTransform  # noqa: E402
from seed_hf.data.transforms import RandomGaussianBlur, ToNormalizedTensor, build_ssl_transform  # noqa: E402

PRESETS = ("moco_v2", "moco_v1", "simclr", "swav")
MEAN, STD = IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD


class PilGaussianBlur:
    """MoCo-v2's blur (moco/loader.py): PIL ImageFilter with sigma ~ U[0.1, 2.0]."""

    def __call__(self, image):
        return image.filter(ImageFilter.GaussianBlur(radius=float(np.random.uniform(0.1, 2.0))))


def official_transform(preset: str, size: int) -> T.Compose:
    """The official torchvision-v1 training transform (PIL kernels) of ``preset``."""
    blur = T.RandomApply([PilGaussianBlur()], p=0.5)
    if preset == "moco_v2":
        ops = [
            T.RandomResizedCrop(size, scale=(0.2, 1.0)),
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            T.RandomGrayscale(p=0.2),
            blur,
            T.RandomHorizontalFlip(),
        ]
    elif preset == "moco_v1":
        ops = [
            T.RandomResizedCrop(size, scale=(0.2, 1.0)),
            T.RandomGrayscale(p=0.2),
            T.ColorJitter(0.4, 0.4, 0.4, 0.4),
            T.RandomHorizontalFlip(),
        ]
    elif preset in ("simclr", "swav"):
        ops = [
            T.RandomResizedCrop(size, scale=(0.08, 1.0) if preset == "simclr" else (0.14, 1.0)),
            T.RandomHorizontalFlip(),
            T.RandomApply([T.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8),
            T.RandomGrayscale(p=0.2),
            blur,
        ]
    else:
        raise ValueError(f"no official transform for {preset!r}; choose from {PRESETS}")
    return T.Compose([*ops, T.ToTensor(), T.Normalize(MEAN, STD)])


def pil_decode(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")  # torchvision's pil_loader


def encoded(raw: list[bytes]):
    """Fresh ``EncodedJpeg`` wrappers (header parse included in the timing, no decode cache)."""
    return (crop_decode.encoded_jpeg(b, 3) for b in raw)


def op_costs(raw: list[bytes], decoded_pil: list, decoded_arrays: list, size: int, repeats: int) -> dict:
    """Milliseconds per call of each ``moco_v2`` op, applied every time (p=1), for the official
    PIL pipeline and seed_hf's opencv backend: crops on the decoded images (and crop-aware
    decode + crop from the bytes), the other ops on ``size``-px crops of them."""
    pil_crops = [im.resize((size, size), Image.BILINEAR) for im in decoded_pil]
    array_crops = [np.asarray(im).copy() for im in pil_crops]
    official_crop = T.RandomResizedCrop(size, scale=(0.2, 1.0))
    aware_crop = crop_decode.CropAwareRandomResizedCrop(size, scale=(0.2, 1.0))
    official_ops = {
        "random_resized_crop": (official_crop, decoded_pil),
        "decode_and_crop": (lambda b: official_crop(pil_decode(b)), raw),
        "color_jitter": (T.ColorJitter(0.4, 0.4, 0.4, 0.1), pil_crops),
        "grayscale": (T.Grayscale(3), pil_crops),
        "gaussian_blur": (PilGaussianBlur(), pil_crops),
        "horizontal_flip": (T.RandomHorizontalFlip(1.0), pil_crops),
        "to_tensor_normalize": (T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)]), pil_crops),
    }
    ours_ops = {
        "random_resized_crop": (
            opencv_kernels.ArrayRandomResizedCrop(size, scale=(0.2, 1.0)),
            decoded_arrays,
        ),
        "decode_and_crop": (lambda b: aware_crop(crop_decode.encoded_jpeg(b, 3)), raw),
        "color_jitter": (opencv_kernels.ArrayColorJitter(0.4, 0.4, 0.4, 0.1), array_crops),
        "grayscale": (opencv_kernels.ArrayRandomGrayscale(1.0), array_crops),
        "gaussian_blur": (RandomGaussianBlur(kernel_size=23), array_crops),
        "horizontal_flip": (opencv_kernels.ArrayRandomHorizontalFlip(1.0), array_crops),
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
    parser.add_argument("--num_images", type=int, default=1000, help="size of the real-photo set")
    parser.add_argument("--photo_dir", default=None, help="folder of the set (built there when missing)")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=PRESETS)
    parser.add_argument("--no_loaders", action="store_true", help="skip the end-to-end DataLoader rows")
    parser.add_argument("--output_json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    import datasets

    manifest = ensure_photo_set(args.num_images, cache_dir=args.photo_dir)
    raw = [p.read_bytes() for p in sorted(Path(manifest["imagefolder"]).rglob("*.jpg"))]
    n, size = len(raw), args.image_size

    runs = {}
    for preset in args.presets:
        official = official_transform(preset, size)
        ours = build_ssl_transform(preset, size, MEAN, STD, backend="opencv")
        runs[f"{preset}/official_pil"] = lambda t=official: [t(pil_decode(b)) for b in raw]
        runs[f"{preset}/opencv_full_decode"] = lambda t=ours: [
            t(decode_image(b, 3, stats=None, to_array=True)) for b in raw
        ]
        runs[f"{preset}/opencv_crop_aware"] = lambda t=ours: [t(e) for e in encoded(raw)]
    decoded_pil = [pil_decode(b) for b in raw]
    decoded_arrays = [decode_image(b, 3, stats=None, to_array=True) for b in raw]
    official = official_transform("moco_v2", size)
    ours = build_ssl_transform("moco_v2", size, MEAN, STD, backend="opencv")
    full_crop = opencv_kernels.ArrayRandomResizedCrop(size, scale=(0.2, 1.0))
    aware_crop = crop_decode.CropAwareRandomResizedCrop(size, scale=(0.2, 1.0))
    runs.update(
        {
            "stage/decode_pil": lambda: [pil_decode(b) for b in raw],
            "stage/decode_opencv": lambda: [decode_image(b, 3, stats=None, to_array=True) for b in raw],
            "stage/augment_official_pil": lambda: [official(im) for im in decoded_pil],
            "stage/augment_opencv": lambda: [ours(a) for a in decoded_arrays],
            "stage/full_decode_then_crop": lambda: [
                full_crop(decode_image(b, 3, stats=None, to_array=True)) for b in raw
            ],
            "stage/crop_aware_decode_and_crop": lambda: [aware_crop(e) for e in encoded(raw)],
        }
    )
    loaders = {}
    if not args.no_loaders:
        parquet = datasets.load_dataset(
            "parquet",
            data_files=manifest["parquet_files"],
            split="train",
            cache_dir=str(Path(manifest["imagefolder"]).parent / "hf_cache"),
        ).cast_column("image", datasets.Image(decode=False))
        loaders["loader/official_imagefolder_pil"] = DataLoader(
            tv_datasets.ImageFolder(manifest["imagefolder"], transform=official), batch_size=args.batch_size
        )
        for name, aware in (("full_decode", False), ("crop_aware", True)):
            apply = ImageColumnTransform(ours, "image", 3, "label", to_array=True, crop_aware=aware)
            loaders[f"loader/seed_hf_parquet_{name}"] = DataLoader(
                parquet.with_transform(apply), batch_size=args.batch_size, collate_fn=collate_batch
            )
    results: dict[str, list[float]] = {name: [] for name in [*runs, *loaders]}
    for _ in range(args.repeats):  # alternated, so the drifts of a shared machine hit all alike
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            results[name].append(n / (time.perf_counter() - start))
        for name, loader in loaders.items():
            results[name].append(rate(loader, n))
    costs = op_costs(raw, decoded_pil, decoded_arrays, size, args.repeats)
    median = {name: statistics.median(v) for name, v in results.items()}

    def group(prefix: str) -> dict[str, float]:
        return {k.split("/", 1)[1]: v for k, v in median.items() if k.startswith(prefix + "/")}

    presets = {}
    for preset in args.presets:
        row = group(preset)
        row["crop_aware_vs_full_decode"] = row["opencv_crop_aware"] / row["opencv_full_decode"]
        row["crop_aware_vs_official"] = row["opencv_crop_aware"] / row["official_pil"]
        row["full_decode_vs_official"] = row["opencv_full_decode"] / row["official_pil"]
        presets[preset] = row
    decode_ms, augment_ms = 1000 / median["stage/decode_opencv"], 1000 / median["stage/augment_opencv"]
    out = {
        "photo_set": {k: manifest[k] for k in ("num_images", "mean_width", "mean_height", "mean_kilobytes")},
        "image_size": size,
        "repeats": args.repeats,
        "images_per_s_per_core": presets,
        "moco_v2_stages_images_per_s": group("stage"),
        "moco_v2_opencv_full_decode_ms": {
            "decode": decode_ms,
            "augment": augment_ms,
            "decode_share": decode_ms / (decode_ms + augment_ms),
        },
        "moco_v2_loaders_images_per_s": group("loader"),
        "ms_per_call_p1": costs,
    }
    print(json.dumps(out, indent=2))
    print(
        f"\nimg/s per core, {size} px, {n} photos (mean {manifest['mean_width']:.0f}x{manifest['mean_height']:.0f} px,"
        f" {manifest['mean_kilobytes']:.0f} KB):"
    )
    for preset, row in presets.items():
        print(
            f"  {preset:8s} official PIL {row['official_pil']:6.1f}  opencv full decode {row['opencv_full_decode']:6.1f}"
            f"  crop-aware {row['opencv_crop_aware']:6.1f}  -> x{row['crop_aware_vs_full_decode']:.2f} vs full decode,"
            f" x{row['crop_aware_vs_official']:.2f} vs official"
        )
    split = out["moco_v2_opencv_full_decode_ms"]
    print(
        f"moco_v2, opencv full decode: decode {split['decode']:.2f} ms + augment {split['augment']:.2f} ms per image"
    )
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
