"""Each paper recipe in recipes/ runs 2 steps with every setting kept but the heavy parts swapped
for tiny stand-ins: tiny timm models, a tiny checkpoint in the recipe's SSL layout, a local stream."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
import run_seed  # noqa: E402
from test_streaming import write_shards  # noqa: E402
from test_teachers import _layout_checkpoint, _moco_v2_checkpoint  # noqa: E402

RECIPES = sorted((ROOT / "recipes").glob("*.json"))


def test_recipes_exist():
    assert len(RECIPES) >= 3


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_dry_run(tmp_path, recipe):
    config = json.loads(recipe.read_text())
    checkpoint = tmp_path / "teacher.pth"
    if config["teacher_ssl_method"] == "moco_v2":
        _moco_v2_checkpoint(checkpoint)
    else:
        _layout_checkpoint(checkpoint, "swav")
    students = ",".join(
        ["test_efficientnet", "test_resnet"][: len(config["student_architecture"].split(","))]
    )
    files = write_shards(tmp_path, shards=2, rows=8)
    overrides = [
        "--teacher_name_or_path",
        "test_resnet",
        "--teacher_checkpoint",
        str(checkpoint),
        "--teacher_model_args",
        "{}",
        "--student_architecture",
        students,
        "--dataset_name",
        "",
        "--train_files",
        *files,
        "--image_size",
        "64",
        "--small_crop_size",
        "32",
        "--per_device_train_batch_size",
        "4",
        "--max_steps",
        "2",
        "--bf16",
        "false",
        "--use_cpu",
        "--dataloader_num_workers",
        "0",
        "--report_to",
        "none",
        "--output_dir",
        str(tmp_path / "out"),
        "--disable_tqdm",
        "true",
        "--cache_dir",
        str(tmp_path / "cache"),
    ]
    metrics = run_seed.main([str(recipe), *overrides])
    assert metrics["train_loss"] > 0
    saved = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert saved["global_step"] == 2
    if config.get("num_small_crops"):
        from seed_hf import SeedForDistillation

        model = SeedForDistillation.from_pretrained(tmp_path / "out")
        assert int(model.small_queue.num_filled) == 2 * 4 * config["num_small_crops"]
        assert model.config.teacher_temperature == config["teacher_temperature"]
