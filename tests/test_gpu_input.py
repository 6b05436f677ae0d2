"""GPU input path (``--data_device cuda``, ``seed_hf.data.gpu_input``) on ``device="cpu"``: decode,
crop-parameter distributions, augmentation statistics against the CPU presets, skip-and-count,
and a SeedTrainer run fed encoded bytes. Measured figures are in each test's docstring."""

import io
import math

import numpy as np
import pytest
import torch
from helpers import tiny_student, tiny_teacher, write_jpeg_shards
from PIL import Image
from test_cli import _seed_args
from test_crop_decode import photo_jpeg
from torchvision.transforms import v2

from seed_hf import SeedTrainer, SeedTrainingArguments
from seed_hf.cli import arguments
from seed_hf.cli.arguments import DataTrainingArguments
from seed_hf.data import crop_decode, opencv_kernels
from seed_hf.data.batched_transforms import BATCHED_PRESETS, BatchedSSLTransform, random_resized_crop_boxes
from seed_hf.data.decode import SKIPPED_KEY
from seed_hf.data.gpu_input import (
    ENCODED_KEY,
    DeviceInputTransform,
    EncodedImageBatch,
    EncodedImageTransform,
    build_device_transform,
    collate_encoded_batch,
    decode_images,
)
from seed_hf.data.rows import ImageColumnTransform
from seed_hf.data.train_dataset import build_train_dataset
from seed_hf.data.transforms import RandomGaussianBlur, build_ssl_transform

pytestmark = pytest.mark.skipif(opencv_kernels.cv2 is None, reason="OpenCV not installed (the CPU reference)")

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# ImageNet-like (w, h): the common 500-px landscape / portrait sizes plus a few others
SIZES = [(500, 375), (375, 500), (500, 333), (640, 480), (333, 500), (400, 400), (800, 533), (300, 225)]


def photo_set(n: int, scale: float = 1.0) -> list[bytes]:
    """``n`` photo JPEGs (scikit-image's astronaut / coffee / chelsea) of ImageNet-like sizes
    times ``scale``; every 12th is a grayscale JPEG."""
    sizes = [(round(w * scale), round(h * scale)) for w, h in SIZES]
    return [photo_jpeg(sizes[i % len(sizes)], seed=i, mode="L" if i % 12 == 11 else "RGB") for i in range(n)]


def encoded_rows(cells: list) -> list[dict]:
    """Rows as the dataloader workers produce them on the GPU path."""
    apply = ImageColumnTransform(EncodedImageTransform(3), "image", 3, to_array=True)
    out = apply({"image": cells, "id": list(range(len(cells)))})
    return [{"pixel_values": p, "id": i} for p, i in zip(out["pixel_values"], out["id"])]


def test_cpu_decode_gives_the_pixels_of_pil_and_opencv():
    """``decode_images(device="cpu")`` (torchvision's libjpeg-turbo) against PIL and OpenCV on RGB
    and grayscale 4:2:0 photos. Tolerance: max |Δ| ≤ 1 uint8 level; measured here: 0 (identical).
    CMYK JPEGs and PNGs are decoded in the worker (PIL) and arrive as pixels."""
    jpegs = photo_set(12)
    cmyk, png = io.BytesIO(), io.BytesIO()
    Image.open(io.BytesIO(jpegs[0])).convert("CMYK").save(cmyk, format="JPEG", quality=90)
    Image.open(io.BytesIO(jpegs[1])).save(png, format="PNG")
    cells = [{"bytes": b} for b in [*jpegs, cmyk.getvalue(), png.getvalue()]]
    batch = collate_encoded_batch(encoded_rows(cells))
    encoded = batch[ENCODED_KEY]
    assert len(encoded) == 14 and set(encoded.decoded) == {12, 13}  # CMYK and PNG: pixels
    images = decode_images(encoded, "cpu")
    for data, image in zip([*jpegs, cmyk.getvalue(), png.getvalue()], images):
        pil = torch.from_numpy(np.array(Image.open(io.BytesIO(data)).convert("RGB"))).permute(2, 0, 1)
        assert image.shape == pil.shape and image.dtype == torch.uint8
        assert (image.int() - pil.int()).abs().max() <= 1
    for data, image in zip(jpegs, images):
        opencv = torch.from_numpy(opencv_kernels.decode_jpeg(data, 3)).permute(2, 0, 1)
        assert (image.int() - opencv.int()).abs().max() <= 1
    gray = decode_images(EncodedImageBatch.from_items([crop_decode.encoded_jpeg(jpegs[11], 1)]), "cpu", 1)[0]
    assert gray.shape == (1, 480, 640)


def _ks(a: torch.Tensor, b: torch.Tensor) -> float:
    """Two-sample Kolmogorov–Smirnov statistic."""
    grid = torch.cat([a, b]).sort().values
    cdf = lambda x: torch.searchsorted(x.sort().values, grid, right=True) / len(x)  # noqa: E731
    return (cdf(a) - cdf(b)).abs().max().item()


def test_crop_boxes_from_each_images_size_follow_torchvision():
    """Per-sample sizes (ImageNet-like plus 1000 × 60 and 60 × 1000, where every try fails and
    torchvision falls back to a centred crop): area fraction, log aspect ratio and relative
    position of 4000 boxes against ``v2.RandomResizedCrop.get_params`` on the same sizes.
    Tolerance: KS statistic < 0.05 (the two-sample critical value at α = 0.001 for n = m = 4000
    is 1.95·√(2/4000) = 0.044); measured here: ≤ 0.02. Fallback boxes are exactly torchvision's."""
    n = 4000
    shapes = torch.tensor([(h, w) for w, h in SIZES] + [(60, 1000), (1000, 60)])
    pick = torch.randint(len(shapes), (n,), generator=torch.Generator().manual_seed(1))
    heights, widths = shapes[pick, 0], shapes[pick, 1]
    boxes = random_resized_crop_boxes(
        n, heights, widths, (0.2, 1.0), generator=torch.Generator().manual_seed(0)
    )
    x1, y1, x2, y2 = boxes.unbind(1)
    assert (x1 >= 0).all() and (y1 >= 0).all() and (x2 <= widths).all() and (y2 <= heights).all()
    torch.manual_seed(0)
    ref = torch.tensor(
        [
            v2.RandomResizedCrop.get_params(torch.empty(0, int(h), int(w)), [0.2, 1.0], [3 / 4, 4 / 3])
            for h, w in zip(heights, widths)
        ],
        dtype=torch.float64,
    )  # (top, left, h, w)

    def features(top, left, h, w):
        area = h * w / (heights * widths)
        free_x, free_y = (widths - w).clamp_min(1), (heights - h).clamp_min(1)
        return area, (w / h).log(), left / free_x, top / free_y

    ours = features(y1.double(), x1.double(), (y2 - y1).double(), (x2 - x1).double())
    theirs = features(*ref.unbind(1))
    for name, a, b in zip(("area", "log aspect", "left", "top"), ours, theirs):
        assert _ks(a, b) < 0.05, name
    extreme = (heights == 60) | (widths == 60)  # scale ≥ 0.2 never fits: the deterministic fallback
    assert torch.equal(boxes[extreme][:, 2:] - boxes[extreme][:, :2], ref[extreme][:, [3, 2]].float())
    assert torch.equal(boxes[extreme][:, :2], ref[extreme][:, [1, 0]].float())


def _cpu_preset_fields(preset: str, image_size: int = 224) -> dict:
    """The parameters of ``build_ssl_transform(preset)``, read from its ops, in the vocabulary of
    ``BatchedSSLTransform``."""
    fields = {
        "jitter": (0.0, 0.0, 0.0, 0.0),
        "jitter_p": 0.0,
        "grayscale_p": 0.0,
        "blur_p": 0.0,
        "flip_p": 0.0,
    }
    order = []
    for op in build_ssl_transform(preset, image_size).transforms:
        p, inner = 1.0, op
        if isinstance(op, v2.RandomApply):
            p, inner = op.p, op.transforms[0]
        if isinstance(inner, v2.RandomResizedCrop):
            fields["scale"] = tuple(inner.scale)
        elif isinstance(inner, v2.ColorJitter):
            ranges = (inner.brightness, inner.contrast, inner.saturation, inner.hue)
            fields["jitter"] = tuple(
                0.0 if r is None else float(r[1]) - (1.0 if i < 3 else 0.0) for i, r in enumerate(ranges)
            )
            fields["jitter_p"] = p
            order.append("jitter")
        elif isinstance(inner, v2.RandomGrayscale):
            fields["grayscale_p"] = inner.p
            order.append("gray")
        elif isinstance(inner, RandomGaussianBlur):
            assert inner.sigma == (0.1, 2.0)
            fields["blur_p"] = p
        elif isinstance(inner, v2.RandomHorizontalFlip):
            fields["flip_p"] = inner.p
    fields["grayscale_first"] = order == ["gray", "jitter"]
    return fields


@pytest.mark.parametrize("preset", sorted(BATCHED_PRESETS))
def test_batched_presets_have_the_cpu_presets_parameters(preset):
    """Every batched preset has the crop scale, jitter strengths and probabilities, grayscale /
    jitter order and blur of its CPU twin (read from the CPU pipeline's ops)."""
    batched = BatchedSSLTransform.from_preset(preset, 224, MEAN, STD)
    for key, value in _cpu_preset_fields(preset).items():
        assert getattr(batched, key) == pytest.approx(value), key


def _view_statistics(views: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-channel mean and std of the de-normalised pixels, the spread of per-view means
    (brightness / contrast jitter) and the fraction of grayscale views."""
    pixels = views * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
    gray = ((pixels[:, 0] - pixels[:, 1]).abs().amax((1, 2)) < 1e-4) & (
        (pixels[:, 1] - pixels[:, 2]).abs().amax((1, 2)) < 1e-4
    )
    return {
        "mean": pixels.mean((0, 2, 3)),
        "std": pixels.std((0, 2, 3)),
        "view_mean_spread": pixels.mean((2, 3)).std(0),
        "gray_fraction": gray.float().mean(),
    }


# |batched − CPU| allowed per statistic: ~3σ of the difference of two runs of 384 views, σ measured
# over 5 seeds per path (mean 0.002–0.007, std 0.001–0.003, spread 0.002–0.004, gray 0.017)
STAT_TOLERANCES = {"mean": 0.025, "std": 0.015, "view_mean_spread": 0.015, "gray_fraction": 0.07}


def _mismatches(ours: dict, reference: dict) -> list[str]:
    return [
        f"{key}: {ours[key].numpy().round(4)} vs {reference[key].numpy().round(4)}"
        for key, tolerance in STAT_TOLERANCES.items()
        if (ours[key] - reference[key]).abs().max() > tolerance
    ]


def test_batched_views_have_the_statistics_of_the_cpu_preset():
    """24 photos (half ImageNet's sizes, to keep roi_align cheap on a CPU) × 16 views at 64 px,
    moco_v2: the batched path (decode_images + BatchedSSLTransform) against the CPU preset
    (crop-aware opencv pipeline). Measured over 5 seeds, means of batched vs CPU: pixel mean
    (R, G, B) 0.545/0.409/0.341 vs 0.544/0.409/0.346, std 0.254/0.245/0.239 vs 0.253/0.244/0.237,
    per-view-mean spread 0.134/0.128/0.128 vs 0.135/0.127/0.124, grayscale views 0.262 vs 0.270
    (expected 0.2 + 0.8 · 2/24 grayscale photos = 0.267). Tolerances: STAT_TOLERANCES. The same
    comparison rejects the moco_v1 preset (mean off by 0.08) and moco_v2 without colour jitter
    (std off by 0.02, spread by 0.05): it can fail."""
    jpegs, repeats, size = photo_set(24, scale=0.5), 16, 64
    torch.manual_seed(0)
    cpu_transform = build_ssl_transform("moco_v2", size, MEAN, STD)
    cpu_views = torch.stack(
        [cpu_transform(crop_decode.encoded_jpeg(j, 3)) for _ in range(repeats) for j in jpegs]
    )
    reference = _view_statistics(cpu_views)
    images = decode_images(
        collate_encoded_batch(encoded_rows([{"bytes": j} for j in jpegs]))[ENCODED_KEY], "cpu"
    )

    def batched(transform: BatchedSSLTransform) -> dict:
        generator = torch.Generator().manual_seed(0)
        return _view_statistics(torch.cat([transform(images, generator, generator) for _ in range(repeats)]))

    moco_v2 = BatchedSSLTransform.from_preset("moco_v2", size, MEAN, STD)
    assert _mismatches(batched(moco_v2), reference) == []
    assert _mismatches(batched(BatchedSSLTransform.from_preset("moco_v1", size, MEAN, STD)), reference)
    no_jitter = BatchedSSLTransform.from_preset("moco_v2", size, MEAN, STD)
    no_jitter.jitter_p = 0.0
    assert _mismatches(batched(no_jitter), reference)


def test_lists_of_one_size_resample_as_a_batch():
    """The per-size grouping is exact: a list of mixed sizes gives each image the view that the
    batch path gives it with the same box."""
    transform = BatchedSSLTransform(32, [0.0] * 3, [1.0] * 3, jitter_p=0, grayscale_p=0, blur_p=0, flip_p=0)
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8) for h, w in [(40, 50), (60, 30), (40, 50)]]
    boxes = torch.tensor([[3.0, 2.0, 43.0, 30.0], [0.0, 5.0, 30.0, 60.0], [10.0, 0.0, 50.0, 40.0]])
    mixed = transform.resample(images, boxes)
    for i, image in enumerate(images):
        alone = transform.resample(image.unsqueeze(0), boxes[i : i + 1])
        torch.testing.assert_close(mixed[i : i + 1], alone, rtol=0, atol=0)


def test_undecodable_images_are_dropped_with_their_rows_and_counted():
    """A JPEG whose header parses but whose data does not decode reaches the device and is dropped
    there with its id, counted on top of the rows the worker already dropped; garbage cells are
    dropped by the worker as on the CPU path."""
    good = photo_jpeg((120, 90))
    header_only = good[: good.index(b"\xff\xda")] + b"\xff\xda\x00\x0c" + b"\x00" * 10 + b"\xff\xd9"
    rows = encoded_rows(
        [{"bytes": good}, {"bytes": header_only}, {"bytes": b"not an image"}, {"bytes": good}]
    )
    assert rows[2]["pixel_values"] is None and isinstance(rows[1]["pixel_values"], crop_decode.EncodedJpeg)
    batch = collate_encoded_batch(rows)
    assert batch["id"].tolist() == [0, 1, 3] and batch[SKIPPED_KEY].sum() == 1
    transform = DeviceInputTransform(BatchedSSLTransform.from_preset("moco_v2", 32, MEAN, STD), "cpu")
    out = transform(batch)
    assert ENCODED_KEY not in out and out["pixel_values"].shape == (2, 3, 32, 32)
    assert out["id"].tolist() == [0, 3] and out[SKIPPED_KEY].sum() == 2
    assert transform.stats.skipped == 1
    with pytest.raises(ValueError, match="Every image of this batch failed"):
        transform(collate_encoded_batch(encoded_rows([{"bytes": header_only}])))


def test_views_and_small_crops():
    """MoCo's second view and SwAV/SEED's small crops come from the same decode."""
    images = collate_encoded_batch(encoded_rows([{"bytes": b} for b in photo_set(3)]))
    transform = DeviceInputTransform(
        BatchedSSLTransform.from_preset("moco_v2", 32, MEAN, STD),
        "cpu",
        num_views=2,
        small_transform=BatchedSSLTransform.from_preset("moco_v2", 16, MEAN, STD, scale=(0.05, 0.14)),
        num_small_crops=2,
    )
    out = transform(images)
    assert out["pixel_values"].shape == out["pixel_values_k"].shape == (3, 3, 32, 32)
    assert out["pixel_values_small"].shape == (3, 2, 3, 16, 16)
    assert not torch.equal(out["pixel_values"], out["pixel_values_k"])


def test_seeded_batches_redraw_exactly_and_differ_between_batches():
    """With ``seed``, a batch's parameters depend on the seed and its bytes only: the same batch
    (a resumed run) gets the same views whatever the global RNG, another batch (another DDP rank)
    other ones."""
    photos = photo_set(6)
    transform = DeviceInputTransform(BatchedSSLTransform.from_preset("moco_v2", 32, MEAN, STD), "cpu", seed=7)

    def views(cells, global_seed):
        torch.manual_seed(global_seed)
        return transform(collate_encoded_batch(encoded_rows([{"bytes": b} for b in cells])))["pixel_values"]

    first = views(photos[:3], 0)
    assert torch.equal(first, views(photos[:3], 123))  # the global generators play no part
    reordered = views([photos[1], photos[0], photos[2]], 0)
    assert not torch.equal(reordered[0], first[1])  # another batch: other parameters for the same image
    unseeded = DeviceInputTransform(BatchedSSLTransform.from_preset("moco_v2", 32, MEAN, STD), "cpu")
    torch.manual_seed(0)
    a = unseeded(collate_encoded_batch(encoded_rows([{"bytes": b} for b in photos[:3]])))["pixel_values"]
    torch.manual_seed(1)
    b = unseeded(collate_encoded_batch(encoded_rows([{"bytes": b} for b in photos[:3]])))["pixel_values"]
    assert not torch.equal(a, b)  # without seed: the global generators decide


def test_seeded_batches_of_images_decoded_in_the_workers_differ():
    """PNG (or CMYK) rows arrive as pixels, with no JPEG bytes: their batches must not all share one
    seed (every batch would get the same crop boxes, flips and jitter), and a batch still redraws
    its own parameters."""
    photos = photo_set(6)
    pngs = []
    for data in photos:
        buffer = io.BytesIO()
        Image.open(io.BytesIO(data)).save(buffer, format="PNG")
        pngs.append(buffer.getvalue())
    transform = DeviceInputTransform(BatchedSSLTransform.from_preset("moco_v2", 32, MEAN, STD), "cpu", seed=7)

    def crop_seed(cells):
        encoded = collate_encoded_batch(encoded_rows([{"bytes": b} for b in cells]))[ENCODED_KEY]
        assert len(encoded.decoded) == len(cells)  # pixels, not JPEG bytes
        return transform._generators(encoded)[1].initial_seed()

    assert crop_seed(pngs[:3]) == crop_seed(pngs[:3])
    assert crop_seed(pngs[:3]) != crop_seed(pngs[3:])


def test_data_device_argument_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="--data_device must be one of"):
        DataTrainingArguments(train_files=["a.parquet"], data_device="gpu")
    with pytest.raises(ValueError, match="--data_device cuda .*Fashion-MNIST"):
        DataTrainingArguments(data_device="cuda")
    with pytest.raises(ValueError, match="--data_device cuda .*presets.*'none'"):
        DataTrainingArguments(train_files=["a.parquet"], data_device="cuda", augmentation="none")
    monkeypatch.setattr(arguments, "_cuda_available", lambda: False)
    with pytest.raises(ValueError, match="--data_device cuda needs a CUDA GPU"):
        DataTrainingArguments(train_files=["a.parquet"], data_device="cuda")


class CountingTrainer(SeedTrainer):
    pixel_shapes: list = []

    def compute_loss(self, model, inputs, *args, **kwargs):
        self.pixel_shapes.append((tuple(inputs["pixel_values"].shape), inputs["pixel_values"].device.type))
        return super().compute_loss(model, inputs, *args, **kwargs)


def test_seed_trainer_trains_on_encoded_batches(tmp_path, monkeypatch):
    """End to end on the CPU: streamed parquet JPEGs (1 in 5 corrupt) → build_train_dataset with
    --data_device cuda (rows stay encoded) → 2 dataloader workers → collate_encoded_batch →
    SeedTrainer.device_transform (decode + moco_v2 on "cpu") → the loss."""
    monkeypatch.setattr(arguments, "_cuda_available", lambda: True)  # the transform runs on args.device
    files = write_jpeg_shards(tmp_path, shards=2, rows=8, corrupt_every=5)  # ids 0, 5, 10, 15 corrupt
    streaming = True
    data_args = DataTrainingArguments(
        train_files=files,
        image_size=32,
        data_device="cuda",
        streaming=streaming,
        cache_dir=str(tmp_path / "c"),
    )
    model = tiny_student(queue_size=64)
    dataset = build_train_dataset(
        data_args.train_data(), 1, 3, model.config.image_mean, model.config.image_std
    )
    args = SeedTrainingArguments(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=8,
        max_steps=2,
        use_cpu=True,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=2,
        accelerator_config={"dispatch_batches": False} if streaming else None,
    )
    trainer = CountingTrainer(
        model=model,
        teacher=tiny_teacher(),
        args=args,
        train_dataset=dataset,
        data_collator=collate_encoded_batch,
        device_transform=build_device_transform("moco_v2", 32, model.config, args.device, num_views=1),
    )
    CountingTrainer.pixel_shapes = []
    metrics = trainer.train().metrics
    assert math.isfinite(metrics["train_loss"])
    assert metrics["skipped_images"] == 4
    assert sum(shape[0] for shape, _ in CountingTrainer.pixel_shapes) == 12
    assert all(shape[1:] == (3, 32, 32) and device == "cpu" for shape, device in CountingTrainer.pixel_shapes)


def test_run_seed_with_data_device_cuda(tmp_path, monkeypatch):
    """run_seed.py wires --data_device cuda (here on a faked GPU, so the device transform runs on
    --use_cpu's device): map-style parquet, 2 workers, corrupt images counted."""
    from seed_hf.scripts import run_seed

    monkeypatch.setattr(arguments, "_cuda_available", lambda: True)
    files = write_jpeg_shards(tmp_path, shards=2, rows=8, corrupt_every=5)
    argv = _seed_args(tmp_path / "out", files, "--dataloader_num_workers", "2", "--save_strategy", "no")
    argv[argv.index("--augmentation") + 1] = "moco_v2"
    metrics = run_seed.main([*argv, "--data_device", "cuda"])
    assert metrics["skipped_images"] == 4 and math.isfinite(metrics["train_loss"])
