"""Frozen-feature evaluation: the Hub preprocessing, batched feature extraction, weighted kNN
and a linear probe.

Preprocessing is timm's evaluation transform built from a ``data_config`` (the
``pretrained_cfg`` an exported student carries): the exact transform ``AutoImageProcessor``,
``pipeline("image-feature-extraction")`` and ``timm.data.create_transform`` apply, so the numbers
measured here are the numbers a Hub user reproduces.

Weighted kNN follows Wu et al. 2018 (InstDisc), as used by MoCo / SEED monitors: cosine
similarities to the k nearest training features, votes weighted by ``exp(sim / τ)``.
The linear probe is multinomial logistic regression on standardised frozen features, fitted with
full-batch preconditioned accelerated gradient in float64 (a smooth function of the features: the
same figure on any CPU), its L2 strength chosen on a held-out 10% of the train split.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from seed_hf.data.decode import SKIPPED_KEY, DecodeStats, cell_name, collate_batch, convert_image, open_image
from seed_hf.evaluation.subsets import balanced_subset, subset_record
from seed_hf.models.backbones import pooled_features
from seed_hf.models.losses import check_temperature

__all__ = [
    "EVAL_INTERPOLATION",
    "KnnMonitor",
    "PIXEL_BASELINES",
    "LINEAR_PROBE_PROTOCOL",
    "EncoderSpec",
    "PooledBackbone",
    "LabelledImages",
    "LabelledSplits",
    "load_labelled_splits",
    "eval_data_config",
    "eval_transform",
    "load_encoder",
    "extract_features",
    "weighted_knn_predict",
    "knn_accuracy",
    "linear_probe",
    "topk_accuracy",
    "label_subset",
    "balanced_subset",
    "subset_record",
]

logger = logging.getLogger(__name__)

EVAL_INTERPOLATION = "bilinear"
# raw pixels: cosine kNN on [0, 1] pixels; centred: minus the train split's mean image
PIXEL_BASELINES = ("pixels", "pixels_centred")
# full-batch iterations of each linear-probe fit (linear_probe's max_iter)
PROBE_ITERATIONS = 300
LINEAR_PROBE_PROTOCOL = (
    f"multinomial logistic regression on standardised frozen features, {PROBE_ITERATIONS} full-batch iterations of "
    "Nesterov's "
    "accelerated gradient preconditioned by (XᵀX/n + λI)⁻¹ in float64 (the same figure on any CPU), L2 weight λ "
    "chosen from {1e-6, 1e-5, 1e-4, 1e-3, 1e-2} on a held-out 10% of the train split, then refit on all of it"
)


def eval_data_config(
    in_chans: int,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    crop_pct: float = 1.0,
    interpolation: str = EVAL_INTERPOLATION,
) -> dict[str, Any]:
    """timm ``data_config`` of the evaluation transform: resize the short side to
    ``image_size / crop_pct``, centre-crop ``image_size``, normalise. Exports write it as their
    ``pretrained_cfg`` and evaluation builds its transform from it: one definition for both."""
    return {
        "input_size": (int(in_chans), int(image_size), int(image_size)),
        "interpolation": interpolation,
        "mean": tuple(float(m) for m in mean),
        "std": tuple(float(s) for s in std),
        "crop_pct": float(crop_pct),
        "crop_mode": "center",
    }


def eval_transform(data_config: dict[str, Any]) -> Callable:
    """``timm.data.create_transform(**data_config)`` on PIL images, converted first to the
    channels the model takes as training converts them (:func:`convert_image`: ``L`` for 1
    channel, ``RGB`` for 3, a 16-bit image scaled by its maximum rather than clipped to white)."""
    from timm.data import create_transform

    transform = create_transform(**data_config, is_training=False)
    in_chans = data_config["input_size"][0]

    def apply(image):
        return transform(convert_image(image, in_chans))

    return apply


@dataclass
class EncoderSpec:
    """A frozen feature extractor and the preprocessing it is evaluated with.

    ``module`` is ``None`` for the pixel baselines (``data_config`` None: the image as a
    ``[0, 1]`` tensor at its own size)."""

    name: str
    module: nn.Module | None
    data_config: dict[str, Any] | None
    num_parameters: int = 0


class PooledBackbone(nn.Module):
    """A timm backbone as ``pixel_values (n, c, h, w) → pooled features (n, pooled_width)``."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return pooled_features(self.backbone, pixel_values)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def load_encoder(name_or_path: str) -> EncoderSpec:
    """Loads the backbone to evaluate: a seed_hf MoCo run / teacher folder (query encoder), a
    SEED run (student), or a timm-format folder (an exported student, with its own
    ``pretrained_cfg``). ``"pixels"`` / ``"pixels_centred"`` evaluate raw pixels."""
    if name_or_path in PIXEL_BASELINES:
        return EncoderSpec(name_or_path, None, None)
    path = Path(name_or_path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{name_or_path!r} is not a model folder with a config.json.")
    config = json.loads(config_file.read_text())
    model_type = config.get("model_type")
    if model_type == "seed_moco":
        from seed_hf.models.modeling_moco import load_query_encoder

        backbone, _, c = load_query_encoder(path)
    elif model_type == "seed_distillation":
        from seed_hf.models.modeling_seed import SeedForDistillation

        model = SeedForDistillation.from_pretrained(path)
        backbone, c = model.student, model.config
    else:  # a timm-format folder: evaluate it exactly as timm / transformers users load it
        import timm
        from timm.data import resolve_model_data_config

        backbone = timm.create_model(f"local-dir:{path}", pretrained=True, num_classes=0)
        data_config = resolve_model_data_config(backbone)
        return EncoderSpec(str(path), PooledBackbone(backbone).eval(), data_config, _count(backbone))
    data_config = eval_data_config(c.in_chans, c.image_size, c.image_mean, c.image_std)
    return EncoderSpec(str(path), PooledBackbone(backbone).eval(), data_config, _count(backbone))


class LabelledImages(Dataset):
    """``(image, label)`` pairs → ``{"pixel_values", "labels"}`` through ``transform``.

    ``images``: uint8 arrays ``(n, h, w[, c])`` (Fashion-MNIST) or any sequence of PIL images or
    image cells (bytes, paths, ``{"bytes", "path"}``: a ``datasets`` column); ``transform=None``
    gives the ``[0, 1]`` tensor of the image. An image that cannot be decoded gives no
    ``pixel_values`` (logged with its file and counted in ``stats``): :func:`collate_batch` drops it,
    and :func:`extract_features` says how many."""

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


def _collate_or_count(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """:func:`collate_batch`, or only the count of a batch none of whose images decoded."""
    if all(e.get("pixel_values") is None for e in examples):
        return {SKIPPED_KEY: torch.tensor([len(examples)])}
    return collate_batch(examples)


@torch.no_grad()
def extract_features(
    encoder: nn.Module | None,
    dataset: Dataset,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    desc: str = "features",
    batch_transform=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Runs ``encoder`` over ``dataset`` (items with ``pixel_values`` and ``labels``).

    ``batch_transform`` is applied to each stacked batch ``(b, c, h, w)`` (torchvision v2
    transforms accept batches). Returns ``(features (n, d) float32 on CPU, labels (n,) long)``;
    ``encoder=None`` flattens pixels. Images that cannot be decoded are left out of both (each
    named in the log) and their number is logged.
    """
    loader = DataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, shuffle=False, collate_fn=_collate_or_count
    )
    if encoder is not None:
        encoder = encoder.to(device).eval()
    feats, labels = [], []
    skipped = 0
    for batch in tqdm(loader, desc=desc, leave=False):
        skipped += int(batch[SKIPPED_KEY].sum()) if SKIPPED_KEY in batch else 0
        if "pixel_values" not in batch:  # every image of this batch was undecodable
            continue
        x = batch["pixel_values"]
        if batch_transform is not None:
            x = batch_transform(x)
        x = x.to(device)
        out = x.flatten(1) if encoder is None else encoder(x)
        feats.append(out.float().cpu())
        labels.append(batch["labels"])
    if skipped:
        logger.warning(
            f"{desc}: left out {skipped} undecodable image(s) of {len(dataset)} (named above): the features "
            f"and labels hold the other {len(dataset) - skipped}."
        )
    if not feats:
        raise ValueError(f"{desc}: none of the {len(dataset)} images could be decoded (named above).")
    return torch.cat(feats), torch.cat(labels)


@torch.no_grad()
def weighted_knn_predict(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    k: int = 200,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Class scores ``(n_test, num_classes)`` of the weighted kNN classifier.

    Features are L2-normalised; test features are processed ``chunk_size`` rows at a time,
    so memory is ``chunk_size × n_train`` (1.28M × 1024 fp32 ≈ 5 GB: lower it for ImageNet).
    """
    if k < 1:
        raise ValueError(f"k must be ≥ 1, got {k}.")
    check_temperature("temperature", temperature)
    num_classes = num_classes or int(train_labels.max()) + 1
    k = min(k, train_features.shape[0])
    train = F.normalize(train_features.float(), dim=1)
    scores = []
    for start in range(0, test_features.shape[0], chunk_size):
        test = F.normalize(test_features[start : start + chunk_size].float(), dim=1)
        sims, idx = (test @ train.T).topk(k, dim=1)  # c x k
        weights = (sims / temperature).exp()
        votes = torch.zeros(test.shape[0], num_classes, dtype=weights.dtype, device=weights.device)
        votes.scatter_add_(1, train_labels[idx], weights)
        scores.append(votes)
    return torch.cat(scores)


def topk_accuracy(
    scores: torch.Tensor, labels: torch.Tensor, topk: tuple[int, ...] = (1, 5)
) -> dict[str, float]:
    """Top-k accuracies in percent from class scores ``(n, classes)``."""
    out = {}
    for k in topk:
        k_eff = min(k, scores.shape[1])
        hit = (scores.topk(k_eff, dim=1).indices == labels[:, None]).any(dim=1)
        out[f"top{k}"] = 100.0 * hit.float().mean().item()
    return out


def knn_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    k: int = 200,
    temperature: float = 0.07,
) -> dict[str, float]:
    """Weighted kNN top-1 / top-5 (percent)."""
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    scores = weighted_knn_predict(train_features, train_labels, test_features, k, temperature, num_classes)
    return topk_accuracy(scores, test_labels)


def _fit_logistic(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    l2: float,
    max_iter: int,
    init: nn.Linear | None = None,
) -> nn.Linear:
    """Multinomial logistic regression ``mean CE + l2/2 ||W||²`` (bias unpenalised; scikit-learn's
    C = 1 / (n · l2)) by ``max_iter`` iterations of Nesterov's accelerated gradient (FISTA momentum)
    with step 1, the weights' gradient preconditioned by ``M = (XᵀX/n + l2·I)⁻¹``, from ``init``
    (zeros without one), in the dtype of ``x`` (float64 from :func:`linear_probe`).

    Why this solver: the cross-entropy's Hessian is at most ½·[X, 1]ᵀ[X, 1]/n ⊗ I ≤
    diag(XᵀX/n, 1) ⊗ I, so with ``M`` on the weights and 1 on the bias every curvature is ≤ 1 and
    step 1 needs no line search: each iterate is a smooth function of the features, and features
    that differ in their last bits (another CPU's rounding, the rows summed in another order) give
    the same classifier to within rounding. A line-search method (L-BFGS) branches on those bits and
    ends its fixed budget elsewhere.

    Shape: ``x (n, d)``, ``y (n,)``."""
    n, d = x.shape
    precond = torch.cholesky_inverse(
        torch.linalg.cholesky(x.T @ x / n + l2 * torch.eye(d, dtype=x.dtype, device=x.device))
    )  # (d, d)
    targets = F.one_hot(y, num_classes).to(x.dtype)  # (n, C)
    if init is not None:
        weight, bias = init.weight.detach().to(x.dtype).clone(), init.bias.detach().to(x.dtype).clone()
    else:
        weight, bias = x.new_zeros(num_classes, d), x.new_zeros(num_classes)
    look_w, look_b, t = weight, bias, 1.0  # the extrapolated point the gradient is taken at
    with torch.no_grad():
        for _ in range(max_iter):
            residual = (torch.softmax(x @ look_w.T + look_b, dim=1) - targets) / n  # (n, C)
            new_w = look_w - (residual.T @ x + l2 * look_w) @ precond
            new_b = look_b - residual.sum(0)
            t_next = (1.0 + (1.0 + 4.0 * t * t) ** 0.5) / 2.0
            momentum = (t - 1.0) / t_next
            look_w, look_b = new_w + momentum * (new_w - weight), new_b + momentum * (new_b - bias)
            weight, bias, t = new_w, new_b, t_next
    classifier = nn.Linear(d, num_classes, dtype=x.dtype, device=x.device)
    with torch.no_grad():
        classifier.weight.copy_(weight)
        classifier.bias.copy_(bias)
    return classifier


def linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    l2_grid: Sequence[float] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2),
    val_fraction: float = 0.1,
    max_iter: int = PROBE_ITERATIONS,
    seed: int = 0,
) -> dict[str, Any]:
    """Linear probe (see ``LINEAR_PROBE_PROTOCOL``) on frozen, cached features.

    Features are standardised with the train statistics. Each L2 weight of ``l2_grid`` is fitted
    on ``1 − val_fraction`` of the train split (a seeded draw), strong to weak, each warm-started
    from the last, and scored on the rest; the best (most held-out images right; a tie goes to the
    stronger penalty) is refitted on the whole train split from its held-out fit. Pass a
    one-element grid to fix the weight. Every fit is ``max_iter`` iterations of
    :func:`_fit_logistic`, in float64: the figure is a smooth function of the features, the same
    on any CPU. Returns test ``top1``/``top5`` (percent), the chosen ``l2`` and the held-out
    accuracies.
    """
    if bad := [l2 for l2 in l2_grid if not l2 > 0]:
        raise ValueError(
            f"`l2_grid` values must be > 0 (each fit is preconditioned by (XᵀX/n + l2·I)⁻¹), got {bad}."
        )
    train_features, test_features = train_features.double(), test_features.double()
    mean, std = train_features.mean(0), train_features.std(0).clamp_min(1e-6)
    x_train, x_test = (train_features - mean) / std, (test_features - mean) / std
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    validation, fits = {}, {}
    if len(l2_grid) > 1:
        order = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(seed))
        n_val = max(1, int(round(val_fraction * len(x_train))))
        val, fit = order[:n_val], order[n_val:]
        classifier, hits = None, {}
        # strong → weak penalty, each warm-started from the last; minutes on large splits, hence the bar
        for l2 in tqdm(sorted(l2_grid, reverse=True), desc="linear probe (L2 grid)", leave=False):
            classifier = _fit_logistic(x_train[fit], train_labels[fit], num_classes, l2, max_iter, classifier)
            fits[l2] = classifier
            with torch.no_grad():
                hits[l2] = int((classifier(x_train[val]).argmax(1) == train_labels[val]).sum())
            validation[l2] = 100.0 * hits[l2] / n_val
        best = max(hits, key=lambda l2: (hits[l2], l2))  # ties: the stronger penalty
    else:
        best = float(l2_grid[0])
    classifier = _fit_logistic(x_train, train_labels, num_classes, best, max_iter, fits.get(best))
    with torch.no_grad():
        result: dict[str, Any] = topk_accuracy(classifier(x_test), test_labels)
    result.update(l2=best, validation_top1={str(k): v for k, v in validation.items()})
    return result


def label_subset(labels: np.ndarray | torch.Tensor, fraction: float, seed: int = 0) -> np.ndarray:
    """Indices of a class-balanced ``fraction`` of the labels (the 1% / 10% protocols)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        keep.append(rng.choice(idx, max(1, int(round(fraction * len(idx)))), replace=False))
    return np.sort(np.concatenate(keep))


class _LazyColumn:
    """``dataset[column]`` decoded one row at a time (a ``datasets`` image column)."""

    def __init__(self, dataset, column: str):
        self.dataset, self.column = dataset, column

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return self.dataset[int(index)][self.column]


@dataclass
class LabelledSplits:
    """Train and evaluation images with labels, and where they came from (recorded in results)."""

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


# folder names that say which split a folder holds, not which data: such a folder is named by its parent
SPLIT_FOLDER_NAMES = frozenset({"train", "training", "val", "valid", "validation", "test", "images"})


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
) -> LabelledSplits:
    """Labelled images for kNN / linear-probe evaluation and the online kNN monitor.

    * nothing given: Fashion-MNIST's train → test splits (``fashion_mnist_dir`` or Debian's);
    * ``train_dir`` / ``validation_dir``: imagefolders (one sub-folder per class);
    * ``dataset_name``: a ``datasets`` hub id or local dataset script/folder, its
      ``train_split`` → ``validation_split`` (default: ``validation``, else ``test``), reading
      ``image_column`` and ``label_column``.
    """
    if dataset_name is None and train_dir is None:
        from seed_hf.data.fashion_mnist import load_fashion_mnist

        (xtr, ytr), (xte, yte) = (load_fashion_mnist(s, fashion_mnist_dir) for s in ("train", "test"))
        return LabelledSplits("fashion_mnist", xtr, ytr, xte, yte, "test")
    import datasets

    if train_dir is not None:
        if validation_dir is None:
            raise ValueError("`train_dir` needs `validation_dir` (the labelled images to evaluate on).")
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
                    f"{dataset_name} has no validation/test split; pass `validation_split` ({list(splits)})."
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
                f"like images (columns: {split.column_names}): pass the one that holds them as `image_column`."
            )
        if label_column not in split.column_names:
            raise ValueError(
                f"The {split_name} data of {name} has no column {label_column!r}; its columns are "
                f"{split.column_names}. Pass the column that holds the labels as `label_column`."
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
        _LazyColumn(train, image_column),
        np.asarray(train[label_column]),
        _LazyColumn(evaluation, image_column),
        np.asarray(evaluation[label_column]),
        eval_split,
    )


@dataclass
class KnnMonitor:
    """The online kNN monitor: weighted-kNN top-1 of a model's pooled features on labelled
    datasets (items with ``pixel_values`` and ``labels``), computed on every rank from
    ``gather_for_metrics`` (no rank-0-only collective, so DDP cannot deadlock)."""

    train_dataset: Any
    eval_dataset: Any
    k: int = 200
    temperature: float = 0.07
    batch_size: int = 256
    _loaders: dict = field(default_factory=dict, init=False, repr=False)

    @torch.no_grad()
    def _features(
        self, model: nn.Module, dataset, accelerator, to_input
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        # prepared once per dataset: accelerate keeps every prepared loader, so re-preparing at each
        # evaluation would pile them up
        if id(dataset) not in self._loaders:
            self._loaders[id(dataset)] = accelerator.prepare(
                DataLoader(dataset, batch_size=self.batch_size, collate_fn=collate_batch, shuffle=False)
            )
        features: dict[str, list[torch.Tensor]] = {}
        labels = []
        for batch in self._loaders[id(dataset)]:
            out = model.get_features(to_input(batch["pixel_values"]))
            for name, value in (out if isinstance(out, dict) else {"": out}).items():
                features.setdefault(name, []).append(accelerator.gather_for_metrics(value.float()).cpu())
            labels.append(accelerator.gather_for_metrics(batch["labels"]).cpu())
        return {k: torch.cat(v) for k, v in features.items()}, torch.cat(labels)

    def evaluate(
        self, model: nn.Module, accelerator, prefix: str = "eval", to_input=lambda x: x
    ) -> dict[str, float]:
        """``{prefix}_knn_top1`` (``_<student>`` per student of a group) of ``model`` in eval mode."""
        was_training = model.training
        model.eval()
        try:
            train_features, train_labels = self._features(model, self.train_dataset, accelerator, to_input)
            test_features, test_labels = self._features(model, self.eval_dataset, accelerator, to_input)
        finally:
            model.train(was_training)
        metrics = {}
        for name, train in train_features.items():
            accuracy = knn_accuracy(
                train, train_labels, test_features[name], test_labels, self.k, self.temperature
            )
            metrics[f"{prefix}_knn_top1" + (f"_{name}" if name else "")] = accuracy["top1"]
        return metrics
