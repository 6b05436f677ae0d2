"""ONNX graphs of pooled features: the graph's settings (files, opset, exporters, input and output
names), writing a graph and running one with onnxruntime.

The graph takes ``pixel_values (n, 3, H, W)`` (dynamic batch axis) and returns ``pooler_output``,
the pooled features of ``AutoModel(...).pooler_output`` and of the pipeline with ``pool=True``.

Exporter: the TorchScript exporter (``torch.onnx.export(dynamo=False)``) by default: onnxruntime's
static-int8 pass fuses its graphs completely where it leaves some convolutions of the dynamo
graph in float between Q/DQ pairs, and it writes one self-contained file (dynamo writes external
data by default). It is deprecated in torch >= 2.9; ``exporter="dynamo"`` keeps the newer path one
argument away (it needs onnxscript, part of the ``onnx`` extra).
"""

from __future__ import annotations

import inspect
import os
import warnings

import numpy as np
import torch
from torch import nn

__all__ = [
    "DEFAULT_OPSET",
    "EXPORTERS",
    "EXTRA_HINT",
    "INPUT_NAME",
    "ONNX_DIR",
    "ONNX_FILE",
    "ONNX_FILES",
    "ONNX_INT8_FILE",
    "OUTPUT_NAME",
    "export_pooled_onnx",
    "ort_session",
    "require_onnx",
    "run_session",
]

ONNX_DIR = "onnx"
ONNX_FILE = f"{ONNX_DIR}/model.onnx"
ONNX_INT8_FILE = f"{ONNX_DIR}/model_int8.onnx"
ONNX_FILES = (ONNX_FILE, ONNX_INT8_FILE)
DEFAULT_OPSET = 17  # LayerNormalization is a native op from 17 on (ViT, ConvNeXt)
EXPORTERS = ("torchscript", "dynamo")
INPUT_NAME, OUTPUT_NAME = "pixel_values", "pooler_output"
EXTRA_HINT = "pip install 'seed-hf[onnx]' (onnx, onnxruntime, onnxscript, scikit-image)"


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


def ort_session(path: str | os.PathLike, threads: int | None = None):
    """A CPU onnxruntime session with ``threads`` intra-op threads (default: torch's count, so the
    two runtimes are compared on the same cores)."""
    _, ort = require_onnx()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: graph-optimizer notices stay out of user logs
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_session(session, pixel_values: np.ndarray) -> np.ndarray:
    """The pooled features ``(n, d)`` of ``session`` for ``pixel_values (n, c, h, w)``."""
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
