"""The int8 graph: static quantization of an fp32 graph and its quality against it.

Static quantization in QDQ format of the Conv, MatMul and Gemm nodes only (per-channel s8 weights
in 7 bits, u8 activations, percentile calibration on the student's own training data; min-max
where an activation is constant). Other ops stay in float: onnxruntime's per-channel pass
mis-quantizes a LayerNormalization's weight (axis 1 of a 1-d tensor) and zeroes a ViT's output.
7-bit weights (``reduce_range``, onnxruntime's advice for CPUs without VNNI) because the graph is
published for any CPU: without VNNI the u8 x s8 products are summed in saturating 16-bit pairs,
which 8-bit weights overflow. The int8 graph is kept only when it meets :data:`INT8_QUALITY_BAR`
against the fp32 graph on the same data (per-image cosine and kNN top-1).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from seed_hf.export.onnx_graph import INPUT_NAME, ONNX_INT8_FILE, ort_session, require_onnx, run_session
from seed_hf.export.onnx_verify import pixel_values

__all__ = [
    "INT8_METHOD",
    "INT8_OP_TYPES",
    "INT8_QUALITY_BAR",
    "int8_graph",
    "int8_quality",
    "int8_shortfalls",
    "quantize_int8",
]

logger = logging.getLogger(__name__)

INT8_OP_TYPES = ("Conv", "MatMul", "Gemm")  # the ops that run in int8; LayerNorm & co. stay float
INT8_METHOD = (
    "static QDQ of Conv/MatMul/Gemm, per-channel 7-bit (reduce_range) int8 weights, uint8 activations, "
    "percentile (99.999) calibration"
)
INT8_METHOD_MINMAX = INT8_METHOD.replace(
    "percentile (99.999)", "min-max (percentile failed: a constant activation)"
)
# The int8 graph is kept only when, against the fp32 graph on the evaluation images of the student's
# own data, the per-image cosine of the features is >= mean_cosine on average and >= p1_cosine for
# 99 % of the images, and its weighted-kNN top-1 is not lower than fp32's by more than max_knn_drop
# points and knn_drop_z standard errors of the paired difference (int8_shortfalls)
INT8_QUALITY_BAR = {"mean_cosine": 0.98, "p1_cosine": 0.9, "max_knn_drop": 1.0, "knn_drop_z": 2.0}
CALIBRATION_BATCH = 32


def _whole_batches(pixels: np.ndarray) -> np.ndarray:
    """The calibration images that fill equal batches: the percentile calibrator stacks every
    batch's activations, so a shorter last batch fails there ("inhomogeneous shape")."""
    batch = min(CALIBRATION_BATCH, len(pixels))
    return pixels[: len(pixels) // batch * batch]


class _CalibrationReader:
    """onnxruntime's ``CalibrationDataReader`` protocol over preprocessed batches."""

    def __init__(self, pixels: np.ndarray, batch_size: int = CALIBRATION_BATCH):
        self._batches = iter(
            [{INPUT_NAME: pixels[i : i + batch_size]} for i in range(0, len(pixels), batch_size)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def quantize_int8(fp32_path: str | os.PathLike, int8_path: str | os.PathLike, calibration: np.ndarray) -> str:
    """Static int8 (QDQ) of the :data:`INT8_OP_TYPES` nodes of ``fp32_path``, calibrated on
    ``calibration`` (preprocessed ``(n, c, h, w)`` images). Returns the method, as the card states
    it. The graph is not checked here: :func:`int8_graph` measures it against fp32."""
    require_onnx()
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(calibration) < 1:
        raise ValueError("calibration needs at least one image.")
    calibration = _whole_batches(calibration)
    pre = Path(int8_path).with_suffix(".pre.onnx")
    try:
        # shape inference + BatchNorm folding first, as onnxruntime recommends: Q/DQ then sit
        # around the ops that run fused in int8
        quant_pre_process(str(fp32_path), str(pre))
        for method in (CalibrationMethod.Percentile, CalibrationMethod.MinMax):
            try:
                quantize_static(
                    str(pre),
                    str(int8_path),
                    _CalibrationReader(calibration),
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    activation_type=QuantType.QUInt8,  # u8 x s8: the VNNI / AMX kernels
                    weight_type=QuantType.QInt8,
                    calibrate_method=method,  # percentile clips rare outliers
                    op_types_to_quantize=list(INT8_OP_TYPES),
                    # 7-bit weights: a CPU without VNNI (AVX2, AVX-512 before Cascade Lake) multiplies
                    # u8 x s8 pairs into saturating 16-bit sums; the graph is published for any CPU
                    reduce_range=True,
                )
                break
            except ValueError as error:
                # a constant activation (a dead channel of an untrained net) has no histogram
                if method != CalibrationMethod.Percentile or "bins" not in str(error):
                    raise
                logger.warning(f"Percentile calibration failed ({error}); calibrating with min-max instead.")
    finally:
        pre.unlink(missing_ok=True)
    return INT8_METHOD if method == CalibrationMethod.Percentile else INT8_METHOD_MINMAX


class _OrtEncoder(nn.Module):
    """onnxruntime sessions as one ``nn.Module`` for :func:`~seed_hf.evaluation.features.extract_features`:
    their features side by side, so every image is decoded and preprocessed once for all of them."""

    def __init__(self, *sessions):
        super().__init__()
        self.sessions = sessions

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.numpy()
        return torch.cat([torch.from_numpy(run_session(s, x)) for s in self.sessions], dim=1)


def int8_quality(
    fp32, int8, eval_data, transform: Callable, k: int, temperature: float, batch_size: int
) -> dict[str, Any]:
    """The int8 graph against the fp32 graph on ``eval_data`` (both run by onnxruntime): the cosine
    of each evaluation image's features, and the weighted kNN (train -> eval split) of both."""
    from seed_hf.evaluation.features import extract_features
    from seed_hf.evaluation.knn import weighted_knn_predict
    from seed_hf.evaluation.labelled import LabelledImages

    encoder = _OrtEncoder(fp32, int8)
    features = {}
    for split, images, labels in (("train", eval_data.train_images, eval_data.train_labels), ("eval", eval_data.eval_images, eval_data.eval_labels)):  # fmt: skip
        both, y = extract_features(
            encoder, LabelledImages(images, labels, transform), batch_size, desc=f"onnx int8 check {split}"
        )
        features[split] = (*both.chunk(2, dim=1), y)
    (tr32, tr8, ytr), (ev32, ev8, yev) = features["train"], features["eval"]
    cosine = torch.nn.functional.cosine_similarity(ev8.double(), ev32.double(), dim=1).nan_to_num(-1.0)
    k_used = min(k, len(ytr))  # what weighted_knn_predict uses: never more neighbours than images
    num_classes = int(max(ytr.max(), yev.max())) + 1
    scores = {
        name: weighted_knn_predict(train, ytr, test, k_used, temperature, num_classes)
        for name, train, test in (("fp32", tr32, ev32), ("int8", tr8, ev8))
    }
    right = {name: s.argmax(1) == yev for name, s in scores.items()}
    top1 = {name: round(100.0 * float(r.double().mean()), 2) for name, r in right.items()}
    knn = {
        "dataset": eval_data.name,
        "eval_split": eval_data.eval_split,
        "k": k_used,
        **({"k_requested": k} if k_used != k else {}),
        "temperature": temperature,
        "num_train": len(ytr),
        "num_eval": len(yev),
        "fp32_top1": top1["fp32"],
        "int8_top1": top1["int8"],
        "int8_minus_fp32": round(top1["int8"] - top1["fp32"], 2),
        # the paired comparison: images only one of the graphs classifies right, and predictions shared
        "fp32_only_right": int((right["fp32"] & ~right["int8"]).sum()),
        "int8_only_right": int((right["int8"] & ~right["fp32"]).sum()),
        "agreement": round(
            100.0 * float((scores["int8"].argmax(1) == scores["fp32"].argmax(1)).double().mean()), 2
        ),
    }
    return {
        "cosine_to_fp32": {
            "mean": round(float(cosine.mean()), 4),
            "p1": round(float(torch.quantile(cosine, 0.01)), 4),
            "min": round(float(cosine.min()), 4),
            "num_images": len(cosine),
        },
        "knn": knn,
    }


def int8_shortfalls(quality: dict[str, Any], bar: dict[str, float] | None = None) -> list[str]:
    """Where the int8 ``quality`` (``cosine_to_fp32`` and ``knn`` of an ONNX export's record)
    falls below ``bar`` (default :data:`INT8_QUALITY_BAR`), one sentence each; empty: it is kept.

    The kNN drop is a paired comparison on the same images: it counts against int8 only beyond
    ``max_knn_drop`` points and beyond ``knn_drop_z`` standard errors of the paired difference
    (``sqrt(discordant images) / n``), so that a small evaluation split's noise refuses nothing."""
    bar = INT8_QUALITY_BAR if bar is None else bar
    cosine, knn = quality["cosine_to_fp32"], quality["knn"]
    shortfalls = []
    if not cosine["mean"] >= bar["mean_cosine"]:  # `not >=`: NaN falls short too
        shortfalls.append(f"mean cosine to fp32 {cosine['mean']:.4f} < {bar['mean_cosine']}")
    if not cosine["p1"] >= bar["p1_cosine"]:
        shortfalls.append(f"1st-percentile cosine to fp32 {cosine['p1']:.4f} < {bar['p1_cosine']}")
    discordant = knn["fp32_only_right"] + knn["int8_only_right"]
    noise = bar["knn_drop_z"] * 100.0 * math.sqrt(discordant) / knn["num_eval"]
    allowed = max(bar["max_knn_drop"], noise)
    drop = knn["fp32_top1"] - knn["int8_top1"]
    if not drop <= allowed + 1e-9:
        shortfalls.append(
            f"kNN top-1 {knn['int8_top1']:.2f} vs fp32 {knn['fp32_top1']:.2f}: {drop:.2f} points lower > "
            f"{allowed:.2f} allowed (k={knn['k']}, {knn['num_eval']} evaluation images)"
        )
    return shortfalls


def int8_graph(
    fp32_path: Path,
    fp32_session,
    eval_data,
    transform: Callable,
    num_calibration: int,
    knn_k: int,
    knn_temperature: float,
    batch_size: int,
    seed: int,
) -> tuple[dict[str, Any], list[str]]:
    """Writes the int8 graph of ``fp32_path`` beside it (:data:`ONNX_INT8_FILE`'s name), calibrated
    on ``num_calibration`` class-balanced train images of ``eval_data``, and measures it against the
    fp32 graph (:func:`int8_quality`). Returns ``(figures, shortfalls)``: with shortfalls (below
    :data:`INT8_QUALITY_BAR`, or a graph onnxruntime cannot quantize) the int8 file is removed."""
    from seed_hf.data.subsets import balanced_subset

    keep = balanced_subset(eval_data.train_labels, num_calibration, seed)
    calibration = _whole_batches(pixel_values(eval_data.train_images, transform, keep))
    int8_path = fp32_path.with_name(Path(ONNX_INT8_FILE).name)
    try:
        figures = {
            "method": quantize_int8(fp32_path, int8_path, calibration),
            "calibration": f"{len(calibration)} class-balanced images of {eval_data.name} (train split)",
            **int8_quality(
                fp32_session, ort_session(int8_path), eval_data, transform, knn_k, knn_temperature, batch_size
            ),
            "bar": dict(INT8_QUALITY_BAR),
        }
        shortfalls = int8_shortfalls(figures)
    except Exception as error:  # onnxruntime cannot quantize this graph: the fp32 graph still ships
        figures = {"dataset": eval_data.name}
        shortfalls = [f"onnxruntime could not quantize the graph ({type(error).__name__}: {error})"]
    if shortfalls:
        int8_path.unlink(missing_ok=True)
    return figures, shortfalls
