import math

import pytest
import torch
from torchvision.transforms import v2

from seed_hf.data.batched_transforms import (
    BatchedSSLTransform,
    batched_color_jitter,
    random_resized_crop_boxes,
)


def test_crop_boxes_follow_torchvision_distribution():
    """Area fraction and aspect ratio of the vectorised sampler match RandomResizedCrop.get_params."""
    g = torch.Generator().manual_seed(0)
    boxes = random_resized_crop_boxes(4000, 60, 80, (0.2, 1.0), generator=g)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 80).all() and (boxes[:, 3] <= 60).all()
    torch.manual_seed(0)
    ref = torch.tensor(
        [
            v2.RandomResizedCrop.get_params(torch.zeros(1, 60, 80), [0.2, 1.0], [3 / 4, 4 / 3])[2:]
            for _ in range(4000)
        ],
        dtype=torch.float,
    )
    area, ref_area = (w * h / 4800), ref[:, 0] * ref[:, 1] / 4800
    assert abs(area.mean() - ref_area.mean()) < 0.02
    assert abs((w / h).log().mean() - (ref[:, 1] / ref[:, 0]).log().mean()) < 0.03


def test_full_box_crop_is_a_plain_resize():
    x = torch.rand(2, 3, 16, 16)
    t = BatchedSSLTransform(
        16,
        [0.0] * 3,
        [1.0] * 3,
        scale=(1.0, 1.0),
        jitter=(0, 0, 0, 0),
        jitter_p=0,
        grayscale_p=0,
        blur_p=0,
        flip_p=0,
    )
    # scale 1 and ratio 1 on a square image: the box is the whole image, output = input
    torch.testing.assert_close(t(x, torch.Generator().manual_seed(0)), x, atol=1e-5, rtol=0)


@pytest.mark.parametrize("op", ["brightness", "contrast", "saturation", "hue"])
def test_color_jitter_matches_torchvision_per_factor(op):
    x = torch.rand(1, 3, 8, 8)
    factor = 0.3 if op == "hue" else 1.3
    kwargs = {op: 0.3 if op == "hue" else 0.3}
    g = torch.Generator().manual_seed(0)
    # draw the same factor the batched op will draw, then compare with torchvision's kernel
    out = batched_color_jitter(x, **kwargs, p=1.0, generator=g)
    g = torch.Generator().manual_seed(0)
    torch.rand(1, generator=g)  # the p draw
    low, high = (-0.3, 0.3) if op == "hue" else (0.7, 1.3)
    factor = torch.empty(1).uniform_(low, high, generator=g).item()
    fn = getattr(v2.functional, f"adjust_{op}")
    expected = fn(x, factor)
    torch.testing.assert_close(out, expected, atol=2e-3, rtol=0)
    assert math.isfinite(out.sum().item())


def test_grayscale_small_batch_statistics():
    x = torch.randint(0, 256, (256, 1, 28, 28), dtype=torch.uint8)
    t = BatchedSSLTransform.from_preset("grayscale_small", 32, [0.5], [0.5])
    a, b = t(x, torch.Generator().manual_seed(0)), t(x, torch.Generator().manual_seed(1))
    assert a.shape == (256, 1, 32, 32)
    assert not torch.equal(a, b)
    torch.testing.assert_close(a, t(x, torch.Generator().manual_seed(0)))  # seeded: reproducible
    with pytest.raises(ValueError, match="preset"):
        BatchedSSLTransform.from_preset("none", 32, [0.5], [0.5])  # deterministic: not batched
