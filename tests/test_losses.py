import numpy as np
import pytest
import torch
import torch.nn.functional as F

from seed_hf import SeedLoss, seed_loss


def reference_seed_loss(s, t, queue, tau_s, tau_t, batch_keys=None):
    """Per-sample loop written from the paper: D+ = own key (or the global batch keys) ∪ queue."""
    s = s / np.linalg.norm(s, axis=1, keepdims=True)
    t = t / np.linalg.norm(t, axis=1, keepdims=True)
    losses = []
    for i in range(len(s)):
        keys = (
            [t[i]]
            if batch_keys is None
            else list(batch_keys / np.linalg.norm(batch_keys, axis=1, keepdims=True))
        )
        keys = np.stack(keys + list(queue))
        zt = np.array([t[i] @ k for k in keys]) / tau_t
        zs = np.array([s[i] @ k for k in keys]) / tau_s
        pt = np.exp(zt - zt.max()) / np.exp(zt - zt.max()).sum()
        log_ps = zs - zs.max() - np.log(np.exp(zs - zs.max()).sum())
        losses.append(-(pt * log_ps).sum())
    return float(np.mean(losses))


def _inputs(n=8, k=37, c=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    s, t = (
        torch.randn(n, c, generator=g, dtype=torch.float64),
        torch.randn(n, c, generator=g, dtype=torch.float64),
    )
    queue = F.normalize(torch.randn(k, c, generator=g, dtype=torch.float64), dim=1)
    return s, t, queue


@pytest.mark.parametrize("n,k", [(1, 5), (8, 37), (8, 40), (5, 17)])
@pytest.mark.parametrize("tau_t", [1e-4, 0.01, 0.07])
def test_official_matches_reference(n, k, tau_t):
    s, t, queue = _inputs(n, k)
    expected = reference_seed_loss(s.numpy(), t.numpy(), queue.numpy(), 0.2, tau_t)
    got = seed_loss(s, t, queue, 0.2, tau_t).item()
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("n,k", [(4, 37), (8, 13)])
def test_batch_keys_matches_reference(n, k):
    s, t, queue = _inputs(n, k)
    # this process holds rows 4..4+n of a global batch of n + 4 keys
    other = torch.randn(4, s.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    global_keys = torch.cat([other, t])
    expected = reference_seed_loss(
        s.numpy(), t.numpy(), queue.numpy(), 0.2, 0.01, batch_keys=global_keys.numpy()
    )
    got = seed_loss(s, t, queue, 0.2, 0.01, variant="batch_keys", batch_teacher_embeds=global_keys).item()
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-5)
    # one process: the global batch is the local batch
    single = reference_seed_loss(s.numpy(), t.numpy(), queue.numpy(), 0.2, 0.01, batch_keys=t.numpy())
    assert seed_loss(s, t, queue, variant="batch_keys").item() == pytest.approx(single, rel=1e-5)


def test_module_equals_function_and_gradient_only_to_student():
    s, t, queue = _inputs()
    s = s.float().requires_grad_()
    t = t.float().requires_grad_()
    loss = SeedLoss(0.2, 0.01)(s, t, queue.float())
    assert loss.item() == pytest.approx(seed_loss(s, t, queue.float()).item())
    loss.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_student_equal_to_teacher_is_minimum_when_temperatures_match():
    s, t, queue = _inputs()
    same = seed_loss(t, t, queue, 0.1, 0.1).item()
    other = seed_loss(s, t, queue, 0.1, 0.1).item()
    assert same < other


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_low_precision_with_tiny_teacher_temperature_is_finite(dtype):
    s, t, queue = _inputs(8, 64)
    with torch.autocast("cpu", dtype=dtype):
        s_half = torch.nn.Linear(16, 16).to(dtype)(s.to(dtype))  # low-precision activations
        loss = seed_loss(s_half, t.to(dtype), queue.to(dtype), 0.2, 1e-4)
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss)
    loss.backward()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(student_temperature=0.0), "student_temperature"),
        (dict(teacher_temperature=-1.0), "teacher_temperature"),
        (dict(variant="bogus"), "variant"),
    ],
)
def test_bad_arguments(kwargs, match):
    s, t, queue = _inputs()
    with pytest.raises(ValueError, match=match):
        seed_loss(s, t, queue, **kwargs)


def test_width_mismatch_names_projection_dim():
    s, t, queue = _inputs()
    with pytest.raises(ValueError, match="projection_dim"):
        seed_loss(s[:, :8], t, queue)
