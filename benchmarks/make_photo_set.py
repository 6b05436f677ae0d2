#!/usr/bin/env python
"""A real-photo JPEG benchmark set with ImageNet's statistics, built offline and seeded.

The content is natural photographs shipped inside scikit-image (``skimage.data``: astronaut,
coffee, chelsea, rocket, hubble_deep_field, immunohistochemistry, retina, the stereo
motorcycle pair, and the grayscale camera/moon/brick/grass/gravel photos), randomly cropped,
rescaled, flipped and re-encoded so that sizes and compression look like ImageNet-1k's
training set: long side 500 px for most images (a log-normal spread for the rest, 200 to
1600 px), aspect ratios 4:3 / 3:2 / 1:1 / free, one in five portrait, JPEG quality 85 to 95
with 4:2:0 chroma (PIL's default), about 2% single-channel grayscale JPEGs. The label is the
index of the source photograph.

Written three ways over the same bytes:

* ``parquet/train-0000n-of-0000N.parquet``: ``image`` {bytes, path} + ``label``, with the
  ``datasets`` feature metadata (``Image`` / ``ClassLabel``), loadable with
  ``load_dataset("parquet", data_files=...)``;
* ``wds/imagenet1k-train-000n.tar``: webdataset shards in the ``timm/imagenet-1k-wds`` layout
  (``{__key__}.jpg``, ``{__key__}.cls`` with the label as text);
* ``imagefolder/{label}/{__key__}.jpg``: for ``torchvision.datasets.ImageFolder`` baselines.

Deterministic: the same ``--seed`` and ``--num_images`` give byte-identical files (with one
libjpeg build).

    python benchmarks/make_photo_set.py --output_dir /tmp/photo_set --num_images 1000
"""

from __future__ import annotations

import argparse
import io
import json
import math
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

# (skimage.data function, output channels) – natural photographs only (no drawings, no text)
SOURCES = (
    ("astronaut", 3),
    ("coffee", 3),
    ("chelsea", 3),
    ("rocket", 3),
    ("hubble_deep_field", 3),
    ("immunohistochemistry", 3),
    ("retina", 3),
    ("motorcycle_left", 3),
    ("motorcycle_right", 3),
    ("camera", 1),
    ("moon", 1),
    ("brick", 1),
    ("grass", 1),
    ("gravel", 1),
)
GRAYSCALE_FRACTION = 0.02  # ImageNet-1k train: ~22k of 1.28M JPEGs are single-channel
ASPECTS = ((4 / 3, 0.45), (3 / 2, 0.25), (1.0, 0.10), (None, 0.20))  # None: uniform in [1, 2]
MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def load_sources() -> list[tuple[str, Image.Image]]:
    """The source photographs as PIL images (RGB, or L for the grayscale ones)."""
    try:
        from skimage import data as skdata
    except ImportError as error:
        raise ImportError(
            "The real-photo benchmark set is cut from scikit-image's sample photographs: "
            "pip install 'scikit-image>=0.24' (or pip install -e '.[dev]')."
        ) from error
    sources = []
    for name, channels in SOURCES:
        if name.startswith("motorcycle_"):
            left, right, _ = skdata.stereo_motorcycle()
            array = left if name.endswith("left") else right
        else:
            array = getattr(skdata, name)()
        image = Image.fromarray(np.ascontiguousarray(array))
        sources.append((name, image.convert("RGB" if channels == 3 else "L")))
    return sources


def sample_size(rng: np.random.Generator) -> tuple[int, int]:
    """(width, height) drawn like ImageNet-1k's: mostly 500 px on the long side."""
    long_side = 500 if rng.random() < 0.75 else int(np.clip(rng.lognormal(math.log(500), 0.45), 200, 1600))
    aspects, weights = zip(*ASPECTS)
    aspect = aspects[rng.choice(len(aspects), p=weights)] or rng.uniform(1.0, 2.0)
    short_side = max(64, int(round(long_side / aspect)))
    return (short_side, long_side) if rng.random() < 0.2 else (long_side, short_side)


def make_photo(source: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, int]:
    """A random crop (30–100% of the area, the target's aspect ratio) of ``source``, flipped
    with p=0.5 and resized (Lanczos) to an ImageNet-like size; returns it and a JPEG quality."""
    width, height = sample_size(rng)
    src_w, src_h = source.size
    # at least the output's area where the source allows (at most 1.25x upsampling): enlarged
    # crops are smoother than photographs and compress (and decode) unlike ImageNet's
    min_fraction = min(1.0, width * height / (1.25**2 * src_w * src_h))
    area = src_w * src_h * rng.uniform(max(0.3, min_fraction), 1.0)
    crop_w = min(src_w, int(round(math.sqrt(area * width / height))))
    crop_h = min(src_h, int(round(crop_w * height / width)))
    left = int(rng.integers(0, src_w - crop_w + 1))
    top = int(rng.integers(0, src_h - crop_h + 1))
    photo = source.crop((left, top, left + crop_w, top + crop_h))
    if rng.random() < 0.5:
        photo = photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return photo.resize((width, height), Image.Resampling.LANCZOS), int(rng.integers(85, 96))


def _hf_metadata(class_names: list[str]) -> dict[bytes, bytes]:
    features = {"image": {"_type": "Image"}, "label": {"_type": "ClassLabel", "names": class_names}}
    return {b"huggingface": json.dumps({"info": {"features": features}}).encode()}


def build_photo_set(
    output_dir: str | Path, num_images: int = 1000, seed: int = 0, num_shards: int = 4
) -> dict:
    """Writes the set into ``output_dir`` (parquet, webdataset and imagefolder copies) and
    returns its manifest (also written to ``output_dir/manifest.json``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if num_images < 1 or num_shards < 1:
        raise ValueError(f"num_images and num_shards must be >= 1, got {num_images} and {num_shards}.")
    num_shards = min(num_shards, num_images)
    output_dir = Path(output_dir)
    sources = load_sources()
    class_names = [name for name, _ in sources]
    color = [i for i, (_, image) in enumerate(sources) if image.mode == "RGB"]
    gray = [i for i, (_, image) in enumerate(sources) if image.mode == "L"]
    rng = np.random.default_rng(seed)
    records = []
    for index in range(num_images):
        label = int(rng.choice(gray if rng.random() < GRAYSCALE_FRACTION else color))
        photo, quality = make_photo(sources[label][1], rng)
        buffer = io.BytesIO()
        photo.save(buffer, format="JPEG", quality=quality)
        records.append((f"{class_names[label]}_{index:06d}", label, buffer.getvalue(), photo.size))

    for sub in ("parquet", "wds", "imagefolder"):
        (output_dir / sub).mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, num_images, num_shards + 1).astype(int)
    parquet_files, tar_files = [], []
    for shard, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
        rows = records[start:stop]
        table = pa.table(
            {
                "image": [{"bytes": data, "path": f"{key}.jpg"} for key, _, data, _ in rows],
                "label": pa.array([label for _, label, _, _ in rows], pa.int64()),
            }
        ).replace_schema_metadata(_hf_metadata(class_names))
        parquet = output_dir / "parquet" / f"train-{shard:05d}-of-{num_shards:05d}.parquet"
        pq.write_table(table, parquet)
        parquet_files.append(str(parquet))
        tar_path = output_dir / "wds" / f"imagenet1k-train-{shard:04d}.tar"
        with tarfile.open(tar_path, "w", format=tarfile.USTAR_FORMAT) as tar:
            for key, label, data, _ in rows:
                for suffix, payload in ((".jpg", data), (".cls", str(label).encode())):
                    info = tarfile.TarInfo(key + suffix)
                    info.size, info.mtime, info.mode = len(payload), 0, 0o644  # mtime 0: reproducible
                    tar.addfile(info, io.BytesIO(payload))
        tar_files.append(str(tar_path))
    for key, label, data, _ in records:
        folder = output_dir / "imagefolder" / f"{label:02d}"
        folder.mkdir(exist_ok=True)
        (folder / f"{key}.jpg").write_bytes(data)

    sizes = np.array([size for *_, size in records], dtype=np.float64)
    manifest = {
        "format_version": FORMAT_VERSION,
        "num_images": num_images,
        "seed": seed,
        "class_names": class_names,
        "parquet_files": parquet_files,
        "webdataset_files": tar_files,
        "imagefolder": str(output_dir / "imagefolder"),
        "mean_width": float(sizes[:, 0].mean()),
        "mean_height": float(sizes[:, 1].mean()),
        "mean_kilobytes": float(np.mean([len(data) for _, _, data, _ in records]) / 1024),
        "grayscale_images": sum(label in gray for _, label, _, _ in records),
    }
    (output_dir / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def default_cache_dir(num_images: int, seed: int) -> Path:
    """``$SEED_HF_CACHE`` (default ``~/.cache/seed_hf``)``/photo_set_v{version}_n{n}_s{seed}``."""
    import os

    root = Path(os.environ.get("SEED_HF_CACHE", Path.home() / ".cache" / "seed_hf"))
    return root / f"photo_set_v{FORMAT_VERSION}_n{num_images}_s{seed}"


def ensure_photo_set(
    num_images: int = 1000, seed: int = 0, cache_dir: str | Path | None = None, num_shards: int | None = None
) -> dict:
    """The manifest of the set in ``cache_dir`` (default: ``default_cache_dir``), built there
    first when missing or incomplete (or, with ``num_shards``, cut into another shard count;
    default 4)."""
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir(num_images, seed)
    manifest_path = folder / MANIFEST
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        files = [*manifest["parquet_files"], *manifest["webdataset_files"]]
        if (
            manifest.get("format_version") == FORMAT_VERSION
            and (manifest["num_images"], manifest["seed"]) == (num_images, seed)
            and num_shards in (None, len(manifest["webdataset_files"]))
            and all(Path(f).is_file() for f in files)
        ):
            return manifest
    return build_photo_set(folder, num_images, seed, num_shards or 4)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output_dir", default=None, help="default: the cache folder bench_data.py uses")
    parser.add_argument("--num_images", type=int, default=1000)
    parser.add_argument("--num_shards", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    output_dir = args.output_dir or default_cache_dir(args.num_images, args.seed)
    manifest = build_photo_set(output_dir, args.num_images, args.seed, args.num_shards)
    print(json.dumps({k: v for k, v in manifest.items() if not k.endswith("_files")}, indent=2))
    return manifest


if __name__ == "__main__":
    main()
