"""The benchmark scripts run end to end on tiny settings (their figures are not asserted)."""

import sys
from pathlib import Path

import pytest
from conftest import requires_fashion_mnist

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


@requires_fashion_mnist
def test_bench_data_smoke(tmp_path):
    import bench_data

    out = bench_data.main(["--num_images", "12", "--batch_size", "4", "--repeats", "1", "--image_size", "64",
                           "--output_json", str(tmp_path / "data.json")])
    assert set(out["images_per_s_per_core"]) >= {"baseline_imagefolder_pil", "seed_hf_parquet_opencv"}
    assert out["ratio_seed_hf_vs_baseline"] > 0 and 0 < out["seed_hf_decode_share_of_time"] < 1
    assert set(out["ms_per_call_p1"]["seed_hf_opencv"]) == set(out["ms_per_call_p1"]["official_pil"])
    assert (tmp_path / "data.json").is_file()


@pytest.mark.parametrize("extra", [[], ["--teacher_dtype", "bfloat16", "--num_students", "2"]])
def test_bench_step_smoke(extra):
    import bench_step

    out = bench_step.main(["--device", "cpu", "--student", "test_resnet", "--teacher", "test_efficientnet",
                           "--image_size", "32", "--batch_size", "4", "--queue_size", "64", "--repeats", "1",
                           "--warmup", "1", "--num_students", "0", *extra])
    assert out["ratio_seed_hf_vs_official"] > 0 and out["overhead"] > 0
    assert ("multi_student" in out) == ("--num_students" in extra)
