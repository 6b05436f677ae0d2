"""`evaluate` metric: weighted kNN top-1 / top-5 of frozen features (InstDisc / MoCo monitor).

Shipped inside seed_hf and loaded by local path, so it works offline:

    >>> import evaluate, seed_hf.evaluation.metrics
    >>> metric = evaluate.load(seed_hf.evaluation.metrics.KNN_ACCURACY_PATH)
    >>> metric.compute(predictions=test_features, references=test_labels,
    ...                train_features=train_features, train_labels=train_labels, k=200, temperature=0.07)
    {'top1': ..., 'top5': ...}
"""

import datasets
import evaluate
import numpy as np
import torch

_DESCRIPTION = (
    "Weighted k-nearest-neighbour accuracy (cosine similarity, exp(sim/τ) votes) of feature vectors."
)
_KWARGS = """
Args:
    predictions: test feature vectors, (n_test, dim).
    references: test labels, (n_test,).
    train_features: (n_train, dim) feature vectors of the labelled memory bank.
    train_labels: (n_train,) labels of the memory bank.
    k: neighbours (default 200). temperature: vote temperature τ (default 0.07).
Returns:
    top1, top5: accuracies in percent.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class KnnAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Wu et al., Unsupervised Feature Learning via Non-Parametric Instance Discrimination, CVPR 2018",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float32")),
                    "references": datasets.Value("int64"),
                }
            ),
        )

    def _compute(self, predictions, references, train_features, train_labels, k=200, temperature=0.07):
        from seed_hf.evaluation.knn import knn_accuracy

        return knn_accuracy(
            torch.as_tensor(np.asarray(train_features), dtype=torch.float32),
            torch.as_tensor(np.asarray(train_labels), dtype=torch.long),
            torch.as_tensor(np.asarray(predictions), dtype=torch.float32),
            torch.as_tensor(np.asarray(references), dtype=torch.long),
            k=k,
            temperature=temperature,
        )
