"""Evaluation of frozen features: the preprocessing and feature extraction (:mod:`.features`),
weighted kNN (:mod:`.knn`), the linear probe (:mod:`.probe`), the online kNN monitor of training
(:mod:`.monitor`), labelled data (:mod:`.labelled`; its class-balanced subsets are the data layer's,
:mod:`seed_hf.data.subsets`), and the ``evaluate`` metric (:mod:`.metrics`)."""
