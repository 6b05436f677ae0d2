"""Each paper recipe in recipes/ runs 2 steps with every setting kept but the heavy parts swapped
for tiny stand-ins: tiny timm models, a tiny checkpoint in the recipe's SSL layout, a local stream."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from helpers import write_jpeg_shards  # noqa: E402
from test_teachers import _layout_checkpoint, _moco_v2_checkpoint  # noqa: E402

from seed_hf.scripts import run_seed  # noqa: E402

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
    architectures = config["student_architecture"].split(",")
    if len(architectures) == 1:  # a stand-in of the same family, so that its timm args apply
        tiny = ["test_resnet" if architectures[0].startswith("resnet") else "test_efficientnet"]
    else:
        tiny = ["test_efficientnet", "test_resnet"][: len(architectures)]
    students = ",".join(tiny)
    student_args = json.loads(config.get("student_model_args") or "{}")
    if set(student_args) == set(architectures):  # per-student args: keep them, on the stand-ins
        student_args = {small: student_args[big] for small, big in zip(tiny, architectures)}
    files = write_jpeg_shards(tmp_path, shards=2, rows=8)
    overrides = [
        "--teacher_name_or_path",
        "test_resnet",
        "--teacher_checkpoint",
        str(checkpoint),
        "--teacher_model_args",
        "{}",
        "--student_architecture",
        students,
        "--student_model_args",
        json.dumps(student_args),
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
    metrics = run_seed.main(["--recipe", str(recipe), *overrides])
    assert metrics["train_loss"] > 0
    saved = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert saved["global_step"] == 2
    from seed_hf import SeedForDistillation

    folders = [tmp_path / "out"] if len(tiny) == 1 else [tmp_path / "out" / "students" / t for t in tiny]
    for folder, name in zip(folders, tiny):
        model = SeedForDistillation.from_pretrained(folder)
        assert model.config.teacher_temperature == config["teacher_temperature"]
        if set(json.loads(config.get("student_model_args") or "{}")) == set(architectures):
            assert model.config.student_model_args == student_args[name]
            assert model.student.drop_rate == student_args[name]["drop_rate"]
        if config.get("num_small_crops"):  # official: the first small crop of each image only
            assert int(model.small_queue.num_filled) == int(model.queue.num_filled) == 2 * 4
            assert int(model.small_queue.ptr) == int(model.queue.ptr)


def test_recipes_carry_the_official_settings():
    """The settings of jacobswan1/SEED that recipes/README.md lists as recipe settings."""
    for recipe in RECIPES:
        config = json.loads(recipe.read_text())
        assert config["warmup_steps"] == 0.025  # 5 of 200 epochs
        assert config["decay_all_parameters"] is True
        assert config["teacher_dtype"] == "float16"
        assert config["teacher_temperature"] == 1e-4
        expected = {"moco_v2": "moco_v2", "swav": "seed_swav"}[config["teacher_ssl_method"]]
        assert config["augmentation"] == expected
        official_regularisation = {
            "efficientnet": {"drop_rate": 0.2, "drop_path_rate": 0.2},  # dropout + drop-connect
            "mobilenetv3": {"drop_rate": 0.2},
        }
        for architecture in config["student_architecture"].split(","):
            if architecture.startswith("resnet"):  # torchvision-style init: no zero-init of the last BN
                assert json.loads(config["student_model_args"]) == {"zero_init_last": False}
            family = architecture.split("_")[0]
            if family in official_regularisation:
                args = json.loads(config["student_model_args"])[architecture]
                assert args == official_regularisation[family], (recipe.name, architecture)


def test_student_model_args_shared_or_per_student():
    both = ["efficientnet_b0", "mobilenetv3_large_100"]
    assert run_seed.student_model_args_for("resnet18", ["resnet18"], '{"drop_rate": 0.1}') == {
        "drop_rate": 0.1
    }
    assert run_seed.student_model_args_for(both[1], both, '{"drop_rate": 0.1}') == {"drop_rate": 0.1}
    per_student = '{"efficientnet_b0": {"drop_path_rate": 0.2}, "mobilenetv3_large_100": {"drop_rate": 0.2}}'
    assert run_seed.student_model_args_for(both[1], both, per_student) == {"drop_rate": 0.2}
    with pytest.raises(ValueError, match="every student"):
        run_seed.student_model_args_for(both[0], both, '{"efficientnet_b0": {"drop_rate": 0.2}}')
    assert run_seed.student_model_args_for("resnet18", ["resnet18"], None) is None
