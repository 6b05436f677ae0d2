"""Labelled images for evaluation (kNN, linear probe, the online kNN monitor, ONNX checks): a
dataset of ``(image, label)`` pairs and the train / evaluation splits of a source (Fashion-MNIST,
imagefolders or a ``datasets`` id), with their class-balanced subsamples."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from seed_hf.data.decode import DecodeStats, cell_name, open_image
from seed_hf.data.subsets import balanced_subset, subset_record

__all__ = ["LabelledImages", "LabelledSplits", "SPLIT_FOLDER_NAMES", "load_labelled_splits"]

# folder names that say which split a folder holds, not which data: such a folder is named by its parent
SPLIT_FOLDER_NAMES = frozenset({"train", "training", "val", "valid", "validation", "test", "images"})


class LabelledImages(Dataset):
    """``(image, label)`` pairs → ``{"pixel_values", "labels"}`` through ``transform``.

    ``images``: uint8 arrays ``(n, h, w[, c])`` (Fashion-MNIST) or any sequence of PIL images or
    image cells (bytes, paths, ``{"bytes", "path"}``: a ``datasets`` column); ``transform=None``
    gives the ``[0, 1]`` tensor of the image. An image that cannot be decoded gives no
    ``pixel_values`` (logged with its file and counted in ``stats``): ``collate_batch`` drops it,
    and :func:`~seed_hf.evaluation.features.extract_features` says how many."""

    def __init__(
        self,
        images,
        labels: Sequence[int] | np.ndarray,
        transform: Callable | None = None,
        stats: DecodeStats | None = None,
    ):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels.")
        self.images = images
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        self.transform = transform
        self.stats = stats if stats is not None else DecodeStats()

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, index: int):
        from PIL import Image

        image = self.images[index]
        return Image.fromarray(np.asarray(image)) if isinstance(image, np.ndarray) else open_image(image)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | None]:
        try:
            image = self.image(index)
        except Exception as error:  # PIL raises many types for bad data
            self.stats.record(False, f"{type(error).__name__}: {error}"[:120], cell_name(self.images[index]))
            return {"pixel_values": None, "labels": self.labels[index]}
        self.stats.record(True)
        if self.transform is None:
            from torchvision.transforms.functional import pil_to_tensor

            x = pil_to_tensor(image).float() / 255.0
        else:
            x = self.transform(image)
        return {"pixel_values": x, "labels": self.labels[index]}


@dataclass
class LabelledSplits:
    """Train and evaluation images with labels, and where they came from (recorded in results).

    The images are uint8 arrays, or a ``datasets`` column (``dataset[image_column]``, read one
    row at a time) or a ``Subset`` of one."""

    name: str
    train_images: Any
    train_labels: np.ndarray
    eval_images: Any
    eval_labels: np.ndarray
    eval_split: str

    train_subset: dict[str, Any] | None = None
    eval_subset: dict[str, Any] | None = None

    def subsample(
        self, max_train: int | None = None, max_eval: int | None = None, seed: int = 0
    ) -> LabelledSplits:
        """A class-balanced, seeded draw of ``max_train`` / ``max_eval`` images of each split
        (:func:`balanced_subset`): never the first N, which on a class-sorted folder (an
        imagefolder, ImageNet) is one class. How each split was drawn is kept in
        ``train_subset`` / ``eval_subset`` (None: the whole split), for the result rows."""

        def draw(images, labels, n, subset):
            if not n or n >= len(labels):
                return images, labels, subset
            keep = balanced_subset(labels, n, seed)
            images = images[keep] if isinstance(images, np.ndarray) else Subset(images, keep.tolist())
            return images, labels[keep], subset_record(labels, keep, seed)

        train_images, train_labels, train_subset = draw(
            self.train_images, self.train_labels, max_train, self.train_subset
        )
        eval_images, eval_labels, eval_subset = draw(
            self.eval_images, self.eval_labels, max_eval, self.eval_subset
        )
        return LabelledSplits(
            self.name,
            train_images,
            train_labels,
            eval_images,
            eval_labels,
            self.eval_split,
            train_subset,
            eval_subset,
        )


def load_labelled_splits(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_dir: str | None = None,
    validation_dir: str | None = None,
    train_split: str = "train",
    validation_split: str | None = None,
    image_column: str = "image",
    label_column: str = "label",
    fashion_mnist_dir: str | None = None,
    *,
    flag_prefix: str = "",
) -> LabelledSplits:
    """Labelled images for kNN / linear-probe evaluation and the online kNN monitor.

    * nothing given: Fashion-MNIST's train → test splits (``fashion_mnist_dir`` or Debian's);
    * ``train_dir`` / ``validation_dir``: imagefolders (one sub-folder per class);
    * ``dataset_name``: a ``datasets`` hub id or local dataset script/folder, its
      ``train_split`` → ``validation_split`` (default: ``validation``, else ``test``), reading
      ``image_column`` and ``label_column``.

    The images of a ``datasets`` source stay undecoded in their table: ``dataset[image_column]``,
    ``datasets``' lazy ``Column``, reads one row when :class:`LabelledImages` asks for it.

    Its errors name a parameter as the flag that sets it, ``--{flag_prefix}{parameter}``
    (``flag_prefix="knn_"``: the kNN monitor's ``--knn_label_column``).
    """
    flag = lambda name: f"--{flag_prefix}{name}"  # noqa: E731
    if dataset_name is None and train_dir is None:
        from seed_hf.data.fashion_mnist import load_fashion_mnist

        (xtr, ytr), (xte, yte) = (load_fashion_mnist(s, fashion_mnist_dir) for s in ("train", "test"))
        return LabelledSplits("fashion_mnist", xtr, ytr, xte, yte, "test")
    import datasets

    if train_dir is not None:
        if validation_dir is None:
            raise ValueError(
                f"{flag('train_dir')} needs {flag('validation_dir')} (the labelled images to evaluate on)."
            )
        train = datasets.load_dataset("imagefolder", data_dir=train_dir, split="train")
        evaluation = datasets.load_dataset("imagefolder", data_dir=validation_dir, split="train")
        # "imagenet/train" is named imagenet; a folder of another name ("photos") by its own name
        folder = Path(train_dir).resolve()
        name = (
            folder.parent.name if folder.name.lower() in SPLIT_FOLDER_NAMES else folder.name
        ) or "imagefolder"
        eval_split = "validation"
        image_column, label_column = "image", "label"
    else:
        splits = datasets.load_dataset(dataset_name, dataset_config_name)
        if train_split not in splits:
            raise ValueError(f"{dataset_name} has no split {train_split!r}; splits: {list(splits)}.")
        if validation_split is None:
            validation_split = next((s for s in ("validation", "test") if s in splits), None)
            if validation_split is None:
                raise ValueError(
                    f"{dataset_name} has no validation/test split; pass {flag('validation_split')} ({list(splits)})."
                )
        if validation_split not in splits:
            raise ValueError(f"{dataset_name} has no split {validation_split!r}; splits: {list(splits)}.")
        train, evaluation = splits[train_split], splits[validation_split]
        name, eval_split = dataset_name, validation_split
    for split_name, split in (("train", train), ("evaluation", evaluation)):
        if image_column not in split.column_names:
            from seed_hf.data.loading import image_like_columns

            candidates = image_like_columns(split.column_names, split.features)
            if not candidates:
                raise ValueError(
                    f"The {split_name} data of {name} has no image column: its columns are {split.column_names} "
                    "and none of them holds images (encoded bytes, a {'bytes', 'path'} struct or a datasets Image "
                    "feature). Evaluation needs labelled images: pass a source that has them."
                )
            raise ValueError(
                f"The {split_name} data of {name} has no column {image_column!r}; its column(s) {candidates} look "
                f"like images (columns: {split.column_names}): pass the one that holds them as {flag('image_column')}."
            )
        if label_column not in split.column_names:
            raise ValueError(
                f"The {split_name} data of {name} has no column {label_column!r}; its columns are "
                f"{split.column_names}. Pass the column that holds the labels as {flag('label_column')}."
            )
    # the cells undecoded (bytes and path): LabelledImages decodes them, skipping and naming a corrupt file
    train, evaluation = (
        split.cast_column(image_column, datasets.Image(decode=False))
        if isinstance(split.features.get(image_column), datasets.Image)
        else split
        for split in (train, evaluation)
    )
    return LabelledSplits(
        name,
        train[image_column],
        # the whole column at once ([:]): np.asarray would read a lazy Column row by row
        np.asarray(train[label_column][:]),
        evaluation[image_column],
        np.asarray(evaluation[label_column][:]),
        eval_split,
    )
