"""ONNX export of exported students (seed_hf.onnx_export): verified fp32 graphs for every supported
student family at batch 1 and 64, int8 with its kNN against fp32, atomic onnx/ folders, the Hub
loaders on a folder that holds onnx/, and the message when the onnx extra is missing."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_student

from seed_hf import onnx_export
from seed_hf.cards import render_model_card
from seed_hf.cli import flags_in_errors
from seed_hf.cli.script import ONNX_FLAGS
from seed_hf.evaluation import LabelledSplits
from seed_hf.hub import export_student, upload_plan
from seed_hf.onnx_export import (
    ONNX_FILE,
    ONNX_INT8_FILE,
    OnnxVerificationError,
    export_onnx,
    folder_transform,
    ort_session,
    sample_images,
)

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
    statistics) makes some random students output ~1e-5 features, against which atol=1e-4 would
    test nothing. With these the features are O(0.1-1) and BN folding is exercised for real."""
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
    print(f"{arch} in_chans={in_chans}: {record['max_abs_diff']}")
    assert set(record["max_abs_diff"]) == {"batch_1", "batch_64"}
    assert max(record["max_abs_diff"].values()) <= 1e-4
    assert record["exporter"] == "torchscript" and record["opset"] == onnx_export.DEFAULT_OPSET
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
    assert expected.std() > 1e-2  # features large enough for atol=1e-4 to mean something
    session = ort_session(folder / ONNX_FILE)
    for batch in (pixel_values[:1], pixel_values):
        got = session.run(None, {"pixel_values": batch})[0]
        assert got.shape == (len(batch), expected.shape[1]) == (len(batch), record["output"]["shape"][1])
        assert np.abs(got - expected[: len(batch)]).max() <= 1e-4


def _small_splits(n_train: int = 300, n_eval: int = 100) -> LabelledSplits:
    from conftest import FASHION_MNIST_AVAILABLE

    if FASHION_MNIST_AVAILABLE:
        from seed_hf.evaluation import load_labelled_splits

        return load_labelled_splits().subsample(n_train, n_eval)
    images = sample_images(n_train + n_eval)
    labels = np.arange(n_train + n_eval) % 16  # the photo each crop came from
    return LabelledSplits(
        "skimage_crops", images[:n_train], labels[:n_train], images[n_train:], labels[n_train:], "test"
    )


@pytest.mark.parametrize(
    "arch,in_chans,size,model_args",
    [FAMILIES[1], FAMILIES[2]],
)
def test_int8_export_records_knn_against_fp32(tmp_path, arch, in_chans, size, model_args):
    folder = _exported(tmp_path, arch, in_chans, size, model_args)
    data = _small_splits()
    record = export_onnx(folder, int8=True, eval_data=data, num_calibration=64)
    assert [f["path"] for f in record["files"]] == [ONNX_FILE, ONNX_INT8_FILE]
    fp32_size, int8_size = (f["size_mb"] for f in record["files"])
    assert int8_size < 0.5 * fp32_size
    import onnx

    ops = {n.op_type for n in onnx.load(folder / ONNX_INT8_FILE).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int8 = record["int8"]
    assert "static QDQ" in int8["method"] and "64 class-balanced images" in int8["calibration"]
    assert int8["cosine_to_fp32"]["mean"] > 0.9
    knn = int8["knn"]
    assert (knn["num_train"], knn["num_eval"], knn["k"]) == (300, 100, 200)
    assert knn["int8_minus_fp32"] == pytest.approx(knn["int8_top1"] - knn["fp32_top1"], abs=0.011)
    assert 0 <= knn["int8_top1"] <= 100 and knn["fp32_top1"] > 100 / 16  # above chance

    # the card renders it: the files, the check figures, the kNN of both graphs and the usage snippet
    text = render_model_card(
        {"method": "seed", "architecture": arch, "feature_dim": 1024, "onnx": record}, [], "org/m"
    ).text
    for needle in (
        ONNX_INT8_FILE,
        "max abs difference",
        f"int8 {knn['int8_top1']:.2f}",
        "onnxruntime as ort",
        'convert("RGB")',
    ):
        assert needle in text, needle


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
        OnnxVerificationError, match=r"at batch 1: max abs difference [0-9.e-]+ > atol=0.0001"
    ):
        export_onnx(folder)
    assert (folder / ONNX_FILE).read_bytes() == before  # untouched
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
        "onnx",
    ]
    with pytest.raises(ValueError, match="atol"):
        export_onnx(folder, atol=0)
    with pytest.raises(FileNotFoundError, match="folder"):
        export_onnx(tmp_path)


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
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
    try:
        import run_export
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


def test_run_export_onnx_int8_flags(tmp_path):
    """run_export.py --onnx_int8 from a run folder: both graphs, the int8 kNN on the --onnx_* data in
    the card; library parameter errors come back as the flags."""
    from conftest import FASHION_MNIST_AVAILABLE

    if not FASHION_MNIST_AVAILABLE:
        pytest.skip("apt-get install -y dataset-fashion-mnist")
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
    try:
        import run_export
    finally:
        sys.path.pop(0)
    model = tiny_student(student_architecture="mobilenetv3_small_100", in_chans=1, image_size=32)
    model.save_pretrained(tmp_path / "run")
    argv = ["--student_dir", str(tmp_path / "run"), "--output_dir", str(tmp_path / "out")]
    with pytest.raises(ValueError, match="--onnx_atol"):
        run_export.main([*argv, "--onnx", "--onnx_atol", "0"])
    (folder,) = run_export.main(
        [*argv, "--onnx_int8", "--onnx_max_train_samples", "200", "--onnx_max_eval_samples", "50"]
    )
    assert upload_plan(folder) == ["README.md", "config.json", "model.safetensors", ONNX_FILE, ONNX_INT8_FILE]
    card = (folder / "README.md").read_text()
    assert "fashion_mnist (200 train → 50 test images)" in card and "int8 " in card


def test_dynamo_exporter_is_one_argument_away(tmp_path):
    folder = _exported(tmp_path, *FAMILIES[0].values)
    record = export_onnx(folder, exporter="dynamo")
    assert record["exporter"] == "dynamo" and record["opset"] >= 18  # the dynamo exporter's minimum
    assert max(record["max_abs_diff"].values()) <= 1e-4
    assert sorted(p.name for p in (folder / "onnx").iterdir()) == ["model.onnx"]  # no external data file
    with pytest.raises(ValueError, match="exporter="):
        export_onnx(folder, exporter="tflite")


def test_run_seed_onnx_exports_at_the_end_of_training(tmp_path):
    """run_seed.py --onnx (no --push_to_hub): the student is exported with a verified onnx/."""
    from conftest import FASHION_MNIST_AVAILABLE
    from helpers import tiny_moco

    if not FASHION_MNIST_AVAILABLE:
        pytest.skip("apt-get install -y dataset-fashion-mnist")
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
    try:
        import run_seed
    finally:
        sys.path.pop(0)
    teacher = tmp_path / "teacher"
    tiny_moco(in_chans=1, image_size=32, image_mean=[0.286], image_std=[0.353]).save_pretrained(teacher)
    run_seed.main(
        ["--teacher_name_or_path", str(teacher), "--student_architecture", "test_efficientnet", "--image_size", "32",
         "--queue_size", "64", "--per_device_train_batch_size", "16", "--max_steps", "2", "--use_cpu",
         "--max_train_samples", "64", "--report_to", "none", "--disable_tqdm", "true", "--save_steps", "2",
         "--output_dir", str(tmp_path / "run"), "--onnx"]
    )  # fmt: skip
    folder = tmp_path / "run" / "export"
    assert upload_plan(folder) == ["README.md", "config.json", "model.safetensors", ONNX_FILE]
    assert "## ONNX" in (folder / "README.md").read_text()


def test_too_few_verification_images_name_where_they_came_from(tmp_path):
    folder = export_student(tiny_student(image_size=32), tmp_path / "export")
    with pytest.raises(ValueError, match=r"verified on at least 16 images: `images` holds 5"):
        export_onnx(folder, images=sample_images(5))
    splits = _small_splits(40, 10)
    match = "the evaluation split of --onnx_dataset_name / --onnx_train_dir holds 10"
    with pytest.raises(ValueError, match=match):
        with flags_in_errors(aliases=ONNX_FLAGS):  # as run_export_onnx.py shows it
            export_onnx(folder, eval_data=splits)
