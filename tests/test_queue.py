import pytest
import torch

from seed_hf import EmbeddingQueue


@pytest.mark.parametrize("size", [15, 16, 17])
def test_ring_buffer_wraps_and_keeps_fifo_order(size):
    queue = EmbeddingQueue(size, 3)
    written = []
    for step in range(10):
        keys = torch.full((4, 3), float(step)) + torch.arange(4.0)[:, None] / 10
        queue.enqueue(keys)
        written.extend(keys.unbind(0))
    assert int(queue.ptr) == (40 % size)
    assert int(queue.num_filled) == size
    # the last `size` keys are in the buffer, the oldest at ptr
    expected = torch.stack(written[-size:])
    order = torch.cat([torch.arange(int(queue.ptr), size), torch.arange(0, int(queue.ptr))])
    assert torch.equal(queue.embeddings[order], expected)


def test_fill_fraction_and_reset_are_seeded():
    a, b = EmbeddingQueue(10, 4, seed=3), EmbeddingQueue(10, 4, seed=3)
    assert torch.equal(a.embeddings, b.embeddings)
    assert torch.allclose(a.embeddings.norm(dim=1), torch.ones(10))
    a.enqueue(torch.ones(3, 4))
    assert a.fill_fraction == pytest.approx(0.3)
    a.reset()
    assert a.fill_fraction == 0 and torch.equal(a.embeddings, b.embeddings)


def test_too_many_keys_and_wrong_width():
    queue = EmbeddingQueue(4, 2)
    with pytest.raises(ValueError, match="queue_size"):
        queue.enqueue(torch.zeros(5, 2))
    with pytest.raises(ValueError, match="shape"):
        queue.enqueue(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="queue_size"):
        EmbeddingQueue(0, 2)


def test_state_dict_round_trip():
    queue = EmbeddingQueue(8, 2)
    queue.enqueue(torch.randn(5, 2))
    other = EmbeddingQueue(8, 2, seed=9)
    other.load_state_dict(queue.state_dict())
    assert torch.equal(other.embeddings, queue.embeddings)
    assert int(other.ptr) == 5 and int(other.num_filled) == 5
