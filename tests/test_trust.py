"""Right on the user's own data: subsets, results bound to weights, run-folder locks, atomic
exports, multi-student runs and the queue count of every script that trains."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import requires_fashion_mnist
from helpers import tiny_student
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import run_fmnist_teacher  # noqa: E402

from seed_hf.evaluation.labelled import load_labelled_splits  # noqa: E402
from seed_hf.export.hub import export_student  # noqa: E402
from seed_hf.scripts import (
    run_eval,  # noqa: E402
    run_export,  # noqa: E402
    run_moco,  # noqa: E402
    run_seed,  # noqa: E402
)
from seed_hf.teachers.fingerprint import weights_fingerprint  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TRAIN = ["--per_device_train_batch_size", "16", "--max_steps", "3", "--use_cpu", "--report_to", "none"]
TRAIN += ["--disable_tqdm", "true", "--save_steps", "3", "--max_train_samples", "128"]


def class_sorted_folders(root: Path, per_class: dict[str, int], classes=(0, 1, 2, 3)) -> dict[str, Path]:
    """Imagefolders of real Fashion-MNIST images, one sub-folder per class (sorted by class, as
    ImageNet is)."""
    from PIL import Image

    from seed_hf.data.fashion_mnist import load_fashion_mnist

    images, labels = load_fashion_mnist("train")
    folders, offset = {}, 0
    for split, n in per_class.items():
        for c in classes:
            folder = root / split / f"class_{c}"
            folder.mkdir(parents=True)
            for i, index in enumerate(np.flatnonzero(labels == c)[offset : offset + n]):
                Image.fromarray(images[index]).save(folder / f"{i:04d}.png")
        folders[split], offset = root / split, offset + n
    return folders


def test_balanced_subset_draws_every_class_and_is_seeded():
    from seed_hf.data.subsets import balanced_subset

    labels = np.repeat(np.arange(4), [50, 50, 5, 100])  # sorted by class, one small class
    keep = balanced_subset(labels, 100, seed=0)
    counts = np.bincount(labels[keep], minlength=4)
    assert len(keep) == 100 and len(set(keep)) == 100
    assert counts[2] == 5 and set(counts[[0, 1, 3]]) <= {31, 32}  # the small class gives all it has
    assert (balanced_subset(labels, 100, seed=0) == keep).all()
    assert not (balanced_subset(labels, 100, seed=1) == keep).all()


@requires_fashion_mnist
def test_eval_subsets_of_a_class_sorted_folder_are_balanced_and_recorded(tmp_path):
    folders = class_sorted_folders(tmp_path, {"train": 120, "val": 50})  # the first 100 / 40: class 0 only
    out = tmp_path / "rows.json"
    rows = run_eval.main(
        ["--models", "pixels", "--train_dir", str(folders["train"]), "--validation_dir", str(folders["val"]),
         "--max_train_samples", "100", "--max_eval_samples", "40", "--output_file", str(out)]
    )  # fmt: skip
    (row,) = rows
    # the first 100 / 40 images are all of class 0: kNN would report 100 %
    assert row["knn_top1"] < 100.0
    assert row["train_subset"]["per_class"] == {"0": 25, "1": 25, "2": 25, "3": 25}
    assert row["eval_subset"]["per_class"] == {"0": 10, "1": 10, "2": 10, "3": 10}
    assert row["train_subset"]["seed"] == 0 and row["train_subset"]["of"] == 480
    assert json.loads(out.read_text())[0]["eval_subset"]["drawn"] == "class-balanced random draw"


@requires_fashion_mnist
def test_knn_monitor_subset_holds_every_class(tmp_path):
    folders = class_sorted_folders(tmp_path, {"train": 30, "val": 10})
    data = load_labelled_splits(
        train_dir=str(folders["train"]), validation_dir=str(folders["val"])
    ).subsample(20, 8)
    assert sorted(set(data.train_labels.tolist())) == [0, 1, 2, 3]
    assert sorted(set(data.eval_labels.tolist())) == [0, 1, 2, 3]


def test_training_subset_of_an_imagefolder_is_balanced(tmp_path):
    import datasets

    from seed_hf.data.train_dataset import training_subset

    dataset = datasets.Dataset.from_dict({"label": [0] * 30 + [1] * 30 + [2] * 30})
    rows = training_subset(dataset, 30, seed=3)
    assert np.bincount(np.asarray(dataset["label"])[rows]).tolist() == [10, 10, 10]


def test_card_rows_are_bound_to_the_exported_weights(tmp_path, caplog):
    from seed_hf.export.cards import results_for

    run_dir = tmp_path / "run"
    tiny_student().save_pretrained(run_dir)
    step2 = weights_fingerprint(str(run_dir))
    rows = [{"model": str(run_dir), "weights_sha256": step2, "dataset": "d", "knn_top1": 50.0, "knn_k": 200,
             "knn_temperature": 0.07, "label_fraction": 1.0}]  # fmt: skip
    (tmp_path / "eval.json").write_text(json.dumps(rows))
    kept = export_student(run_dir, tmp_path / "e2", eval_results=tmp_path / "eval.json")
    assert "50.00" in (kept / "README.md").read_text()

    tiny_student(queue_size=48).save_pretrained(run_dir)  # "trained on": other weights at the same path
    with caplog.at_level("WARNING"):
        folder = export_student(run_dir, tmp_path / "e4", eval_results=tmp_path / "eval.json")
    card = (folder / "README.md").read_text()
    assert "50.00" not in card and "Not evaluated" in card
    assert f"it measured weights {step2}" in caplog.text and "Dropped the result row" in caplog.text
    # rows of the exported folder itself count when they measured exactly these weights
    export_rows = [{**rows[0], "model": str(folder), "weights_sha256": weights_fingerprint(str(folder))}]
    assert results_for(export_rows, folder, fingerprints={weights_fingerprint(str(folder))}) == export_rows
    assert results_for([{**export_rows[0], "weights_sha256": None}], folder, fingerprints={"x"}) == []


def test_export_is_atomic_world_readable_and_replaced_by_a_rerun(tmp_path):
    run_dir = tmp_path / "run"
    tiny_student().save_pretrained(run_dir)
    out = tmp_path / "export"
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {str(REPO / "tests")!r})
        import seed_hf.export.hub as hub
        real = hub.render_model_card
        def killed(*args, **kwargs):  # the weights and config are written: die before the card
            os.kill(os.getpid(), signal.SIGKILL)
        hub.render_model_card = killed
        hub.export_student({str(run_dir)!r}, {str(out)!r})
        """
    )
    process = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True)
    assert process.returncode == -signal.SIGKILL, process.stderr
    assert not out.exists()  # no folder that looks complete
    folder = export_student(run_dir, out)
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # partial folder cleaned up
    assert all(oct(p.stat().st_mode & 0o777) == "0o644" for p in folder.iterdir())
    (folder / "stale.txt").write_text("from an older export")
    export_student(run_dir, out)
    assert not (out / "stale.txt").exists()


@requires_fashion_mnist
def test_multi_student_run_exports_and_evaluates_every_student(tmp_path):
    out = tmp_path / "run"
    run_seed.main(
        ["--teacher_name_or_path", "test_resnet", "--allow_random_teacher", "--student_architecture",
         "test_efficientnet,test_resnet", "--queue_size", "64", "--output_dir", str(out), *TRAIN]
    )  # fmt: skip
    exported = run_export.main(["--student_dir", str(out), "--output_dir", str(tmp_path / "export")])
    assert sorted(Path(f).name for f in exported) == ["test_efficientnet", "test_resnet"]
    card = (tmp_path / "export" / "test_resnet" / "README.md").read_text()
    assert "fashion_mnist" in card and "3 × 16" in card  # data and steps from the parent run
    rows = run_eval.main(["--models", str(out), "--max_train_samples", "200", "--max_eval_samples", "50"])
    assert sorted(Path(r["model"]).name for r in rows) == ["test_efficientnet", "test_resnet"]


def _num_filled(weights: Path, key: str = "queue.num_filled") -> int:
    return int(load_file(str(weights))[key])


@requires_fashion_mnist
@pytest.mark.parametrize("script", ["run_seed", "run_moco", "run_fmnist_teacher"])
def test_every_training_script_enqueues_each_key_once(tmp_path, script):
    """After n steps of b images the queue holds n·b keys (not 2·n·b)."""
    out = tmp_path / "run"
    if script == "run_seed":
        run_seed.main(["--teacher_name_or_path", "test_resnet", "--allow_random_teacher", "--student_architecture",
                       "test_efficientnet", "--queue_size", "64", "--output_dir", str(out), *TRAIN])  # fmt: skip
        weights = out / "model.safetensors"
    elif script == "run_moco":
        run_moco.main(["--architecture", "test_resnet", "--queue_size", "64", "--key_bn_splits", "2",
                       "--output_dir", str(out), *TRAIN])  # fmt: skip
        weights = out / "model.safetensors"
    else:
        run_fmnist_teacher.main(["--output_dir", str(out), "--architecture", "test_resnet", "--batch_size", "16",
                                 "--max_steps", "3", "--queue_size", "64", "--key_bn_splits", "2", "--image_size",
                                 "32", "--save_steps", "3", "--max_eval_samples", "40", "--mixed_precision", "no"])  # fmt: skip
        weights = out / "checkpoint" / "model.safetensors"
    assert _num_filled(weights) == 3 * 16


@requires_fashion_mnist
def test_a_second_run_into_a_locked_folder_is_refused_and_a_dead_owner_is_taken_over(tmp_path):
    from seed_hf.training.run_folder import lock_run_folder, run_lock_files

    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from seed_hf.training.run_folder import lock_run_folder; lock_run_folder({str(out)!r}); "
         "print('locked', flush=True); import time; time.sleep(120)"],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        for main, model in ((run_moco.main, ["--architecture", "test_resnet", "--key_bn_splits", "2"]),
                            (run_seed.main, ["--teacher_name_or_path", "test_resnet", "--allow_random_teacher"])):  # fmt: skip
            with pytest.raises(
                RuntimeError,
                match=f"process {holder.pid} on .* holds its lock .*{run_lock_files(out)[0].name}",
            ):
                main([*model, "--queue_size", "64", "--output_dir", str(out), *TRAIN])
        assert not (out / "model.safetensors").exists() and not list(out.glob("checkpoint-*"))
    finally:
        holder.kill()  # SIGKILL: no clean-up, the OS drops its lock
        holder.wait()
    lock_file, owner_file = run_lock_files(out)
    assert lock_run_folder(out) == lock_file and lock_file.parent == out.resolve().parent
    assert json.loads(owner_file.read_text())["pid"] == os.getpid()


@pytest.mark.parametrize("size", [0, -3])
def test_image_size_zero_is_refused_like_a_negative_one(size):
    from seed_hf.cli.arguments import DataTrainingArguments

    with pytest.raises(ValueError, match=f"--image_size must be an integer ≥ 1 .*got {size}"):
        DataTrainingArguments(image_size=size)


def test_pixel_baselines_on_mixed_sizes_refuse_or_resize_as_stated(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(2):
            folder = tmp_path / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(6):
                size = (20 + 4 * (i % 3), 24)
                Image.fromarray((rng.random(size[::-1] + (3,)) * 255).astype(np.uint8)).save(
                    folder / f"{i}.png"
                )
    common = [
        "--models",
        "pixels",
        "--train_dir",
        str(tmp_path / "train"),
        "--validation_dir",
        str(tmp_path / "val"),
    ]
    with pytest.raises(ValueError, match="different sizes: pass --pixel_size N"):
        run_eval.main(common)
    (row,) = run_eval.main([*common, "--pixel_size", "16"])
    assert row["preprocessing"]["input_size"] == [3, 16, 16] and row["feature_dim"] == 3 * 16 * 16


def test_library_api_checks_the_first_batch_against_the_config(tmp_path):
    from helpers import TensorImages, tiny_teacher

    from seed_hf import SeedConfig, SeedForDistillation, SeedTrainer, SeedTrainingArguments, collate_batch

    args = SeedTrainingArguments(
        output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=8, use_cpu=True, report_to="none",
        disable_tqdm=True, save_strategy="no",
    )  # fmt: skip
    default = SeedForDistillation(
        SeedConfig(student_architecture="test_resnet", queue_size=40, projection_dim=16)
    )
    assert default.config.image_size == 224  # left at its defaults, trained on 32-px images
    trainer = SeedTrainer(model=default, teacher=tiny_teacher(), args=args, train_dataset=TensorImages(16),
                          data_collator=collate_batch)  # fmt: skip
    with pytest.raises(
        ValueError, match="holds 3×32×32 images, but the model's config says in_chans=3, image_size=224"
    ):
        trainer.train()

    data = TensorImages(16)
    data.normalization = ([0.5] * 3, [0.5] * 3)  # what seed_hf's dataset builders state
    trainer = SeedTrainer(model=tiny_student(), teacher=tiny_teacher(), args=args, train_dataset=data,
                          data_collator=collate_batch)  # fmt: skip
    with pytest.raises(ValueError, match=r"normalised with mean \[0.5, 0.5, 0.5\].*image_mean=\[0.485"):
        trainer.train()


def test_teacher_record_license_flows_into_the_students_card(tmp_path, caplog):
    from huggingface_hub import ModelCard
    from test_teachers import _moco_v2_checkpoint

    from seed_hf import load_teacher

    _moco_v2_checkpoint(tmp_path / "moco.pth")
    teacher = load_teacher("test_resnet", tmp_path / "moco.pth")
    record = teacher.record
    assert (record.kind, record.layout, record.license, record.checkpoint) == (
        "timm",
        "moco",
        "cc-by-nc-4.0",
        "moco.pth",
    )
    assert (
        record.sha256 == weights_fingerprint("test_resnet", tmp_path / "moco.pth")
        and record.embedding == "head"
    )

    student = tiny_student()
    student.config.teacher = record.to_dict()  # what SeedTrainer writes
    folder = export_student(student, tmp_path / "inherits")
    assert ModelCard.load(folder / "README.md").data.license == "cc-by-nc-4.0"
    assert "cc-by-nc-4.0 (from its published moco checkpoints)" in (folder / "README.md").read_text()
    with caplog.at_level("WARNING"):
        export_student(student, tmp_path / "declared", license="apache-2.0")
    assert "declares license 'apache-2.0', but its teacher's license is 'cc-by-nc-4.0'" in caplog.text

    student.config.teacher = {**record.to_dict(), "license": None, "license_source": None}
    folder = export_student(student, tmp_path / "unknown")
    card = (folder / "README.md").read_text()
    assert ModelCard.load(folder / "README.md").data.license == "other" and "was not recorded" in card


def test_a_fingerprint_the_caller_computed_is_recorded_without_hashing_the_weights_again(
    tmp_path, monkeypatch
):
    """run_seed.py hashes the teacher's weights to refuse another teacher's run folder; the record
    takes that value instead of reading a multi-GB checkpoint a second time."""
    from test_teachers import _moco_v2_checkpoint

    import seed_hf.teachers.loading
    from seed_hf import load_teacher

    _moco_v2_checkpoint(tmp_path / "moco.pth")
    computed = weights_fingerprint("test_resnet", tmp_path / "moco.pth")

    def no_second_hash(*args, **kwargs):
        raise AssertionError("the weights were hashed again")

    monkeypatch.setattr(seed_hf.teachers.loading, "weights_fingerprint", no_second_hash)
    assert load_teacher("test_resnet", tmp_path / "moco.pth", sha256=computed).record.sha256 == computed


def test_teacher_resolution_is_recorded_warned_about_and_resized_for(tmp_path, caplog):
    from helpers import TensorImages, tiny_moco

    from seed_hf import SeedTrainer, SeedTrainingArguments, collate_batch, load_teacher
    from seed_hf.models.modeling_moco import save_query_encoder

    save_query_encoder(tiny_moco(image_size=64), tmp_path / "teacher")
    (tmp_path / "teacher" / "README.md").write_text("---\nlicense: mit\n---\n# a teacher\n")
    args = SeedTrainingArguments(output_dir=str(tmp_path / "run"), max_steps=1, per_device_train_batch_size=8,
                                 use_cpu=True, report_to="none", disable_tqdm=True, save_strategy="no")  # fmt: skip
    teacher = load_teacher(str(tmp_path / "teacher"))
    assert (teacher.record.image_size, teacher.record.license, teacher.record.ssl_method) == (
        64,
        "mit",
        "moco_v2",
    )
    student = tiny_student(image_size=32)
    with caplog.at_level("WARNING"):
        SeedTrainer(
            model=student,
            teacher=teacher,
            args=args,
            train_dataset=TensorImages(16),
            data_collator=collate_batch,
        )
    assert "was trained at 64 px and the student's views are 32 px" in caplog.text
    assert student.config.teacher["image_size"] == 64 and student.config.teacher["license"] == "mit"

    resized = load_teacher(str(tmp_path / "teacher"), teacher_image_size=64)
    seen = []
    stem = next(resized.backbone.children())  # pooled_features calls forward_features, not forward
    stem.register_forward_pre_hook(lambda module, inputs: seen.append(tuple(inputs[0].shape[-2:])))
    caplog.clear()
    with caplog.at_level("WARNING"):
        args.optimize_teacher = False  # the eager backbone, so that the hook sees its inputs
        trainer = SeedTrainer(model=tiny_student(image_size=32), teacher=resized, args=args,
                              train_dataset=TensorImages(16), data_collator=collate_batch)  # fmt: skip
        trainer.train()
    assert "was trained at" not in caplog.text
    assert set(seen) == {(64, 64)}  # the 32-px views, resized for the teacher
    assert trainer.model.config.teacher["resized_to"] == 64


SEED_RUN = ["--teacher_name_or_path", "test_resnet", "--allow_random_teacher", "--student_architecture",
            "test_efficientnet", "--queue_size", "64"]  # fmt: skip


@requires_fashion_mnist
def test_overwrite_removes_the_previous_runs_checkpoints_so_no_later_run_resumes_them(tmp_path, caplog):
    out = tmp_path / "run"
    run_seed.main([*SEED_RUN, "--output_dir", str(out), *TRAIN])  # 3 steps, checkpoint-3
    (out / "notes.txt").write_text("the user's own file")
    run_seed.main([*SEED_RUN, "--output_dir", str(out), *TRAIN, "--max_steps", "2", "--save_steps", "2",
                   "--overwrite_output_dir", "true"])  # fmt: skip
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    assert re.search(r"removed the previous run's .*checkpoint-3.*trainer_state.json", caplog.text)
    assert (out / "notes.txt").is_file()
    # a later run without the flag resumes the new run (step 2), not the old one (step 3)
    run_seed.main([*SEED_RUN, "--output_dir", str(out), *TRAIN, "--max_steps", "4", "--save_steps", "2"])
    assert f"resuming training at {out / 'checkpoint-2'}" in caplog.text
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 4


@requires_fashion_mnist
@pytest.mark.parametrize(
    "changed, named",
    [
        (["--teacher_temperature", "0.05"], "teacher_temperature=0.05"),
        (["--image_size", "48"], "image_size=48"),
        (["--augmentation", "simclr"], "augmentation='simclr'"),
        (["--max_train_samples", "96"], "train_subset="),
        (["--seed", "7"], r"train_subset=.*'seed': 7"),
        (["--local_loss_weight", "0.5", "--image_size", "64"], "local_loss_weight=0.5"),
        (["--per_device_train_batch_size", "8"], "per_device_train_batch_size=8"),
    ],
)
def test_resuming_with_another_recipe_is_refused_naming_it(tmp_path, changed, named):
    """The rest of the steps would be trained with another recipe, and the card would describe it for all."""
    out = tmp_path / "run"
    run_seed.main([*SEED_RUN, "--output_dir", str(out), *TRAIN])
    with pytest.raises(ValueError, match=f"was trained with .*this run asks for .*{named}"):
        run_seed.main([*SEED_RUN, "--output_dir", str(out), *TRAIN, "--max_steps", "5", *changed])
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 3


@requires_fashion_mnist
def test_resuming_with_the_same_recipe_and_more_steps_trains_on(tmp_path):
    out = tmp_path / "run"
    run_seed.main([*SEED_RUN, "--output_dir", str(out), *TRAIN])
    run_seed.main([*SEED_RUN, "--output_dir", str(out), *TRAIN, "--max_steps", "4"])
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 4


def test_evaluation_converts_16_bit_images_as_training_does():
    from PIL import Image

    from seed_hf.data.decode import convert_image
    from seed_hf.evaluation.features import eval_transform

    ramp = np.linspace(0, 4000, 32 * 32).reshape(32, 32).astype(np.uint16)  # a 12-bit sensor's range
    image = Image.fromarray(ramp)
    assert image.mode.startswith("I;16")
    config = {"input_size": (3, 32, 32), "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center",
              "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}  # fmt: skip
    evaluated = eval_transform(config)(image)
    trained = np.asarray(convert_image(image, 3), dtype=np.float32) / 255
    assert float(evaluated.mean()) == pytest.approx(float(trained.mean()), abs=0.02)
    assert float(evaluated.mean()) < 0.9  # not clipped to white


def test_local_term_on_a_one_patch_teacher_map_is_refused(tmp_path):
    from helpers import TensorImages

    from seed_hf import SeedConfig, SeedForDistillation, SeedTrainer, SeedTrainingArguments, load_teacher

    teacher = load_teacher("test_resnet", allow_random=True)  # stride 32: 1x1 at 32 px
    config = SeedConfig(student_architecture="test_efficientnet", image_size=32, queue_size=64,
                        projection_dim=teacher.embed_dim, local_loss_weight=1.0)  # fmt: skip
    args = SeedTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", max_steps=1)
    with pytest.raises(ValueError, match="at least 2 patches, but the teacher's is 1x1 at image_size=32"):
        SeedTrainer(model=SeedForDistillation(config), teacher=teacher, args=args,
                    train_dataset=TensorImages(16, seed=0))  # fmt: skip


def _png_bytes(value: int, size: int = 16) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_evaluation_leaves_out_and_names_a_corrupt_image_of_an_imagefolder(tmp_path, caplog):
    """Training skips and counts a corrupt file; evaluation and the kNN monitor did crash on it."""
    from seed_hf.evaluation.features import extract_features
    from seed_hf.evaluation.labelled import LabelledImages, load_labelled_splits

    for split in ("train", "val"):
        for label, value in (("a", 10), ("b", 240)):
            (tmp_path / split / label).mkdir(parents=True)
            for i in range(3):
                (tmp_path / split / label / f"{i}.png").write_bytes(_png_bytes(value + i))
    (tmp_path / "train" / "b" / "garbage.png").write_bytes(b"not an image")
    data = load_labelled_splits(train_dir=str(tmp_path / "train"), validation_dir=str(tmp_path / "val"))
    assert len(data.train_labels) == 7
    features, labels = extract_features(
        None, LabelledImages(data.train_images, data.train_labels), desc="train"
    )
    assert features.shape[0] == len(labels) == 6 and sorted(labels.tolist()) == [0, 0, 0, 1, 1, 1]
    assert "garbage.png" in caplog.text and "left out 1 undecodable image(s) of 7" in caplog.text


def test_evaluation_reads_parquet_image_structs_without_feature_metadata(tmp_path):
    """Shards written by pyarrow (an image column of {bytes, path} structs, no datasets features)
    train through --train_files; evaluation decoded nothing of them ('dict' has no 'convert')."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from seed_hf.evaluation.features import eval_data_config, eval_transform, extract_features
    from seed_hf.evaluation.labelled import LabelledImages, load_labelled_splits

    images = [{"bytes": _png_bytes(v), "path": None} for v in (10, 20, 230, 240)]
    for split in ("train", "test"):
        pq.write_table(pa.table({"img": images, "lab": [0, 0, 1, 1]}), tmp_path / f"{split}-00000.parquet")
    data = load_labelled_splits(dataset_name=str(tmp_path), image_column="img", label_column="lab")
    transform = eval_transform(eval_data_config(3, 16, [0.0] * 3, [1.0] * 3))
    features, labels = extract_features(None, LabelledImages(data.eval_images, data.eval_labels, transform))
    assert features.shape == (4, 3 * 16 * 16) and labels.tolist() == [0, 0, 1, 1]
    assert float(features[0].mean()) == pytest.approx(10 / 255, abs=1e-3)


@requires_fashion_mnist
@pytest.mark.parametrize(
    "extra, message",
    [
        (["--queue_size", "8"], r"--queue_size \(8\) is smaller than the global batch .* raise --queue_size"),
        (["--per_device_train_batch_size", "1"], "--per_device_train_batch_size must be ≥ 2"),
        (["--teacher_temperature", "0"], "--teacher_temperature must be > 0"),
        (["--student_dtype", "fp8"], "--student_dtype must be one of"),
    ],
)
def test_run_seed_errors_name_the_flags_the_user_typed(tmp_path, extra, message):
    with pytest.raises(ValueError, match=message):
        run_seed.main([*SEED_RUN, "--output_dir", str(tmp_path / "run"), *TRAIN, *extra])


@requires_fashion_mnist
def test_run_moco_errors_name_its_flags(tmp_path):
    with pytest.raises(ValueError, match="--contrastive_temperature must be > 0"):
        run_moco.main(["--architecture", "test_resnet", "--queue_size", "64", "--contrastive_temperature", "0",
                       "--output_dir", str(tmp_path / "run"), *TRAIN])  # fmt: skip


@pytest.mark.parametrize("fraction", ["1.5", "0", "-0.1"])
def test_label_fractions_outside_zero_one_are_refused(fraction):
    with pytest.raises(ValueError, match=r"--label_fractions must each be in \(0, 1\]"):
        run_eval.main(["--models", "pixels", "--label_fractions", "0.1", fraction])


@requires_fashion_mnist
def test_knn_flags_without_monitor_samples_are_not_silently_ignored(tmp_path, caplog):
    run_seed.main(
        [*SEED_RUN, "--output_dir", str(tmp_path / "run"), *TRAIN, "--knn_train_dir", str(tmp_path)]
    )
    assert "--knn_train_dir given but --knn_monitor_samples is 0: the kNN monitor is off" in caplog.text


def test_an_export_over_one_of_other_weights_says_so(tmp_path, caplog):
    first, second = tmp_path / "first", tmp_path / "second"
    tiny_student().save_pretrained(first)
    torch.manual_seed(1)
    other = tiny_student()
    with torch.no_grad():
        next(other.student.parameters()).add_(1.0)
    other.save_pretrained(second)
    out = tmp_path / "export"
    export_student(first, out)
    export_student(first, out)  # the same weights again: nothing to say
    assert "held the export of other weights" not in caplog.text
    export_student(second, out)
    assert f"{out} held the export of other weights or config (sha256 " in caplog.text


def test_small_crops_not_smaller_than_the_global_views_are_warned_about(tmp_path, caplog):
    from helpers import TensorImages, tiny_teacher

    from seed_hf import SeedTrainer, SeedTrainingArguments

    args = SeedTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", max_steps=1)
    with caplog.at_level("WARNING"):
        SeedTrainer(model=tiny_student(num_small_crops=2, image_size=32), teacher=tiny_teacher(), args=args,
                    train_dataset=TensorImages(16))  # fmt: skip
    assert (
        "small crops (96 px, --small_crop_size) are not smaller than the global views (32 px)" in caplog.text
    )
    assert "--small_crop_size 14" in caplog.text


@requires_fashion_mnist
def test_resume_refuses_a_dropped_subset_another_folder_of_the_same_name_and_a_students_recipe(tmp_path):
    out = tmp_path / "run"
    run_seed.main([*SEED_RUN, "--output_dir", str(out), *TRAIN])
    subset = TRAIN.index("--max_train_samples")
    without_subset = TRAIN[:subset] + TRAIN[subset + 2 :]
    with pytest.raises(ValueError, match=r"train_subset=\{.*this run asks for train_subset=None"):
        run_seed.main([*SEED_RUN, "--output_dir", str(out), *without_subset, "--max_steps", "5"])

    for name in ("first", "second"):  # two imagefolders of the same name: the same record, other images
        for label in ("a", "b"):
            (tmp_path / name / "photos" / label).mkdir(parents=True)
            for i in range(8):
                (tmp_path / name / "photos" / label / f"{i}.png").write_bytes(
                    _png_bytes(30 * i + (label == "b"))
                )
    folder_run = [*SEED_RUN, "--output_dir", str(tmp_path / "folders"), *TRAIN, "--image_size", "32"]
    run_seed.main([*folder_run, "--train_dir", str(tmp_path / "first" / "photos")])
    with pytest.raises(ValueError, match="source_id="):
        run_seed.main([*folder_run, "--train_dir", str(tmp_path / "second" / "photos"), "--max_steps", "5"])

    group = [
        *SEED_RUN,
        "--student_architecture",
        "test_efficientnet,test_resnet",
        "--output_dir",
        str(tmp_path / "g"),
    ]
    run_seed.main([*group, *TRAIN])
    with pytest.raises(ValueError, match="test_resnet.teacher_temperature=0.05"):
        run_seed.main([*group, *TRAIN, "--max_steps", "5", "--teacher_temperature", "0.05"])


@requires_fashion_mnist
def test_a_finished_run_asked_again_with_another_recipe_is_refused_not_reported(tmp_path):
    out = tmp_path / "run"
    run_seed.main([*SEED_RUN, "--output_dir", str(out), *TRAIN])
    assert (
        run_seed.main([*SEED_RUN, "--output_dir", str(out), *TRAIN])["train_loss"] > 0
    )  # same recipe: its results
    with pytest.raises(ValueError, match="teacher_temperature=0.05"):
        run_seed.main([*SEED_RUN, "--output_dir", str(out), *TRAIN, "--teacher_temperature", "0.05"])


@requires_fashion_mnist
def test_overwrite_with_a_bad_argument_deletes_nothing_and_removes_a_groups_students(tmp_path):
    out = tmp_path / "run"
    group = [*SEED_RUN, "--student_architecture", "test_efficientnet,test_resnet", "--output_dir", str(out)]
    run_seed.main([*group, *TRAIN])
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(ValueError, match="--queue_size"):
        run_seed.main([*group, *TRAIN, "--overwrite_output_dir", "true", "--queue_size", "8"])
    assert sorted(p.name for p in out.iterdir()) == before  # a typo destroys nothing
    run_seed.main([*SEED_RUN, "--student_architecture", "test_efficientnet,test_byobnet", "--output_dir", str(out),
                   *TRAIN, "--overwrite_output_dir", "true"])  # fmt: skip
    assert sorted(p.name for p in (out / "students").iterdir()) == ["test_byobnet", "test_efficientnet"]


def test_evaluation_of_a_batch_of_only_corrupt_images_goes_on(tmp_path):
    from seed_hf.evaluation.features import extract_features
    from seed_hf.evaluation.labelled import LabelledImages

    images = [{"bytes": b"not an image", "path": None}] * 2 + [{"bytes": _png_bytes(9), "path": None}] * 2
    features, labels = extract_features(None, LabelledImages(images, [0, 0, 1, 1]), batch_size=2)
    assert features.shape[0] == 2 and labels.tolist() == [1, 1]
    with pytest.raises(ValueError, match="none of the 2 images could be decoded"):
        extract_features(None, LabelledImages(images[:2], [0, 0]), batch_size=2, desc="x")


@requires_fashion_mnist
def test_the_card_says_the_student_saw_a_subset_and_how_it_was_drawn(tmp_path):
    from seed_hf.export.cards import run_summary

    out = tmp_path / "run"
    run_seed.main([*SEED_RUN, "--output_dir", str(out), *TRAIN, "--seed", "5"])
    folder = export_student(out, tmp_path / "export", training_summary=run_summary(out))
    card = (folder / "README.md").read_text()
    assert "| training data | fashion_mnist (train split): 128 images of it, seeded random draw" in card
    assert "(seed 5) |" in card
    assert "source_id" not in card and str(tmp_path) not in card
