import numpy as np
import pytest
import torch
from conftest import requires_fashion_mnist
from PIL import Image

from seed_hf.data.decode import collate_batch, convert_image
from seed_hf.data.fashion_mnist import load_fashion_mnist
from seed_hf.data.rows import ArrayImageDataset, detect_image_column
from seed_hf.data.transforms import AUGMENTATION_PRESETS, MultiViewTransform, build_ssl_transform


@pytest.mark.parametrize("preset", AUGMENTATION_PRESETS)
def test_presets_give_normalised_views(preset):
    transform = build_ssl_transform(preset, 32, [0.5] * 3, [0.25] * 3)
    out = transform(Image.new("RGB", (50, 40), (200, 10, 30)))
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32


def test_unknown_preset():
    with pytest.raises(ValueError, match="augmentation preset"):
        build_ssl_transform("autoaugment")


def test_per_sample_seeded_augmentation_depends_on_epoch_and_index_only():
    images = (np.random.default_rng(0).random((4, 28, 28)) * 255).astype(np.uint8)
    transform = MultiViewTransform(build_ssl_transform("grayscale_small", 32, [0.5], [0.5]), 2)
    a, b = (
        ArrayImageDataset(images, None, transform, seed=0),
        ArrayImageDataset(images, None, transform, seed=0),
    )
    torch.manual_seed(123)  # the global RNG does not matter
    x = a[1]
    torch.manual_seed(456)
    assert torch.equal(x["pixel_values"], b[1]["pixel_values"])
    assert not torch.equal(x["pixel_values"], x["pixel_values_k"])  # two different views
    b.set_epoch(1)
    assert not torch.equal(x["pixel_values"], b[1]["pixel_values"])


def test_per_sample_rng_seeds_the_cpu_stream_only(monkeypatch):
    """The draws are those of a CPU generator seeded with sample_seed (what torch.manual_seed gave);
    the global CPU stream is restored and no accelerator generator is touched (torch.manual_seed
    reseeded CUDA lazily, recording a traceback per sample: a third of the demo's data time)."""
    from seed_hf.data.rows import per_sample_rng, sample_seed

    calls = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: calls.append(seed))
    state = torch.get_rng_state()
    with per_sample_rng(3, 1, 7):
        x = torch.rand(5)
    assert torch.equal(x, torch.rand(5, generator=torch.Generator().manual_seed(sample_seed(3, 1, 7))))
    assert torch.equal(torch.get_rng_state(), state) and calls == []


@pytest.mark.parametrize("mode", ["CMYK", "P", "I;16", "LA", "RGBA", "1", "L"])
def test_convert_image_modes(mode):
    image = Image.new(mode, (8, 8))
    assert convert_image(image, 3).mode == "RGB"
    assert convert_image(image, 1).mode == "L"


def test_detect_image_column_and_collate():
    assert detect_image_column(["label", "jpg"]) == "jpg"
    assert detect_image_column(["img", "image"], "img") == "img"
    with pytest.raises(ValueError, match="image_column"):
        detect_image_column(["label"])
    batch = collate_batch([{"pixel_values": torch.zeros(1, 2, 2), "labels": torch.tensor(1), "id": 3}] * 2)
    assert batch["pixel_values"].shape == (2, 1, 2, 2) and batch["id"].tolist() == [3, 3]


@requires_fashion_mnist
def test_fashion_mnist_reader():
    images, labels = load_fashion_mnist("test")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert sorted(np.unique(labels).tolist()) == list(range(10))
    from PIL import Image as PILImage

    from seed_hf.evaluation.features import eval_data_config, eval_transform

    out = eval_transform(eval_data_config(1, 32, [0.286], [0.353]))(PILImage.fromarray(images[0]))
    assert out.shape == (1, 32, 32)


def test_image_column_transform_is_picklable_for_spawned_workers():
    import io
    import pickle

    from seed_hf.data.rows import ImageColumnTransform

    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 200, 30)).save(buffer, format="JPEG")
    apply = ImageColumnTransform(
        build_ssl_transform("moco_v2", 16), "image", 3, label_column="label", to_array=True
    )
    apply = pickle.loads(pickle.dumps(apply))
    out = apply(
        {"image": [{"bytes": buffer.getvalue()}, {"bytes": b"not an image"}], "label": [1, 2], "id": [7, 8]}
    )
    assert out["pixel_values"][0].shape == (3, 16, 16) and out["pixel_values"][1] is None
    assert out["labels"] == [1, 2] and out["id"] == [7, 8]


def test_a_row_without_the_image_column_is_undecodable_not_a_crash():
    """A webdataset sample without a .jpg member: its row comes back without pixels (collate_batch
    drops and counts it) instead of a KeyError in a dataloader worker."""
    from seed_hf.data.decode import DECODE_STATS
    from seed_hf.data.rows import ImageColumnTransform

    apply = ImageColumnTransform(build_ssl_transform("none", 8), "jpg", 3)
    skipped = DECODE_STATS.skipped
    out = apply({"__key__": ["a", "b"], "txt": ["x", "y"]})
    assert out["pixel_values"] == [None, None]
    assert DECODE_STATS.skipped == skipped + 2
