"""`evaluate`-compatible metric modules shipped with seed_hf (load them by path; no Hub access)."""

from pathlib import Path

KNN_ACCURACY_PATH = str(Path(__file__).with_name("knn_accuracy") / "knn_accuracy.py")

__all__ = ["KNN_ACCURACY_PATH"]
