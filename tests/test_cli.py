"""The example scripts as a user runs them: --help, the learning-rate rule, re-runs of a finished
run, output_dirs of another model, Hub arguments, interrupted checkpoints and undecodable images."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import tiny_student, tiny_teacher, write_jpeg_shards

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from seed_hf import SeedTrainer, SeedTrainingArguments, collate_batch  # noqa: E402
from seed_hf.cli.arguments import DataTrainingArguments  # noqa: E402
from seed_hf.cli.command_line import parse_script_args  # noqa: E402
from seed_hf.data.train_dataset import build_train_dataset  # noqa: E402
from seed_hf.scripts import run_moco, run_seed  # noqa: E402
from seed_hf.training.run_folder import COMPLETE_MARKER  # noqa: E402

SCRIPTS = sorted((ROOT / "examples").glob("*.py"))


def test_every_example_script_prints_its_help():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    runs = {
        script.name: subprocess.Popen(
            [sys.executable, str(script), "--help"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for script in SCRIPTS
    }
    assert len(runs) >= 4
    for name, run in runs.items():
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, f"{name} --help failed:\n{err[-3000:]}"
        assert "usage:" in out and "--" in out, name
        if name == "run_seed.py":  # the learning-rate rule is stated where users look for it
            text = " ".join(out.split())
            assert "used as is when given. Default: base_learning_rate × global batch / 256" in text


def _seed_args(out: Path, files: list[str], *extra: str) -> list[str]:
    return [
        "--teacher_name_or_path",
        "test_resnet",
        "--allow_random_teacher",
        "--student_architecture",
        "test_efficientnet",
        "--queue_size",
        "64",
        "--train_files",
        *files,
        "--image_size",
        "32",
        "--augmentation",
        "none",
        "--per_device_train_batch_size",
        "8",
        "--max_steps",
        "2",
        "--save_steps",
        "2",
        "--use_cpu",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
        "--output_dir",
        str(out),
        "--cache_dir",
        str(out.parent / "cache"),
        *extra,
    ]


@pytest.mark.parametrize(
    "flags,expected_lr",
    [
        ([], 0.03 * 16 / 256),
        (["--base_learning_rate", "0.1"], 0.1 * 16 / 256),
        (["--gradient_accumulation_steps", "2"], 0.03 * 32 / 256),
        (["--learning_rate", "0.5"], 0.5),
        (["--learning_rate", "0.5", "--base_learning_rate", "0.1"], 0.5),
    ],
)
def test_learning_rate_rule_through_the_cli_parser(tmp_path, flags, expected_lr):
    from transformers import HfArgumentParser

    parser = HfArgumentParser((run_seed.ModelArguments, DataTrainingArguments, SeedTrainingArguments))
    argv = ["--teacher_name_or_path", "x", "--output_dir", str(tmp_path), "--use_cpu", "--report_to", "none"]
    _, _, training_args = parse_script_args(parser, [*argv, "--per_device_train_batch_size", "16", *flags])
    trainer = SeedTrainer(
        model=tiny_student(),
        teacher=tiny_teacher(),
        args=training_args,
        train_dataset=[],
        data_collator=collate_batch,
    )
    optimizer = trainer.create_optimizer()
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx(
        [expected_lr] * len(optimizer.param_groups)
    )


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 2-step run_seed.py run on local parquet shards."""
    folder = tmp_path_factory.mktemp("finished")
    files = write_jpeg_shards(folder, shards=2, rows=8)
    out = folder / "run"
    metrics = run_seed.main(_seed_args(out, files))
    return out, files, metrics


def test_short_run_marks_its_checkpoint_complete(finished_run):
    out, _, metrics = finished_run
    assert (out / "checkpoint-2" / COMPLETE_MARKER).is_file() and metrics["train_loss"] > 0


def test_rerunning_a_finished_run_keeps_its_results(finished_run, caplog):
    out, files, metrics = finished_run
    kept = ("train_results.json", "all_results.json", "trainer_state.json", "model.safetensors")
    before = {name: ((out / name).read_bytes(), (out / name).stat().st_mtime_ns) for name in kept}
    (out / "checkpoint-9").mkdir()  # what a save killed in a later run leaves: no completion marker
    assert run_seed.main(_seed_args(out, files)) == metrics
    assert "already complete (2 of 2 steps)" in caplog.text and "results are kept" in caplog.text
    assert {name: ((out / name).read_bytes(), (out / name).stat().st_mtime_ns) for name in kept} == before
    assert json.loads((out / "train_results.json").read_text())["train_loss"] > 0
    assert not (out / "checkpoint-9").exists()


def test_output_dir_of_another_architecture_is_one_clear_message(finished_run):
    out, files, _ = finished_run
    argv = _seed_args(out, files, "--max_steps", "4")
    argv[argv.index("test_efficientnet")] = "test_resnet"
    with pytest.raises(ValueError) as error:
        run_seed.main(argv)
    message = str(error.value)
    assert "holds a run of student_architecture='test_efficientnet' (checkpoint-2)" in message, message
    assert "asks for student_architecture='test_resnet'" in message and "size mismatch" not in message


@pytest.mark.parametrize("script", [run_seed, run_moco])
def test_push_to_hub_without_model_id_is_refused_before_training(tmp_path, script):
    argv = _seed_args(tmp_path / "out", ["unused.parquet"], "--push_to_hub")
    if script is run_moco:
        argv = ["--architecture", "test_resnet", *argv[argv.index("--queue_size") :]]
    with pytest.raises(ValueError, match="--push_to_hub needs --hub_model_id"):
        script.main(argv)
    assert not (tmp_path / "out").exists()


def test_skipped_images_are_totalled_over_dataloader_workers(tmp_path):
    # ids 0, 5, 10, 15 of 16 are corrupt; 2 steps x 8 images = one epoch, read by 2 worker processes
    files = write_jpeg_shards(tmp_path, shards=2, rows=8, corrupt_every=5)
    argv = _seed_args(tmp_path / "out", files, "--dataloader_num_workers", "2", "--save_strategy", "no")
    metrics = run_seed.main(argv)
    assert metrics["skipped_images"] == 4
    assert json.loads((tmp_path / "out" / "train_results.json").read_text())["skipped_images"] == 4


@pytest.mark.parametrize("streaming", [False, True])
def test_skipped_image_log_names_the_row(tmp_path, caplog, monkeypatch, streaming):
    from seed_hf.data.decode import DECODE_STATS

    monkeypatch.setattr(DECODE_STATS, "skipped", 0)  # names are logged for the first images of a process
    files = write_jpeg_shards(tmp_path, shards=1, rows=8, corrupt_every=3)  # ids 0, 3, 6
    data_args = DataTrainingArguments(
        train_files=files,
        streaming=streaming,
        image_size=16,
        augmentation="none",
        cache_dir=str(tmp_path / "c"),
    )
    dataset = build_train_dataset(data_args.train_data(), 1, 3, [0.5] * 3, [0.5] * 3)
    rows = list(dataset) if streaming else [dataset[i] for i in range(len(dataset))]
    for bad in (0, 3, 6):
        assert f"skipped undecodable image id={bad}:" in caplog.text
    batch = collate_batch(rows)
    assert batch["num_skipped_images"].sum() == 3 and len(batch["pixel_values"]) == 5


def test_source_without_a_decodable_image_stops_before_training(tmp_path):
    files = write_jpeg_shards(tmp_path, shards=1, rows=20, corrupt_every=1)
    with pytest.raises(
        ValueError, match=r"None of the first 16 images of --train_files .* column 'image'.*--image_column"
    ):
        run_seed.main(_seed_args(tmp_path / "out", files))
    assert not (tmp_path / "out").exists()
    # a column that holds no images (here: the ids), streamed
    (tmp_path / "good").mkdir()
    good = write_jpeg_shards(tmp_path / "good", shards=1, rows=4)
    data_args = DataTrainingArguments(train_files=good, streaming=True, image_column="id", image_size=16)
    with pytest.raises(ValueError, match="Column 'id' of --train_files .* holds no images.*--image_column"):
        build_train_dataset(data_args.train_data(), 1, 3, [0.5] * 3, [0.5] * 3)


def _copy_of(finished_run, tmp_path) -> Path:
    import shutil

    out, _, _ = finished_run
    shutil.copytree(out, tmp_path / "run")
    return tmp_path / "run"


def test_resuming_under_another_number_of_processes_is_refused_naming_both_global_batches(
    finished_run, tmp_path
):
    """A 2-process run resumed by 1 process: each step would see half the batch at the learning rate
    of the whole, and the epoch counter would go back. The run records its processes when it starts
    (here written as a 2-process launch would have)."""
    out, files, _ = finished_run
    run = _copy_of(finished_run, tmp_path)
    info = json.loads((run / "run_info.json").read_text())
    info["global_batch"] = {"images": 16, "per_process": 8, "processes": 2, "gradient_accumulation_steps": 1}
    (run / "run_info.json").write_text(json.dumps(info))
    with pytest.raises(ValueError) as error:
        run_seed.main(_seed_args(run, files, "--max_steps", "4"))
    message = str(error.value)
    assert "was trained with processes=2; this run asks for processes=1" in message, message
    assert "Its global batch was 16 images (8 per process × 2 processes × 1 accumulation step)" in message
    assert "this run's would be 8 images (8 per process × 1 process × 1 accumulation step)" in message
    assert json.loads((run / "trainer_state.json").read_text())["global_step"] == 2  # nothing trained


def test_resuming_with_other_accumulation_steps_is_refused(finished_run, tmp_path):
    out, files, _ = finished_run
    run = _copy_of(finished_run, tmp_path)
    recorded = json.loads((run / "run_info.json").read_text()).get("global_batch")
    assert recorded == {"images": 8, "per_process": 8, "processes": 1, "gradient_accumulation_steps": 1}
    with pytest.raises(ValueError) as error:
        run_seed.main(_seed_args(run, files, "--max_steps", "4", "--gradient_accumulation_steps", "2"))
    message = str(error.value)
    assert "gradient_accumulation_steps=1; this run asks for gradient_accumulation_steps=2" in message, (
        message
    )
    assert "Its global batch was 8 images" in message and "this run's would be 16 images" in message
    assert json.loads((run / "trainer_state.json").read_text())["global_step"] == 2


def test_a_longer_max_steps_on_resume_follows_the_schedule_of_the_new_length(tmp_path, monkeypatch, caplog):
    """Every step s of the resumed run trains (and logs) lr × ½(1 + cos(π (s − 1) / T)), T the new
    --max_steps, as if the run had been planned that long; its first step is no exception."""
    import math

    from transformers import TrainerCallback

    used: dict[int, float] = {}

    class RecordLearningRate(TrainerCallback):  # the rate the optimizer holds when a step starts
        def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
            used[state.global_step + 1] = optimizer.param_groups[0]["lr"]

    class RecordingTrainer(SeedTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.add_callback(RecordLearningRate())

    monkeypatch.setattr(run_seed, "SeedTrainer", RecordingTrainer)
    files = write_jpeg_shards(tmp_path / "data", shards=2, rows=8)
    out = tmp_path / "run"
    common = ("--logging_steps", "1", "--save_steps", "4")
    run_seed.main(_seed_args(out, files, "--max_steps", "4", *common))
    run_seed.main(_seed_args(out, files, "--max_steps", "8", *common))
    lr = 0.03 * 8 / 256  # the base rate × global batch / 256

    def cosine(step: int, total: int) -> float:
        return lr * 0.5 * (1 + math.cos(math.pi * (step - 1) / total))

    logged = {
        h["step"]: h["learning_rate"]
        for h in json.loads((out / "trainer_state.json").read_text())["log_history"]
        if "learning_rate" in h
    }
    assert [logged[s] for s in range(1, 5)] == pytest.approx([cosine(s, 4) for s in range(1, 5)])
    assert [logged[s] for s in range(5, 9)] == pytest.approx([cosine(s, 8) for s in range(5, 9)])
    assert [used[s] for s in range(1, 9)] == pytest.approx([logged[s] for s in range(1, 9)])
    assert "this run's schedule (over 8 steps) gives" in caplog.text


def test_eval_strategy_without_the_knn_monitor_names_the_flags(tmp_path):
    files = write_jpeg_shards(tmp_path / "data", shards=1, rows=4)
    with pytest.raises(ValueError) as error:
        run_seed.main(_seed_args(tmp_path / "out", files, "--eval_strategy", "steps"))
    message = str(error.value)
    assert message.startswith("--eval_strategy steps evaluates with the online kNN monitor"), message
    assert "--knn_monitor_samples N" in message and "eval_dataset" not in message
    assert not (tmp_path / "out").exists()


def test_a_queue_larger_than_memory_is_refused_with_the_memory_it_needs(tmp_path):
    files = write_jpeg_shards(tmp_path / "data", shards=1, rows=4)
    argv = _seed_args(tmp_path / "out", files)
    argv[argv.index("--queue_size") + 1] = str(10**12)
    with pytest.raises(ValueError, match=r"--queue_size=1000000000000 does not fit in memory: its 1000000000000 × \d+ "
                       r"float32 embeddings take [\d.]+ GiB.*this machine has [\d.]+ GiB\. Pass a smaller --queue_size"):  # fmt: skip
        run_seed.main(argv)


def test_a_refusal_prints_its_message_alone_and_exits_1():
    """A refused flag on the command line: one line, no traceback (unexpected errors keep theirs)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    commands = {
        "run_seed.py": [
            "--teacher_name_or_path",
            "x",
            "--output_dir",
            "unused",
            "--knn_monitor_samples",
            "-1",
        ],
        "run_eval.py": ["--models", "pixels", "--knn_k", "0"],
    }
    runs = {
        name: subprocess.Popen(
            [sys.executable, str(ROOT / "examples" / name), *argv],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, argv in commands.items()
    }
    expected = {
        "run_seed.py": "error: --knn_monitor_samples must be an integer ≥ 0, got -1.",
        "run_eval.py": "error: --knn_k must be ≥ 1, got 0.",
    }
    for name, run in runs.items():
        _, err = run.communicate(timeout=300)
        assert run.returncode == 1, (name, err[-2000:])
        assert "Traceback" not in err and err.strip().splitlines()[-1] == expected[name], (name, err[-2000:])


def test_run_script_keeps_the_traceback_of_an_unexpected_error(capsys, tmp_path):
    from seed_hf.cli.script import run_script
    from seed_hf.evaluation.knn import weighted_knn_predict

    cleaned = []

    def refused():
        weighted_knn_predict(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), torch.zeros(1, 3), k=0)

    with pytest.raises(SystemExit) as exit_:
        run_script(refused, cleanup=lambda: cleaned.append(True))
    assert exit_.value.code == 1 and cleaned == [True]
    assert capsys.readouterr().err == "error: k must be ≥ 1, got 0.\n"
    # code of a seed_hf module: Python's own ValueError there is a bug, not a refusal
    source = tmp_path / "library_code.py"
    source.write_text("def unpack(values):\n    first, second = values\n    return first + second\n")
    namespace = {"__name__": "seed_hf.library_code"}
    exec(compile(source.read_text(), str(source), "exec"), namespace)
    with pytest.raises(ValueError, match="too many values to unpack"):
        run_script(lambda: namespace["unpack"]([1, 2, 3]))
    with pytest.raises(ValueError, match="invalid literal"):
        run_script(lambda: int("x"))  # raised by another module than seed_hf or the script


@pytest.mark.parametrize("streaming", [False, True])
def test_a_labels_only_parquet_is_told_it_has_no_image_column(tmp_path, streaming):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "labels.parquet"
    pq.write_table(pa.table({"label": [0, 1, 0, 1], "id": [1, 2, 3, 4]}), path)
    data_args = DataTrainingArguments(
        train_files=[str(path)], streaming=streaming, image_size=16, cache_dir=str(tmp_path / "c")
    )
    with pytest.raises(ValueError) as error:
        build_train_dataset(data_args.train_data(), 1, 3, [0.5] * 3, [0.5] * 3)
    message = str(error.value)
    assert "has no image column: its columns are ['label', 'id'] and none of them holds images" in message
    assert "--image_column" not in message, message
    # images under another name: that column is named
    pq.write_table(pa.table({"photo": [{"bytes": b"x", "path": None}], "label": [0]}), path)
    with pytest.raises(
        ValueError, match=r"column\(s\) \['photo'\] look like images: pass .* as --image_column"
    ):
        build_train_dataset(data_args.train_data(), 1, 3, [0.5] * 3, [0.5] * 3)


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--learning_rate", "0.5"], "learning_rate="),
        (["--seed", "3"], "seed=42; this run asks for seed=3"),
        (["--lr_scheduler_type", "constant"], "lr_scheduler_type='cosine'"),
        (["--max_grad_norm", "1.0"], "max_grad_norm=0.0"),
    ],
)
def test_resuming_with_another_optimisation_recipe_is_refused(finished_run, tmp_path, flags, named):
    """The scheduler's state holds the checkpoint's rates and the seed draws every view: a resume
    with another learning rate, schedule, clipping or seed would silently train the old recipe (or
    other views); it is refused naming the difference."""
    _, files, _ = finished_run
    run = _copy_of(finished_run, tmp_path)
    with pytest.raises(ValueError, match="was trained with") as error:
        run_seed.main(_seed_args(run, files, "--max_steps", "4", *flags))
    assert named in str(error.value), str(error.value)
    assert json.loads((run / "trainer_state.json").read_text())["global_step"] == 2


def test_a_finished_run_asked_for_an_export_says_how_to_export_it(finished_run, tmp_path):
    _, files, _ = finished_run
    run = _copy_of(finished_run, tmp_path)
    with pytest.raises(
        ValueError, match=r"already complete, so this command exports nothing.*run_export\.py"
    ):
        run_seed.main(_seed_args(run, files, "--onnx"))


def test_refusals_of_the_command_line(tmp_path, capsys):
    """Values transformers or timm would take silently or fail on deep inside: refused naming them;
    a folder in use by another run is a refusal too (one message, no traceback)."""
    from seed_hf import SeedTrainingArguments
    from seed_hf.cli.script import run_script
    from seed_hf.models.backbones import create_backbone
    from seed_hf.training.run_folder import RunFolderInUseError

    with pytest.raises(ValueError, match="max_steps=-3"):
        SeedTrainingArguments(output_dir=str(tmp_path), max_steps=-3, use_cpu=True)
    with pytest.raises(ValueError, match="learning rate must be > 0, got learning_rate=-1"):
        SeedTrainingArguments(output_dir=str(tmp_path), learning_rate=-1.0, use_cpu=True)
    with pytest.raises(
        ValueError, match=r"student_architecture='test_resnet' does not take the model arguments"
    ):
        create_backbone("test_resnet", 3, {"img_size": 64})

    from filelock import FileLock

    from seed_hf.training.run_folder import lock_run_folder, run_lock_files

    folder = tmp_path / "busy"
    other = FileLock(run_lock_files(folder)[0])  # another open file's lock: as another process holds it
    other.acquire()
    try:
        with pytest.raises(RunFolderInUseError):
            lock_run_folder(folder)
        with pytest.raises(SystemExit) as exit_:
            run_script(lambda: lock_run_folder(folder))
    finally:
        other.release()
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith(
        f"error: output_dir {str(folder.resolve())!r} is in use: another process holds its lock"
    )
    assert err.count("\n") == 1 and "Traceback" not in err


def test_an_image_folder_is_named_by_its_own_name_unless_it_is_a_split(tmp_path):
    from seed_hf.evaluation.labelled import load_labelled_splits

    for folder in (tmp_path / "photos", tmp_path / "mydata" / "train"):
        for label in ("a", "b"):
            (folder / label).mkdir(parents=True)
            for i in range(2):
                from PIL import Image

                Image.new("RGB", (8, 8), (i * 50, 0, 0)).save(folder / label / f"{i}.png")
    assert (
        load_labelled_splits(train_dir=str(tmp_path / "photos"), validation_dir=str(tmp_path / "photos")).name
        == "photos"
    )
    train = tmp_path / "mydata" / "train"
    assert load_labelled_splits(train_dir=str(train), validation_dir=str(train)).name == "mydata"


def _seed_parser():
    from seed_hf.cli.command_line import script_parser

    return script_parser((run_seed.ModelArguments, DataTrainingArguments, SeedTrainingArguments))


def test_an_abbreviated_recipe_flag_is_refused_not_dropped(tmp_path):
    """`--rec FILE` once matched `--recipe` in the main parser and the file was never read."""
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps({"max_steps": 3}))
    argv = ["--teacher_name_or_path", "x", "--output_dir", str(tmp_path / "o"), "--use_cpu"]
    *_, training_args = parse_script_args(_seed_parser(), [*argv, "--recipe", str(recipe)])
    assert training_args.max_steps == 3
    with pytest.raises((ValueError, SystemExit), match="rec"):
        parse_script_args(_seed_parser(), [*argv, "--rec", str(recipe)])


def test_a_renamed_flag_is_refused_naming_its_new_name(tmp_path):
    from seed_hf.cli.command_line import script_parser

    parser = script_parser((run_moco.ModelArguments, DataTrainingArguments, SeedTrainingArguments))
    argv = ["--output_dir", str(tmp_path / "o"), "--use_cpu", "--temperature", "0.2"]
    with pytest.raises(ValueError, match="--temperature is now --contrastive_temperature"):
        parse_script_args(parser, argv)
    with pytest.raises(ValueError, match="did you mean --max_steps"):
        parse_script_args(parser, ["--output_dir", str(tmp_path / "o"), "--max_step", "2"])


def test_a_recipe_object_value_reaches_its_flag_as_json(tmp_path):
    """A recipe's `{"drop_rate": 0.2}` was passed on as Python's repr, which the flag's JSON parse refused."""
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps({"student_model_args": {"drop_rate": 0.2}}))
    argv = [
        "--teacher_name_or_path",
        "x",
        "--output_dir",
        str(tmp_path / "o"),
        "--use_cpu",
        "--recipe",
        str(recipe),
    ]
    model_args, *_ = parse_script_args(_seed_parser(), argv)
    assert json.loads(model_args.student_model_args) == {"drop_rate": 0.2}


def test_train_files_matching_nothing_is_refused_naming_the_flag_also_when_not_streamed(tmp_path):
    from seed_hf.data.loading import load_image_dataset

    with pytest.raises(FileNotFoundError, match="--train_files .*nope-\\*.parquet.* matches no file"):
        load_image_dataset(train_files=[str(tmp_path / "nope-*.parquet")])
