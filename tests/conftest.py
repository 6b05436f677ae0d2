import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))

FASHION_MNIST_AVAILABLE = os.path.isfile("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
requires_fashion_mnist = pytest.mark.skipif(
    not FASHION_MNIST_AVAILABLE, reason="apt-get install -y dataset-fashion-mnist"
)
