import gzip
import hashlib
import os
import pickle

import numpy as np
import pytest
import torch

from manifoldadv.data import Split, data_root, load_dataset, make_synthetic, read_idx, split_digest
from manifoldadv.errors import DataError, UsageError

from helpers import assert_usage_error, cli, write_fake_cifar, write_fake_mnist, write_idx

OFFICIAL_TRAIN = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
OFFICIAL_TEST = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
MD5 = {"train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb", "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637"}


@pytest.mark.mnist
def test_real_mnist_shapes_counts_and_checksums(mnist_root):
    ds = load_dataset("mnist", mnist_root)
    assert ds.train.x.shape == (60000, 1, 28, 28) and ds.test.x.shape == (10000, 1, 28, 28)
    assert ds.train.x.dtype == torch.uint8
    assert np.bincount(ds.train.y.numpy()).tolist() == OFFICIAL_TRAIN
    assert np.bincount(ds.test.y.numpy()).tolist() == OFFICIAL_TEST
    imgs = ds.test.images(slice(0, 100))
    assert imgs.dtype == torch.float32 and 0.0 <= imgs.min() and imgs.max() <= 1.0
    for stem, md5 in MD5.items():
        with gzip.open(mnist_root / f"{stem}.gz", "rb") as f:
            assert hashlib.md5(f.read()).hexdigest() == md5


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("sub", ["", "MNIST/raw"])
def test_mnist_idx_layouts(tmp_path, gz, sub):
    arrays = write_fake_mnist(tmp_path / sub, gz=gz)
    ds = load_dataset("mnist", tmp_path)
    x, y = arrays["train"]
    assert torch.equal(ds.train.x[:, 0], torch.from_numpy(x))
    assert ds.train.y.tolist() == y.astype(int).tolist()
    assert len(ds.test) == 20 and ds.mean == (0.1307,)


def test_mnist_limit_and_env_root(tmp_path, monkeypatch):
    write_fake_mnist(tmp_path / "env")
    monkeypatch.setenv("MANIFOLDADV_DATA", str(tmp_path / "env"))
    assert data_root(None) == tmp_path / "env"
    assert data_root(tmp_path / "x") == tmp_path / "x"  # --data-root wins over the variable
    ds = load_dataset("mnist", limit=7)
    assert len(ds.train) == 7 and len(ds.test) == 7
    monkeypatch.delenv("MANIFOLDADV_DATA")
    assert data_root(None) == __import__("pathlib").Path.home() / ".cache" / "manifoldadv"


def test_mnist_missing_file_names_it(tmp_path):
    write_fake_mnist(tmp_path)
    os.remove(tmp_path / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        load_dataset("mnist", tmp_path)


def test_mnist_truncated_file_is_clear_error(tmp_path):
    write_fake_mnist(tmp_path, gz=False)
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(DataError, match="train-images-idx3-ubyte.*truncated"):
        load_dataset("mnist", tmp_path)
    gz = write_idx(tmp_path / "g" / "train-images-idx3-ubyte", np.zeros((3, 28, 28)))
    gz.write_bytes(gz.read_bytes()[:-8])  # cut the gzip trailer
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz"):
        read_idx(gz)


def test_cifar_batches_read_in_real_layout(tmp_path):
    written = write_fake_cifar(tmp_path)
    ds = load_dataset("cifar10", tmp_path)
    assert ds.train.x.shape == (60, 3, 32, 32) and ds.test.x.shape == (12, 3, 32, 32)
    data, labels = written["test_batch"]
    assert torch.equal(ds.test.x.reshape(12, -1), torch.from_numpy(data))
    assert ds.test.y.tolist() == labels
    # channel-major layout: the first 1024 bytes of a row are the red plane
    assert torch.equal(ds.train.x[0, 0].reshape(-1), torch.from_numpy(written["data_batch_1"][0][0, :1024]))
    assert ds.shape == (3, 32, 32) and len(ds.mean) == 3


def test_cifar_refuses_malicious_pickle(tmp_path):
    write_fake_cifar(tmp_path)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f, protocol=2)
    with pytest.raises(DataError, match="not allowed"):
        load_dataset("cifar10", tmp_path)
    assert not (tmp_path / "pwned").exists()


def test_cifar_missing_batch_names_it(tmp_path):
    write_fake_cifar(tmp_path)
    os.remove(tmp_path / "cifar-10-batches-py" / "data_batch_3")
    with pytest.raises(DataError, match="data_batch_3"):
        load_dataset("cifar10", tmp_path)


def test_download_without_torchvision_says_what_to_do(tmp_path):
    try:
        import torchvision  # noqa: F401
        pytest.skip("torchvision importable here")
    except Exception:
        pass
    with pytest.raises(DataError, match="torchvision"):
        load_dataset("mnist", tmp_path, download=True)


def test_synthetic_is_deterministic_in_box_and_exactly_low_rank():
    a, b = make_synthetic(0), make_synthetic(0)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    assert a.train.x.dtype == torch.float32 and a.train.x.shape == (6000, 1, 28, 28)
    assert float(a.train.x.min()) >= 0.0 and float(a.train.x.max()) <= 1.0
    r = a.info["manifold_rank"]
    x, y = a.train.x.reshape(6000, -1).double().numpy(), a.train.y.numpy()
    for c in (0, 7):
        ev = np.linalg.eigvalsh(np.cov(x[y == c].T))[::-1]
        assert ev[r - 1] > 1e-6 * ev[0]  # r real directions ...
        assert ev[r] < 1e-10 * ev[0]  # ... and nothing else but float32 rounding


def test_cli_missing_data_is_one_line(tmp_path):
    r = cli("train", "--data", "mnist", "--data-root", tmp_path / "nowhere", "--out", tmp_path / "m.safetensors")
    assert_usage_error(r, "train-images-idx3-ubyte")


def test_unknown_dataset_name():
    with pytest.raises(UsageError):
        load_dataset("imagenet")


def test_split_digest_hashes_every_pixel_and_label_in_order():
    g = torch.Generator().manual_seed(0)
    a = Split(torch.randint(0, 256, (5, 1, 4, 4), generator=g, dtype=torch.uint8), torch.arange(5))
    b = Split(a.x[:3].float() / 255, torch.tensor([1, 0, 1]))
    ref = hashlib.sha256()
    for s in (a, b):
        ref.update(s.x.float().numpy().tobytes())
        ref.update(s.y.long().numpy().tobytes())
    assert split_digest(a, b) == ref.hexdigest()[:16]
    assert split_digest(a, b) != split_digest(b, a)
    flipped = Split(b.x, torch.tensor([1, 0, 0]))
    assert split_digest(a, flipped) != split_digest(a, b)
    moved = Split(a.x.clone(), a.y)
    moved.x[4, 0, 3, 3] ^= 1
    assert split_digest(moved, b) != split_digest(a, b)
