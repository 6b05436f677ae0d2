"""The benchmark scripts run end to end on tiny settings (their figures are not asserted)."""

import json
import sys
from pathlib import Path

import pytest
from conftest import requires_fashion_mnist

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_bench_data_smoke(tmp_path):
    pytest.importorskip("skimage")
    import bench_data

    out = bench_data.main(
        [
            "--num_images",
            "6",
            "--photo_dir",
            str(tmp_path / "photos"),
            "--batch_size",
            "4",
            "--repeats",
            "1",
            "--image_size",
            "64",
            "--output_json",
            str(tmp_path / "data.json"),
        ]
    )
    assert set(out["images_per_s_per_core"]) == set(bench_data.PRESETS)
    assert all(v > 0 for row in out["images_per_s_per_core"].values() for v in row.values())
    assert 0 < out["moco_v2_opencv_full_decode_ms"]["decode_share"] < 1
    assert set(out["moco_v2_loaders_images_per_s"]) == {
        "official_imagefolder_pil",
        "seed_hf_parquet_full_decode",
        "seed_hf_parquet_crop_aware",
    }
    assert set(out["ms_per_call_p1"]["seed_hf_opencv"]) == set(out["ms_per_call_p1"]["official_pil"])
    assert (tmp_path / "data.json").is_file()


def test_photo_set_is_deterministic_and_loadable(tmp_path):
    pytest.importorskip("skimage")
    import datasets
    import make_photo_set

    first = make_photo_set.build_photo_set(tmp_path / "a", num_images=5, seed=3, num_shards=2)
    second = make_photo_set.build_photo_set(tmp_path / "b", num_images=5, seed=3, num_shards=2)
    for key in ("parquet_files", "webdataset_files"):
        for f1, f2 in zip(first[key], second[key]):
            assert Path(f1).read_bytes() == Path(f2).read_bytes(), f1
    parquet = datasets.load_dataset(
        "parquet", data_files=first["parquet_files"], split="train", cache_dir=str(tmp_path / "cache")
    )
    assert len(parquet) == 5 and isinstance(parquet.features["image"], datasets.Image)
    assert parquet.features["label"].names == first["class_names"]
    assert parquet[0]["image"].format == "JPEG" and parquet[0]["image"].mode in ("RGB", "L")
    wds = datasets.load_dataset(
        "webdataset",
        data_files=first["webdataset_files"],
        split="train",
        cache_dir=str(tmp_path / "cache_wds"),
    )
    assert len(wds) == 5 and {"jpg", "cls", "__key__"} <= set(wds.column_names)
    assert [int(c) for c in wds["cls"]] == parquet["label"]
    assert make_photo_set.ensure_photo_set(5, seed=3, cache_dir=tmp_path / "a") == first  # cached


@pytest.mark.parametrize("extra", [[], ["--teacher_dtype", "bfloat16", "--num_students", "2"]])
def test_bench_step_smoke(extra):
    import bench_step

    out = bench_step.main(
        [
            "--device",
            "cpu",
            "--student",
            "test_resnet",
            "--teacher",
            "test_efficientnet",
            "--image_size",
            "32",
            "--batch_size",
            "4",
            "--queue_size",
            "64",
            "--repeats",
            "1",
            "--warmup",
            "1",
            "--num_students",
            "0",
            *extra,
        ]
    )
    assert out["ratio_seed_hf_vs_official"] > 0 and out["overhead"] > 0
    assert ("multi_student" in out) == ("--num_students" in extra)
    # the default path is the trainer's own resolution (tiny shapes: the prior), next to the previous default
    assert out["ratio_seed_hf_vs_previous_default"] > 0 and out["img_per_s"]["seed_hf_previous_default"] > 0
    assert out["seed_hf_step_choice"]["sources"]["student_channels_last"] == "prior"


@requires_fashion_mnist
def test_bench_step_end_to_end_runs_run_seed(tmp_path):
    """--end_to_end_steps runs examples/run_seed.py itself (Fashion-MNIST) and reports its img/s
    against the step alone."""
    import bench_step

    out = bench_step.main(["--device", "cpu", "--student", "test_resnet", "--teacher", "test_efficientnet",
                           "--image_size", "32", "--batch_size", "4", "--queue_size", "64", "--repeats", "1",
                           "--warmup", "1", "--num_students", "0", "--end_to_end_steps", "3",
                           "--end_to_end_args", "--max_train_samples 64 --save_strategy no"])  # fmt: skip
    e2e = out["end_to_end"]
    assert e2e["steps"] == 3 and e2e["timed_steps"] == 1 and e2e["img_per_s"] > 0
    assert e2e["ratio_vs_official_step"] > 0 and e2e["ratio_vs_seed_hf_step"] > 0


def test_bench_gpu_input_smoke(tmp_path):
    """The H200 benchmark of the GPU input path, on the CPU with tiny settings (its figures are
    not asserted): (a) step, (b) CPU pipeline and (c) GPU input path from webdataset shards."""
    pytest.importorskip("skimage")
    import bench_gpu_input

    out = bench_gpu_input.main(
        [
            "--device",
            "cpu",
            "--batch_size",
            "8",
            "--steps",
            "3",
            "--student",
            "resnet18",
            "--teacher",
            "resnet18",
            "--num_images",
            "24",
            "--num_shards",
            "4",
            "--num_workers",
            "2",
            "--image_size",
            "64",
            "--queue_size",
            "256",
            "--photo_dir",
            str(tmp_path / "photos"),
            "--output_json",
            str(tmp_path / "gpu_input.json"),
        ]
    )
    assert {"step", "cpu_pipeline", "gpu_input", "gpu_input_alone"} <= set(out["img_per_s"])
    assert all(v > 0 for v in out["img_per_s"].values())
    assert out["ratio_gpu_input_vs_step"] > 0 and out["nvjpeg_vs_libjpeg_uint8"]["max_abs"] == 0  # cpu vs cpu
    assert json.loads((tmp_path / "gpu_input.json").read_text())["photo_set"]["shards"] == 4


@requires_fashion_mnist
def test_bench_teacher_cache_smoke(tmp_path):
    """bench_teacher_cache.py runs run_seed.py online, writes a cache, trains from it and times
    the student alone (tiny models, 3 timed steps)."""
    import bench_teacher_cache

    out = bench_teacher_cache.main(["--teacher", "test_resnet", "--large_teacher", "", "--student", "test_resnet",
                                    "--image_size", "32", "--batch_size", "8", "--steps", "3", "--queue_size", "64",
                                    "--data_args", "--dataloader_num_workers 0",
                                    "--output_json", str(tmp_path / "out.json")])  # fmt: skip
    row = out["teachers"]["demo_teacher"]
    assert row["online_img_per_s"] > 0 and row["cached_img_per_s"] > 0 and row["cache_write"]["views"] == 24
    assert out["student_only"]["img_per_s"] > 0 and json.loads((tmp_path / "out.json").read_text()) == out
