import numpy as np
import pytest
import torch

from seed_hf.data.subsets import label_subset
from seed_hf.evaluation.knn import knn_accuracy, weighted_knn_predict
from seed_hf.evaluation.probe import linear_probe


def _clusters(n_per_class=30, classes=4, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = 4 * torch.eye(dim)[:classes]  # orthogonal directions: separable by cosine
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    return centers[labels] + torch.randn(len(labels), dim, generator=g), labels


def reference_knn(train, train_labels, test, k, tau, classes):
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    test = test / np.linalg.norm(test, axis=1, keepdims=True)
    out = np.zeros((len(test), classes))
    for i, x in enumerate(test):
        sims = train @ x
        for j in np.argsort(-sims)[:k]:
            out[i, train_labels[j]] += np.exp(sims[j] / tau)
    return out


@pytest.mark.parametrize("k,chunk", [(1, 7), (5, 1024), (200, 3)])
def test_weighted_knn_matches_reference(k, chunk):
    x_train, y_train = _clusters()
    x_test, _ = _clusters(seed=1)
    got = weighted_knn_predict(
        x_train, y_train, x_test, k=k, temperature=0.07, num_classes=4, chunk_size=chunk
    )
    expected = reference_knn(x_train.numpy(), y_train.numpy(), x_test.numpy(), min(k, len(x_train)), 0.07, 4)
    assert np.allclose(got.numpy(), expected, rtol=1e-4)


def test_knn_and_linear_probe_separate_clusters_and_fail_on_shuffled_labels():
    x_train, y_train = _clusters()
    x_test, y_test = _clusters(seed=1)
    assert knn_accuracy(x_train, y_train, x_test, y_test, k=10)["top1"] > 95
    assert linear_probe(x_train, y_train, x_test, y_test)["top1"] > 95
    shuffled = y_test[torch.randperm(len(y_test), generator=torch.Generator().manual_seed(0))]
    assert knn_accuracy(x_train, y_train, x_test, shuffled, k=10)["top1"] < 50


def test_label_subset_is_class_balanced():
    labels = np.repeat(np.arange(10), 100)
    keep = label_subset(labels, 0.1)
    assert len(keep) == 100 and np.all(np.bincount(labels[keep]) == 10)


def test_evaluate_metric_module_loads_offline():
    import evaluate

    from seed_hf.evaluation.metrics import KNN_ACCURACY_PATH

    x_train, y_train = _clusters()
    x_test, y_test = _clusters(seed=1)
    metric = evaluate.load(KNN_ACCURACY_PATH)
    result = metric.compute(
        predictions=x_test.numpy(),
        references=y_test.numpy(),
        train_features=x_train.numpy(),
        train_labels=y_train.numpy(),
        k=10,
    )
    assert result == pytest.approx(knn_accuracy(x_train, y_train, x_test, y_test, k=10))


def test_linear_probe_matches_scikit_learn_on_real_features():
    """Same penalty → the same optimum as scikit-learn's lbfgs logistic regression (C = 1 / (n·l2));
    the swept probe is at least as good as scikit-learn's default within 0.5 points."""
    from conftest import FASHION_MNIST_AVAILABLE
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    if FASHION_MNIST_AVAILABLE:  # real images: 28×28 pixels, 3000 train / 1000 test
        from seed_hf.data.fashion_mnist import load_fashion_mnist

        (xtr, ytr), (xte, yte) = load_fashion_mnist("train"), load_fashion_mnist("test")
        x_train, x_test = (
            torch.from_numpy(a[:n].reshape(n, -1)).float() / 255 for a, n in ((xtr, 3000), (xte, 1000))
        )
        y_train, y_test = torch.from_numpy(ytr[:3000]).long(), torch.from_numpy(yte[:1000]).long()
    else:
        x_train, y_train = _clusters(300, 10, 64)
        x_test, y_test = _clusters(100, 10, 64, seed=1)
    scaler = StandardScaler().fit(x_train.numpy())
    for c in (1.0, 0.01):
        reference = LogisticRegression(C=c, max_iter=5000).fit(
            scaler.transform(x_train.numpy()), y_train.numpy()
        )
        sk_top1 = 100 * reference.score(scaler.transform(x_test.numpy()), y_test.numpy())
        ours = linear_probe(
            x_train, y_train, x_test, y_test, l2_grid=(1 / (c * len(x_train)),), max_iter=1000
        )
        assert abs(ours["top1"] - sk_top1) <= 0.5, (c, ours["top1"], sk_top1)
    swept = linear_probe(x_train, y_train, x_test, y_test)
    assert (
        swept["top1"] >= sk_top1 - 0.5
        or swept["top1"]
        >= 100
        * LogisticRegression(max_iter=5000)
        .fit(scaler.transform(x_train.numpy()), y_train.numpy())
        .score(scaler.transform(x_test.numpy()), y_test.numpy())
        - 0.5
    )
    assert set(swept["validation_top1"]) and swept["l2"] in (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)


def _imagefolder(root, classes=("bag", "shoe"), per_class=6, seed=0):
    """Tiny imagefolder: 20×20 PNGs, class 0 bright on the left half, class 1 on the right, plus noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = np.full((20, 20, 3), 30.0)
            base[:, 10 * label : 10 * label + 10] = 220.0
            pixels = np.clip(base + rng.normal(0, 20, (20, 20, 3)), 0, 255).astype("uint8")
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


@pytest.mark.parametrize("source", ["dirs", "dataset_name"])
def test_run_eval_on_your_own_labelled_images(tmp_path, source):
    """run_eval evaluates on imagefolders (--train_dir/--validation_dir) and on a datasets source
    (--dataset_name with its splits and --label_column), recording the data it used."""
    import sys
    from pathlib import Path

    from helpers import tiny_student

    from seed_hf.export.hub import export_student

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    from seed_hf.scripts import run_eval

    _imagefolder(tmp_path / "data" / "train")
    _imagefolder(tmp_path / "data" / "test", per_class=3, seed=1)
    model = tiny_student(image_size=32)
    folder = export_student(model, tmp_path / "export")
    if source == "dirs":
        data_args = [
            "--train_dir",
            str(tmp_path / "data" / "train"),
            "--validation_dir",
            str(tmp_path / "data" / "test"),
        ]
    else:
        data_args = [
            "--dataset_name",
            str(tmp_path / "data"),
            "--label_column",
            "label",
            "--validation_split",
            "test",
        ]
    rows = run_eval.main(["--models", str(folder), "pixels", "--knn_k", "3", "--linear_probe", *data_args])
    assert [r["model"] for r in rows] == [str(folder), "pixels"]
    assert all(r["num_train"] == 12 and r["num_eval"] == 6 for r in rows)
    assert rows[1]["knn_top1"] == 100.0  # left vs right: raw pixels separate the classes
    assert rows[0]["preprocessing"]["input_size"] == [3, 32, 32] and 0 <= rows[0]["linear_top1"] <= 100
    with pytest.raises(ValueError, match="no column 'nope'.*--label_column"):
        run_eval.main(
            ["--models", "pixels", "--dataset_name", str(tmp_path / "data"), "--label_column", "nope"]
        )


def _run_eval():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    from seed_hf.scripts import run_eval

    return run_eval


def test_run_eval_pixels_on_mixed_sizes_is_refused_before_any_model(tmp_path, monkeypatch):
    """The pixel baselines need one size: images of several are refused before any model's
    features are extracted (not after, losing them), and --pixel_size makes them comparable."""
    from helpers import tiny_student
    from PIL import Image

    from seed_hf.export.hub import export_student

    run_eval = _run_eval()
    _imagefolder(tmp_path / "data" / "train")
    _imagefolder(tmp_path / "data" / "test", per_class=3, seed=1)
    Image.new("RGB", (28, 24), (200, 30, 30)).save(tmp_path / "data" / "test" / "bag" / "big.png")
    folder = export_student(tiny_student(image_size=32), tmp_path / "export")
    extracted = []
    extract = run_eval.extract_features
    monkeypatch.setattr(
        run_eval,
        "extract_features",
        lambda *a, desc="", **k: extracted.append(desc) or extract(*a, desc=desc, **k),
    )
    data = [
        "--train_dir",
        str(tmp_path / "data" / "train"),
        "--validation_dir",
        str(tmp_path / "data" / "test"),
    ]
    argv = ["--models", str(folder), "pixels", "--knn_k", "3", *data]
    with pytest.raises(ValueError, match="eval images of .* are of different sizes: pass --pixel_size N"):
        run_eval.main(argv)
    assert not any(desc.startswith("export") for desc in extracted), extracted
    rows = run_eval.main([*argv, "--pixel_size", "20"])
    assert [r["model"] for r in rows] == [str(folder), "pixels"] and rows[1]["num_eval"] == 7
    assert rows[1]["preprocessing"]["input_size"] == [3, 20, 20]


def test_run_eval_writes_each_models_rows_as_it_finishes(tmp_path):
    import json

    run_eval = _run_eval()
    _imagefolder(tmp_path / "data" / "train")
    _imagefolder(tmp_path / "data" / "test", per_class=3, seed=1)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"architecture": "no_such_architecture"}))
    out = tmp_path / "results.json"
    data = [
        "--train_dir",
        str(tmp_path / "data" / "train"),
        "--validation_dir",
        str(tmp_path / "data" / "test"),
    ]
    with pytest.raises(Exception):  # noqa: B017 - whatever the broken folder raises
        run_eval.main(["--models", "pixels", "pixels_centred", str(broken), "--knn_k", "3",
                       "--output_file", str(out), *data])  # fmt: skip
    assert [r["model"] for r in json.loads(out.read_text())] == ["pixels", "pixels_centred"]
    # a folder that is no model at all is refused before anything runs
    out.unlink()
    with pytest.raises(
        FileNotFoundError, match=r"--models .*missing: not a model folder.*No model was evaluated"
    ):
        run_eval.main(["--models", "pixels", str(tmp_path / "missing"), "--output_file", str(out), *data])
    assert not out.exists()


def test_labels_only_parquet_is_told_it_has_no_image_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    run_eval = _run_eval()
    for split in ("train", "test"):
        (tmp_path / "labels").mkdir(exist_ok=True)
        pq.write_table(
            pa.table({"label": [0, 1, 0, 1], "id": [1, 2, 3, 4]}), tmp_path / "labels" / f"{split}.parquet"
        )
    with pytest.raises(ValueError) as error:
        run_eval.main(["--models", "pixels", "--dataset_name", str(tmp_path / "labels")])
    message = str(error.value)
    assert "has no image column: its columns are ['label', 'id'] and none of them holds images" in message, (
        message
    )
    assert "pass the one" not in message


def _probe_data(n_train: int = 1000, n_test: int = 500):
    """Fashion-MNIST pixels (an ill-conditioned, nearly separable problem: weak penalties are far from
    their optimum after a fixed number of iterations), or overlapping clusters without it."""
    from conftest import FASHION_MNIST_AVAILABLE

    if not FASHION_MNIST_AVAILABLE:
        x, y = _clusters(n_train // 10, 10, 64)
        xe, ye = _clusters(n_test // 10, 10, 64, seed=1)
        return x / 4, y, xe / 4, ye
    from seed_hf.data.fashion_mnist import load_fashion_mnist

    (xtr, ytr), (xte, yte) = load_fashion_mnist("train"), load_fashion_mnist("test")
    x, xe = (torch.from_numpy(a[:n].reshape(n, -1)).float() / 255 for a, n in ((xtr, n_train), (xte, n_test)))
    return x, torch.from_numpy(ytr[:n_train]).long(), xe, torch.from_numpy(yte[:n_test]).long()


def test_linear_probe_gives_the_same_figure_from_features_rounded_otherwise():
    """Features that differ in their last bits (another CPU's float32 kernels: a 1e-6 relative change)
    or summed in another order (the train rows permuted) give the same L2, held-out scores and
    accuracy: each fit is a smooth function of the features, not a line search's branches."""
    x, y, xe, ye = _probe_data()
    g = torch.Generator().manual_seed(1)
    nudged = [a * (1 + 1e-6 * torch.randn(a.shape, generator=g)) for a in (x, xe)]
    swept, nudged_sweep = linear_probe(x, y, xe, ye), linear_probe(nudged[0], y, nudged[1], ye)
    assert nudged_sweep["l2"] == swept["l2"]
    assert nudged_sweep["validation_top1"] == swept["validation_top1"]
    assert (nudged_sweep["top1"], nudged_sweep["top5"]) == (swept["top1"], swept["top5"])
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(5))
    fixed = linear_probe(x, y, xe, ye, l2_grid=(1e-4,))  # one weight: no held-out split to reorder
    permuted = linear_probe(x[order], y[order], xe, ye, l2_grid=(1e-4,))
    assert (permuted["top1"], permuted["top5"]) == (fixed["top1"], fixed["top5"])


def _wide_features(n_train: int = 24, n_test: int = 12, dim: int = 2000, classes: int = 3):
    """Few images, many features (raw pixels of a handful of photos): ``dim`` far above ``n_train``."""
    g = torch.Generator().manual_seed(3)
    centers = torch.randn(classes, dim, generator=g)
    y, ye = torch.arange(n_train) % classes, torch.arange(n_test) % classes
    x = centers[y] + 2 * torch.randn(n_train, dim, generator=g)
    xe = centers[ye] + 2 * torch.randn(n_test, dim, generator=g)
    return x, y, xe, ye


def _reference_fit(x, y, num_classes, l2, max_iter, init=None):
    """The probe's iteration with the ``d × d`` preconditioner ``(XᵀX/n + l2·I)⁻¹`` built outright."""
    from torch import nn

    n, d = x.shape
    precond = torch.cholesky_inverse(torch.linalg.cholesky(x.T @ x / n + l2 * torch.eye(d, dtype=x.dtype)))
    targets = torch.nn.functional.one_hot(y, num_classes).to(x.dtype)
    if init is not None:
        weight, bias = init.weight.detach().clone(), init.bias.detach().clone()
    else:
        weight, bias = x.new_zeros(num_classes, d), x.new_zeros(num_classes)
    look_w, look_b, t = weight, bias, 1.0
    with torch.no_grad():
        for _ in range(max_iter):
            residual = (torch.softmax(x @ look_w.T + look_b, dim=1) - targets) / n
            new_w = look_w - (residual.T @ x + l2 * look_w) @ precond
            new_b = look_b - residual.sum(0)
            t_next = (1.0 + (1.0 + 4.0 * t * t) ** 0.5) / 2.0
            momentum = (t - 1.0) / t_next
            look_w, look_b = new_w + momentum * (new_w - weight), new_b + momentum * (new_b - bias)
            weight, bias, t = new_w, new_b, t_next
    classifier = nn.Linear(d, num_classes, dtype=x.dtype)
    with torch.no_grad():
        classifier.weight.copy_(weight)
        classifier.bias.copy_(bias)
    return classifier


def test_wide_features_probe_matches_the_d_by_d_iteration(monkeypatch):
    """Features wider than the train split (d > n) are fitted without the d × d preconditioner; each
    fit of the warm-started L2 chain gives the d × d iteration's weights to 1e-9, and the probe the
    same L2, held-out scores and accuracy."""
    from seed_hf.evaluation import probe

    x, y, xe, ye = _wide_features(n_train=40, dim=300, classes=4)
    x = ((x - x.mean(0)) / x.std(0)).double()
    ours = reference = None
    for l2 in (1e-2, 1e-3, 1e-4, 1e-5, 1e-6):
        ours = probe._fit_logistic(x, y, 4, l2, probe.PROBE_ITERATIONS, ours)
        reference = _reference_fit(x, y, 4, l2, probe.PROBE_ITERATIONS, reference)
        for a, b in ((ours.weight, reference.weight), (ours.bias, reference.bias)):
            assert (a - b).norm() <= 1e-9 * b.norm(), (l2, float((a - b).norm() / b.norm()))
    xt, yt, xte, yte = _wide_features(n_train=60, dim=400)
    wide = probe.linear_probe(xt, yt, xte, yte)
    monkeypatch.setattr(probe, "_fit_logistic", _reference_fit)
    assert probe.linear_probe(xt, yt, xte, yte) == wide


def test_wide_features_probe_holds_no_d_by_d_matrix():
    """A probe on a few images' raw pixels (d ≫ n) allocates nothing bigger than the features (a d × d
    float64 matrix is 180 GB for 224 px RGB) and still separates the classes."""
    from torch.overrides import TorchFunctionMode

    class LargestTensor(TorchFunctionMode):
        largest = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, tuple) else (out,):
                if isinstance(t, torch.Tensor):
                    LargestTensor.largest = max(LargestTensor.largest, t.numel())
            return out

    x, y, xe, ye = _wide_features()
    with LargestTensor():
        result = linear_probe(x, y, xe, ye, l2_grid=(1e-4,))
    assert LargestTensor.largest <= x.numel(), (LargestTensor.largest, x.shape)
    assert result["top1"] == 100.0


def test_linear_probe_refuses_what_exceeds_the_machines_memory(monkeypatch):
    """Features whose probe would not fit in memory are refused before anything is allocated, naming the
    width, the memory it needs and the remedy."""
    from seed_hf.evaluation import probe

    x, y, xe, ye = _wide_features()
    need = probe.probe_memory_bytes(len(x), len(xe), x.shape[1])
    monkeypatch.setattr(probe, "_physical_memory_bytes", lambda: need - 1)
    with pytest.raises(ValueError, match=r"width 2000 needs ~.* GiB.*--pixel_size N"):
        probe.linear_probe(x, y, xe, ye)
    monkeypatch.setattr(probe, "_physical_memory_bytes", lambda: need)
    assert probe.linear_probe(x, y, xe, ye, l2_grid=(1e-4,))["top1"] == 100.0
