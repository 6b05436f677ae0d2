import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import tiny_moco, tiny_student

from seed_hf.export.hub import export_student, push_student_to_hub, upload_plan
from seed_hf.teachers.fingerprint import weights_fingerprint

LOADER = Path(__file__).with_name("load_exported.py")


def _check_in_fresh_process(folder: Path, images: torch.Tensor, features: torch.Tensor) -> dict:
    torch.save({"images": images, "features": features}, folder.parent / "ref.pt")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    result = subprocess.run(
        [sys.executable, str(LOADER), str(folder), str(folder.parent / "ref.pt")],
        capture_output=True,
        text=True,
        env=env,
        cwd=folder.parent,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _gray_images(n: int = 16) -> torch.Tensor:
    """Real Fashion-MNIST test images when installed, else smooth random gray images."""
    from conftest import FASHION_MNIST_AVAILABLE

    if FASHION_MNIST_AVAILABLE:
        from seed_hf.data.fashion_mnist import load_fashion_mnist

        return torch.from_numpy(load_fashion_mnist("test")[0][:n])
    g = torch.Generator().manual_seed(0)
    small = torch.rand(n, 1, 7, 7, generator=g)
    return (torch.nn.functional.interpolate(small, size=28, mode="bilinear")[:, 0] * 255).to(torch.uint8)


def _evaluation_features(name: str, images: torch.Tensor) -> torch.Tensor:
    """seed_hf's evaluation features (what run_eval measures) of ``images``."""
    from seed_hf.evaluation.features import eval_transform, extract_features, load_encoder
    from seed_hf.evaluation.labelled import LabelledImages

    spec = load_encoder(name)
    dataset = LabelledImages(images.numpy(), [0] * len(images), eval_transform(spec.data_config))
    return extract_features(spec.module, dataset, batch_size=8)[0]


@pytest.mark.parametrize(
    "arch,in_chans",
    [("resnet18", 1), ("resnet18", 3), ("efficientnet_b0", 3), ("mobilenetv3_large_100", 1)],
)
def test_hub_load_paths_give_the_evaluation_features(tmp_path, arch, in_chans):
    """AutoImageProcessor+AutoModel, timm (local-dir + resolve_model_data_config + create_transform)
    and pipeline(pool=True), in a process without seed_hf, give seed_hf's evaluation features of
    real gray images (1e-4), for the exported folder and for the training run folder."""
    model = tiny_student(
        student_architecture=arch,
        in_chans=in_chans,
        image_size=40,
        image_mean=[0.286] * in_chans,
        image_std=[0.353] * in_chans,
    ).eval()
    run_dir = tmp_path / "run"
    model.save_pretrained(run_dir)
    folder = export_student(run_dir, tmp_path / "export")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert "num_classes" not in config["model_args"]
    cfg = config["pretrained_cfg"]
    assert cfg["tag"] == "seed" and cfg["input_size"] == [3, 40, 40]
    assert cfg["interpolation"] == "bilinear" and cfg["crop_pct"] == 1.0 and cfg["mean"] == [0.286] * 3
    images = _gray_images()
    features = _evaluation_features(str(folder), images)
    # the training run is evaluated with the same transform: same features as its export
    assert (features - _evaluation_features(str(run_dir), images)).abs().max() <= 1e-4
    diffs = _check_in_fresh_process(folder, images, features)
    print(f"{arch} in_chans={in_chans}: {diffs}")
    assert diffs["seed_hf_imported"] is False
    assert max(diffs["automodel"], diffs["timm"], diffs["pipeline"]) <= 1e-4, diffs
    assert diffs["feature_dim"] == model.pooled_width
    card = (folder / "README.md").read_text()
    assert f"{model.pooled_width}-d" in card and "3-channel images" in card
    assert ('image.convert("RGB")' in card) and ((in_chans == 1) == ("grayscale" in card))


def test_card_metadata_results_and_round_trip(tmp_path, caplog):
    from huggingface_hub import ModelCard

    model = tiny_student(teacher_name_or_path="hf-hub:org/moco-r50", teacher_ssl_method="moco_v2")
    run_dir = tmp_path / "run"
    model.save_pretrained(run_dir)
    rows = [
        {
            "model": str(run_dir),
            "weights_sha256": weights_fingerprint(str(run_dir)),
            "dataset": "fashion_mnist",
            "eval_split": "test",
            "num_train": 60000,
            "num_eval": 10000,
            "label_fraction": 1.0,
            "knn_top1": 81.234,
            "knn_k": 200,
            "knn_temperature": 0.07,
        },
        {
            "model": str(run_dir),
            "weights_sha256": weights_fingerprint(str(run_dir)),
            "dataset": "fashion_mnist",
            "eval_split": "test",
            "num_train": 600,
            "num_eval": 10000,
            "label_fraction": 0.01,
            "knn_top1": 60.5,
            "knn_k": 200,
            "knn_temperature": 0.07,
            "linear_top1": 70.25,
        },
        {"model": "pixels", "dataset": "fashion_mnist", "knn_top1": 79.0},
    ]
    (tmp_path / "eval.json").write_text(json.dumps(rows))
    folder = export_student(
        run_dir,
        tmp_path / "e",
        eval_results=tmp_path / "eval.json",
        repo_id="org/seed-tiny",
        training_summary={"dataset": "fashion_mnist", "steps": 30, "epochs": 3, "batch_size": 256},
        license="mit",
    )
    card = ModelCard.load(folder / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "timm" and data["pipeline_tag"] == "image-feature-extraction"
    assert "transformers" in data["tags"] and "seed" in data["tags"] and data["license"] == "mit"
    assert data["base_model"] == "org/moco-r50"  # the teacher is a Hub id
    # exactly this student's rows (not the pixels row), one metric per measured number
    measured = [
        (r.get("label_fraction"), key, round(r[key], 2))
        for r in rows[:2]
        for key in ("knn_top1", "linear_top1")
        if key in r
    ]
    got = [(e.metric_config, e.metric_value) for e in card.data.eval_results]
    assert [v for _, v in got] == [v for _, _, v in measured]
    assert [c for c, _ in got] == ["knn", "knn_0.01_labels", "linear_probe_0.01_labels"]
    assert "60000 (100%)" in card.text and "600 (1%)" in card.text and "10000" in card.text
    assert (
        "org/moco-r50" in card.text
        and 'pipeline("image-feature-extraction", model="org/seed-tiny")' in card.text
    )
    assert "pool=True" in card.text and "fang2021seed" in card.text and "A **test_resnet**" in card.text
    assert str(tmp_path) not in card.text
    assert ModelCard(str(card)).data.to_dict() == data

    with caplog.at_level("WARNING"):
        other = export_student(run_dir, tmp_path / "n", eval_results=[rows[2]])
    assert "No row of the evaluation results matches" in caplog.text
    assert "model-index" not in ModelCard.load(other / "README.md").data.to_dict()
    assert "Not evaluated" in ModelCard.load(other / "README.md").text


def test_moco_card_says_moco_and_local_teachers_stay_private(tmp_path):
    from huggingface_hub import ModelCard

    from seed_hf.export.cards import describe_teacher
    from seed_hf.export.hub import export_moco_encoder
    from seed_hf.models.modeling_moco import save_query_encoder

    moco = tiny_moco()
    save_query_encoder(moco, tmp_path / "moco")
    rows = [
        {
            "model": str(tmp_path / "moco"),
            "weights_sha256": weights_fingerprint(str(tmp_path / "moco")),
            "dataset": "fashion_mnist",
            "knn_top1": 70.0,
            "knn_k": 200,
            "knn_temperature": 0.07,
            "label_fraction": 1.0,
            "num_train": 100,
            "num_eval": 50,
            "linear_top1": 75.5,
        }
    ]
    folder = export_moco_encoder(
        tmp_path / "moco", tmp_path / "export", eval_results=rows, training_summary={"steps": 5}
    )
    card = ModelCard.load(folder / "README.md")
    assert "moco" in card.data.tags and "seed" not in card.data.tags and card.data.base_model is None
    assert (
        "MoCo-v2" in card.text
        and "SEED distillation" not in card.text
        and "distilled" not in card.text
        and "| teacher |" not in card.text
    )
    assert [e.metric_value for e in card.data.eval_results] == [70.0, 75.5]
    assert "chen2020mocov2" in card.text
    described = describe_teacher(f"moco_v2:{tmp_path / 'moco'}")
    assert described == {"name": "moco (local folder)", "method": "moco_v2", "base_model": None}
    assert describe_teacher("hf:facebook/dinov2-small")["base_model"] == "facebook/dinov2-small"


def test_upload_plan_and_offline_push_fails_clearly(tmp_path, caplog):
    folder = export_student(tiny_student(), tmp_path / "e")
    (folder / "notes.txt").write_text("not uploaded")
    assert upload_plan(folder) == ["README.md", "config.json", "model.safetensors"]
    secret = "hf_" + "x" * 34
    with pytest.raises(RuntimeError, match="Could not push") as info:
        push_student_to_hub(folder, "org/seed-tiny", token=secret)
    assert secret not in str(info.value) and secret not in caplog.text
    with pytest.raises(FileNotFoundError, match="export_student"):
        upload_plan(tmp_path)


@pytest.mark.parametrize("local_loss_weight", [0.0, 0.5])
def test_card_names_the_local_term_when_trained_with_it(tmp_path, local_loss_weight):
    """A student trained with the local term says so (weight, temperatures); one without names the
    SEED loss alone."""
    model = tiny_student(local_loss_weight=local_loss_weight, local_teacher_temperature=0.05)
    card = (export_student(model, tmp_path / "export") / "README.md").read_text()
    loss_row = next(line for line in card.splitlines() if line.startswith("| loss |"))
    if local_loss_weight:
        assert "+ 0.5 × the local term" in loss_row and "τ teacher 0.05" in loss_row
    else:
        assert "local" not in loss_row


def _rgb_images(n: int = 8) -> list:
    """Colour photos (crops of scikit-image's samples, converted to RGB)."""
    pytest.importorskip("skimage")
    from seed_hf.export.onnx_verify import sample_images

    return [image.convert("RGB") for image in sample_images(n)]


def _folder_features(folder: Path, images: list) -> torch.Tensor:
    """The features a timm user gets from ``folder`` (``local-dir:`` + the folder's transform)."""
    import timm

    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model))
    with torch.no_grad():
        return model(torch.stack([transform(image) for image in images]))


@pytest.mark.parametrize("in_chans", [3, 1], ids=["rgb", "gray"])
def test_a_channels_last_student_exports_and_stays_as_it_was(tmp_path, in_chans):
    """After a channels_last run (the default memory format of most CNN students): the export of the
    live model writes contiguous weights (safetensors refuses a channels_last 3-channel conv weight)
    and leaves the model as it was (memory format, training mode), with the same features; the
    Trainer's checkpoints of the same model save and export too."""
    from helpers import TensorImages, tiny_teacher

    from seed_hf import SeedTrainer, SeedTrainingArguments, collate_batch
    from seed_hf.evaluation.features import eval_data_config, eval_transform

    model = tiny_student(in_chans=in_chans, image_mean=[0.5] * in_chans, image_std=[0.25] * in_chans)
    args = SeedTrainingArguments(
        output_dir=str(tmp_path / "run"), per_device_train_batch_size=8, max_steps=1, use_cpu=True,
        channels_last=True, save_strategy="steps", save_steps=1, report_to="none", disable_tqdm=True,
    )  # fmt: skip
    trainer = SeedTrainer(
        model=model, teacher=tiny_teacher(in_chans=in_chans), args=args,
        train_dataset=TensorImages(16, channels=in_chans), data_collator=collate_batch,
    )  # fmt: skip
    trainer.train()
    trainer.save_model()
    conv = next(m for m in model.student.modules() if isinstance(m, torch.nn.Conv2d))  # the first conv
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert conv.weight.is_contiguous() == (in_chans == 1)  # (n, 1, k, k) is both; (n, 3, k, k) is not
    model.train()
    folder = export_student(model, tmp_path / "export")
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and model.training  # untouched
    images = _rgb_images() if in_chans == 3 else [image.convert("L") for image in _rgb_images()]
    config = model.eval().config
    transform = eval_transform(
        eval_data_config(in_chans, config.image_size, config.image_mean, config.image_std)
    )
    with torch.no_grad():
        expected = model.student(torch.stack([transform(image) for image in images]))
    got = _folder_features(folder, [image.convert("RGB") for image in images])
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()
    for saved in (tmp_path / "run", tmp_path / "run" / "checkpoint-1"):  # the Trainer's folders export too
        assert (saved / "model.safetensors").is_file()
        export_student(saved, tmp_path / f"export-{saved.name}")
