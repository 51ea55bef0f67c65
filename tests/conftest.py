import os
from pathlib import Path

# Tests are dominated by small tensor ops, where a second OpenMP thread buys little and, on a
# busy machine, costs a lot (spinning barriers: a 64x784 projection measured 28 ms on one
# thread, 6.8 s on two under load). Tests that exercise parallel paths set threads themselves.
# numpy's and scipy's OpenBLAS read their thread count once, when loaded: set before anything
# imports them (a 784x784 float64 spectrum test took 29 s with two BLAS threads under load, 1.4 s
# with one). Child processes inherit it.
THREADS = os.environ.get("MANIFOLDADV_TEST_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", THREADS)

import pytest  # noqa: E402
import torch  # noqa: E402

from manifoldadv.runtime import accel  # noqa: E402

# MANIFOLDADV_TEST_MNIST points elsewhere (a GPU machine gets a carried copy)
SHARED_MNIST = Path(os.environ.get("MANIFOLDADV_TEST_MNIST")
                    or Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist")
REAL_DEFAULT_COMPILE = accel.default_compile

torch.set_num_threads(int(THREADS))


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU")
    skip_mnist = pytest.mark.skip(reason=f"real MNIST not found at {SHARED_MNIST}")
    for item in items:
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_cuda)
        if "mnist" in item.keywords and not (SHARED_MNIST / "train-images-idx3-ubyte.gz").exists():
            item.add_marker(skip_mnist)


@pytest.fixture(autouse=True)
def _no_user_data_env(monkeypatch, tmp_path):
    # Tests never read the user's data cache or write into the working tree.
    monkeypatch.setenv("MANIFOLDADV_DATA", str(tmp_path / "data-root"))
    monkeypatch.setenv("MANIFOLDADV_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MANIFOLDADV_DEBUG", raising=False)
    # Compilation takes seconds per model: on a GPU machine, where training would compile by
    # default, only the tests about compilation compile.
    monkeypatch.setattr(accel, "default_compile", lambda device, purpose: False)
    yield


@pytest.fixture
def mnist_root():
    return SHARED_MNIST
