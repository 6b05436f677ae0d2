import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import tiny_student

from seed_hf.hub import export_student, push_student_to_hub, upload_plan

LOADER = Path(__file__).with_name("load_exported.py")


def _check_in_fresh_process(folder: Path, x: torch.Tensor, features: torch.Tensor) -> dict:
    torch.save({"x": x, "f": features}, folder.parent / "ref.pt")
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


@pytest.mark.parametrize(
    "arch,in_chans",
    [("resnet18", 3), ("efficientnet_b0", 3), ("mobilenetv3_large_100", 3), ("resnet18", 1)],
)
def test_export_loads_with_automodel_pipeline_and_timm(tmp_path, arch, in_chans):
    model = tiny_student(student_architecture=arch, in_chans=in_chans).eval()
    folder = export_student(model, tmp_path / "export")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert "num_classes" not in config["model_args"]
    assert config["pretrained_cfg"]["tag"] == "seed"
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32]
    x = torch.rand(2, in_chans, 32, 32)
    with torch.no_grad():
        features = model.get_features(x)
    rgb = x.expand(-1, 3, -1, -1).contiguous()  # grayscale students export as channel-averaging RGB models
    diffs = _check_in_fresh_process(folder, rgb, features)
    assert diffs["seed_hf_imported"] is False
    print(f"{arch} in_chans={in_chans}: {diffs}")
    assert diffs["automodel"] <= 1e-5 and diffs["timm"] <= 1e-5 and diffs["pipeline"] <= 1e-5
    assert diffs["pipeline_shape"][-1] == model.pooled_width


def test_card_metadata_results_and_round_trip(tmp_path):
    from huggingface_hub import ModelCard

    model = tiny_student(teacher_name_or_path="moco-r18", teacher_ssl_method="moco_v2")
    results = [{"dataset": "fashion_mnist", "knn_top1": 81.234, "knn_k": 200, "knn_temperature": 0.07}]
    (tmp_path / "eval.json").write_text(json.dumps(results))
    folder = export_student(
        model,
        tmp_path / "e",
        eval_results=tmp_path / "eval.json",
        repo_id="org/seed-tiny",
        training_summary={"epochs": 3, "batch_size": 256},
    )
    card = ModelCard.load(folder / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "timm" and data["pipeline_tag"] == "image-feature-extraction"
    assert "transformers" in data["tags"] and "base_model" not in data
    metrics = data["model-index"][0]["results"][0]["metrics"]
    assert [m["value"] for m in metrics] == [81.23] and metrics[0][
        "config"
    ] == "knn"  # no linear probe invented
    assert (
        "moco-r18" in card.text and 'pipeline("image-feature-extraction", model="org/seed-tiny")' in card.text
    )
    assert "pool=True" in card.text and "fang2021seed" in card.text
    assert ModelCard(str(card)).data.to_dict() == data

    no_results = export_student(model, tmp_path / "n")
    assert "model-index" not in ModelCard.load(no_results / "README.md").data.to_dict()


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
