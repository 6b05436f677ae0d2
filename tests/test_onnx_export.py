"""ONNX export of exported students (seed_hf.export.onnx_export): verified fp32 graphs for every supported
student family at batch 1 and 64 (relative to the features' scale), reparameterizable students
fused, int8 of Conv/MatMul/Gemm kept only above its quality bar on the student's own data, atomic
onnx/ folders, the Hub loaders on a folder that holds onnx/, and the message when the onnx extra is
missing."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_student

from seed_hf.evaluation.labelled import LabelledSplits
from seed_hf.export import onnx_export, onnx_graph, onnx_int8
from seed_hf.export.cards import render_model_card
from seed_hf.export.hub import export_student, upload_plan
from seed_hf.export.onnx_export import export_onnx
from seed_hf.export.onnx_graph import ONNX_FILE, ONNX_INT8_FILE, ort_session
from seed_hf.export.onnx_int8 import int8_shortfalls
from seed_hf.export.onnx_verify import DEFAULT_RTOL, OnnxVerificationError, folder_transform, sample_images

pytest.importorskip("onnxruntime")
LOADER = Path(__file__).with_name("load_exported.py")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One thread for torch and onnxruntime (which follows torch's count): on a shared 2-core
    machine two OpenMP threads wait at every barrier for the one another job descheduled (10-20x
    slower); the figures checked here do not depend on the thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


FAMILIES = [  # (architecture, trained in_chans, image size, model_args)
    pytest.param("resnet18", 1, 40, {}, id="resnet18-1ch"),
    pytest.param("mobilenetv3_small_100", 1, 40, {}, id="mobilenetv3_small-1ch"),
    pytest.param("vit_tiny_patch16_224", 3, 32, {"img_size": 32}, id="vit_tiny-3ch"),
    pytest.param("efficientnet_b0", 3, 40, {}, id="efficientnet_b0-3ch"),
    pytest.param("convnext_atto", 3, 40, {}, id="convnext_atto-3ch"),
]  # tiny images: ~1-3 s each on 2 cores, so every family runs by default


def _randomise_norm_layers(module: torch.nn.Module) -> None:
    """Random BatchNorm statistics and affines: timm's init (zero-init last BN of each block, unit
    statistics) leaves BN folding and reparameterization with nothing to fold. With these the
    features are O(0.1-1) and both are exercised for real."""
    g = torch.Generator().manual_seed(0)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)


def _exported(tmp_path: Path, arch: str, in_chans: int, size: int, model_args: dict, **export_kwargs) -> Path:
    model = tiny_student(
        student_architecture=arch,
        in_chans=in_chans,
        image_size=size,
        image_mean=[0.286] * in_chans,
        image_std=[0.353] * in_chans,
        student_model_args=model_args,
    ).eval()
    _randomise_norm_layers(model.student)
    return export_student(model, tmp_path / "export", **export_kwargs)


def _gray_images(n: int) -> np.ndarray:
    """Real Fashion-MNIST test images when installed, else scikit-image photos in gray."""
    from conftest import FASHION_MNIST_AVAILABLE

    if FASHION_MNIST_AVAILABLE:
        from seed_hf.data.fashion_mnist import load_fashion_mnist

        return load_fashion_mnist("test")[0][:n]
    return np.stack([np.asarray(im.convert("L").resize((28, 28))) for im in sample_images(n)])


def _timm_features(folder: Path, pixel_values: np.ndarray) -> np.ndarray:
    import timm

    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    with torch.no_grad():
        return model(torch.from_numpy(pixel_values)).numpy()


@pytest.mark.parametrize("arch,in_chans,size,model_args", FAMILIES)
def test_export_round_trips_every_family_at_batch_1_and_64(tmp_path, arch, in_chans, size, model_args):
    folder = _exported(tmp_path, arch, in_chans, size, model_args)
    record = export_onnx(folder)
    print(f"{arch} in_chans={in_chans}: {record['max_abs_diff']} of features up to {record['feature_scale']}")
    assert set(record["max_abs_diff"]) == {"batch_1", "batch_64"} and record["rtol"] == DEFAULT_RTOL
    assert max(record["max_abs_diff"].values()) <= DEFAULT_RTOL * record["feature_scale"]
    assert record["exporter"] == "torchscript" and record["opset"] == onnx_graph.DEFAULT_OPSET
    assert [f["path"] for f in record["files"]] == [ONNX_FILE]
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
        "onnx",
    ]

    import onnx

    graph = onnx.load(folder / ONNX_FILE).graph
    (graph_input,), (graph_output,) = graph.input, graph.output
    dims = [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    assert graph_input.name == "pixel_values" and dims == [
        "batch",
        3,
        size,
        size,
    ]  # 1-channel students take RGB
    assert graph_output.type.tensor_type.shape.dim[0].dim_param == "batch"

    # checked here too, on other real images (gray, as the 1-channel students saw them), not only by the record
    transform, _ = folder_transform(folder)
    from PIL import Image

    pixel_values = torch.stack([transform(Image.fromarray(a)) for a in _gray_images(64)]).numpy()
    expected = _timm_features(folder, pixel_values)
    session = ort_session(folder / ONNX_FILE)
    for batch in (pixel_values[:1], pixel_values):
        got = session.run(None, {"pixel_values": batch})[0]
        assert got.shape == (len(batch), expected.shape[1]) == (len(batch), record["output"]["shape"][1])
        assert np.abs(got - expected[: len(batch)]).max() <= 1e-4 * np.abs(expected).max()


def _small_splits(n_train: int = 300, n_eval: int = 100) -> LabelledSplits:
    from conftest import FASHION_MNIST_AVAILABLE

    if FASHION_MNIST_AVAILABLE:
        from seed_hf.evaluation.labelled import load_labelled_splits

        return load_labelled_splits().subsample(n_train, n_eval)
    images = sample_images(n_train + n_eval)
    labels = np.arange(n_train + n_eval) % 16  # the photo each crop came from
    return LabelledSplits(
        "skimage_crops", images[:n_train], labels[:n_train], images[n_train:], labels[n_train:], "test"
    )


def _rgb_splits(n_train: int = 300, n_eval: int = 100) -> LabelledSplits:
    """Colour photos labelled by the scikit-image sample each crop came from (16 classes)."""
    images = [image.convert("RGB") for image in sample_images(n_train + n_eval, seed=1)]
    labels = np.arange(n_train + n_eval) % 16
    return LabelledSplits(
        "skimage_crops", images[:n_train], labels[:n_train], images[n_train:], labels[n_train:], "test"
    )


def test_int8_is_kept_above_the_bar_with_its_figures_and_the_k_used(tmp_path, caplog):
    """An RGB student calibrated and measured on its own (colour) data: the int8 graph is kept with
    the per-image cosine, both graphs' kNN and the bar in the record and the card; with fewer train
    images than knn_k, the k actually used is recorded and printed (not the one asked for)."""
    folder = _exported(tmp_path, "test_efficientnet", 3, 64, {})
    with caplog.at_level("INFO", logger="seed_hf.export.onnx_export"):
        record = export_onnx(folder, int8=True, eval_data=_rgb_splits(120, 60), num_calibration=64)
    assert "int8 graph kept" in caplog.text and "(k=120, 120 -> 60 images of skimage_crops)" in caplog.text
    assert [f["path"] for f in record["files"]] == [
        ONNX_FILE,
        ONNX_INT8_FILE,
    ] and "int8_refused" not in record
    int8 = record["int8"]
    assert (
        "Conv/MatMul/Gemm" in int8["method"]
        and "64 class-balanced images of skimage_crops" in int8["calibration"]
    )
    assert int8["cosine_to_fp32"]["num_images"] == 60 and int8["bar"] == onnx_int8.INT8_QUALITY_BAR
    assert int8["cosine_to_fp32"]["mean"] >= int8["cosine_to_fp32"]["p1"] >= int8["cosine_to_fp32"]["min"]
    assert int8_shortfalls(int8) == []
    knn = int8["knn"]
    assert (knn["num_train"], knn["num_eval"], knn["k"], knn["k_requested"]) == (120, 60, 120, 200)
    assert knn["int8_minus_fp32"] == pytest.approx(knn["int8_top1"] - knn["fp32_top1"], abs=0.011)
    assert knn["fp32_top1"] - knn["int8_top1"] == pytest.approx(
        100 * (knn["fp32_only_right"] - knn["int8_only_right"]) / 60, abs=0.011
    )
    assert knn["fp32_top1"] > 100 / 16  # above chance
    fp32_size, int8_size = (f["size_mb"] for f in record["files"])
    assert int8_size < 0.6 * fp32_size

    # the card renders it: the files, the check figures, the kNN of both graphs with the k used
    text = render_model_card(
        {"method": "seed", "architecture": "test_efficientnet", "feature_dim": 1024, "onnx": record},
        [],
        "org/m",
    ).text
    for needle in (ONNX_INT8_FILE, "max abs difference", f"int8 {knn['int8_top1']:.2f}", "(k=120,",
                   "It meets seed_hf's int8 bar", "1st percentile", "onnxruntime as ort", 'convert("RGB")'):  # fmt: skip
        assert needle in text, needle
    assert "k=200" not in text


def test_int8_quantizes_only_conv_matmul_gemm(tmp_path):
    """A ViT with registers (LayerNorm everywhere): only Conv, MatMul and Gemm have int8 weights;
    onnxruntime's per-channel quantization of a LayerNormalization weight ("Axis 1 is out-of-range")
    zeroed such graphs' outputs."""
    import onnx

    folder = _exported(tmp_path, "test_vit3", 3, 64, {"img_size": 64})
    record = export_onnx(folder, int8=True, eval_data=_rgb_splits(120, 60), num_calibration=64)
    figures = record.get("int8") or record["int8_refused"]
    graph_path = folder / ONNX_INT8_FILE
    if not graph_path.exists():  # refused: quantize again to look at the graph itself
        onnx_int8.quantize_int8(folder / ONNX_FILE, graph_path, np.zeros((32, 3, 64, 64), np.float32))
    graph = onnx.load(graph_path).graph
    initializers = {tensor.name for tensor in graph.initializer}
    weights = {
        n.output[0] for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in initializers
    }
    readers = {n.op_type for n in graph.node if weights & set(n.input)}  # the ops with int8 weights
    assert readers == {"Conv", "MatMul"}, readers  # the patch embedding, the attention and MLP matmuls
    assert figures["cosine_to_fp32"]["mean"] > 0.9, figures  # not zeroed


def test_int8_below_the_bar_is_refused_with_its_figures(tmp_path, monkeypatch, caplog):
    """Below the bar (here an unattainable one), the int8 graph is not written: the fp32 graph is,
    the record keeps the figures and the shortfalls, the card says why there is no int8 graph, and
    the scripts end with an error naming them."""
    monkeypatch.setitem(onnx_int8.INT8_QUALITY_BAR, "mean_cosine", 1.01)
    folder = _exported(tmp_path, "test_efficientnet", 3, 64, {})
    data = _rgb_splits(120, 60)
    with caplog.at_level("WARNING", logger="seed_hf.export.onnx_export"):
        record = export_onnx(folder, int8=True, eval_data=data, num_calibration=64)
    assert [f["path"] for f in record["files"]] == [ONNX_FILE] and "int8" not in record
    assert sorted(p.name for p in (folder / "onnx").iterdir()) == ["model.onnx"]
    refused = record["int8_refused"]
    assert refused["shortfalls"] == [f"mean cosine to fp32 {refused['cosine_to_fp32']['mean']:.4f} < 1.01"]
    assert "int8 graph of" in caplog.text and "refused" in caplog.text and "< 1.01" in caplog.text
    text = render_model_card(
        {"method": "seed", "architecture": "test_efficientnet", "feature_dim": 1024, "onnx": record},
        [],
        "org/m",
    ).text
    assert "No int8 graph" in text and "< 1.01" in text and f"`{ONNX_INT8_FILE}`" not in text

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
    try:
        from seed_hf.scripts import run_export_onnx
    finally:
        sys.path.pop(0)
    monkeypatch.setattr("seed_hf.cli.script._labelled", lambda args, prefix: data)  # the --onnx_* data
    with pytest.raises(SystemExit, match=r"(?s)--onnx_int8 refused.*mean cosine to fp32 [0-9.]+ < 1.01"):
        run_export_onnx.main(["--folder", str(folder), "--onnx_int8", "--onnx_train_dir", "unused"])
    assert (folder / ONNX_FILE).is_file() and not (folder / ONNX_INT8_FILE).exists()


def test_a_graph_onnxruntime_cannot_quantize_keeps_its_fp32_export(tmp_path, monkeypatch):
    """A quantization failure (onnxruntime's "Incomplete symbolic shape inference" on some
    architectures) refuses int8 like a graph below the bar: the fp32 graph and the card are written."""

    def fail(*args, **kwargs):
        raise Exception("Incomplete symbolic shape inference")

    monkeypatch.setattr(onnx_int8, "quantize_int8", fail)
    folder = _exported(tmp_path, "test_efficientnet", 3, 64, {})
    record = export_onnx(folder, int8=True, eval_data=_rgb_splits(120, 60), num_calibration=64)
    assert sorted(p.name for p in (folder / "onnx").iterdir()) == ["model.onnx"]
    assert "could not quantize" in record["int8_refused"]["shortfalls"][0]
    text = render_model_card(
        {"method": "seed", "architecture": "test_efficientnet", "feature_dim": 1024, "onnx": record},
        [],
        "org/m",
    ).text
    assert "No int8 graph: onnxruntime could not quantize" in text
    from seed_hf.cli.script import int8_refusals

    assert "Incomplete symbolic shape inference" in int8_refusals({str(folder): record})


def test_int8_needs_the_students_own_data(tmp_path):
    """int8 without labelled images of the student's own data is refused before anything is
    written (calibrating an RGB photo student on gray 28-px Fashion-MNIST measured nothing of it);
    the scripts take Fashion-MNIST only for a run that trained on it."""
    from seed_hf.cli import OnnxArguments, onnx_export_options

    folder = _exported(tmp_path, "test_efficientnet", 3, 64, {})
    with pytest.raises(ValueError, match="int8=True needs `eval_data`"):
        export_onnx(folder, int8=True)
    assert not (folder / "onnx").exists()
    match = r"--onnx_int8 .*\(trained on imagefolder photos\): pass .*--onnx_dataset_name .*--onnx_train_dir"
    with pytest.raises(ValueError, match=match):
        onnx_export_options(OnnxArguments(onnx_int8=True), "imagefolder photos")
    with pytest.raises(ValueError, match=r"training data not recorded"):
        onnx_export_options(OnnxArguments(onnx_int8=True))
    assert onnx_export_options(OnnxArguments(onnx=True)) == {"int8": False, "rtol": DEFAULT_RTOL, "opset": 17}
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
    try:
        from seed_hf.scripts import run_export_onnx
    finally:
        sys.path.pop(0)
    with pytest.raises(ValueError, match="--onnx_int8 calibrates the int8 graph on the student's own data"):
        run_export_onnx.main(["--folder", str(folder), "--onnx_int8"])
    assert not (folder / "onnx").exists()
    from conftest import FASHION_MNIST_AVAILABLE

    if FASHION_MNIST_AVAILABLE:
        options = onnx_export_options(
            OnnxArguments(onnx_int8=True, onnx_max_eval_samples=20), "fashion_mnist"
        )
        assert options["eval_data"].name == "fashion_mnist" and len(options["eval_data"].eval_labels) == 20


def test_failed_verification_names_the_figure_and_keeps_the_old_onnx(tmp_path, monkeypatch):
    folder = _exported(tmp_path, *FAMILIES[0].values)
    (folder / ".onnx.partial-999999999").mkdir()  # left by a killed export (no such process)
    export_onnx(folder)
    before = (folder / ONNX_FILE).read_bytes()
    real_export = onnx_export.export_pooled_onnx

    def broken_exporter(model, path, example, *args, **kwargs):  # an exporter that gets one weight wrong
        with torch.no_grad():
            model.conv1.weight.mul_(1.01)
        try:
            real_export(model, path, example, *args, **kwargs)
        finally:
            with torch.no_grad():
                model.conv1.weight.div_(1.01)

    monkeypatch.setattr(onnx_export, "export_pooled_onnx", broken_exporter)
    with pytest.raises(
        OnnxVerificationError,
        match=r"at batch 1: max abs difference [0-9.e-]+, [0-9.e-]+ of the largest feature magnitude [0-9.e+-]+ > "
        r"rtol=0.0001",
    ):
        export_onnx(folder)
    assert (folder / ONNX_FILE).read_bytes() == before  # untouched
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
        "onnx",
    ]
    with pytest.raises(ValueError, match="rtol"):
        export_onnx(folder, rtol=0)
    with pytest.raises(FileNotFoundError, match="folder"):
        export_onnx(tmp_path)


def test_verification_is_relative_to_the_features_scale(tmp_path):
    """A correct export of a student whose features are ~1e6 (as a random MobileOne's reach 1e9-1e15)
    differs from PyTorch by far more than 1e-4 in absolute terms, and by ~1e-7 of the scale: it is
    verified, the record giving both figures."""
    model = tiny_student(student_architecture="test_resnet", image_size=40).eval()
    _randomise_norm_layers(model.student)
    with torch.no_grad():
        next(m for m in model.student.modules() if isinstance(m, torch.nn.Conv2d)).weight.mul_(1e6)
    folder = export_student(model, tmp_path / "export")
    record = export_onnx(folder)
    assert record["feature_scale"] > 1e5 and max(record["max_abs_diff"].values()) > 1e-4
    assert max(record["max_abs_diff"].values()) <= DEFAULT_RTOL * record["feature_scale"]
    card = render_model_card(
        {"method": "seed", "architecture": "test_resnet", "feature_dim": 256, "onnx": record}, [], "o/m"
    ).text
    assert (
        f"against features of magnitude up to {record['feature_scale']:.3g} (limit {DEFAULT_RTOL} of it)"
        in card
    )


REPARAMETERIZABLE = [
    pytest.param("fastvit_t8", 3, "fused", id="fastvit_t8-3ch"),
    pytest.param("mobileone_s0", 3, "training", id="mobileone_s0-3ch"),
    pytest.param("mobileone_s0", 1, "training", id="mobileone_s0-1ch"),
]


@pytest.mark.parametrize("arch,in_chans,form", REPARAMETERIZABLE)
def test_reparameterizable_students_are_exported_fused(tmp_path, arch, in_chans, form):
    """timm's reparameterize_model fuses the multi-branch blocks: the Hub folder holds the fused form
    where timm rebuilds it from config.json (FastViT: inference_mode), else the training form (timm
    has no config for a fused RepVGG/MobileOne stem) and the card says how to fuse it; the ONNX graph
    is fused either way (no BatchNormalization, no branch Add). The folder's features, through timm
    and AutoModel, are the training-time model's (the live model stays multi-branch)."""
    import onnx
    from safetensors.torch import load_file
    from transformers import AutoModel

    model = tiny_student(student_architecture=arch, in_chans=in_chans, image_size=32,
                         image_mean=[0.5] * in_chans, image_std=[0.25] * in_chans).eval()  # fmt: skip
    _randomise_norm_layers(model.student)
    branches = {k for k in model.student.state_dict() if "conv_kxk" in k}
    assert branches  # multi-branch at training time
    folder = export_student(model, tmp_path / "export")
    config = json.loads((folder / "config.json").read_text())
    keys = set(load_file(folder / "model.safetensors"))
    card = (folder / "README.md").read_text()
    if form == "fused":
        assert config["model_args"]["inference_mode"] is True and not any("conv_kxk" in k for k in keys)
        assert "fused inference form" in card
    else:
        assert "inference_mode" not in config["model_args"] and branches <= keys
        assert "unfused training form" in card and "reparameterize_model" in card
    assert {
        k for k in model.student.state_dict() if "conv_kxk" in k
    } == branches  # the live model is untouched

    transform, _ = folder_transform(folder)
    images = [im.convert("L" if in_chans == 1 else "RGB") for im in sample_images(16)]
    pixel_values = torch.stack([transform(im.convert("RGB")) for im in images])
    from seed_hf.evaluation.features import eval_data_config, eval_transform

    own = eval_transform(eval_data_config(in_chans, 32, [0.5] * in_chans, [0.25] * in_chans))
    with torch.no_grad():
        expected = model.student(torch.stack([own(im) for im in images])).numpy()
        automodel = AutoModel.from_pretrained(folder).eval()(pixel_values=pixel_values).pooler_output.numpy()
    scale = np.abs(expected).max()
    assert np.abs(_timm_features(folder, pixel_values.numpy()) - expected).max() <= 1e-5 * scale
    assert np.abs(automodel - expected).max() <= 1e-5 * scale

    record = export_onnx(folder)
    ops = [n.op_type for n in onnx.load(folder / ONNX_FILE).graph.node]
    assert "BatchNormalization" not in ops, ops
    if form == "training":
        assert record["reparameterized"] is True and "Add" not in ops, ops  # one conv per block
    assert max(record["max_abs_diff"].values()) <= DEFAULT_RTOL * record["feature_scale"]
    got = ort_session(folder / ONNX_FILE).run(None, {"pixel_values": pixel_values.numpy()})[0]
    assert np.abs(got - expected).max() <= 1e-4 * scale


def test_hub_loaders_still_load_a_folder_with_onnx(tmp_path):
    """AutoModel + AutoImageProcessor, timm local-dir and pipeline(pool=True), in a process without
    seed_hf, load an export that holds onnx/ and give the ONNX graph's features (1e-4); the card lists
    the files and upload_plan uploads them."""
    folder = _exported(tmp_path, "mobilenetv3_small_100", 1, 40, {}, onnx={})
    assert upload_plan(folder) == ["README.md", "config.json", "model.safetensors", ONNX_FILE]
    card = (folder / "README.md").read_text()
    assert "## ONNX" in card and f"`{ONNX_FILE}`" in card and "resolve_data_config(pretrained_cfg=" in card
    images = torch.from_numpy(_gray_images(8))
    transform, _ = folder_transform(folder)
    from PIL import Image

    pixel_values = torch.stack([transform(Image.fromarray(a.numpy())) for a in images]).numpy()
    features = torch.from_numpy(ort_session(folder / ONNX_FILE).run(None, {"pixel_values": pixel_values})[0])
    torch.save({"images": images, "features": features}, tmp_path / "ref.pt")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    result = subprocess.run(
        [sys.executable, str(LOADER), str(folder), str(tmp_path / "ref.pt")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    diffs = json.loads(result.stdout.strip().splitlines()[-1])
    assert diffs["seed_hf_imported"] is False and diffs["feature_dim"] == 1024
    assert max(diffs["automodel"], diffs["timm"], diffs["pipeline"]) <= 1e-4, diffs


def test_missing_extra_names_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    with pytest.raises(ImportError, match=r"seed-hf\[onnx\]"):
        export_onnx(tmp_path)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
    try:
        from seed_hf.scripts import run_export
    finally:
        sys.path.pop(0)
    with pytest.raises(ImportError, match=r"--onnx needs .*seed-hf\[onnx\]"):
        run_export.main(["--student_dir", str(tmp_path), "--output_dir", str(tmp_path / "out"), "--onnx"])


def test_bench_infer_smoke(tmp_path):
    """benchmarks/bench_infer.py end to end on tiny models (figures not asserted): every runtime of
    teacher and student, the machine, and the table in a manifest entry's card facts."""
    from conftest import FASHION_MNIST_AVAILABLE
    from helpers import tiny_moco

    if not FASHION_MNIST_AVAILABLE:
        pytest.skip("apt-get install -y dataset-fashion-mnist")
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    try:
        import bench_infer
    finally:
        sys.path.pop(0)
    teacher = tmp_path / "teacher"
    tiny_moco(in_chans=1, image_size=32, image_mean=[0.286], image_std=[0.353]).save_pretrained(teacher)
    student = _exported(tmp_path, "mobilenetv3_small_100", 1, 32, {})
    manifest = tmp_path / "model_cards" / "models.json"
    manifest.parent.mkdir()
    manifest.write_text(json.dumps([{"name": "s", "folder": str(student), "facts": {"method": "seed"}}]))
    out = bench_infer.main(
        ["--student", str(student), "--teacher", str(teacher), "--rounds", "1", "--warmup", "1",
         "--batch1_calls", "2", "--threads", "1", "--batch_calls", "1", "--batch_size", "8", "--num_calibration", "16",
         "--output_json", str(tmp_path / "speed.json"), "--manifest", str(manifest), "--manifest_name", "s"]
    )  # fmt: skip
    assert [(r["role"], r["runtime"]) for r in out["rows"]] == [
        (role, runtime) for role in ("teacher", "student") for runtime in bench_infer.RUNTIMES
    ]
    assert all(r["batch1_ms"] > 0 and r["batch64_img_s"] > 0 for r in out["rows"])
    assert (
        out["machine"]["threads"] == 1 and out["machine"]["cores"] == os.cpu_count() and out["machine"]["cpu"]
    )
    assert not (student / "onnx").exists()  # the benchmark never writes into the folder it measures
    assert json.loads(manifest.read_text())[0]["facts"]["speed"]["rows"] == out["rows"]
    assert json.loads((tmp_path / "speed.json").read_text())["rows"] == out["rows"]


def test_run_export_onnx_int8_flags(tmp_path, monkeypatch):
    """run_export.py --onnx_int8 from a run folder that trained on Fashion-MNIST: both graphs, the
    int8 quality on that data in the card; library parameter errors come back as the flags."""
    from conftest import FASHION_MNIST_AVAILABLE

    if not FASHION_MNIST_AVAILABLE:
        pytest.skip("apt-get install -y dataset-fashion-mnist")
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
    try:
        from seed_hf.scripts import run_export
    finally:
        sys.path.pop(0)
    model = tiny_student(student_architecture="mobilenetv3_small_100", in_chans=1, image_size=32)
    model.save_pretrained(tmp_path / "run")
    (tmp_path / "run" / "run_info.json").write_text(
        json.dumps({"dataset": "fashion_mnist"})
    )  # what runs record
    argv = ["--student_dir", str(tmp_path / "run"), "--output_dir", str(tmp_path / "out")]
    with pytest.raises(ValueError, match="--onnx_rtol"):
        run_export.main([*argv, "--onnx", "--onnx_rtol", "0"])
    # the bar's figures on an untrained student are not the point here (the bar is tested above)
    monkeypatch.setattr(onnx_int8, "INT8_QUALITY_BAR", {**onnx_int8.INT8_QUALITY_BAR, "mean_cosine": 0.0,
                                                          "p1_cosine": 0.0, "max_knn_drop": 100.0})  # fmt: skip
    (folder,) = run_export.main(
        [*argv, "--onnx_int8", "--onnx_max_train_samples", "200", "--onnx_max_eval_samples", "50"]
    )
    assert upload_plan(folder) == ["README.md", "config.json", "model.safetensors", ONNX_FILE, ONNX_INT8_FILE]
    card = (folder / "README.md").read_text()
    assert "fashion_mnist (200 train → 50 test images)" in card and "int8 " in card and "k=200" in card


def test_dynamo_exporter_is_one_argument_away(tmp_path):
    folder = _exported(tmp_path, *FAMILIES[0].values)
    record = export_onnx(folder, exporter="dynamo")
    assert record["exporter"] == "dynamo" and record["opset"] >= 18  # the dynamo exporter's minimum
    assert max(record["max_abs_diff"].values()) <= DEFAULT_RTOL * record["feature_scale"]
    assert sorted(p.name for p in (folder / "onnx").iterdir()) == ["model.onnx"]  # no external data file
    with pytest.raises(ValueError, match="exporter="):
        export_onnx(folder, exporter="tflite")


def test_run_seed_onnx_exports_an_rgb_channels_last_run(tmp_path):
    """run_seed.py --onnx (no --push_to_hub) on colour images, trained channels_last: checkpoints
    save, and the student is exported with a verified onnx/ (a channels_last 3-channel conv weight
    is not contiguous, which the export's safetensors refused)."""
    from helpers import tiny_moco

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
    try:
        from seed_hf.scripts import run_seed
    finally:
        sys.path.pop(0)
    for i, image in enumerate(sample_images(32)):
        (tmp_path / "photos" / str(i % 4)).mkdir(parents=True, exist_ok=True)
        image.convert("RGB").resize((48, 48)).save(tmp_path / "photos" / str(i % 4) / f"{i}.png")
    teacher = tmp_path / "teacher"
    tiny_moco(in_chans=3, image_size=32, image_mean=[0.5] * 3, image_std=[0.25] * 3).save_pretrained(teacher)
    run_seed.main(
        ["--teacher_name_or_path", str(teacher), "--student_architecture", "test_efficientnet", "--image_size", "32",
         "--train_dir", str(tmp_path / "photos"), "--channels_last", "true", "--queue_size", "64",
         "--per_device_train_batch_size", "16", "--max_steps", "2", "--use_cpu", "--report_to", "none",
         "--disable_tqdm", "true", "--save_steps", "1", "--output_dir", str(tmp_path / "run"), "--onnx"]
    )  # fmt: skip
    assert json.loads((tmp_path / "run" / "step_choice.json").read_text())["student_channels_last"] is True
    assert (tmp_path / "run" / "checkpoint-1" / "model.safetensors").is_file()
    folder = tmp_path / "run" / "export"
    assert upload_plan(folder) == ["README.md", "config.json", "model.safetensors", ONNX_FILE]
    assert json.loads((folder / "config.json").read_text())["pretrained_cfg"]["input_size"] == [3, 32, 32]
    assert "## ONNX" in (folder / "README.md").read_text()


def test_too_few_verification_images_name_where_they_came_from(tmp_path):
    folder = export_student(tiny_student(image_size=32), tmp_path / "export")
    with pytest.raises(ValueError, match=r"verified on at least 16 images: `images` holds 5"):
        export_onnx(folder, images=sample_images(5))
    splits = _small_splits(40, 10)
    match = "the evaluation split of --onnx_dataset_name / --onnx_train_dir holds 10"
    with pytest.raises(ValueError, match=match):
        export_onnx(folder, eval_data=splits)
