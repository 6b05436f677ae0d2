"""The linear probe: multinomial logistic regression on standardised frozen features, fitted with
full-batch preconditioned accelerated gradient in float64 (a smooth function of the features: the
same figure on any CPU), its L2 strength chosen on a held-out 10% of the train split."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from seed_hf.evaluation.knn import topk_accuracy

__all__ = ["LINEAR_PROBE_PROTOCOL", "PROBE_ITERATIONS", "linear_probe", "probe_memory_bytes"]

# full-batch iterations of each linear-probe fit (linear_probe's max_iter)
PROBE_ITERATIONS = 300
LINEAR_PROBE_PROTOCOL = (
    f"multinomial logistic regression on standardised frozen features, {PROBE_ITERATIONS} full-batch iterations of "
    "Nesterov's "
    "accelerated gradient preconditioned by (XᵀX/n + λI)⁻¹ in float64 (the same figure on any CPU), L2 weight λ "
    "chosen from {1e-6, 1e-5, 1e-4, 1e-3, 1e-2} on a held-out 10% of the train split, then refit on all of it"
)


def probe_memory_bytes(num_train: int, num_test: int, dim: int) -> int:
    """Bytes of float64 the probe holds at its peak for ``num_train`` + ``num_test`` feature rows of
    width ``dim``: the standardised copies, the fitting subset, and the fit's preconditioner, a
    ``dim × dim`` matrix (its Gram, Cholesky factor and inverse) when ``dim ≤ num_train``, else the
    thin SVD's ``num_train × dim`` factors."""
    rows = num_train + num_test
    fit = 4 * dim * dim if dim <= num_train else 2 * num_train * dim + num_train * num_train
    return 8 * (2 * rows * dim + num_train * dim + fit)


def _physical_memory_bytes() -> int | None:
    """This machine's physical memory (POSIX ``sysconf``), or None where the platform does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


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

    Wider features than rows (``d > n``: raw pixels of a few images) take :func:`_fit_logistic_dual`,
    the same iteration without the ``d × d`` matrix.

    Shape: ``x (n, d)``, ``y (n,)``."""
    n, d = x.shape
    targets = F.one_hot(y, num_classes).to(x.dtype)  # (n, C)
    if init is not None:
        weight, bias = init.weight.detach().to(x.dtype).clone(), init.bias.detach().to(x.dtype).clone()
    else:
        weight, bias = x.new_zeros(num_classes, d), x.new_zeros(num_classes)
    if d > n:
        return _fit_logistic_dual(x, targets, l2, max_iter, weight, bias)
    precond = torch.cholesky_inverse(
        torch.linalg.cholesky(x.T @ x / n + l2 * torch.eye(d, dtype=x.dtype, device=x.device))
    )  # (d, d)
    weight, bias = _nesterov(x, targets, l2, max_iter, weight, bias, lambda grad: grad @ precond)
    return _linear(weight, bias)


def _nesterov(
    x: torch.Tensor,
    targets: torch.Tensor,
    l2: float,
    max_iter: int,
    weight: torch.Tensor,
    bias: torch.Tensor,
    precondition: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """``max_iter`` steps of Nesterov's accelerated gradient (FISTA momentum, step 1) on
    ``mean CE(x Wᵀ + b) + l2/2 ||W||²`` from ``weight``, ``bias``, the weights' gradient passed
    through ``precondition`` (see :func:`_fit_logistic`); returns the last ``(weight, bias)``.

    Shape: ``x (n, d)``, ``targets (n, C)`` one-hot, ``weight (C, d)``, ``bias (C,)``."""
    n = x.shape[0]
    look_w, look_b, t = weight, bias, 1.0  # the extrapolated point the gradient is taken at
    with torch.no_grad():
        for _ in range(max_iter):
            residual = (torch.softmax(x @ look_w.T + look_b, dim=1) - targets) / n  # (n, C)
            new_w = look_w - precondition(residual.T @ x + l2 * look_w)
            new_b = look_b - residual.sum(0)
            t_next = (1.0 + (1.0 + 4.0 * t * t) ** 0.5) / 2.0
            momentum = (t - 1.0) / t_next
            look_w, look_b = new_w + momentum * (new_w - weight), new_b + momentum * (new_b - bias)
            weight, bias, t = new_w, new_b, t_next
    return weight, bias


def _linear(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    """An ``nn.Linear`` holding ``weight (C, d)`` and ``bias (C,)``, in their dtype and device."""
    classifier = nn.Linear(weight.shape[1], weight.shape[0], dtype=weight.dtype, device=weight.device)
    with torch.no_grad():
        classifier.weight.copy_(weight)
        classifier.bias.copy_(bias)
    return classifier


def _fit_logistic_dual(
    x: torch.Tensor, targets: torch.Tensor, l2: float, max_iter: int, weight: torch.Tensor, bias: torch.Tensor
) -> nn.Linear:
    """:func:`_fit_logistic`'s iteration for ``d > n`` in ``O(n·d)`` memory, not ``d²``.

    With the thin SVD ``X = U S Vᵀ`` (``V`` is ``d × n``, orthonormal columns),
    ``M = V diag(1/(s²/n + l2)) Vᵀ + (I − VVᵀ)/l2``. Write the weights ``W = A Vᵀ + W⊥``: the
    cross-entropy's gradient ``RᵀX`` lies in ``span V``, so ``A`` follows the same Nesterov steps
    with ``XV = US`` and the diagonal preconditioner ``1/(s²/n + l2)``, and ``W⊥`` (only an
    ``init`` has one) meets ``−(l2·W⊥)/l2``: the first step, whose momentum is 0, zeroes it, and
    ``XW⊥ᵀ = 0`` leaves the first logits as they are. Mathematically the iterates are
    :func:`_fit_logistic`'s; they differ by rounding only.

    Shape: ``x (n, d)``, ``targets (n, C)`` one-hot, ``weight (C, d)``, ``bias (C,)``."""
    n = x.shape[0]
    u, s, vh = torch.linalg.svd(x, full_matrices=False)  # (n, n), (n,), (n, d)
    xv = u * s  # (n, n): X V
    scale = 1.0 / (s * s / n + l2)  # (n,): M on span V
    coords = weight @ vh.T  # (C, n): A, the weights' part in span V
    coords, bias = _nesterov(xv, targets, l2, max_iter, coords, bias, lambda grad: grad * scale)
    return _linear(coords @ vh, bias)


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

    Raises ValueError, before converting anything, where :func:`probe_memory_bytes` exceeds this
    machine's physical memory.
    """
    if bad := [l2 for l2 in l2_grid if not l2 > 0]:
        raise ValueError(
            f"`l2_grid` values must be > 0 (each fit is preconditioned by (XᵀX/n + l2·I)⁻¹), got {bad}."
        )
    (n, d), memory = train_features.shape, _physical_memory_bytes()
    if memory is not None and (need := probe_memory_bytes(n, len(test_features), d)) > memory:
        raise ValueError(
            f"linear probe on {n} + {len(test_features)} features of width {d} needs ~{need / 2**30:.1f} GiB of "
            f"float64, more than this machine's {memory / 2**30:.1f} GiB: use narrower features (--pixel_size N "
            "for the pixel baselines) or fewer images."
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
        # strong → weak penalty, each warm-started from the last; long on large splits, hence the bar
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
