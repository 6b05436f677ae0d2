"""OpenCV augmentation backend: same random parameters as torchvision, same pixel semantics."""

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from seed_hf.data import opencv_kernels
from seed_hf.data.decode import DecodeStats, decode_image
from seed_hf.data.transforms import AUGMENTATION_PRESETS, build_ssl_transform

pytestmark = pytest.mark.skipif(opencv_kernels.cv2 is None, reason="OpenCV not installed")


def photo(seed: int = 0, size=(120, 90)) -> np.ndarray:
    """A smooth colour image with edges (random pixels would make every resampler disagree)."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    channels = [
        127 + 100 * np.sin(xx / rng.uniform(5, 15) + rng.uniform(0, 6)) * np.cos(yy / rng.uniform(5, 15))
        for _ in range(3)
    ]
    image = np.stack(channels, -1)
    image[h // 3 : h // 2, w // 4 : w // 2] = rng.uniform(0, 255, 3)  # a flat patch with hard edges
    return np.clip(image, 0, 255).astype(np.uint8)


def as_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


@pytest.mark.parametrize("preset", [p for p in AUGMENTATION_PRESETS if p != "none"])
def test_backends_draw_the_same_parameters(preset):
    """Same seed → the same RNG draws (the generator ends in the same state) and views that
    differ only by kernel rounding."""
    fast = build_ssl_transform(preset, 64, [0.5] * 3, [0.25] * 3, backend="opencv")
    reference = build_ssl_transform(preset, 64, [0.5] * 3, [0.25] * 3, backend="torchvision")
    for seed in range(8):
        image = Image.fromarray(photo(seed))
        torch.manual_seed(seed)
        a = fast(image)
        after_a = torch.rand(4)
        torch.manual_seed(seed)
        b = reference(image)
        after_b = torch.rand(4)
        assert torch.equal(after_a, after_b)
        assert a.shape == b.shape == (3, 64, 64)
        mean_abs_uint8 = (a - b).abs().mean().item() * 0.25 * 255
        assert mean_abs_uint8 < 4.0, (preset, seed, mean_abs_uint8)


@pytest.mark.parametrize(
    "kernel, reference, factor, tolerance",
    [
        (opencv_kernels.adjust_brightness, F.adjust_brightness, 1.3, 1),
        (opencv_kernels.adjust_brightness, F.adjust_brightness, 0.6, 1),
        (opencv_kernels.adjust_contrast, F.adjust_contrast, 1.4, 2),
        (opencv_kernels.adjust_contrast, F.adjust_contrast, 0.6, 2),
        (opencv_kernels.adjust_saturation, F.adjust_saturation, 1.4, 2),
        (opencv_kernels.adjust_saturation, F.adjust_saturation, 0.0, 2),
        (opencv_kernels.adjust_hue, F.adjust_hue, 0.1, 8),
        (opencv_kernels.adjust_hue, F.adjust_hue, -0.25, 8),
    ],
)
def test_colour_kernels_match_torchvision(kernel, reference, factor, tolerance):
    array = photo(3)
    ours = torch.from_numpy(kernel(array, factor)).permute(2, 0, 1).int()
    theirs = reference(as_tensor(array), factor).int()
    diff = (ours - theirs).abs()
    assert diff.float().mean() < 1.0 and diff.max() <= tolerance, (diff.float().mean(), diff.max())


def test_grayscale_and_flip_and_crop_kernels():
    array = photo(4)
    torch.manual_seed(0)
    gray = opencv_kernels.ArrayRandomGrayscale(p=1.0)(array)
    assert gray.shape == array.shape and (gray[..., 0] == gray[..., 2]).all()
    theirs = F.rgb_to_grayscale(as_tensor(array), num_output_channels=3).permute(1, 2, 0).numpy()
    assert np.abs(gray.astype(int) - theirs.astype(int)).max() <= 1
    flipped = opencv_kernels.ArrayRandomHorizontalFlip(p=1.0)(array)
    assert np.array_equal(flipped, array[:, ::-1])
    crop = opencv_kernels.ArrayRandomResizedCrop(48)
    torch.manual_seed(1)
    ours = crop(array)
    torch.manual_seed(1)
    theirs = crop(as_tensor(array))  # torchvision's tensor kernel, same box
    assert ours.shape == (48, 48, 3)
    assert np.abs(ours.astype(int) - theirs.permute(1, 2, 0).numpy().astype(int)).mean() < 3


@pytest.mark.parametrize(
    "image",
    [
        Image.fromarray(photo(5)),
        photo(5),
        as_tensor(photo(5)),
        photo(5)[..., 0],  # grayscale (h, w)
        torch.from_numpy(photo(5)[..., :1]).permute(2, 0, 1),  # grayscale (1, h, w)
    ],
    ids=["pil", "ndarray", "tensor", "gray-ndarray", "gray-tensor"],
)
def test_opencv_backend_takes_every_input_type(image):
    channels = 1 if (np.asarray(image).ndim == 2 or (torch.is_tensor(image) and image.shape[0] == 1)) else 3
    mean, std = [0.5] * channels, [0.25] * channels
    preset = "grayscale_small" if channels == 1 else "moco_v2"
    out = build_ssl_transform(preset, 32, mean, std, backend="opencv")(image)
    assert out.shape == (channels, 32, 32) and out.dtype == torch.float32 and torch.isfinite(out).all()


def test_bad_backend_and_bad_dtype():
    with pytest.raises(ValueError, match="backend"):
        build_ssl_transform("moco_v2", backend="pillow-simd")
    with pytest.raises(TypeError, match="uint8"):
        build_ssl_transform("moco_v2", 32, backend="opencv")(torch.rand(3, 40, 40))
    with pytest.raises(ValueError, match="1- or 3-channel"):
        build_ssl_transform("moco_v2", 32, backend="opencv")(np.zeros((40, 40, 4), np.uint8))


def jpeg_bytes(array: np.ndarray, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).convert(mode).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.mark.parametrize("mode, in_chans", [("RGB", 3), ("L", 3), ("L", 1), ("RGB", 1), ("CMYK", 3)])
def test_decode_to_array_matches_pil(mode, in_chans):
    data = jpeg_bytes(photo(6), mode)
    array = decode_image(data, in_chans, stats=None, to_array=True)
    pil = np.asarray(decode_image(data, in_chans, stats=None))
    assert array.dtype == np.uint8 and array.shape == pil.shape
    diff = np.abs(array.astype(int) - pil.astype(int))
    assert diff.mean() <= 1.0 and diff.max() <= 3  # CMYK: OpenCV's conversion rounds 1 level higher


def test_decode_to_array_counts_truncated_and_corrupt(tmp_path):
    stats = DecodeStats()
    data = jpeg_bytes(photo(7))
    assert decode_image(data[: len(data) // 2], 3, stats=stats, to_array=True) is None  # truncated
    assert decode_image(b"\xff\xd8\xff" + b"junk" * 50 + b"\xff\xd9", 3, stats=stats, to_array=True) is None
    path = tmp_path / "ok.png"
    Image.fromarray(photo(7)).save(path)
    assert decode_image(str(path), 3, stats=stats, to_array=True).shape == (90, 120, 3)  # PNG: PIL path
    assert (stats.seen, stats.skipped) == (3, 2)


def test_data_arguments_check_the_backend():
    from seed_hf.cli.arguments import DataTrainingArguments

    assert DataTrainingArguments().augmentation_backend == "opencv"
    with pytest.raises(ValueError, match="augmentation_backend"):
        DataTrainingArguments(augmentation_backend="pil")


class TorchSigmaBlur:
    """The official ``GaussianBlur`` (PIL ``ImageFilter.GaussianBlur(radius=sigma)``, sigma in
    [0.1, 2]) drawing sigma from torch's RNG, as ours does, instead of Python's ``random``."""

    def __call__(self, image):
        from PIL import ImageFilter

        return image.filter(ImageFilter.GaussianBlur(radius=float(torch.empty(()).uniform_(0.1, 2.0))))


def official_seed_augmentation(name: str, size: int = 224, scale=(0.14, 1.0)):
    """Reference of jacobswan1/SEED ``tools/utils.py`` ``simclr_aug`` (= MoCo-v1's) and
    ``swav_aug`` / ``swav_small_aug`` (MoCo-v2's with another crop scale), torchvision v1 API."""
    from torchvision import transforms as T

    normalize = T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    if name == "seed_simclr":
        ops = [T.RandomResizedCrop(size, scale=(0.2, 1.0)), T.RandomGrayscale(p=0.2)]
        ops += [T.ColorJitter(0.4, 0.4, 0.4, 0.4), T.RandomHorizontalFlip()]
    else:
        ops = [
            T.RandomResizedCrop(size, scale=scale),
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        ]
        ops += [T.RandomGrayscale(p=0.2), T.RandomApply([TorchSigmaBlur()], p=0.5), T.RandomHorizontalFlip()]
    return T.Compose(ops + [T.ToTensor(), normalize])


@pytest.mark.parametrize(
    "preset, size, scale",
    [("seed_simclr", 64, None), ("seed_swav", 64, None), ("seed_swav", 32, (0.05, 0.14))],
    ids=["seed_simclr", "seed_swav", "seed_swav-small-crop"],
)
def test_seed_presets_are_the_official_seed_augmentations(preset, size, scale):
    """Same seed → the official pipeline's view, to float rounding (torchvision backend, PIL
    kernels as in the official code); the opencv backend draws the same parameters (above)."""
    ours = build_ssl_transform(preset, size, scale=scale, backend="torchvision")
    reference = official_seed_augmentation(preset, size, scale or (0.14, 1.0))
    for seed in range(12):
        image = Image.fromarray(photo(seed))
        torch.manual_seed(seed)
        a = ours(image)
        torch.manual_seed(seed)
        b = reference(image)
        assert torch.allclose(a, b, atol=1e-5), (preset, seed, (a - b).abs().max())
    # and they are not the stronger SimCLR/SwAV presets of the same crop
    torch.manual_seed(0)
    strong = build_ssl_transform(preset.removeprefix("seed_"), size, scale=scale, backend="torchvision")(
        image
    )
    torch.manual_seed(0)
    assert not torch.allclose(strong, ours(image), atol=1e-3)
