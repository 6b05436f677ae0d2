"""Crop-aware JPEG decode: same random parameters and RNG state as full decode + crop, pixels
within a bounded difference, corrupt data skipped and counted."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from seed_hf.data import crop_decode, opencv_kernels
from seed_hf.data.decode import DECODE_STATS, decode_image
from seed_hf.data.rows import ImageColumnTransform
from seed_hf.data.transforms import MultiViewTransform, build_ssl_transform

pytestmark = pytest.mark.skipif(opencv_kernels.cv2 is None, reason="OpenCV not installed")

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def photo_jpeg(size: tuple[int, int], seed: int = 0, mode: str = "RGB") -> bytes:
    """A natural photograph (scikit-image's astronaut / coffee / chelsea) cropped and resized to
    ``size`` = (w, h), JPEG quality 90."""
    skdata = pytest.importorskip("skimage.data")
    source = [skdata.astronaut, skdata.coffee, skdata.chelsea][seed % 3]()
    image = Image.fromarray(source).convert(mode).resize(size, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def views(transform, image, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    out = transform(image)
    return out, torch.get_rng_state()


def test_dct_scale():
    assert crop_decode.dct_scale((375, 500), (224, 224)) == 1  # ImageNet-sized: full decode
    assert crop_decode.dct_scale((448, 448), (224, 224)) == 2
    assert crop_decode.dct_scale((900, 1800), (224, 224)) == 4
    assert crop_decode.dct_scale((2000, 1800), (224, 224)) == 8
    assert crop_decode.dct_scale((3000, 3000), (96, 96)) == 8
    assert crop_decode.dct_scale((100, 100), (224, 224)) == 1  # upsampled views decode in full


@pytest.mark.parametrize("size", [(224, 224), (300, 250), (200, 150), (96, 96)])
def test_reducing_resize_is_close_to_area(size):
    """Close to OpenCV's area resize at the factors a random crop has (here 1.25–5.2).
    Measured on this photo, mean abs uint8 difference to area: 1.3 at 224 (PIL's antialiased
    bilinear, the official pipeline's resize: 1.1), 3.2 at 200 × 150 (PIL: 1.5): the bilinear
    stage after an integer reduction blurs a little more than a single area box."""
    array = np.asarray(Image.open(io.BytesIO(photo_jpeg((500, 375)))))
    ours = crop_decode.reducing_resize(array, size[::-1]).astype(int)
    area = opencv_kernels.resize(array, size[::-1]).astype(int)
    pil = np.asarray(Image.fromarray(array).resize(size, Image.Resampling.BILINEAR)).astype(int)
    assert ours.shape == area.shape == (size[1], size[0], 3)
    assert np.abs(ours - area).mean() < 2.5 * np.abs(pil - area).mean()


@pytest.mark.parametrize("preset", ["moco_v2", "moco_v1", "simclr", "swav"])
@pytest.mark.parametrize("size", [(500, 375), (1600, 1200), (333, 500)])
def test_crop_aware_matches_full_decode(preset, size):
    """Same RNG draws as full decode → crop → resize (the generator ends in the same state),
    pixels within a bounded mean absolute difference. Measured here (uint8 levels, mean of 6
    views): 0.3–0.5 at 500 × 375 and 333 × 500 (full-scale decode; only the resize differs),
    0.5–0.9 at 1600 × 1200 (DCT-scaled decode; single views up to 2.3)."""
    transform = build_ssl_transform(preset, 224, MEAN, STD, backend="opencv")
    assert transform.accepts_encoded_jpeg
    diffs = []
    for seed in range(6):
        data = photo_jpeg(size, seed)
        full, state_full = views(transform, decode_image(data, 3, stats=None, to_array=True), seed)
        encoded = crop_decode.encoded_jpeg(data, 3)
        assert encoded is not None and encoded.size == (size[1], size[0])
        fast, state_fast = views(transform, encoded, seed)
        assert torch.equal(state_full, state_fast), (preset, seed)
        assert fast.shape == full.shape == (3, 224, 224)
        diffs.append(((fast - full).abs() * torch.tensor(STD).view(3, 1, 1)).mean().item() * 255)
    assert np.mean(diffs) < 1.5, diffs
    assert max(diffs) < 3.0, diffs


def test_large_photo_decodes_at_reduced_scale():
    """A 1600 × 1200 photo, crops ≥ 448 px: decoded at 1/2 or less, never in full."""
    data = photo_jpeg((1600, 1200))
    crop = crop_decode.CropAwareRandomResizedCrop(224, scale=(0.5, 1.0))
    torch.manual_seed(0)
    for _ in range(4):
        encoded = crop_decode.encoded_jpeg(data, 3)
        out = crop(encoded)
        assert out.shape == (224, 224, 3)
        assert min(encoded._decoded) >= 2  # no full-scale decode happened
        ((scale, decoded),) = encoded._decoded.items()
        assert decoded.shape[:2] == (-(-1200 // scale), -(-1600 // scale))  # ceil(side / scale)


def test_grayscale_jpeg_and_one_channel_output():
    """A grayscale JPEG to 3 and 1 channels at 96 px (DCT scales 1/2–1/4). Measured mean abs
    uint8 difference over 4 views: 1.2 (3 channels), 2.8 (1 channel; one view at 5.3, where
    the box is over twice the output after 1/2 and is rounded to decoded pixels)."""
    data = photo_jpeg((800, 600), mode="L")
    for in_chans, shape in ((3, (3, 96, 96)), (1, (1, 96, 96))):
        mean, std = MEAN[:in_chans], STD[:in_chans]
        transform = build_ssl_transform("moco_v2" if in_chans == 3 else "grayscale_small", 96, mean, std)
        diffs = []
        for seed in range(4):
            full, state_full = views(transform, decode_image(data, in_chans, stats=None, to_array=True), seed)
            fast, state_fast = views(transform, crop_decode.encoded_jpeg(data, in_chans), seed)
            assert fast.shape == full.shape == shape and torch.equal(state_full, state_fast)
            diffs.append((fast - full).abs().mean().item() * std[0] * 255)
        assert np.mean(diffs) < 3.5 and max(diffs) < 6.5, diffs


def test_views_share_one_decode():
    """Two views of one image decode once when the second needs no finer scale."""
    data = photo_jpeg((500, 375))
    encoded = crop_decode.encoded_jpeg(data, 3)
    transform = MultiViewTransform(build_ssl_transform("moco_v2", 64, MEAN, STD), num_views=2)
    assert transform.accepts_encoded_jpeg
    torch.manual_seed(0)
    out = transform(encoded)
    assert out["pixel_values"].shape == out["pixel_values_k"].shape == (3, 64, 64)
    assert len(encoded._decoded) == 1


def test_not_wrapped_formats_fall_back(tmp_path):
    """PNG, truncated JPEGs and garbage headers are not wrapped (the full-decode path decides)."""
    data = photo_jpeg((120, 90))
    png = io.BytesIO()
    Image.open(io.BytesIO(data)).save(png, format="PNG")
    assert crop_decode.encoded_jpeg(png.getvalue(), 3) is None
    assert crop_decode.encoded_jpeg(data[: len(data) // 2], 3) is None
    assert crop_decode.encoded_jpeg(b"\xff\xd8\xff" + b"junk" * 50 + b"\xff\xd9", 3) is None
    path = tmp_path / "a.jpg"
    path.write_bytes(data)
    assert crop_decode.encoded_jpeg({"bytes": None, "path": str(path)}, 3).size == (90, 120)


def test_image_column_transform_skips_and_counts_bad_rows():
    """Crop-aware by default for JPEG bytes; corrupt and truncated images are skipped and
    counted as with full decode, including JPEGs whose header parses but whose data does not."""
    good = photo_jpeg((300, 200))
    header_only = good[: good.index(b"\xff\xda")] + b"\xff\xda\x00\x0c" + b"\x00" * 10 + b"\xff\xd9"
    apply = ImageColumnTransform(build_ssl_transform("moco_v2", 32, MEAN, STD), "image", 3, to_array=True)
    assert crop_decode.encoded_jpeg(good, 3) is not None
    cells = [{"bytes": good}, {"bytes": good[:-300]}, {"bytes": header_only}, {"bytes": b"not an image"}]
    seen, skipped = DECODE_STATS.seen, DECODE_STATS.skipped
    out = apply({"image": cells})
    assert out["pixel_values"][0].shape == (3, 32, 32)
    ok = [v is not None for v in out["pixel_values"]]
    assert DECODE_STATS.seen - seen == 4 and DECODE_STATS.skipped - skipped == ok.count(False)
    assert ok[0] and not ok[1] and not ok[3]
    streaming = ImageColumnTransform(
        build_ssl_transform("moco_v2", 32, MEAN, STD), "image", 3, drop_bad_rows=True, to_array=True
    )
    assert len(streaming({"image": cells})["pixel_values"]) == ok.count(True)


def test_crop_aware_can_be_switched_off():
    good = photo_jpeg((300, 200))
    seen_types = []
    transform = build_ssl_transform("moco_v2", 32, MEAN, STD)

    class Spy:
        accepts_encoded_jpeg = True

        def __call__(self, image):
            seen_types.append(type(image))
            return transform(image)

    ImageColumnTransform(Spy(), "image", 3, to_array=True)({"image": [good]})
    ImageColumnTransform(Spy(), "image", 3, to_array=True, crop_aware=False)({"image": [good]})
    assert seen_types == [crop_decode.EncodedJpeg, np.ndarray]
