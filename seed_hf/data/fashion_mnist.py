"""Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (idx files, offline): the
embedded default source of the demo and the small-scale study.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

__all__ = ["FASHION_MNIST_DIR", "FASHION_MNIST_MEAN", "FASHION_MNIST_STD", "load_fashion_mnist"]


FASHION_MNIST_DIR = os.environ.get("SEED_HF_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_MEAN, FASHION_MNIST_STD = [0.286], [0.353]


def _read_idx(path: Path) -> np.ndarray:
    """Reads an (optionally gzipped) idx file: big-endian dims after a 4-byte magic."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte idx file.")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape).copy()


def load_fashion_mnist(
    split: str = "train", root: str | os.PathLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Returns ``(images (n, 28, 28) uint8, labels (n,) int64)`` of a Fashion-MNIST split."""
    if split not in FASHION_MNIST_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    root = Path(root or FASHION_MNIST_DIR)
    image_file, label_file = (root / name for name in FASHION_MNIST_FILES[split])
    for file in (image_file, label_file):
        if not file.is_file() and not file.with_suffix("").is_file():
            raise FileNotFoundError(
                f"Fashion-MNIST not found at {root} (missing {file.name}). Install it with "
                "`apt-get install -y dataset-fashion-mnist`, set SEED_HF_FASHION_MNIST_DIR, or pass "
                "--dataset_name / --train_dir (another source)."
            )
    pick = lambda f: f if f.is_file() else f.with_suffix("")  # noqa: E731
    return _read_idx(pick(image_file)), _read_idx(pick(label_file)).astype(np.int64)
