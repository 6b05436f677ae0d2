"""What a user sees when their own flags or data are wrong, and what stays quiet when they are
right: recipe files, input sizes, step counts, load/save progress bars."""

import json
import sys
from pathlib import Path

import pytest
import torch
from helpers import IMAGE_SIZE, tiny_moco, tiny_student
from transformers import HfArgumentParser

from seed_hf import SeedConfig, SeedForDistillation, SeedTrainingArguments, load_teacher
from seed_hf.cli.arguments import DataTrainingArguments
from seed_hf.cli.command_line import parse_script_args

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from seed_hf.scripts import run_seed  # noqa: E402


def _parser() -> HfArgumentParser:
    return HfArgumentParser((run_seed.ModelArguments, DataTrainingArguments, SeedTrainingArguments))


def _required(tmp_path) -> list[str]:
    return ["--output_dir", str(tmp_path / "out"), "--use_cpu", "--report_to", "none"]


# item 14: recipe files


def test_recipe_json_syntax_error_names_the_file_and_position(tmp_path):
    recipe = tmp_path / "recipe.json"
    recipe.write_text('{\n  "teacher_name_or_path": "x",\n  "max_steps": 2,,\n}\n')
    with pytest.raises(SystemExit) as error:
        parse_script_args(_parser(), ["--recipe", str(recipe), *_required(tmp_path)])
    message = str(error.value)
    assert str(recipe) in message and "line 3, column 18" in message, message


def test_recipe_key_typo_names_close_keys(tmp_path):
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"teacher_name_or_path": "x", "lerning_rate": 0.1, "_comment": "ok"}))
    with pytest.raises(SystemExit) as error:
        parse_script_args(_parser(), ["--recipe", str(recipe), *_required(tmp_path)])
    message = str(error.value)
    assert str(recipe) in message and "'lerning_rate'" in message and "learning_rate" in message, message


@pytest.mark.parametrize("name", ["recipe.json", "RECIPE.JSON", "recipe.Json"])
def test_recipe_at_any_position_and_any_case_with_later_flags_winning(tmp_path, name):
    recipe = tmp_path / name
    recipe.write_text(json.dumps({"teacher_name_or_path": "x", "max_steps": 7, "queue_size": 128}))
    parser = _parser()
    # the recipe after other flags: command-line flags still win, wherever they are
    argv = ["--max_steps", "3", *_required(tmp_path), "--recipe", str(recipe), "--queue_size", "256"]
    model_args, _, training_args = parse_script_args(parser, argv)
    assert model_args.teacher_name_or_path == "x"
    assert training_args.max_steps == 3 and model_args.queue_size == 256
    # a .json that is the value of a flag is not a recipe
    model_args, _, _ = parse_script_args(
        parser, ["--teacher_name_or_path", "x", "--teacher_checkpoint", str(recipe), *_required(tmp_path)]
    )
    assert model_args.teacher_checkpoint == str(recipe)


def test_recipe_is_an_explicit_flag_of_the_scripts(tmp_path):
    """``--recipe FILE`` is a flag of the scripts' parser (in --help); a recipe given without it is
    refused with a hint, a missing one by its name."""
    from seed_hf.cli.command_line import script_parser

    parser = script_parser((run_seed.ModelArguments, DataTrainingArguments, SeedTrainingArguments))
    assert "--recipe FILE" in parser.format_help()
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"teacher_name_or_path": "x", "queue_size": 128}))
    model_args, _, _ = parse_script_args(parser, [*_required(tmp_path), "--recipe", str(recipe)])
    assert model_args.teacher_name_or_path == "x" and model_args.queue_size == 128
    with pytest.raises(ValueError, match="A recipe file is passed as --recipe FILE"):
        parse_script_args(parser, [str(recipe), *_required(tmp_path)])
    with pytest.raises(SystemExit, match=r"recipe file '.*missing\.json' does not exist"):
        parse_script_args(parser, ["--recipe", str(tmp_path / "missing.json"), *_required(tmp_path)])


# item 16: input sizes, crop sizes, step counts


def test_vit_student_of_another_input_size_is_caught_at_build_time():
    config = SeedConfig(
        student_architecture="vit_tiny_patch16_224", image_size=32, queue_size=16, projection_dim=8
    )
    with pytest.raises(ValueError) as error:
        SeedForDistillation(config)
    message = str(error.value)
    assert "image_size=32" in message and "224" in message, message
    assert 'student_model_args={"img_size": 32, "patch_size": 8}' in message, message
    assert """--student_model_args '{"img_size": 32, "patch_size": 8}'""" in message, message
    fixed = SeedForDistillation(
        SeedConfig(
            student_architecture="vit_tiny_patch16_224",
            student_model_args={"img_size": 32, "patch_size": 8, "depth": 1},
            image_size=32,
            queue_size=16,
            projection_dim=8,
        )
    )
    assert fixed.get_features(torch.randn(2, 3, 32, 32)).shape == (2, 192)


def test_vit_moco_encoder_of_another_input_size_is_caught_at_build_time():
    with pytest.raises(ValueError, match=r'model_args=\{"img_size": 32, "patch_size": 8\}'):
        tiny_moco(architecture="vit_tiny_patch16_224", image_size=32)


def test_small_crop_size_must_be_positive():
    for num_small_crops in (0, 2):
        with pytest.raises(ValueError, match="small_crop_size must be a positive integer, got 0"):
            SeedConfig(num_small_crops=num_small_crops, small_crop_size=0)
    with pytest.raises(ValueError, match="small_crop_size must be a positive integer, got -4"):
        SeedConfig(num_small_crops=6, small_crop_size=-4)


def test_max_steps_zero_is_refused_and_minus_one_means_epochs(tmp_path):
    with pytest.raises(ValueError, match="max_steps=0"):
        SeedTrainingArguments(output_dir=str(tmp_path), max_steps=0, report_to="none", use_cpu=True)
    args = SeedTrainingArguments(output_dir=str(tmp_path), max_steps=-1, report_to="none", use_cpu=True)
    assert args.max_steps == -1


# item 17: quiet by default


def test_internal_loads_and_saves_show_no_progress_bars(tmp_path, capfd, monkeypatch):
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    monkeypatch.delenv("SEED_HF_PROGRESS_BARS", raising=False)
    student = tiny_student()
    student.save_pretrained(tmp_path / "student")
    SeedForDistillation.from_pretrained(tmp_path / "student")
    load_teacher(str(tmp_path / "student"))
    tiny_moco().save_pretrained(tmp_path / "moco")
    config = ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    vit = ViTModel(ViTConfig(**{**config.to_dict(), "image_size": IMAGE_SIZE, "patch_size": 8}))
    with_bars = capfd.readouterr()  # nothing so far came from a bare transformers call
    vit.save_pretrained(tmp_path / "vit")  # transformers itself, outside seed_hf: bars as usual
    ViTImageProcessor().save_pretrained(tmp_path / "vit")
    load_teacher(str(tmp_path / "vit"))
    captured = capfd.readouterr()
    for bar in ("Loading weights", "Writing model shards"):
        assert bar not in with_bars.err + with_bars.out
    assert "Writing model shards" in captured.err and "Loading weights" not in captured.err
    # asked for: shown
    monkeypatch.setenv("SEED_HF_PROGRESS_BARS", "1")
    SeedForDistillation.from_pretrained(tmp_path / "student")
    assert "Loading weights" in capfd.readouterr().err


def test_linear_probe_shows_progress_over_the_l2_grid(capfd):
    from seed_hf.evaluation.probe import linear_probe

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(60, 8, generator=g), torch.arange(60) % 3
    linear_probe(x, y, x[:12], y[:12], l2_grid=(1e-4, 1e-2), max_iter=5)
    assert "linear probe" in capfd.readouterr().err


def test_demo_flags_raise_no_keeping_warning(caplog, tmp_path):
    import re

    demo = (ROOT / "Makefile").read_text().split("\ndemo:", 1)[1].split("\n\n", 1)[0]
    limit = re.search(r"--save_total_limit (\d+)", demo)
    flags = ["--save_total_limit", limit.group(1)] if limit else []
    with caplog.at_level("WARNING"):
        parse_script_args(_parser(), ["--teacher_name_or_path", "x", *_required(tmp_path), *flags])
    assert "keeping 2" not in caplog.text
    with caplog.at_level("WARNING"):  # the user's own conflicting flag still warns
        SeedTrainingArguments(output_dir=str(tmp_path), save_total_limit=1, report_to="none", use_cpu=True)
    assert "keeping 2" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):  # no checkpoints at all: nothing to keep, nothing to say
        SeedTrainingArguments(
            output_dir=str(tmp_path), save_total_limit=1, save_strategy="no", report_to="none", use_cpu=True
        )
    assert "keeping 2" not in caplog.text
