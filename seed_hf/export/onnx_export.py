"""ONNX export of exported students: ``onnx/model.onnx`` (fp32) and ``onnx/model_int8.onnx``,
verified against timm's PyTorch features of the same folder.

Works on any timm-format Hub folder (``config.json`` with ``architecture`` + ``pretrained_cfg``,
``model.safetensors``), so a folder exported earlier gains ``onnx/`` without its run folder. The
graph and its settings: :mod:`.onnx_graph`; the verification: :mod:`.onnx_verify`; the int8 graph
and its quality bar: :mod:`.onnx_int8`.

A reparameterizable student (RepVGG, MobileOne, FastViT, ...: timm modules with ``reparameterize``,
``fuse`` or ``switch_to_deploy``) is exported as its fused inference form
(``timm.utils.model.reparameterize_model`` of a copy) and verified against the folder's model.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from seed_hf.export.atomic import atomic_folder
from seed_hf.export.onnx_graph import (
    DEFAULT_OPSET,
    EXPORTERS,
    INPUT_NAME,
    ONNX_DIR,
    ONNX_FILE,
    OUTPUT_NAME,
    export_pooled_onnx,
    ort_session,
    require_onnx,
)
from seed_hf.export.onnx_int8 import int8_graph
from seed_hf.export.onnx_verify import (
    DEFAULT_RTOL,
    VERIFY_SINGLES,
    folder_config,
    folder_transform,
    verification_pixels,
    verify_graph,
)

__all__ = ["export_onnx"]

logger = logging.getLogger(__name__)


def _file_record(path: Path) -> dict[str, Any]:
    data = path.read_bytes()
    return {
        "path": f"{ONNX_DIR}/{path.name}",
        "size_mb": round(len(data) / 2**20, 2),
        "sha256": hashlib.sha256(data).hexdigest()[:16],
    }


def export_onnx(
    folder: str | os.PathLike,
    *,
    int8: bool = False,
    images: Sequence | None = None,
    eval_data=None,
    num_calibration: int = 256,
    rtol: float = DEFAULT_RTOL,
    opset: int = DEFAULT_OPSET,
    exporter: str = "torchscript",
    knn_k: int = 200,
    knn_temperature: float = 0.07,
    batch_size: int = 256,
    seed: int = 0,
) -> dict[str, Any]:
    """Writes ``<folder>/onnx/model.onnx`` (and with ``int8`` ``onnx/model_int8.onnx``), verified.

    The fp32 graph (of the reparameterized model, for a reparameterizable architecture) is run by
    onnxruntime on real images through the folder's own ``pretrained_cfg`` preprocessing and
    compared with timm's PyTorch features of the folder (``timm.create_model("local-dir:...")``) one
    image at a time (16) and as one batch (64): a max abs difference above ``rtol`` times the largest
    feature magnitude raises :class:`~seed_hf.export.onnx_verify.OnnxVerificationError` with the
    figures, and ``onnx/`` is left as it was (the folder is built beside it and renamed into place;
    a successful export replaces ``onnx/`` as a whole, so it holds exactly what the returned record
    describes).

    The int8 graph is calibrated on ``num_calibration`` class-balanced train images of ``eval_data``
    and measured against the fp32 graph on its evaluation split: it is kept only when it meets
    :data:`~seed_hf.export.onnx_int8.INT8_QUALITY_BAR`; otherwise it is not written, a warning gives
    the figures and the record holds them under ``int8_refused`` (the fp32 graph is written either
    way).

    Args:
        folder: a timm-format folder (an exported student).
        int8: also write the static-int8 graph (needs ``eval_data``).
        images: verification images (PIL images or uint8 arrays); default: 64 class-balanced eval
            images of ``eval_data``, else 64 crops of scikit-image's sample photos.
        eval_data: a :class:`~seed_hf.evaluation.labelled.LabelledSplits` of the data the student was
            trained on: int8 calibration images come from its train split, the int8-vs-fp32 cosine
            and kNN are measured on it (train -> eval split). Another source would measure int8 on
            images the student never saw (e.g. gray 28-px Fashion-MNIST for an RGB photo student).
        num_calibration: int8 calibration images (class-balanced draw of the train split).
        rtol: the largest accepted max abs difference between onnxruntime and PyTorch, relative to
            the largest absolute value of the PyTorch features.
        opset: ONNX opset of the graph.
        exporter: ``"torchscript"`` (default, see :mod:`.onnx_graph`) or ``"dynamo"``.
        knn_k, knn_temperature: the weighted kNN of the int8-vs-fp32 comparison (``k`` is clipped
            to the number of train images; the record gives the ``k`` used).
        batch_size: images per onnxruntime call for the int8 check's features.
        seed: seed of the class-balanced draws.

    Returns:
        What it did, as cards render it (``facts["onnx"]``): files (size, sha256), opset, exporter,
        input / output, max abs differences at batch 1 and 64 with the features' scale, versions,
        whether the graph was reparameterized, and for int8 the method, calibration, cosine to fp32
        and the kNN of both graphs (under ``int8``, or ``int8_refused`` with ``shortfalls``).
    """
    onnx, ort = require_onnx()
    import timm

    from seed_hf.models.backbones import fused_copy
    from seed_hf.teachers.fingerprint import weights_fingerprint

    if not rtol > 0:
        raise ValueError(f"rtol={rtol} must be > 0.")
    if num_calibration < 1:
        raise ValueError(f"num_calibration={num_calibration} must be >= 1.")
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter={exporter!r} must be one of {EXPORTERS}.")
    if int8 and eval_data is None:
        raise ValueError(
            "int8=True needs `eval_data`: labelled images of the data the student was trained on, to "
            "calibrate the int8 graph and measure it against fp32 (cosine, kNN). Nothing was exported."
        )
    folder = Path(folder)
    transform, data_config = folder_transform(folder)  # also checks that folder is a timm folder
    model = timm.create_model(f"local-dir:{folder}", pretrained=True, num_classes=0).eval()
    # a folder written in the fused form (inference_mode) is not fused again: timm's reparameterize
    # steps are not all idempotent
    fused_folder = folder_config(folder).get("model_args", {}).get("inference_mode", False)
    fused = None if fused_folder else fused_copy(model)
    graph_model, reparameterized = (model, False) if fused is None else (fused, True)
    pixels, verified_on = verification_pixels(images, eval_data, transform, seed)
    weights_sha256 = weights_fingerprint(str(folder))

    with atomic_folder(folder / ONNX_DIR) as tmp:
        fp32_path = tmp / Path(ONNX_FILE).name
        metadata = {
            "source_weights_sha256": weights_sha256,
            "output": "pooled features (pooler_output)",
            "producer": "seed_hf",
        }
        export_pooled_onnx(graph_model, fp32_path, torch.from_numpy(pixels[:2]), opset, exporter, metadata)
        session = ort_session(fp32_path)
        diffs, scale, reference = verify_graph(session, model, pixels, rtol, folder, verified_on)
        record: dict[str, Any] = {
            "exporter": exporter,
            "opset": max(
                o.version for o in onnx.load(str(fp32_path)).opset_import if o.domain in ("", "ai.onnx")
            ),
            "input": {"name": INPUT_NAME, "shape": ["batch", *data_config["input_size"]]},
            "output": {"name": OUTPUT_NAME, "shape": ["batch", int(reference.shape[1])]},
            **({"reparameterized": True} if reparameterized else {}),
            "max_abs_diff": {k: float(f"{v:.3g}") for k, v in diffs.items()},
            "feature_scale": float(f"{scale:.3g}"),
            "rtol": rtol,
            "verified_on": verified_on,
            "batch_1_images": VERIFY_SINGLES,
            "source_weights_sha256": weights_sha256,
            "versions": {
                "torch": torch.__version__.split("+")[0],
                "onnx": onnx.__version__,
                "onnxruntime": ort.__version__,
            },
        }
        if int8:
            figures, shortfalls = int8_graph(
                fp32_path,
                session,
                eval_data,
                transform,
                num_calibration,
                knn_k,
                knn_temperature,
                batch_size,
                seed,
            )
            if shortfalls:
                record["int8_refused"] = {**figures, "shortfalls": shortfalls}
                logger.warning(
                    f"int8 graph of {folder} refused, below seed_hf's quality bar: {'; '.join(shortfalls)} "
                    f"(on {eval_data.name}). Only {ONNX_FILE} is written."
                )
            else:
                record["int8"] = figures
                cosine, knn = figures["cosine_to_fp32"], figures["knn"]
                logger.info(
                    f"int8 graph kept: cosine to fp32 {cosine['mean']} on average (1st percentile {cosine['p1']}), kNN "
                    f"top-1 fp32 {knn['fp32_top1']} -> int8 {knn['int8_top1']} (k={knn['k']}, {knn['num_train']} -> "
                    f"{knn['num_eval']} images of {knn['dataset']})."
                )
        record["files"] = [_file_record(p) for p in sorted(tmp.iterdir())]
    logger.info(
        f"Wrote {[f['path'] for f in record['files']]} to {folder} (max abs diff {record['max_abs_diff']}, "
        f"features up to {record['feature_scale']})"
    )
    return record
