"""Evaluation of frozen features: the preprocessing and feature extraction (:mod:`.features`),
weighted kNN (:mod:`.knn`), the linear probe (:mod:`.probe`), the online kNN monitor of training
(:mod:`.monitor`), labelled data (:mod:`.labelled`), class-balanced subsets (:mod:`.subsets`), and
the ``evaluate`` metric (:mod:`.metrics`)."""
