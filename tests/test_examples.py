"""Smoke tests of the example scripts on a slice of Fashion-MNIST (the real default data)."""

import importlib
import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import requires_fashion_mnist
from safetensors.torch import load_file
from transformers import HfArgumentParser

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

from seed_hf.scripts import (
    run_eval,  # noqa: E402
    run_moco,  # noqa: E402
    run_seed,  # noqa: E402
)

COMMON = [
    "--per_device_train_batch_size",
    "16",
    "--max_steps",
    "3",
    "--use_cpu",
    "--logging_steps",
    "1",
    "--max_train_samples",
    "256",
    "--report_to",
    "none",
    "--disable_tqdm",
    "true",
    "--save_steps",
    "2",
]


@requires_fashion_mnist
def test_moco_then_seed_then_eval(tmp_path):
    teacher_dir, student_dir = tmp_path / "teacher", tmp_path / "student"
    run_moco.main(
        [
            "--architecture",
            "test_resnet",
            "--queue_size",
            "64",
            "--key_bn_splits",
            "2",
            "--output_dir",
            str(teacher_dir),
            *COMMON,
        ]
    )
    assert (teacher_dir / "model.safetensors").is_file() and (teacher_dir / "checkpoint-2").is_dir()
    seed_args = [
        "--teacher_name_or_path",
        str(teacher_dir),
        "--student_architecture",
        "test_efficientnet",
        "--queue_size",
        "64",
        "--output_dir",
        str(student_dir),
        *COMMON,
    ]
    metrics = run_seed.main([*seed_args, "--teacher_temperature", "1e-4"])
    assert metrics["train_loss"] > 0
    config = json.loads((student_dir / "config.json").read_text())
    assert config["model_type"] == "seed_distillation" and config["in_chans"] == 1
    assert config["projection_dim"] == 128 and config["teacher_temperature"] == 1e-4
    out = tmp_path / "eval.json"
    results = run_eval.main(
        [
            "--models",
            str(teacher_dir),
            str(student_dir),
            "--output_file",
            str(out),
            "--knn_k",
            "20",
            "--max_train_samples",
            "2000",
            "--max_eval_samples",
            "500",
            "--linear_probe",
            "--label_fractions",
            "0.1",
            "1.0",
        ]
    )
    assert [r["model"] for r in results] == [str(teacher_dir)] * 2 + [str(student_dir)] * 2
    from seed_hf.data.fashion_mnist import load_fashion_mnist
    from seed_hf.data.subsets import balanced_subset, label_subset

    labels = load_fashion_mnist("train")[1]  # --max_train_samples 2000 draws 200 per class
    tenth = len(label_subset(labels[balanced_subset(labels, 2000)], 0.1))  # class-balanced: ≈ 200
    assert [r["num_train"] for r in results] == [tenth, 2000] * 2 and results[0]["num_eval"] == 500
    assert all(0 <= r["knn_top1"] <= 100 for r in results)
    assert json.loads(out.read_text())[1]["knn_k"] == 20 and results[0]["dataset"] == "fashion_mnist"
    assert all(0 <= r["linear_top1"] <= 100 for r in results)

    from seed_hf import weights_fingerprint

    assert results[0]["weights_sha256"] == weights_fingerprint(str(teacher_dir)) is not None
    # a finished run in the same output_dir resumes from its last checkpoint (no error), asked
    # with its own recipe (another one is refused: test_trust)
    run_seed.main([*seed_args, "--teacher_temperature", "1e-4"])
    assert (
        json.loads((student_dir / "run_info.json").read_text())["teacher_sha256"]
        == results[0]["weights_sha256"]
    )

    # the teacher at the same path changes (e.g. `make teacher` rebuilt it): the run of the old
    # one is neither resumed nor passed off as finished
    from safetensors.torch import save_file

    weights = load_file(str(teacher_dir / "model.safetensors"))
    save_file(
        {k: v + 1 if v.is_floating_point() else v for k, v in weights.items()},
        str(teacher_dir / "model.safetensors"),
    )
    with pytest.raises(ValueError, match="distilled from another teacher"):
        run_seed.main(seed_args)
    run_seed.main([*seed_args, "--overwrite_output_dir"])
    assert json.loads((student_dir / "run_info.json").read_text())["teacher_sha256"] == weights_fingerprint(
        str(teacher_dir)
    )


def test_study_retrains_only_the_stages_whose_recipe_changed(tmp_path, monkeypatch):
    """``run_fmnist_study.main`` end to end up to the exports, with the two trainings faked."""
    import run_fmnist_study

    import seed_hf.export.hub

    trained = []

    def fake_training(stage):
        def main(argv):  # --recipe files, as the study launches a run; a finished run's files
            flags = {k: v for recipe in argv[1::2] for k, v in json.loads(Path(recipe).read_text()).items()}
            run = Path(flags["output_dir"])
            run.mkdir(parents=True, exist_ok=True)
            (run / "trainer_state.json").write_text(json.dumps({"global_step": flags["max_steps"]}))
            (run / "train_results.json").write_text(json.dumps({"train_loss": 1.0}))
            trained.append(stage)

        return main

    class ExportReached(Exception):
        pass

    def stop(*args, **kwargs):
        raise ExportReached

    monkeypatch.setattr(run_fmnist_study.run_moco, "main", fake_training("moco"))
    monkeypatch.setattr(run_fmnist_study.run_seed, "main", fake_training("seed"))
    monkeypatch.setattr(seed_hf.export.hub, "export_student", stop)
    monkeypatch.setattr(seed_hf.export.hub, "export_moco_encoder", stop)
    teacher, work, out = tmp_path / "teacher", tmp_path / "work", tmp_path / "out"
    teacher.mkdir()
    (teacher / "config.json").write_text("{}")
    (teacher / "model.safetensors").write_bytes(b"weights v1")
    args = [
        "--output_dir",
        str(out),
        "--work_dir",
        str(work),
        "--teacher",
        str(teacher),
        "--student_steps",
        "10",
    ]

    def study(*extra):
        with pytest.raises(ExportReached):
            run_fmnist_study.main([*args, *extra])

    study()
    assert trained == ["moco", "seed"]
    study("--eval_steps", "5", "--use_cpu", "false")  # same recipe (monitor, device): both reused
    assert trained == ["moco", "seed"]
    timings = json.loads((out / "timings.json").read_text())
    (out / "timings.json").write_text(json.dumps({**timings, "seed_student": 1e6}))
    study("--teacher_temperature", "0.01")  # τ_T: only SEED again, its wall time that of the new run
    assert trained == ["moco", "seed", "seed"]
    assert json.loads((out / "timings.json").read_text())["seed_student"] < 1e6
    assert len(list(work.glob("seed_student.recipe-*"))) == 1
    (teacher / "model.safetensors").write_bytes(b"weights v2")  # make teacher rebuilt it
    study("--teacher_temperature", "0.01")
    assert trained == ["moco", "seed", "seed", "seed"]
    study("--teacher_temperature", "0.01", "--contrastive_temperature", "0.2")
    assert trained == ["moco", "seed", "seed", "seed", "moco"]
    assert (
        len(list(work.glob("seed_student.recipe-*"))) == 2
        and len(list(work.glob("moco_student.recipe-*"))) == 1
    )


@requires_fashion_mnist
@pytest.mark.parametrize(
    "extra,error,match",
    [
        (["--student_architecture", "effnet_b99"], ValueError, "student_architecture"),
        (
            ["--teacher_checkpoint", "/nonexistent/teacher.safetensors"],
            FileNotFoundError,
            "teacher_checkpoint",
        ),
        (["--queue_size", "8"], ValueError, "queue_size"),
        (["--student_temperature", "0"], ValueError, "student_temperature"),
        (["--projection_dim", "64"], ValueError, "projection_dim"),
    ],
)
def test_bad_input_is_one_clear_error(tmp_path, extra, error, match):
    argv = [
        "--teacher_name_or_path",
        "test_resnet",
        "--allow_random_teacher",
        "--student_architecture",
        "test_efficientnet",
        "--queue_size",
        "64",
        "--output_dir",
        str(tmp_path / "out"),
        *COMMON,
    ]
    with pytest.raises(error, match=match):
        run_seed.main(argv + extra)


def test_missing_fashion_mnist_names_the_apt_package(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        run_moco.main(
            [
                "--architecture",
                "test_resnet",
                "--fashion_mnist_dir",
                str(tmp_path),
                "--output_dir",
                str(tmp_path / "o"),
                *COMMON,
            ]
        )


ROOT = Path(__file__).resolve().parents[1]
SCRIPT_MODULES = [
    f"seed_hf.scripts.{p.stem}" for p in sorted((ROOT / "seed_hf" / "scripts").glob("run_*.py"))
] + [p.stem for p in sorted((ROOT / "tools").glob("*.py")) if p.stem != "manifest"]


@pytest.mark.parametrize("script", SCRIPT_MODULES)
def test_help_of_every_example(script, capsys):
    module = importlib.import_module(script)
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


@requires_fashion_mnist
def test_fmnist_teacher_script_trains_resumes_and_exports(tmp_path):
    """make teacher's script: a short run, an extension that resumes from its checkpoint, and the
    exported folder loads as a SEED teacher."""
    import run_fmnist_teacher

    from seed_hf import load_teacher

    common = [
        "--output_dir",
        str(tmp_path / "run"),
        "--architecture",
        "test_resnet",
        "--image_size",
        "32",
        "--batch_size",
        "16",
        "--queue_size",
        "64",
        "--warmup_steps",
        "1",
        "--save_steps",
        "2",
        "--log_steps",
        "1",
        "--max_eval_samples",
        "500",
    ]
    first = run_fmnist_teacher.main([*common, "--max_steps", "3"])
    assert first["steps"] == 3 and 0 <= first["knn_top1"] <= 100
    log = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in log] == [1, 2, 3]
    second = run_fmnist_teacher.main([*common, "--max_steps", "5", "--export_dir", str(tmp_path / "teacher")])
    log = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    assert second["steps"] == 5 and [json.loads(line)["step"] for line in log] == [
        1,
        2,
        3,
        4,
        5,
    ]  # resumed at 3
    teacher = load_teacher(str(tmp_path / "teacher"))
    assert teacher(torch.zeros(2, 1, 32, 32)).shape == (2, 128)

    # --init_from: a new run starts from the exported query encoder + head (both encoders), and
    # refuses a folder of another architecture
    from seed_hf import MocoConfig, MocoForPretraining

    config = MocoConfig(architecture="test_resnet", in_chans=1, image_size=32, queue_size=64)
    model = MocoForPretraining(config)
    run_fmnist_teacher.warm_start(model, str(tmp_path / "teacher"))
    exported = load_file(str(tmp_path / "teacher" / "model.safetensors"))
    state = model.state_dict()
    for key, value in exported.items():
        assert torch.equal(state[key], value.float())
        assert torch.equal(
            state[key.replace("encoder.", "encoder_k.").replace("head.", "head_k.")], value.float()
        )
    with pytest.raises(ValueError, match="this run builds"):
        run_fmnist_teacher.warm_start(
            MocoForPretraining(
                MocoConfig(architecture="test_efficientnet", in_chans=1, image_size=32, queue_size=64)
            ),
            str(tmp_path / "teacher"),
        )


def test_fmnist_teacher_augmentation_overrides():
    import run_fmnist_teacher

    (args,) = HfArgumentParser(run_fmnist_teacher.TeacherArguments).parse_args_into_dataclasses(
        ["--augmentation_overrides", '{"jitter": [0.8, 0.8, 0, 0], "scale": [0.2, 1.0]}']
    )
    augment = run_fmnist_teacher.build_augmentation(args)
    assert augment.jitter == (0.8, 0.8, 0, 0) and augment.scale == (0.2, 1.0)
    assert augment.blur_p == 0.0  # the preset's other fields stay
    args.augmentation_overrides = '{"crop_scale": [0.2, 1.0]}'
    with pytest.raises(ValueError, match="unknown augmentation_overrides"):
        run_fmnist_teacher.build_augmentation(args)
