"""The linear probe: multinomial logistic regression on standardised frozen features, fitted with
full-batch preconditioned accelerated gradient in float64 (a smooth function of the features: the
same figure on any CPU), its L2 strength chosen on a held-out 10% of the train split."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from seed_hf.evaluation.knn import topk_accuracy

__all__ = ["LINEAR_PROBE_PROTOCOL", "PROBE_ITERATIONS", "linear_probe"]

# full-batch iterations of each linear-probe fit (linear_probe's max_iter)
PROBE_ITERATIONS = 300
LINEAR_PROBE_PROTOCOL = (
    f"multinomial logistic regression on standardised frozen features, {PROBE_ITERATIONS} full-batch iterations of "
    "Nesterov's "
    "accelerated gradient preconditioned by (XᵀX/n + λI)⁻¹ in float64 (the same figure on any CPU), L2 weight λ "
    "chosen from {1e-6, 1e-5, 1e-4, 1e-3, 1e-2} on a held-out 10% of the train split, then refit on all of it"
)


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
