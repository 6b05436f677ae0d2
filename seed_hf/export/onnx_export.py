"""ONNX export of exported students: ``onnx/model.onnx`` (fp32) and ``onnx/model_int8.onnx``,
verified against timm's PyTorch features of the same folder.

Works on any timm-format Hub folder (``config.json`` with ``architecture`` + ``pretrained_cfg``,
``model.safetensors``), so a folder exported earlier gains ``onnx/`` without its run folder. The
graph takes ``pixel_values (n, 3, H, W)`` (dynamic batch axis) and returns ``pooler_output``, the
pooled features of ``AutoModel(...).pooler_output`` and of the pipeline with ``pool=True``.

Exporter: the TorchScript exporter (``torch.onnx.export(dynamo=False)``), chosen by measurement
on torch 2.14 / onnxruntime 1.32. Both exporters round-trip resnet18, mobilenetv3_small_100,
efficientnet_b0, convnext_atto and a ViT within 4e-6 at batch 1 and 64, but onnxruntime's
static-int8 pass fuses the TorchScript graph of MobileNetV3 completely (53 QLinearConv,
QLinearMul/Add) while it leaves 25 of the 53 convolutions of the dynamo graph in float between
Q/DQ pairs: that int8 model ran 3.5x slower than the TorchScript one on this CPU. TorchScript
also exports 10x faster (0.2-1 s) and into one self-contained file (dynamo writes external data
by default). It is deprecated in torch >= 2.9; ``exporter="dynamo"`` keeps the newer path one
argument away (it needs onnxscript, part of the ``onnx`` extra).

Verification is relative to the features' scale: the max abs difference between onnxruntime and
PyTorch divided by the largest feature magnitude of PyTorch must stay within ``rtol`` (a network
whose features reach 1e9 is exact to 1e-7 and still differs by 1e2 in absolute terms).

A reparameterizable student (RepVGG, MobileOne, FastViT, ...: timm modules with ``reparameterize``,
``fuse`` or ``switch_to_deploy``) is exported as its fused inference form
(``timm.utils.model.reparameterize_model`` of a copy) and verified against the folder's model.

int8: static quantization in QDQ format of the Conv, MatMul and Gemm nodes only (per-channel s8
weights in 7 bits, u8 activations, percentile calibration on the student's own training data;
min-max where an activation is constant). Other ops stay in float: onnxruntime's per-channel pass
mis-quantizes a LayerNormalization's weight (axis 1 of a 1-d tensor) and zeroes a ViT's output.
7-bit weights (``reduce_range``, onnxruntime's advice for CPUs without VNNI) because the graph is
published for any CPU: without VNNI the u8 x s8 products are summed in saturating 16-bit pairs,
which 8-bit weights overflow (README, ONNX section, has the figures). The int8 graph is
kept only when it meets :data:`INT8_QUALITY_BAR` against the fp32 graph on the same data (per-image
cosine and kNN top-1), otherwise it is refused with the figures and only the fp32 graph is written.
Dynamic quantization was measured 3.5-8x slower than static on CNNs here (its ConvInteger
kernels), with no better kNN.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import shutil
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "ONNX_DIR",
    "ONNX_FILE",
    "ONNX_INT8_FILE",
    "ONNX_FILES",
    "DEFAULT_OPSET",
    "DEFAULT_RTOL",
    "EXPORTERS",
    "INT8_OP_TYPES",
    "INT8_QUALITY_BAR",
    "OnnxVerificationError",
    "require_onnx",
    "export_onnx",
    "export_pooled_onnx",
    "int8_shortfalls",
    "quantize_int8",
    "ort_session",
    "folder_transform",
    "sample_images",
]

logger = logging.getLogger(__name__)

ONNX_DIR = "onnx"
ONNX_FILE = f"{ONNX_DIR}/model.onnx"
ONNX_INT8_FILE = f"{ONNX_DIR}/model_int8.onnx"
ONNX_FILES = (ONNX_FILE, ONNX_INT8_FILE)
DEFAULT_OPSET = 17  # LayerNormalization is a native op from 17 on (ViT, ConvNeXt)
# largest accepted max |onnxruntime - PyTorch| / max |PyTorch feature|: fp32 exports of every tested
# family differ by ~1e-7-1e-6 of the scale, one weight scaled by 1.01 by ~1e-2
DEFAULT_RTOL = 1e-4
EXPORTERS = ("torchscript", "dynamo")
INPUT_NAME, OUTPUT_NAME = "pixel_values", "pooler_output"
VERIFY_BATCH = 64
VERIFY_SINGLES = 16  # of those, checked one image at a time too (each a PyTorch + onnxruntime call)
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
EXTRA_HINT = "pip install 'seed-hf[onnx]' (onnx, onnxruntime, onnxscript, scikit-image)"


class OnnxVerificationError(ValueError):
    """The exported graph does not give timm's PyTorch features within ``rtol`` of their scale."""


def require_onnx(what: str = "ONNX export"):
    """``(onnx, onnxruntime)``, or an ImportError saying that ``what`` needs the extra."""
    try:
        import onnx
        import onnxruntime
    except ImportError as error:
        raise ImportError(
            f"{what} needs the onnx extra of seed_hf ({error.name} is missing): {EXTRA_HINT}."
        ) from None
    return onnx, onnxruntime


def _folder_config(folder: Path) -> dict[str, Any]:
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    if "architecture" not in config or "pretrained_cfg" not in config:
        raise FileNotFoundError(
            f"folder {str(folder)!r} is not a timm-format folder (config.json with architecture and "
            "pretrained_cfg, written by seed_hf.export.hub.export_student / export_encoder)."
        )
    return config


def folder_transform(folder: str | os.PathLike) -> tuple[Callable, dict[str, Any]]:
    """The evaluation transform a user rebuilds from a folder's ``pretrained_cfg`` (timm's
    ``resolve_data_config`` + ``create_transform``, after ``convert("RGB")``) and its data config."""
    from timm.data import resolve_data_config

    from seed_hf.evaluation.evaluate import eval_transform

    data_config = resolve_data_config(pretrained_cfg=_folder_config(Path(folder))["pretrained_cfg"])
    return eval_transform(data_config), data_config


def sample_images(n: int = VERIFY_BATCH, seed: int = 0) -> list:
    """``n`` real photos, offline: seeded random crops of scikit-image's sample images (colour and
    grayscale, 100-1400 px), as PIL images in their own mode."""
    from PIL import Image

    try:
        from skimage import data
    except ImportError:
        raise ImportError(
            f"The default verification images are scikit-image's sample photos: {EXTRA_HINT}."
        ) from None
    names = ("astronaut", "coffee", "chelsea", "rocket", "camera", "moon", "coins", "clock", "hubble_deep_field",
             "immunohistochemistry", "retina", "page", "grass", "brick", "colorwheel", "cell")  # fmt: skip
    photos = [Image.fromarray(getattr(data, name)()) for name in names]
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        photo = photos[i % len(photos)]
        w, h = photo.size
        side = int(min(w, h) * rng.uniform(0.3, 1.0))  # crops at many scales: varied feature statistics
        x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        images.append(photo.crop((x, y, x + side, y + side)))
    return images


def _pixel_values(images, transform: Callable, indices: Sequence[int] | None = None) -> np.ndarray:
    """``(n, c, h, w)`` float32 of ``images`` (PIL images, uint8 arrays or a ``datasets`` column)."""
    from seed_hf.evaluation.evaluate import LabelledImages

    dataset = LabelledImages(images, np.zeros(len(images), dtype=np.int64), transform)
    indices = range(len(images)) if indices is None else indices
    return torch.stack([dataset[int(i)]["pixel_values"] for i in indices]).numpy()


def ort_session(path: str | os.PathLike, threads: int | None = None):
    """A CPU onnxruntime session with ``threads`` intra-op threads (default: torch's count, so the
    two runtimes are compared on the same cores)."""
    _, ort = require_onnx()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: graph-optimizer notices stay out of user logs
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _run(session, pixel_values: np.ndarray) -> np.ndarray:
    return session.run(None, {INPUT_NAME: np.ascontiguousarray(pixel_values, dtype=np.float32)})[0]


class _PixelValuesOnly(nn.Module):
    """``model`` called with ``pixel_values`` alone."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values)


def export_pooled_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    example: torch.Tensor,
    opset: int = DEFAULT_OPSET,
    exporter: str = "torchscript",
    metadata: dict[str, str] | None = None,
) -> None:
    """Writes ``model`` (``pixel_values -> pooled features``, in eval mode) as one ONNX file with a
    dynamic batch axis, traced on ``example`` (a real batch of >= 2 images: a batch of 1 could let
    a size-1 axis be folded into a constant)."""
    onnx, _ = require_onnx()
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter={exporter!r} must be one of {EXPORTERS}.")
    if example.shape[0] < 2:
        raise ValueError(
            f"example must hold >= 2 images to trace a dynamic batch axis, got {tuple(example.shape)}."
        )
    # one input: the TorchScript exporter would pass the defaults of a forward's other parameters as
    # traced tensors (timm's Eva / RoPE ViTs: `is_causal=False` became a tensor SDPA refuses)
    if len(inspect.signature(model.forward).parameters) > 1:
        model = _PixelValuesOnly(model)
    model = model.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice, tracer hints
        if exporter == "torchscript":
            torch.onnx.export(
                model, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=opset, dynamo=False, do_constant_folding=True,
            )  # fmt: skip
        else:
            program = torch.onnx.export(
                model, (example,), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: torch.export.Dim("batch")},), opset_version=opset, dynamo=True,
            )  # fmt: skip
            program.save(str(path), external_data=False)  # one self-contained file
    proto = onnx.load(str(path))
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


CALIBRATION_BATCH = 32


def _whole_batches(pixel_values: np.ndarray) -> np.ndarray:
    """The calibration images that fill equal batches: the percentile calibrator stacks every
    batch's activations, so a shorter last batch fails there ("inhomogeneous shape")."""
    batch = min(CALIBRATION_BATCH, len(pixel_values))
    return pixel_values[: len(pixel_values) // batch * batch]


class _CalibrationReader:
    """onnxruntime's ``CalibrationDataReader`` protocol over preprocessed batches."""

    def __init__(self, pixel_values: np.ndarray, batch_size: int = CALIBRATION_BATCH):
        self._batches = iter(
            [{INPUT_NAME: pixel_values[i : i + batch_size]} for i in range(0, len(pixel_values), batch_size)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def quantize_int8(fp32_path: str | os.PathLike, int8_path: str | os.PathLike, calibration: np.ndarray) -> str:
    """Static int8 (QDQ) of the :data:`INT8_OP_TYPES` nodes of ``fp32_path``, calibrated on
    ``calibration`` (preprocessed ``(n, c, h, w)`` images). Returns the method, as the card states
    it. The graph is not checked here: :func:`export_onnx` measures it against fp32."""
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
                    calibrate_method=method,  # percentile clips rare outliers: cosine 0.989 vs 0.986 (min-max)
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
    """onnxruntime sessions as one ``nn.Module`` for :func:`~seed_hf.evaluation.evaluate.extract_features`:
    their features side by side, so every image is decoded and preprocessed once for all of them."""

    def __init__(self, *sessions):
        super().__init__()
        self.sessions = sessions

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = pixel_values.numpy()
        return torch.cat([torch.from_numpy(_run(s, x)) for s in self.sessions], dim=1)


def _int8_quality(
    fp32, int8, eval_data, transform, k: int, temperature: float, batch_size: int
) -> dict[str, Any]:
    """The int8 graph against the fp32 graph on ``eval_data`` (both run by onnxruntime): the cosine
    of each evaluation image's features, and the weighted kNN (train -> eval split) of both."""
    from seed_hf.evaluation.evaluate import LabelledImages, extract_features, weighted_knn_predict

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
    """Where the int8 ``quality`` (``cosine_to_fp32`` and ``knn`` of :func:`export_onnx`'s record)
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


def _file_record(path: Path) -> dict[str, Any]:
    import hashlib

    data = path.read_bytes()
    return {
        "path": f"{ONNX_DIR}/{path.name}",
        "size_mb": round(len(data) / 2**20, 2),
        "sha256": hashlib.sha256(data).hexdigest()[:16],
    }


def _remove_dead_partials(folder: Path) -> None:
    """Removes the ``.onnx.partial-PID`` / ``.onnx.old-PID`` folders that killed exports left in
    ``folder`` (a running export's, found by its live PID, is kept)."""
    for leftover in folder.glob(f".{ONNX_DIR}.*-*"):
        kind, _, pid = leftover.name.rpartition("-")
        if kind not in (f".{ONNX_DIR}.partial", f".{ONNX_DIR}.old") or not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(leftover, ignore_errors=True)
        except PermissionError:  # alive, another user's
            pass


def _replace_dir(new: Path, out: Path) -> None:
    """Puts the finished ``new`` at ``out`` by renames only: a reader sees the old folder or the
    new one, never a half-written one."""
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
    new.rename(out)
    shutil.rmtree(old, ignore_errors=True)


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
    feature magnitude raises :class:`OnnxVerificationError` with the figures, and ``onnx/`` is left
    as it was (the folder is built beside it and renamed into place; a successful export replaces
    ``onnx/`` as a whole, so it holds exactly what the returned record describes).

    The int8 graph is calibrated on ``num_calibration`` class-balanced train images of ``eval_data``
    and measured against the fp32 graph on its evaluation split: it is kept only when it meets
    :data:`INT8_QUALITY_BAR`; otherwise it is not written, a warning gives the figures and the
    record holds them under ``int8_refused`` (the fp32 graph is written either way).

    Args:
        folder: a timm-format folder (an exported student).
        int8: also write the static-int8 graph (needs ``eval_data``).
        images: verification images (PIL images or uint8 arrays); default: 64 class-balanced eval
            images of ``eval_data``, else 64 crops of scikit-image's sample photos.
        eval_data: a :class:`~seed_hf.evaluation.evaluate.LabelledSplits` of the data the student was trained
            on: int8 calibration images come from its train split, the int8-vs-fp32 cosine and kNN
            are measured on it (train -> eval split). Another source would measure int8 on images the
            student never saw (e.g. gray 28-px Fashion-MNIST for an RGB photo student).
        num_calibration: int8 calibration images (class-balanced draw of the train split).
        rtol: the largest accepted max abs difference between onnxruntime and PyTorch, relative to
            the largest absolute value of the PyTorch features.
        opset: ONNX opset of the graph.
        exporter: ``"torchscript"`` (default, see the module docstring) or ``"dynamo"``.
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

    from seed_hf.evaluation.subsets import balanced_subset
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
    fused_folder = _folder_config(folder).get("model_args", {}).get("inference_mode", False)
    fused = None if fused_folder else fused_copy(model)
    graph_model, reparameterized = (model, False) if fused is None else (fused, True)
    if images is not None:
        pixels, verified_on = _pixel_values(images, transform), f"{len(images)} given images"
    elif eval_data is not None:
        keep = balanced_subset(eval_data.eval_labels, VERIFY_BATCH, seed)
        pixels = _pixel_values(eval_data.eval_images, transform, keep)
        verified_on = f"{len(keep)} class-balanced images of {eval_data.name} ({eval_data.eval_split} split)"
    else:
        pixels, verified_on = (
            _pixel_values(sample_images(VERIFY_BATCH, seed), transform),
            "64 crops of scikit-image's sample photos",
        )
    if len(pixels) < VERIFY_SINGLES:
        given = (
            "the evaluation split of `eval_data`" if images is None and eval_data is not None else "`images`"
        )
        raise ValueError(
            f"The graphs are verified on at least {VERIFY_SINGLES} images: {given} holds {len(pixels)}."
        )
    weights_sha256 = weights_fingerprint(str(folder))

    out = folder / ONNX_DIR
    _remove_dead_partials(folder)
    tmp = folder / f".{ONNX_DIR}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        fp32_path = tmp / Path(ONNX_FILE).name
        metadata = {
            "source_weights_sha256": weights_sha256,
            "output": "pooled features (pooler_output)",
            "producer": "seed_hf",
        }
        export_pooled_onnx(graph_model, fp32_path, torch.from_numpy(pixels[:2]), opset, exporter, metadata)
        session = ort_session(fp32_path)
        with torch.no_grad():  # PyTorch at the same batch sizes: each side's own kernels per size
            reference = model(torch.from_numpy(pixels)).numpy()
            singles = [model(torch.from_numpy(pixels[i : i + 1])).numpy() for i in range(VERIFY_SINGLES)]
        diffs = {
            "batch_1": max(
                float(np.abs(_run(session, pixels[i : i + 1]) - single).max())
                for i, single in enumerate(singles)
            ),
            f"batch_{len(pixels)}": float(np.abs(_run(session, pixels) - reference).max()),
        }
        scale = float(np.abs(reference).max())  # NaN features: every comparison below fails
        for batch, diff in diffs.items():
            if not diff <= rtol * scale:
                relative = diff / scale if scale > 0 else float("inf")
                raise OnnxVerificationError(
                    f"ONNX export of {folder} failed verification: onnxruntime vs timm PyTorch features at "
                    f"{batch.replace('_', ' ')}: max abs difference {diff:.3g}, {relative:.3g} of the largest "
                    f"feature magnitude {scale:.3g} > rtol={rtol:g} ({verified_on})."
                )
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
            keep = balanced_subset(eval_data.train_labels, num_calibration, seed)
            calibration = _whole_batches(_pixel_values(eval_data.train_images, transform, keep))
            int8_path = tmp / Path(ONNX_INT8_FILE).name
            try:
                figures = {
                    "method": quantize_int8(fp32_path, int8_path, calibration),
                    "calibration": f"{len(calibration)} class-balanced images of {eval_data.name} (train split)",
                    **_int8_quality(
                        session,
                        ort_session(int8_path),
                        eval_data,
                        transform,
                        knn_k,
                        knn_temperature,
                        batch_size,
                    ),
                    "bar": dict(INT8_QUALITY_BAR),
                }
                shortfalls = int8_shortfalls(figures)
            except Exception as error:  # onnxruntime cannot quantize this graph: the fp32 graph still ships
                figures = {"dataset": eval_data.name}
                shortfalls = [f"onnxruntime could not quantize the graph ({type(error).__name__}: {error})"]
            if shortfalls:
                int8_path.unlink(missing_ok=True)
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
        for file in tmp.iterdir():
            file.chmod(0o644)  # a published folder is world-readable
        tmp.chmod(0o755)
        record["files"] = [_file_record(p) for p in sorted(tmp.iterdir())]
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info(
        f"Wrote {[f['path'] for f in record['files']]} to {folder} (max abs diff {record['max_abs_diff']}, "
        f"features up to {record['feature_scale']})"
    )
    return record
