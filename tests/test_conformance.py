"""The conformance matrix: every student family through the user's whole path, as timm's
``tests/test_models.py`` runs every registered model through the same checks.

One table of families (:data:`STUDENT_FAMILIES`), 3-channel photos by default (crops of
scikit-image's sample photographs as an image folder) and 1-channel Fashion-MNIST too. Each family
goes through: ``run_seed.py`` with the default flags (``--channels_last auto``, the default
clipping) for two steps with a checkpoint per step and the end-of-training ONNX export →
``SeedForDistillation.from_pretrained`` of the run folder gives the in-memory model's features →
a resume from the first checkpoint ends on the same weights → the exported folder loads without
seed_hf (timm ``local-dir:``, ``AutoModel``, ``pipeline``) with the same features, and so does its
verified ONNX graph → the run folder is a teacher whose embeddings are the student's. A family that
cannot take a step is listed in :data:`REFUSED` with the message its user gets (none today).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import requires_fashion_mnist
from safetensors.torch import load_file

from seed_hf import SeedConfig, SeedForDistillation, load_teacher

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

from seed_hf.scripts import run_seed  # noqa: E402

# family -> (timm architecture, tiny model args, image size). The families a user brings: CNNs,
# mobile nets, a reparameterizable net per kind, ViTs with absolute / rotary position and registers,
# hybrid attention nets with non-persistent index buffers.
STUDENT_FAMILIES: dict[str, tuple[str, dict, int]] = {
    "resnet": ("resnet18", {}, 32),
    "efficientnet": ("efficientnet_b0", {}, 32),
    "mobilenetv3": ("mobilenetv3_small_050", {}, 32),
    "mobilenetv4": ("mobilenetv4_conv_small", {}, 32),
    "ghostnet": ("ghostnet_050", {}, 32),
    "regnet": ("regnetx_002", {}, 32),
    "convnext": ("convnext_atto", {}, 32),
    "repvgg": ("repvgg_a0", {}, 32),
    "mobileone": ("mobileone_s0", {}, 32),
    "fastvit": ("fastvit_t8", {}, 32),
    "vit": ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "depth": 2}, 32),
    "vit_rope": (
        "vit_small_patch16_rope_224",
        {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 64, "num_heads": 2},
        32,
    ),
    "vit_registers": (
        "vit_small_patch14_reg4_dinov2",
        {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 64, "num_heads": 2},
        32,
    ),
    "levit": ("levit_128s", {"img_size": 64}, 64),
    "efficientvit": ("efficientvit_m0", {"img_size": 64}, 64),
    "swin": (
        "swin_tiny_patch4_window7_224",
        {"img_size": 56, "depths": [1, 1, 1, 1], "embed_dim": 32, "num_heads": [1, 1, 2, 2]},
        56,
    ),
}
# family -> the message its user gets instead of a step (refused, never a crash); empty: all pass
REFUSED: dict[str, str] = {}
# the 1-channel path (Fashion-MNIST) for a family of each kind: CNN, reparameterizable, ViT, attention indices
GRAYSCALE_FAMILIES = ["resnet", "mobileone", "vit_rope", "swin"]

TEACHER = "test_efficientnet"  # a random timm teacher (--allow_random_teacher): the matrix tests the students
BATCH = 4
# features equal across loaders: the same weights through other code paths (fp32 rounding only)
FEATURE_RTOL = 1e-4


def _photo_folder(root: Path, count: int = 12) -> Path:
    """An image folder of RGB crops of scikit-image's sample photographs, two classes, mixed sizes."""
    from PIL import Image
    from skimage import data as skdata

    photos = [skdata.astronaut(), skdata.coffee(), skdata.chelsea(), skdata.rocket()]
    rng = np.random.default_rng(0)
    for i in range(count):
        photo = photos[i % len(photos)]
        size = int(rng.integers(48, 96))
        y, x = (int(rng.integers(0, photo.shape[d] - size)) for d in (0, 1))
        folder = root / f"class_{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo[y : y + size, x : x + size]).save(folder / f"{i:03d}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return _photo_folder(tmp_path_factory.mktemp("photos"))


def _photo_shards(folder: Path, out: Path, fmt: str, shards: int = 2) -> list[str]:
    """The photo folder's JPEGs as parquet shards (``image`` {bytes, path} structs + ``label``) or
    webdataset tars (``<key>.jpg`` + ``<key>.cls``), as the Hub's image datasets ship them."""
    import io
    import tarfile

    images = sorted(folder.glob("*/*.jpg"))
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for s in range(shards):
        part = images[s::shards]
        labels = [int(p.parent.name.split("_")[1]) for p in part]
        if fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            path = out / f"train-{s:05d}.parquet"
            rows = [{"bytes": p.read_bytes(), "path": p.name} for p in part]
            pq.write_table(pa.table({"image": rows, "label": labels}), path)
        else:
            path = out / f"train-{s:05d}.tar"
            with tarfile.open(path, "w") as tar:
                for p, label in zip(part, labels):
                    for name, payload in (
                        (f"{p.stem}.jpg", p.read_bytes()),
                        (f"{p.stem}.cls", str(label).encode()),
                    ):
                        info = tarfile.TarInfo(name)
                        info.size = len(payload)
                        tar.addfile(info, io.BytesIO(payload))
        files.append(str(path))
    return files


# layout -> the data flags of a user whose photos are stored that way (RGB)
DATA_LAYOUTS = ["imagefolder", "parquet", "parquet_streaming", "webdataset", "webdataset_streaming"]


def _argv(family: str, output_dir: Path, data: list[str], onnx: bool = True) -> list[str]:
    architecture, model_args, size = STUDENT_FAMILIES[family]
    return [
        "--teacher_name_or_path",
        TEACHER,
        "--allow_random_teacher",
        "--student_architecture",
        architecture,
        "--student_model_args",
        json.dumps(model_args),
        "--image_size",
        str(size),
        "--queue_size",
        "16",
        "--per_device_train_batch_size",
        str(BATCH),
        "--max_steps",
        "2",
        "--save_steps",
        "1",
        "--logging_steps",
        "1",
        "--use_cpu",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
        *(["--onnx"] if onnx else []),
        "--output_dir",
        str(output_dir),
        *data,
    ]


def _pixels(channels: int, size: int, n: int = 3) -> torch.Tensor:
    return torch.randn(n, channels, size, size, generator=torch.Generator().manual_seed(1))


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    scale = float(a.abs().max().clamp_min(1e-6))
    return bool(
        torch.isfinite(a).all() and torch.isfinite(b).all() and (a - b).abs().max() <= FEATURE_RTOL * scale
    )


def _user_path(family: str, tmp_path: Path, data: list[str], channels: int) -> None:
    if family in REFUSED:
        with pytest.raises(ValueError, match=REFUSED[family]):
            run_seed.main(_argv(family, tmp_path / "run", data))
        return
    _, _, size = STUDENT_FAMILIES[family]
    run = tmp_path / "run"
    # 1. train with the default flags, a checkpoint per step, the ONNX export at the end
    metrics = run_seed.main(_argv(family, run, data))
    assert np.isfinite(metrics["train_loss"])
    step_path = json.loads((run / "checkpoint-2" / "step_choice.json").read_text())
    assert step_path["sources"]["student_channels_last"] in ("prior", "unsafe")

    # 2. the run folder reloads with the features of the model it saved (timm's non-persistent
    # buffers rebuilt), here the exported timm folder's
    x = _pixels(channels, size)
    student = SeedForDistillation.from_pretrained(run).eval()
    assert student.config.in_chans == channels
    with torch.no_grad():
        features = student.get_features(x)
        embeds = F.normalize(student.head(features), dim=1)
    assert torch.isfinite(features).all() and features.std() > 0

    # 3. a resume from the first checkpoint ends on the weights of the uninterrupted run
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(run / "checkpoint-1", resumed / "checkpoint-1")
    shutil.copy(run / "run_info.json", resumed / "run_info.json")
    run_seed.main(_argv(family, resumed, data, onnx=False))
    final, again = load_file(str(run / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert final.keys() == again.keys()
    assert all(torch.equal(final[k], again[k]) for k in final), "the resumed run ended on other weights"

    # 4. the export loads without seed_hf, with the same features
    import timm
    from transformers import AutoModel, pipeline

    export = run / "export"
    timm_model = timm.create_model(f"local-dir:{export}", pretrained=True).eval()
    auto_model = AutoModel.from_pretrained(export).eval()
    rgb = x.repeat(1, 3 // channels, 1, 1) if timm_model.pretrained_cfg.get("input_size", [3])[0] == 3 else x
    with torch.no_grad():
        assert _close(features, timm_model(rgb if channels == 1 else x))
        assert _close(features, auto_model(pixel_values=rgb if channels == 1 else x).pooler_output)
    extractor = pipeline("image-feature-extraction", model=str(export), pool=True)
    from PIL import Image

    image = Image.fromarray((np.random.default_rng(0).random((size + 8, size + 8, 3)) * 255).astype(np.uint8))
    pooled = torch.tensor(extractor(image, pool=True)).reshape(-1)
    assert pooled.shape[0] == features.shape[1] and torch.isfinite(pooled).all()

    # 5. its ONNX graph was verified against torch at export; it gives the same features here too
    import onnxruntime as ort

    session = ort.InferenceSession(str(export / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    onnx_in = (rgb if channels == 1 and session.get_inputs()[0].shape[1] == 3 else x).numpy()
    assert _close(features, torch.from_numpy(session.run(None, {name: onnx_in})[0]))

    # 6. the run folder is a teacher whose embeddings are the student's
    teacher = load_teacher(str(run))
    with torch.no_grad():
        assert _close(embeds, teacher(x))


@pytest.mark.parametrize("family", list(STUDENT_FAMILIES))
def test_student_family_in_colour(family, photos, tmp_path):
    _user_path(family, tmp_path, ["--train_dir", str(photos)], channels=3)


@requires_fashion_mnist
@pytest.mark.parametrize("family", GRAYSCALE_FAMILIES)
def test_student_family_in_grayscale(family, tmp_path):
    _user_path(family, tmp_path, ["--max_train_samples", "32"], channels=1)


@pytest.mark.parametrize("family", list(STUDENT_FAMILIES))
def test_from_pretrained_gives_the_in_memory_features(family, tmp_path):
    """A saved and reloaded SEED model computes what the model it saved computed (timm's
    non-persistent buffers, which no checkpoint holds, are rebuilt by ``from_pretrained``)."""
    architecture, model_args, size = STUDENT_FAMILIES[family]
    torch.manual_seed(0)
    config = SeedConfig(
        student_architecture=architecture,
        student_model_args=model_args,
        image_size=size,
        queue_size=16,
        projection_dim=8,
    )
    model = SeedForDistillation(config).eval()
    model.save_pretrained(tmp_path)
    reloaded = SeedForDistillation.from_pretrained(tmp_path).eval()
    x = _pixels(3, size)
    with torch.no_grad():
        # the same weights and buffers (fp32 kernels may sum in another order: not bit-equal)
        assert _close(model.get_features(x), reloaded.get_features(x))


@pytest.mark.parametrize("layout", DATA_LAYOUTS)
def test_data_layout_in_colour(layout, photos, tmp_path):
    """Every way a user stores photos trains the default student two steps and exports it, RGB."""
    fmt = layout.split("_")[0]
    if fmt == "imagefolder":
        data = ["--train_dir", str(photos)]
    else:
        data = ["--train_files", *_photo_shards(photos, tmp_path / "shards", fmt)]
    if layout.endswith("streaming"):
        data.append("--streaming")
    run = tmp_path / "run"
    metrics = run_seed.main(_argv("mobilenetv3", run, data, onnx=False))
    assert np.isfinite(metrics["train_loss"])
    config = json.loads((run / "config.json").read_text())
    assert config["in_chans"] == 3 and config["image_size"] == STUDENT_FAMILIES["mobilenetv3"][2]
    assert json.loads((run / "trainer_state.json").read_text())["global_step"] == 2
