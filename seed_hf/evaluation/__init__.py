"""Evaluation of frozen features: extraction, kNN, the linear probe and the kNN monitor of training
(:mod:`.evaluate`), class-balanced and labelled subsets (:mod:`.subsets`), and the ``evaluate`` metric
(:mod:`.metrics`)."""
